"""The training engine: one driver loop over a compiled *program*; [`fit`][rnnjax.engine.fit] is its one-model
case.

A program is what trains: it holds the state(s), runs ``n`` steps from step ``t`` (a compiled
chunk), evaluates, and gives its state to save. Two programs exist:

- [`ModelProgram`][rnnjax.engine.ModelProgram] (here): one model; steps in compiled chunks with the data made
  inside the program, or host-fed steps (a data loader); data parallel over a mesh; used by
  [`fit`][rnnjax.engine.fit];
- [`rnnjax.sweep.StackedProgram`][rnnjax.sweep.StackedProgram]: many configurations stacked on a leading axis,
  ``vmap``-ed and sharded over devices; used by [`rnnjax.sweep.run_sweep`][rnnjax.sweep.run_sweep].

[`drive`][rnnjax.engine.drive] runs either: chunk boundaries, the per-configuration non-finite guard,
evaluation, the history, ``metrics.jsonl``, TensorBoard, the progress bar, the callback, checkpoints, resume
and ``results.json``; and it returns the run's results as an object indexed by configuration
([`RunSummary`][rnnjax.engine.RunSummary]), so that no caller reads files back.

What a work directory holds (``workdir/``): ``config.json``, ``sessions.json``, ``.lock`` (held by
the process that trains: a second process is refused), ``checkpoints/`` (the state(s), the history
and the guard's counters, together: the checkpoint is the record of the run), ``metrics.jsonl``
(rebuilt from the checkpoint on resume), TensorBoard events, ``loss.png`` and ``results.json``.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rnnjax import _workdir as wd
from rnnjax._checks import check_callable, check_int
from rnnjax._workdir import Workdir, WorkdirError, read_events
from rnnjax.checkpoint import params_sha256, tree_sha256
from rnnjax.optim import hyperparameter_errors
from rnnjax.train import NonFiniteError, TrainState, evaluate
from rnnjax.types import Array

__all__ = [
    "DEFAULTS",
    "FitResult",
    "History",
    "ModelProgram",
    "Placement",
    "Program",
    "RunSummary",
    "Workdir",
    "WorkdirError",
    "drive",
    "fit",
    "read_events",
]

# The defaults of both entries (fit and run_sweep): the same names and values.
DEFAULTS = {"chunk": 100, "ckpt_every": 1000, "log_every": 1, "max_to_keep": 3,
            "max_consecutive_nonfinite": 10}


# ----------------------------------------------------------------------------- history


@dataclasses.dataclass
class History:
    """The metrics of a run, indexed by configuration (a fit is one configuration).

    Attributes:
      train_steps: ``[K]`` the steps recorded (1-based step counts: multiples of ``log_every``,
        the last step, and every step on which a configuration's step was non-finite).
      train: name -> ``[n_configs, K, ...]``.
      eval_steps: ``[E]`` the step counts at which the evaluations ran.
      eval: name -> ``[n_configs, E]``.
    """

    train_steps: np.ndarray
    train: dict[str, np.ndarray]
    eval_steps: np.ndarray
    eval: dict[str, np.ndarray]

    @classmethod
    def empty(cls) -> History:
        return cls(np.zeros(0, np.int64), {}, np.zeros(0, np.int64), {})

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays for a checkpoint: ``train/step``, ``train/<m>``, ``eval/step``, ``eval/<m>``."""
        out = {"train/step": self.train_steps, "eval/step": self.eval_steps}
        out.update({f"train/{k}": v for k, v in self.train.items()})
        out.update({f"eval/{k}": v for k, v in self.eval.items()})
        return {k: as32(v) for k, v in out.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> History:
        def part(prefix):
            return {k[len(prefix):]: np.asarray(v) for k, v in arrays.items()
                    if k.startswith(prefix) and k != prefix + "step"}

        return cls(np.asarray(arrays["train/step"], np.int64), part("train/"),
                   np.asarray(arrays["eval/step"], np.int64), part("eval/"))

    def append_train(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        self.train_steps = np.concatenate([self.train_steps, np.asarray(steps, np.int64)])
        self.train = _concat(self.train, {k: as32(v) for k, v in metrics.items()}, len(steps),
                             len(self.train_steps) - len(steps))

    def append_eval(self, step: int, metrics: dict[str, np.ndarray]) -> None:
        self.eval_steps = np.concatenate([self.eval_steps, np.asarray([step], np.int64)])
        self.eval = _concat(self.eval, {k: as32(v)[:, None] for k, v in metrics.items()}, 1,
                            len(self.eval_steps) - 1)

    def records(self, i: int = 0) -> list[dict[str, Any]]:
        """Configuration ``i``'s history as ``metrics.jsonl`` records (scalar metrics only)."""
        recs = []
        scal = {k: v[i] for k, v in self.train.items() if v.ndim == 2}
        for j, s in enumerate(self.train_steps):
            recs.append({"kind": "train", "step": int(s), **{k: float(v[j]) for k, v in scal.items()}})
        for j, s in enumerate(self.eval_steps):
            recs.append({"kind": "eval", "step": int(s),
                         **{f"eval_{k}": float(v[i, j]) for k, v in self.eval.items()}})
        return sorted(recs, key=lambda r: (r["step"], r["kind"] == "eval"))

    def as_lists(self, i: int = 0) -> dict[str, list]:
        """Configuration ``i``'s history as [`fit`][rnnjax.engine.fit] has always returned it: ``step`` and
        each training metric (non-scalar ones as arrays), ``eval_step`` and ``eval_<name>``."""
        out: dict[str, list] = {}
        if len(self.train_steps):
            out["step"] = [int(s) for s in self.train_steps]
            for k, v in self.train.items():
                out[k] = [float(x) for x in v[i]] if v.ndim == 2 else list(v[i])
        if len(self.eval_steps):
            out["eval_step"] = [int(s) for s in self.eval_steps]
            out.update({f"eval_{k}": [float(x) for x in v[i]] for k, v in self.eval.items()})
        return out


def as32(v: Any) -> np.ndarray:
    """``v`` as float32 / int32 (what a checkpoint stores without 64-bit JAX), bools as int32."""
    v = np.asarray(v)
    if v.dtype.kind == "f":
        return v.astype(np.float32)
    if v.dtype.kind in "iub":
        return v.astype(np.int32)
    return v


def _concat(old: dict[str, np.ndarray], new: dict[str, np.ndarray], k: int, before: int) -> dict:
    """Append ``new`` (``[n, k, ...]``) to ``old`` (``[n, before, ...]``); a metric missing on one
    side is NaN there."""
    out = {}
    n = next(iter(list(old.values()) + list(new.values()))).shape[0] if (old or new) else 0
    for key in list(old) + [x for x in new if x not in old]:
        like = old[key] if key in old else new[key]
        dtype = like.dtype if like.dtype.kind == "f" else np.float32
        a = old[key] if key in old else np.full((n, before) + like.shape[2:], np.nan, dtype)
        b = new[key] if key in new else np.full((n, k) + like.shape[2:], np.nan, dtype)
        if a.shape[2:] != b.shape[2:]:
            raise ValueError(f"metric {key!r} changed shape from {a.shape[2:]} to {b.shape[2:]}")
        out[key] = np.concatenate([a.astype(np.result_type(a, b)), b.astype(np.result_type(a, b))], axis=1)
    return out


# ----------------------------------------------------------------------------- programs


@dataclasses.dataclass
class Chunk:
    """What a program returns for a chunk: ``metrics`` name -> ``[n_configs, k, ...]`` for the
    ``k`` steps that ran (fewer than asked only with ``error``), and an exception raised part-way
    (a data loader that failed): the steps before it count, the state is theirs."""

    metrics: dict[str, np.ndarray]
    error: BaseException | None = None


class Program(Protocol):
    """What [`drive`][rnnjax.engine.drive] runs. ``state`` is the current state (device arrays); ``configs``
    the configurations (one for a fit)."""

    configs: list[dict[str, Any]]
    state: Any

    def check(self, start: int) -> None:
        """Before any training: the step's and the evaluation's outputs (``jax.eval_shape``) and
        the concrete hyperparameters; raise naming what is wrong."""

    def start_step(self) -> int:
        """The step count of the state the program was given."""

    def run(self, t: int, n: int, streak: np.ndarray, limit: int | None) -> Chunk:
        """Steps ``t .. t+n-1``; a configuration whose ``streak`` of non-finite steps reaches
        ``limit`` is frozen (its steps are skipped: NaN metrics, ``nonfinite`` 1)."""

    def evaluate(self) -> dict[str, np.ndarray] | None:
        """name -> ``[n_configs]``; None without an evaluation function."""

    def host_state(self) -> Any:
        """The state as host arrays, to checkpoint."""

    def load(self, host_state: Any) -> None:
        """Place a restored host state on the devices."""

    def hyperparams(self, state: Any) -> list[dict[str, float]]:
        """Per configuration, the optimizer's concrete hyperparameters of a host or device state."""

    def with_hyperparams(self, host_state: Any, template: Any) -> Any:
        """``host_state`` with the optimizer hyperparameters of ``template`` (a host state)."""

    def params_sha256(self) -> list[str]: ...

    def num_params(self) -> list[int]: ...


def opt_hyperparams(opt_state: Any) -> dict[str, Any] | None:
    """The ``hyperparams`` dict of an ``optax.inject_hyperparams`` state, or None."""
    hp = getattr(opt_state, "hyperparams", None)
    return hp if isinstance(hp, dict) else None


def frozen_metrics(shapes: dict[str, Any]) -> dict[str, Array]:
    """Metrics of a skipped (frozen) step: NaN floats, zero ints, ``nonfinite`` 1."""
    out = {}
    for k, s in shapes.items():
        if k == "nonfinite":
            out[k] = jnp.ones(s.shape, s.dtype)
        elif jnp.issubdtype(s.dtype, jnp.inexact):
            out[k] = jnp.full(s.shape, jnp.nan, s.dtype)
        else:
            out[k] = jnp.zeros(s.shape, s.dtype)
    return out


def guarded(step: Callable[[Any, Any], tuple[Any, dict]], limit: int | None):
    """A ``lax.scan`` body ``((state, streak), x) -> ((state, streak), metrics)`` over
    ``step(state, x) -> (state, metrics)`` that skips the step (``lax.cond``: the state unchanged,
    the metrics of [`frozen_metrics`][rnnjax.engine.frozen_metrics]) once ``streak``, the count of consecutive
    non-finite steps, reaches ``limit`` (None: never)."""

    def body(carry, x):
        s, streak = carry
        shapes = jax.eval_shape(step, s, x)[1]
        if limit is None or "nonfinite" not in shapes:
            s, m = step(s, x)
            return (s, streak), m
        s, m = jax.lax.cond(streak >= limit, lambda s, x: (s, frozen_metrics(shapes)), step, s, x)
        return (s, jnp.where(m["nonfinite"] > 0, streak + 1, 0)), m

    return body


def check_metrics(where: str, out: Any, *, scalars_only: bool) -> None:
    """``out`` (an ``eval_shape`` result) must be a dict of arrays; scalars where required."""
    if not isinstance(out, dict):
        raise TypeError(f"{where} must return a dict of scalar arrays, got {type(out).__name__}")
    for k, v in out.items():
        shape = getattr(v, "shape", None)
        if shape is None:
            raise TypeError(f"{where}: entry {k!r} is a {type(v).__name__}, not an array")
        if (scalars_only or k == "loss") and shape != ():
            raise ValueError(f"{where}: entry {k!r} must be a scalar, got shape {shape}")


def check_step_output(where: str, out: Any, state_type: type) -> dict:
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], state_type)):
        got = (f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__)
        raise TypeError(f"{where} must return (state, metrics) with state an rnnjax.TrainState and "
                        f"metrics a dict, got {got} (e.g. rnnjax.train_step(loss_fn, tx))")
    check_metrics(where + "'s metrics", out[1], scalars_only=False)
    return out[1]


class Placement:
    """Where a model's state and batches live: one device, or data parallel over a mesh's first axis.

    Args:
      mesh: None, or a ``jax.sharding.Mesh`` whose first axis is the data axis.
      batch_axes: the batch axis of every batch leaf (an int), or a pytree of ints / None.
    """

    def __init__(self, mesh: Any, batch_axes: Any):
        from jax.sharding import Mesh

        self.mesh = mesh
        self.batch_axes = batch_axes
        if mesh is None:
            return
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh (its first axis is the data axis), "
                            f"got {type(mesh).__name__}")
        self.axis = mesh.axis_names[0]
        self.size = int(mesh.shape[self.axis])

    def specs(self, batch: Any, size: int | None = None) -> Any:
        """A ``PartitionSpec`` for every batch leaf (checked: the batch axis divides evenly)."""
        from jax.sharding import PartitionSpec as P

        size = self.size if size is None else size
        leaves, treedef = jax.tree_util.tree_flatten(batch)
        axes = self.batch_axes
        if isinstance(axes, (int, np.integer)) or axes is None:
            axes = [axes] * len(leaves)
        else:
            try:
                axes = treedef.flatten_up_to(axes)  # type: ignore[attr-defined]
            except (ValueError, TypeError) as e:
                raise ValueError(f"batch_axes must be an int or a pytree of ints/None matching the "
                                 f"batch's structure {treedef}: {e}") from None
        specs = []
        for i, (leaf, ax) in enumerate(zip(leaves, axes)):
            if ax is None:
                specs.append(P())
                continue
            shape = np.shape(leaf)
            if not -len(shape) <= ax < len(shape):
                raise ValueError(f"batch_axes gives axis {ax} for batch leaf {i} of shape {shape}")
            ax = ax % len(shape)
            if shape[ax] % size:
                hint = (" batch_axes=0 (the default) shards the FIRST axis of every leaf: for "
                        "time-major inputs [T, B, D] pass batch_axes=1, or a pytree such as (1, 0) "
                        "for (xs [T, B, D], ys [B])" if ax == 0 and len(shape) >= 3 else "")
                raise ValueError(f"batch leaf {i} has size {shape[ax]} along its batch axis {ax} "
                                 f"(shape {shape}), which does not divide over the {size} "
                                 f"devices of mesh axis {self.axis!r}; use a batch size that is a "
                                 f"multiple of {size}.{hint}")
            specs.append(P(*([None] * ax + [self.axis])))
        return jax.tree_util.tree_unflatten(treedef, specs)

    def state(self, state: Any) -> Any:
        """A state replicated over the mesh (as it is without one)."""
        if self.mesh is None:
            return state
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.host_local_array_to_global_array(state, self.mesh, P())
        return jax.device_put(state, NamedSharding(self.mesh, P()))

    def to_host(self, state: Any) -> Any:
        """A replicated state as this process's local copy (to save, hash or return)."""
        if self.mesh is None or jax.process_count() == 1:
            return state

        def local(x):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                return x.addressable_data(0)
            return x

        return jax.tree.map(local, state)

    def batch(self, batch: Any) -> Any:
        """Inside a program: constrain every batch leaf to be sharded along its batch axis."""
        if self.mesh is None:
            return batch
        from jax.sharding import NamedSharding

        return jax.tree.map(lambda x, s: jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, s)),
                            batch, self.specs(batch))

    def host_batch(self, batch: Any) -> Any:
        """A host batch as global arrays: this process's share on its devices."""
        if self.mesh is None:
            return batch
        from jax.sharding import NamedSharding

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            specs = self.specs(batch, size=max(self.size // jax.process_count(), 1))
            return multihost_utils.host_local_array_to_global_array(batch, self.mesh, specs)
        return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(self.mesh, s)), batch,
                            self.specs(batch))


def traceable(batch_fn: Callable[[Any], Any]) -> bool:
    """Whether ``batch_fn(step)`` can be traced with a traced int32 ``step`` (made inside jit)."""
    try:
        jax.eval_shape(batch_fn, jax.ShapeDtypeStruct((), jnp.int32))
    except Exception:
        return False
    return True


def _takes_config(fn: Callable) -> bool:
    """Whether ``fn`` accepts a second positional argument (``eval_fn(params, config)``)."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class ModelProgram:
    """One model (a [`TrainState`][rnnjax.engine.TrainState]), trained in compiled chunks or host-fed steps.

    Args:
      state: the starting state.
      step_fn: ``step_fn(state, batch) -> (state, metrics)``.
      batch_fn: ``batch_fn(step) -> batch`` (traceable: batches made inside the program), or an
        iterable of batches (host-fed).
      eval_fn: ``eval_fn(params)`` or ``eval_fn(params, config)`` -> dict of scalars; with
        ``eval_batches``, ``eval_fn(params, batch)`` averaged over them.
      eval_batches: evaluation batches (a sequence, or a function returning an iterable).
      placement: a [`Placement`][rnnjax.engine.Placement].
      config: the run's configuration (passed to a two-argument ``eval_fn``).
    """

    def __init__(self, state: TrainState, step_fn: Callable, batch_fn: Callable | Iterable, *,
                 eval_fn: Callable | None, eval_batches: Any, placement: Placement,
                 config: dict[str, Any] | None):
        self.placement = placement
        self.state = placement.state(state)
        self.configs = [dict(config or {})]
        self.step_fn = step_fn
        self.batch_fn = batch_fn
        self.eval_fn = eval_fn
        self.eval_batches = eval_batches
        self.iterator: Iterator | None = None
        self.compiled = callable(batch_fn) and traceable(batch_fn)
        self._chunks: dict[tuple[int, int | None], Callable] = {}
        self._jit_step = jax.jit(step_fn)
        self._jit_eval = None if eval_fn is None else jax.jit(eval_fn)

    # -- data

    def start_data(self, start: int) -> None:
        """An iterable of batches is advanced past the ``start`` batches a resumed run consumed."""
        if not callable(self.batch_fn):
            self.iterator = iter(self.batch_fn)
            for i in range(start):
                if next(self.iterator, _END) is _END:
                    raise ValueError(f"batch_fn (an iterable) has only {i} batches, but the run "
                                     f"resumes at step {start}")

    def host_batch(self, t: int) -> Any:
        if self.iterator is None:
            return self.batch_fn(t)  # type: ignore[operator]
        batch = next(self.iterator, _END)
        if batch is _END:
            raise ValueError(f"batch_fn (an iterable of batches) ran out at step {t}: it gave {t} "
                             f"batches, fewer than steps; pass as many batches as steps, or a "
                             f"function batch_fn(step)")
        return batch

    # -- checks

    def check(self, start: int) -> None:
        where = "step_fn"
        try:
            if self.compiled:
                batch = jax.eval_shape(self.batch_fn, jax.ShapeDtypeStruct((), jnp.int32))  # type: ignore[arg-type]
            else:
                first = self.host_batch(start)
                if self.iterator is not None:
                    self.iterator = itertools.chain([first], self.iterator)
                batch = first
            out = jax.eval_shape(self.step_fn, self.state, batch)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}(state, batch) fails on the first batch: {e}") from e
        check_step_output(where, out, TrainState)
        if self.eval_fn is not None:
            self._eval_shape_check()
        tx = getattr(self.step_fn, "tx", None)
        mine = opt_hyperparams(self.state.opt_state)
        if tx is not None and mine is not None:
            theirs = opt_hyperparams(tx.init(self.state.params)) or {}
            diff = _differences([{k: v for k, v in theirs.items()}], [mine])
            if diff:
                raise ValueError(f"the state was created with other optimizer hyperparameters than "
                                 f"the step's tx ({diff}); the step would silently use the state's: "
                                 f"create the state with the same tx "
                                 f"(TrainState.create(params, tx, key=...))")
        errors = hyperparameter_errors(mine or {})
        if errors:
            raise ValueError("hyperparameters out of range: " + "; ".join(errors))

    def _eval_shape_check(self) -> None:
        params, eval_fn = self.state.params, self.eval_fn
        assert eval_fn is not None
        if self.eval_batches is not None:
            batches = self.eval_batches() if callable(self.eval_batches) else self.eval_batches
            first = next(iter(batches), _END)
            if first is _END:
                raise ValueError("eval_batches must contain at least one batch, got none")
            out = jax.eval_shape(eval_fn, params, first)
        elif _takes_config(eval_fn):
            out = jax.eval_shape(lambda p: eval_fn(p, self.configs[0]), params)
        else:
            out = jax.eval_shape(eval_fn, params)
        check_metrics("eval_fn", out, scalars_only=True)

    # -- steps

    def start_step(self) -> int:
        return int(jax.device_get(self.placement.to_host(self.state).step))

    def _chunk_fn(self, n: int, limit: int | None) -> Callable:
        key = (n, limit)
        if key not in self._chunks:
            place, batch_fn, step_fn = self.placement, self.batch_fn, self.step_fn
            body = guarded(lambda s, _: step_fn(s, place.batch(batch_fn(s.step))), limit)  # type: ignore[operator]
            self._chunks[key] = jax.jit(lambda c: jax.lax.scan(body, c, None, length=n))
        return self._chunks[key]

    def run(self, t: int, n: int, streak: np.ndarray, limit: int | None) -> Chunk:
        if self.compiled:
            (state, _), m = self._chunk_fn(n, limit)((self.state, jnp.asarray(streak[0], jnp.int32)))
            m = jax.device_get(m)
            self.state = state
            return Chunk({k: np.asarray(v)[None] for k, v in m.items()})
        ms: list[dict] = []
        s, error = int(streak[0]), None
        for i in range(n):
            if limit is not None and s >= limit:
                break
            try:
                batch = self.placement.host_batch(self.host_batch(t + i))
                state, m = self._jit_step(self.state, batch)
                m = jax.device_get(m)
            except (Exception, KeyboardInterrupt) as e:
                error = e
                break
            self.state = state
            ms.append(m)
            s = s + 1 if int(m.get("nonfinite", 0)) else 0
        metrics = {k: np.stack([np.asarray(m[k]) for m in ms])[None] for k in ms[0]} if ms else {}
        return Chunk(metrics, error)

    def evaluate(self) -> dict[str, np.ndarray] | None:
        if self._jit_eval is None:
            return None
        params = self.state.params
        if self.eval_batches is not None:
            batches = self.eval_batches() if callable(self.eval_batches) else self.eval_batches
            res = evaluate(self._jit_eval, params, batches)
        elif self.eval_fn is not None and _takes_config(self.eval_fn):
            res = {k: float(v) for k, v in jax.device_get(self._jit_eval(params, self.configs[0])).items()}
        else:
            res = {k: float(v) for k, v in jax.device_get(self._jit_eval(params)).items()}
        return {k: np.asarray([v]) for k, v in res.items()}

    # -- state

    def host_state(self) -> Any:
        return self.placement.to_host(self.state)

    def load(self, host_state: Any) -> None:
        self.state = self.placement.state(host_state)

    def hyperparams(self, state: Any) -> list[dict[str, float]]:
        hp = opt_hyperparams(state.opt_state) or {}
        return [{k: float(np.asarray(jax.device_get(v))) for k, v in hp.items() if np.ndim(v) == 0}]

    def with_hyperparams(self, host_state: Any, template: Any) -> Any:
        hp = opt_hyperparams(template.opt_state)
        if hp is None:
            return host_state
        return host_state.replace(opt_state=host_state.opt_state._replace(hyperparams=hp))

    def params_sha256(self) -> list[str]:
        return [params_sha256(self.host_state().params)]

    def num_params(self) -> list[int]:
        return [int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self.state.params)))]


_END = object()


def _differences(a: list[dict], b: list[dict]) -> str:
    """``key (configuration i): x vs y`` for every value that differs (NaN equals NaN)."""
    out = []
    for i, (x, y) in enumerate(zip(a, b)):
        for k in sorted(set(x) | set(y)):
            u, v = x.get(k), y.get(k)
            if u is None or v is None or not np.array_equal(np.asarray(u), np.asarray(v), equal_nan=True):
                where = f" (configuration {i})" if len(a) > 1 else ""
                out.append(f"{k}{where}: {_g(u)} vs {_g(v)}")
    return "; ".join(out[:8])


def _g(v: Any) -> str:
    """A hyperparameter as the float32 it is stored as (``0.01``, not ``0.009999999776``)."""
    return "missing" if v is None else f"{float(np.float32(v)):.7g}"


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(kw_only=True)
class RunSummary:
    """The results of a run, indexed by configuration (a fit is one), as ``results.json`` has them.

    Attributes:
      history: the [`History`][rnnjax.engine.History] of every configuration.
      final: per configuration, the last recorded value of each training metric,
        ``train_loss_last10`` (the mean finite loss of the last 10 records) and each
        ``eval_<name>`` of the last evaluation.
      diverged: per configuration, the step at which the non-finite guard froze it, or None.
      params_sha256: per configuration, the SHA-256 of its final params.
      wall_time_s: seconds summed over every process that worked on the run.
      wall_time_this_process_s: seconds of this call.
      workdir: the work directory (None without one).
      files: name -> path of what the run wrote (``results``, ``metrics``, ``plot``, ...).
      resumed_from_step: the step this call resumed from (None: it started the run).
      results: what ``results.json`` holds (with a work directory; else {}).
    """

    history: History = dataclasses.field(default_factory=History.empty)
    final: list[dict[str, float]] = dataclasses.field(default_factory=list)
    diverged: list[int | None] = dataclasses.field(default_factory=list)
    params_sha256: list[str] = dataclasses.field(default_factory=list)
    wall_time_s: float = 0.0
    wall_time_this_process_s: float = 0.0
    workdir: Path | None = None
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    resumed_from_step: int | None = None
    results: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(kw_only=True)
class FitResult(RunSummary):
    """What [`fit`][rnnjax.engine.fit] returns: the final ``state`` and the run's
    [`RunSummary`][rnnjax.engine.RunSummary] (one configuration). It unpacks as ``state, history = fit(...)``,
    ``history`` being ``self.history.as_lists()``.

    Attributes:
      state: the final [`TrainState`][rnnjax.engine.TrainState].
      config: the run's config.
      steps: the total number of steps.
    """

    state: TrainState
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 0

    def __iter__(self):
        return iter((self.state, self.history.as_lists()))


def final_metrics(history: History) -> list[dict[str, float]]:
    """Per configuration: the last record's training metrics, ``train_loss_last10``, the last
    evaluation's metrics as ``eval_<name>``."""
    n = next(iter(history.train.values())).shape[0] if history.train else (
        next(iter(history.eval.values())).shape[0] if history.eval else 0)
    out = []
    for i in range(n):
        f: dict[str, float] = {}
        for k, v in history.train.items():
            if v.ndim == 2 and v.shape[1]:
                f[k] = float(v[i, -1])
        loss = history.train.get("loss")
        if loss is not None and loss.ndim == 2:
            tail = loss[i, -10:]
            tail = tail[np.isfinite(tail)]
            if tail.size:
                f["train_loss_last10"] = float(np.mean(tail))
        for k, v in history.eval.items():
            if v.shape[1]:
                f[f"eval_{k}"] = float(v[i, -1])
        out.append(f)
    return out


# ----------------------------------------------------------------------------- the driver


def next_boundary(t: int, steps: int, every: Iterable[int | None]) -> int:
    """The next chunk end after ``t``: the nearest multiple of any of ``every``, or ``steps``."""
    return min([steps] + [(t // k + 1) * k for k in every if k])


@dataclasses.dataclass
class Settings:
    """How [`drive`][rnnjax.engine.drive] runs a program (the arguments shared by [`fit`][rnnjax.engine.fit]
    and ``run_sweep``)."""

    steps: int
    workdir: str | os.PathLike | None = None
    config: dict[str, Any] | None = None
    chunk: int | None = None
    ckpt_every: int | None = None
    eval_every: int | None = None
    log_every: int = DEFAULTS["log_every"]
    max_to_keep: int = DEFAULTS["max_to_keep"]
    max_consecutive_nonfinite: int | None = DEFAULTS["max_consecutive_nonfinite"]
    callback: Callable[[Any, dict[str, Any]], None] | None = None
    progress: bool = True
    tensorboard: bool | None = None
    baseline: float | None = None
    override_hyperparams: bool = False
    label: str = "fit"
    # a sweep: records hold arrays over the configurations, logs name the configuration, and a
    # diverged configuration is frozen while the others go on (a fit raises NonFiniteError)
    sweep: bool = False

    def check(self) -> None:
        check_int("steps", self.steps, minimum=0)
        for arg in ("chunk", "ckpt_every", "eval_every", "max_consecutive_nonfinite"):
            check_int(arg, getattr(self, arg), minimum=1, allow_none=True)
        check_int("log_every", self.log_every, minimum=1)
        check_int("max_to_keep", self.max_to_keep, minimum=1)
        check_callable("callback", self.callback, "(state, record) -> None", allow_none=True)
        if self.config is not None and not isinstance(self.config, dict):
            raise TypeError(f"config must be a JSON-able dict, got {type(self.config).__name__}")
        if self.tensorboard is not None and not isinstance(self.tensorboard, bool):
            raise TypeError(f"tensorboard must be a bool or None, got {self.tensorboard!r}")
        if not isinstance(self.override_hyperparams, bool):
            raise TypeError(f"override_hyperparams must be a bool, got {self.override_hyperparams!r}")


class _Run:
    """The loop's state: the program, the history, the guard's counters, the files."""

    def __init__(self, program: Program, s: Settings):
        self.p, self.s = program, s
        self.n = len(program.configs)
        self.history = History.empty()
        self.streak = np.zeros(self.n, np.int64)
        self.diverged = np.full(self.n, -1, np.int64)
        self.t = program.start_step()
        self.saved_at: int | None = None
        self.run: wd.Workdir | None = None
        self.ckpt: Any = None  # a rnnjax.checkpoint.Checkpointer with a work directory
        self.log: IO[str] | None = None
        self.events: list | None = None
        self.resumed_from: int | None = None
        self._empty: dict[str, np.ndarray] = {}
        self.primary = jax.process_index() == 0

    # -- work directory

    @property
    def path(self) -> Path:
        assert self.run is not None, "no work directory"
        return self.run.path

    def open(self, template: Any) -> None:
        s = self.s
        if s.workdir is None:
            return
        from rnnjax.checkpoint import Checkpointer

        self.run = run = wd.Workdir(s.workdir, config=s.config, steps=s.steps, write=self.primary)
        self.ckpt = Checkpointer(run.path / "checkpoints", max_to_keep=s.max_to_keep)
        restored = self.ckpt.restore_latest_matching(lambda meta: self._layout(template, meta))
        if restored is not None:
            self._resume(restored, template)
        if self.primary:
            run.write_records(self._all_records())
            self.log = open(run.path / "metrics.jsonl", "a")  # closed by close()
            if s.tensorboard is not False:
                self.events = wd.event_logs(run.path, self.n, per_config=s.sweep,
                                            purge_step=self.resumed_from)

    def _layout(self, template: Any, meta: dict) -> Any:
        layout = meta.get("user", {}).get("layout")
        if layout is None:
            raise wd.WorkdirError(
                f"{self.path} holds checkpoints written by an older rnnjax (before the engine "
                f"kept the history in its checkpoints); finish that run with the rnnjax that "
                f"started it, or use another workdir")
        # orbax saves no zero-size arrays: they are rebuilt from the layout
        self._empty = {k: np.zeros(shape, dtype) for k, (shape, dtype) in layout.items() if 0 in shape}
        zeros = {k: np.zeros(shape, dtype) for k, (shape, dtype) in layout.items() if 0 not in shape}
        return {"state": template, "extra": zeros}

    def _resume(self, restored: Any, template: Any) -> None:
        extra = {**{k: np.asarray(v) for k, v in restored["extra"].items()}, **self._empty}
        hist = {k[8:]: v for k, v in extra.items() if k.startswith("history/")}
        self.history = History.from_arrays(hist)
        self.streak = np.asarray(extra["guard/streak"], np.int64)
        self.diverged = np.asarray(extra["guard/diverged"], np.int64)
        state = restored["state"]
        given, saved = self.p.hyperparams(template), self.p.hyperparams(state)
        diff = _differences(saved, given)
        if diff and not self.s.override_hyperparams:
            raise wd.WorkdirError(
                f"workdir {self.path} holds a run whose optimizer hyperparameters differ from "
                f"the state given now ({diff}: saved vs given); the checkpoint's would be used. "
                f"Pass override_hyperparams=True to continue with the given ones, or use another "
                f"workdir")
        if diff:
            state = self.p.with_hyperparams(state, template)
        self.p.load(state)
        self.t = int(extra["guard/step"])
        self.saved_at = self.resumed_from = self.t

    def _all_records(self) -> list[dict]:
        if not self.s.sweep:
            return self.history.records(0)
        return [dict(r, config=i) for i in range(self.n) for r in self.history.records(i)]

    def save(self) -> None:
        if self.ckpt is None or self.saved_at == self.t:
            return
        extra = {f"history/{k}": v for k, v in self.history.arrays().items()}
        extra.update({"guard/streak": as32(self.streak), "guard/diverged": as32(self.diverged),
                      "guard/step": np.asarray(self.t, np.int32)})
        layout = {k: [list(np.shape(v)), str(np.asarray(v).dtype)] for k, v in extra.items()}
        extra = {k: v for k, v in extra.items() if np.size(v)}
        state = self.p.host_state()
        self.ckpt.save({"state": state, "extra": extra}, step=self.t,
                       user_meta={"layout": layout, "state_sha256": tree_sha256(state)})
        self.saved_at = self.t

    # -- one chunk

    def record(self, t0: int, m: dict[str, np.ndarray], dt: float) -> list[int]:
        """Log the chunk's steps ``t0+1 ..``; update the guard; return the configurations that
        diverged in it."""
        s, limit = self.s, self.s.max_consecutive_nonfinite
        k = next(iter(m.values())).shape[1] if m else 0
        bad = np.asarray(m.get("nonfinite", np.zeros((self.n, k))), np.int64) > 0
        newly = []
        keep = []
        for i in range(k):
            done = t0 + i + 1
            fresh_bad = bad[:, i] & (self.diverged < 0)
            self.streak = np.where(bad[:, i], self.streak + 1, 0)
            if limit is not None:
                for c in np.nonzero((self.streak >= limit) & (self.diverged < 0))[0]:
                    self.diverged[c] = done
                    newly.append(int(c))
            if done % s.log_every == 0 or done == s.steps or fresh_bad.any() or newly:
                keep.append(i)
            if newly and not s.sweep:  # a fit stops here
                k = i + 1
                break
        if keep:
            idx = np.asarray(keep)
            metrics = {key: v[:, idx] for key, v in m.items()}
            metrics["sec_per_step"] = np.full((self.n, len(idx)), dt / max(k, 1), np.float32)
            steps = t0 + 1 + idx
            self.history.append_train(steps, metrics)
            self._write(steps, metrics, "train")
        self.t = t0 + k
        return newly

    def _write(self, steps: np.ndarray, metrics: dict[str, np.ndarray], kind: str) -> None:
        scal = {k: v for k, v in metrics.items() if v.ndim == 2}
        prefix = "eval_" if kind == "eval" else ""
        for j, step in enumerate(steps):
            for i in range(self.n):
                rec = {"kind": kind, "step": int(step), **({"config": i} if self.s.sweep else {}),
                       **{prefix + k: float(v[i, j]) for k, v in scal.items()}}
                if self.log is not None:
                    self.log.write(json.dumps(rec) + "\n")
                if self.events is not None:
                    self.events[i].scalars(int(step), {k: float(v[i, j]) for k, v in scal.items()},
                                           prefix=f"{kind}/")

    def evaluate(self) -> dict[str, np.ndarray]:
        e = self.p.evaluate() or {}
        if e:
            self.history.append_eval(self.t, e)
            self._write(np.asarray([self.t]), {k: v[:, None] for k, v in e.items()}, "eval")
        return e

    def callback(self, t0: int, m: dict[str, np.ndarray], e: dict[str, np.ndarray]) -> None:
        k = next(iter(m.values())).shape[1] if m else 0
        for i in range(k):
            rec: dict[str, Any] = {"step": t0 + i + 1}
            for key, v in m.items():
                rec[key] = _host(v[:, i], self.s.sweep)
            if i == k - 1:
                rec.update({f"eval_{key}": _host(v, self.s.sweep) for key, v in e.items()})
            self.s.callback(self.p.state, rec)  # type: ignore[misc]

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        for ev in self.events or []:
            ev.close()
        self.events = None
        if self.ckpt is not None:
            self.ckpt.close()
        if self.run is not None:
            self.run.close()


def _host(v: np.ndarray, sweep: bool) -> Any:
    """One step's value: a float (or array) for a fit, an array ``[n_configs, ...]`` for a sweep."""
    if not sweep:
        return float(v[0]) if np.ndim(v[0]) == 0 else np.asarray(v[0])
    return np.asarray(v)


def drive(program: Program, settings: Settings) -> RunSummary:
    """Run ``program`` to ``settings.steps``: the one training loop of rnnjax (see the module
    docstring). Returns a [`RunSummary`][rnnjax.engine.RunSummary]; raises
    [`NonFiniteError`][rnnjax.engine.NonFiniteError] when a fit diverges.

    On an exception during training (a data loader that fails, ``KeyboardInterrupt``, out of
    memory), the state of the last completed step is checkpointed (with a work directory) before
    the exception propagates, with a note saying from which step a rerun resumes.
    """
    s = settings
    s.check()
    t_start = time.time()
    template = program.host_state()
    r = _Run(program, s)
    bar = None
    try:
        r.open(template)
        start = r.saved_at = r.t  # what a checkpoint on an exception must go beyond
        if start > s.steps:  # steps is the total: a smaller one would return this state as that run
            holder = f"workdir {r.path} holds a run" if r.resumed_from is not None else "the state is"
            raise (wd.WorkdirError if r.resumed_from is not None else ValueError)(
                f"{holder} already at step {start}, beyond steps={s.steps} (the total number of steps); pass "
                f"steps >= {start} to continue it" + (", or another workdir for a new run" if r.run else ""))
        if hasattr(program, "start_data"):
            program.start_data(start)  # type: ignore[attr-defined]
        program.check(start)
        bar = tqdm(total=s.steps, initial=min(start, s.steps), disable=not s.progress or not r.primary,
                   desc=s.label, dynamic_ncols=True, mininterval=0.5)
        _loop(r, bar, start)
    except NonFiniteError:
        raise
    except BaseException as e:
        _save_on_error(r, e)
        raise
    finally:
        if bar is not None:
            bar.close()
        r.close()
    return _summary(r, t_start)


def _loop(r: _Run, bar: Any, start: int) -> None:
    s, p = r.s, r.p
    chunk = DEFAULTS["chunk"] if s.chunk is None else s.chunk
    ckpt_every = DEFAULTS["ckpt_every"] if s.ckpt_every is None else s.ckpt_every
    last_eval: dict = {}
    while r.t < s.steps:
        t0 = r.t
        nb = next_boundary(t0, s.steps, (chunk, ckpt_every if r.ckpt is not None else None, s.eval_every))
        tick = time.time()
        out = p.run(t0, nb - t0, r.streak.copy(), s.max_consecutive_nonfinite)
        newly = r.record(t0, out.metrics, time.time() - tick)
        if out.error is not None:
            raise out.error
        if newly and not s.sweep:
            _raise_nonfinite(r)
        e = {}
        if (s.eval_every and r.t % s.eval_every == 0) or r.t == s.steps:
            e = last_eval = r.evaluate()
        if r.log is not None:
            r.log.flush()
        if s.callback is not None:
            r.callback(t0, out.metrics, e)
        # a fit saves no checkpoint inside a run of non-finite steps: the last good one stays
        quiet = s.sweep or not r.streak.any() or r.t == s.steps
        if r.ckpt is not None and (r.t % ckpt_every == 0 or r.t == s.steps) and quiet:
            r.save()
        if r.run is not None:
            r.run.progress(start, r.t)
        bar.set_postfix(_postfix(out.metrics, last_eval), refresh=False)
        bar.update(r.t - t0)
    evaluated = len(r.history.eval_steps) and r.history.eval_steps[-1] == r.t
    if r.t == s.steps and not evaluated:
        r.evaluate()  # resumed at the end: evaluate what was restored


def _postfix(m: dict[str, np.ndarray], e: dict[str, np.ndarray]) -> dict[str, str]:
    post = {}
    if "loss" in m and m["loss"].shape[1]:
        last = m["loss"][:, -1]
        if np.isfinite(last).any():
            best = np.nanmin(np.where(np.isfinite(last), last, np.nan))
            post["loss" if len(last) == 1 else "best loss"] = f"{best:.4g}"
    post.update({k: f"{np.nanmin(v):.4g}" for k, v in e.items() if np.isfinite(v).any()})
    return post


def _raise_nonfinite(r: _Run) -> None:
    stop_at, streak = r.t, int(r.streak[0])
    if r.log is not None:
        r.log.flush()
    if r.run is not None:
        r.run.progress(r.resumed_from or 0, stop_at)
    state = r.p.state
    last_good = state.replace(step=jnp.asarray(stop_at - streak, jnp.int32))
    saved = r.ckpt.latest_step() if r.ckpt is not None else None
    raise NonFiniteError(
        f"fit stopped at step {stop_at}: {streak} consecutive non-finite steps (NaN/inf loss, "
        f"gradients or updates; steps {stop_at - streak + 1}..{stop_at} were skipped, params "
        f"unchanged since step {stop_at - streak}). The exception's .state is the last good state"
        + (f"; the last checkpoint (step {saved}) is intact" if saved is not None else "")
        + ". Lower the learning rate or clip_norm, or check the data.", state=last_good, step=stop_at)


def _save_on_error(r: _Run, e: BaseException) -> None:
    """Checkpoint the last completed step before ``e`` propagates; say where a rerun resumes."""
    if r.ckpt is None or r.run is None or r.saved_at is None or r.t <= r.saved_at:
        return
    try:
        if r.log is not None:
            r.log.flush()
        r.save()
        r.run.progress(r.resumed_from or 0, r.t)
    except Exception as save_error:
        e.add_note(f"rnnjax: saving the state at step {r.t} failed too ({save_error!r})")
        return
    if r.saved_at == r.t:
        e.add_note(f"rnnjax: the state after step {r.saved_at} is checkpointed in {r.run.path}; "
                   f"running the same call again resumes from step {r.saved_at}")


def _summary(r: _Run, t_start: float) -> RunSummary:
    p = r.p
    diverged = [int(d) if d >= 0 else None for d in r.diverged]
    summary = RunSummary(history=r.history, final=final_metrics(r.history), diverged=diverged,
                         params_sha256=p.params_sha256(), resumed_from_step=r.resumed_from,
                         wall_time_this_process_s=time.time() - t_start)
    summary.wall_time_s = summary.wall_time_this_process_s
    if r.run is None:
        return summary
    run = r.run
    sessions = run.sessions()
    summary.wall_time_s = run.total_wall_time(sessions)
    summary.workdir = run.path
    summary.files = {"results": run.path / "results.json", "metrics": run.path / "metrics.jsonl",
                     "plot": run.path / "loss.png", "checkpoints": run.path / "checkpoints"}
    results = {
        "config": run.config,
        "configs": wd.jsonable(p.configs),
        "steps": r.s.steps,
        "final": summary.final,
        "diverged": diverged,
        "params_sha256": summary.params_sha256,
        "num_params": p.num_params(),
        "eval_steps": [int(x) for x in r.history.eval_steps],
        "wall_time_s": summary.wall_time_s,
        "wall_time_this_process_s": summary.wall_time_this_process_s,
        "sessions": sessions,
        "resumed_from_step": r.resumed_from,
        "checkpoints": r.ckpt.steps() if r.ckpt is not None else [],
        "baseline": r.s.baseline,
    }
    run.results(results)
    summary.results = results
    if run.write:
        try:
            wd.plot_history(r.history, p.configs, run.path / "loss.png", title=run.path.name,
                            baseline=r.s.baseline)
        except ImportError as e:  # the run is what matters; the picture needs an extra
            warnings.warn(f"no loss.png in {run.path}: {e}", RuntimeWarning, stacklevel=3)
    return summary


# ----------------------------------------------------------------------------- fit


def fit(
    state: TrainState,
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict[str, Array]]],
    batch_fn: Callable[[Any], Any] | Iterable[Any],
    *,
    steps: int,
    workdir: str | os.PathLike | None = None,
    config: dict[str, Any] | None = None,
    ckpt_every: int | None = None,
    eval_fn: Callable[..., dict[str, Array]] | None = None,
    eval_batches: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    eval_every: int | None = None,
    log_every: int = DEFAULTS["log_every"],
    chunk: int | None = None,
    progress: bool = True,
    callback: Callable[[TrainState, dict[str, Any]], None] | None = None,
    max_consecutive_nonfinite: int | None = DEFAULTS["max_consecutive_nonfinite"],
    max_to_keep: int = DEFAULTS["max_to_keep"],
    tensorboard: bool | None = None,
    baseline: float | None = None,
    override_hyperparams: bool = False,
    mesh: Any = None,
    batch_axes: Any = 0,
) -> FitResult:
    """The training engine for one model: train ``state`` until ``state.step == steps``.

    Step ``t`` (0-based) runs ``state, metrics = step_fn(state, batch_fn(t))``. The data are a
    function of the step and [`rnnjax.train_step`][rnnjax.sweep.train_step] folds the step into the key, so a
    run is a deterministic function of its seed; a resumed run repeats the same steps bitwise. ``fit`` is
    [`drive`][rnnjax.engine.drive] over a [`ModelProgram`][rnnjax.engine.ModelProgram];
    [`rnnjax.sweep.run_sweep`][rnnjax.sweep.run_sweep] is the same loop over many configurations.

    **Compiled chunks.** When ``batch_fn(step)`` can be traced with a traced int32 ``step``, steps
    run in jitted chunks: a ``lax.scan`` over up to ``chunk`` steps with the batch made inside the
    program. Otherwise (a data loader, a function of a Python int, or an iterable of batches,
    advanced ``state.step`` times on resume) each step is a jitted call fed a host batch. Chunks
    end at multiples of ``chunk``, ``ckpt_every``, ``eval_every`` and at ``steps``.

    **Checked before training.** The step's output (``(state, metrics)``, a scalar ``loss``), the
    evaluation's (a dict of scalars), on the first batch with ``jax.eval_shape``; the optimizer's
    hyperparameters (in range; the same as those of the step's ``tx``).

    **Work directory.** With ``workdir``, ``fit`` takes the directory's lock (a second process on
    it is refused, naming the holder), resumes from the newest intact checkpoint (a damaged one is
    skipped with a warning) and writes ``checkpoints/`` (the state, the history and the guard's
    counters, every ``ckpt_every`` steps, at the end, and when an exception stops training),
    ``metrics.jsonl``, TensorBoard events, ``loss.png`` and ``results.json``. ``config``
    (JSON-able) is stored; a resumed run with a different config, or a state with different
    optimizer hyperparameters than the checkpoint's (unless ``override_hyperparams``), is refused,
    naming the keys; ``steps`` may grow (it extends a finished run). Calling ``fit`` again with the
    same arguments after an interruption ends bitwise equal to an uninterrupted run.

    **Non-finite guard.** A step whose loss, gradients or updates are NaN/inf changes nothing but
    the step counter ([`rnnjax.train_step`][rnnjax.sweep.train_step]); after ``max_consecutive_nonfinite``
    such steps in a row, ``fit`` raises [`NonFiniteError`][rnnjax.engine.NonFiniteError] naming the step; the
    last good checkpoint stays.

    **Data parallel.** With ``mesh`` (a ``jax.sharding.Mesh`` whose first axis is the data axis),
    every batch leaf is sharded along its batch axis, params and optimizer state are replicated.
    ``batch_axes``: an int for every leaf (0: ``[B, ...]``; note that for time-major inputs
    ``[T, B, D]`` this is the time axis), or a pytree of ints / None matching the batch, e.g.
    ``(1, 0)`` for ``(xs [T, B, D], ys [B])``. On several hosts a host-fed ``batch_fn`` returns
    this process's share of the batch, a traceable one the global batch.

    Args:
      state: the starting [`TrainState`][rnnjax.engine.TrainState] (the template that checkpoints restore
        onto).
      step_fn: a pure step from [`rnnjax.train_step`][rnnjax.sweep.train_step] (not jitted; a jitted one works
        too).
      batch_fn: ``batch_fn(step) -> batch`` (traceable for compiled chunks), or an iterable.
      steps: the total number of steps (runs ``steps - state.step`` more).
      workdir: the run's directory (see above); None keeps nothing on disk.
      config: the run's JSON-able config, stored and checked on resume (with ``workdir``).
      ckpt_every: checkpoint every this many steps (default 1000) and at the end.
      eval_fn: ``eval_fn(params)`` or ``eval_fn(params, config)`` -> dict of scalars (jitted);
        with ``eval_batches``, ``eval_fn(params, batch)`` averaged by
        [`rnnjax.evaluate`][rnnjax.train.evaluate].
      eval_batches: the evaluation batches (a sequence, or a function returning an iterable).
      eval_every: evaluate every this many steps and at the end; None: only at the end.
      log_every: record training metrics every this many steps (and at the last step, and every
        non-finite step) in the history, ``metrics.jsonl`` and TensorBoard.
      chunk: steps per compiled call (default 100).
      progress: one tqdm progress bar.
      callback: ``callback(state, record)`` for every step, after its chunk ran and after the
        evaluation that ends the chunk; ``record`` holds ``step``, the step's metrics (floats) and,
        on the chunk's last step when it evaluated, ``eval_<name>``; ``state`` is the state at the
        end of the chunk.
      max_consecutive_nonfinite: stop after this many consecutive skipped steps (None: never).
      max_to_keep: checkpoints kept in ``workdir``.
      tensorboard: write TensorBoard event files in the workdir (None, the default, or True: yes;
        written by rnnjax itself, no TensorBoard package needed; view with ``tensorboard --logdir``).
      baseline: a reference loss drawn and named in ``loss.png``.
      override_hyperparams: on resume, continue with the optimizer hyperparameters of ``state``
        (e.g. a new learning rate) instead of refusing the difference.
      mesh: a ``jax.sharding.Mesh`` for data-parallel training, or None.
      batch_axes: the batch axis of each batch leaf (an int, or a pytree of ints / None).

    Returns:
      A [`FitResult`][rnnjax.engine.FitResult] (``state``, ``history``, ``final``, ``params_sha256``,
      ``wall_time_s``, ``files`` ...; indexed by configuration, one here), which unpacks as ``(state,
      history)`` with ``history`` a dict of lists: ``step`` with ``loss``, ``grad_norm``, ``update_norm``,
      ``learning_rate``, ``nonfinite``, ``sec_per_step`` and any aux metrics; ``eval_step`` with
      ``eval_<name>``. With ``workdir`` the history covers the whole run.

    Raises:
      NonFiniteError: too many consecutive non-finite steps; ``.state`` is the last good state.
      WorkdirError (a ``ValueError``): ``workdir`` is a file, cannot be written, is in use by
        another process, or holds a run with another config or hyperparameters or one already
        beyond ``steps``.
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be an rnnjax.TrainState, got {type(state).__name__}")
    check_callable("step_fn", step_fn, "(state, batch) -> (state, metrics)")
    if not callable(batch_fn) and not isinstance(batch_fn, Iterable):
        raise TypeError(f"batch_fn must be a callable step -> batch or an iterable of batches, "
                        f"got {type(batch_fn).__name__}")
    check_callable("eval_fn", eval_fn, "(params) -> dict of scalars", allow_none=True)
    if eval_batches is not None and eval_fn is None:
        raise ValueError("eval_batches needs eval_fn(params, batch); pass eval_fn and eval_batches together")
    if eval_batches is not None and not callable(eval_batches):
        eval_batches = list(eval_batches)  # reused at every evaluation
    program = ModelProgram(state, step_fn, batch_fn, eval_fn=eval_fn, eval_batches=eval_batches,
                           placement=Placement(mesh, batch_axes), config=config)
    settings = Settings(steps=steps, workdir=workdir, config=config, chunk=chunk, ckpt_every=ckpt_every,
                        eval_every=eval_every, log_every=log_every, max_to_keep=max_to_keep,
                        max_consecutive_nonfinite=max_consecutive_nonfinite, callback=callback,
                        progress=progress, tensorboard=tensorboard, baseline=baseline,
                        override_hyperparams=override_hyperparams,
                        label=os.path.basename(os.path.normpath(str(workdir))) if workdir else "fit")
    summary = drive(program, settings)
    return FitResult(state=program.state, config=dict(config or {}), steps=int(steps),
                     **{f.name: getattr(summary, f.name) for f in dataclasses.fields(RunSummary)})
