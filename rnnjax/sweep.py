"""Hyperparameter sweeps: many configurations trained at once, in one compiled program per shape.

Describe the configurations (a grid or any list of dicts), say how to build a
[`TrainState`][rnnjax.sweep.TrainState] from one, how to take a step and how to make a batch; ``run_sweep``
stacks the configurations and trains all of them together::

    configs = rnnjax.sweep.grid(learning_rate=np.logspace(-4, 0, 16), clip_norm=[1.0, np.inf],
                                seed=[0])

    def make_tx(config):
        return rnnjax.optimizer("adam", config["learning_rate"], clip_norm=config["clip_norm"])

    def init_fn(config):          # numeric values arrive as 0-d arrays (traced under vmap)
        k_cell, k_out, k_run = jax.random.split(jax.random.key(config["seed"]), 3)
        params = {"cell": cell.init(k_cell, 2), "readout": readout.init(k_out, 64)}
        return rnnjax.TrainState.create(params, make_tx(config), key=k_run)

    def loss_fn(params, batch, key, config): ...
    def batch_fn(config, step):   # step: a traced int32 scalar
        return rnnjax.tasks.adding(jax.random.fold_in(jax.random.key(config["seed"]), step), 32, 100)

    result = rnnjax.sweep.run_sweep(configs, init_fn, rnnjax.sweep.sweep_step(loss_fn, make_tx),
                                    batch_fn, steps=500)
    result.markdown()             # the table: each configuration and its final loss
    result.best()                 # index of the best configuration
    result.plot("out/sweep.png")  # loss curves of all configurations
    result.metrics["loss"]        # [n_configs, steps]
    result.states                 # the TrainStates stacked on a leading sweep axis

How hyperparameters enter. Every *numeric* value of a configuration (int or float: learning rate,
clip norm, weight decay, init scale, forget bias, dropout rate, seed) becomes an array with a
leading sweep axis; ``init_fn``, ``step_fn`` and ``batch_fn`` see one configuration's value as a
0-d array, and are ``vmap``-ed (and ``lax.map``-ed) over the sweep axis:

- optimizer hyperparameters are array leaves of ``opt_state.hyperparams``
  ([`rnnjax.optimizer`][rnnjax.optim.optimizer] uses ``optax.inject_hyperparams``): ``init_fn`` builds the
  optimizer from the configuration, so every configuration's state holds its own values, and the step reads
  them from the state;
- init scale, forget bias: ``init_fn`` scales / shifts the params it creates;
- the seed: ``jax.random.key(config["seed"])`` in ``init_fn`` (params and the state's key, hence
  dropout keys) and in ``batch_fn`` (data order, e.g.
  [`rnnjax.tasks.batch_indices`][rnnjax.tasks.batch_indices]);
- anything the loss needs (a dropout rate): [`sweep_step`][rnnjax.sweep.sweep_step] passes the configuration
  to ``loss_fn(params, batch, key, config)``.

A ``batch_fn`` that ignores the configuration makes one batch per step shared by all
configurations (``vmap`` sees it unbatched), so the data are generated once.

Shape-changing choices (hidden size, cell type, optimizer name, schedule) are *static*: strings,
bools, None, callables, tuples, and any key named in ``static=``. ``run_sweep`` groups the
configurations by their static values and runs one compiled program per group; the results come
back in the order the configurations were given. Integers that set a shape must be named in
``static=`` (e.g. ``static=("hidden_size",)``), otherwise they are swept as arrays.

Devices. When several devices exist (``jax.devices()``), each group's sweep axis is sharded over
them with ``jax.shard_map`` on a one-axis ``jax.sharding.Mesh`` (``PartitionSpec("sweep")``): each
device trains its share of the configurations, with no communication. A group whose size is not a
multiple of the device count is padded with copies of its last configuration; the padding is
trained and dropped (it costs time, not results). On a multi-core CPU, give JAX one device per
core *before it first runs anything* so the shards run in parallel::

    jax.config.update("jax_num_cpu_devices", os.cpu_count())   # or rnnjax.sweep.cpu_devices()
    # or: XLA_FLAGS=--xla_force_host_platform_device_count=N, set before jax is imported

Several hosts: call ``jax.distributed.initialize()`` (coordinator address, process count and id,
or the cluster's environment) on every host before anything else, then run the same script with
the same configurations on every host. ``jax.devices()`` lists the devices of all hosts, the mesh
spans them, and every host gets the full [`SweepResult`][rnnjax.sweep.SweepResult] (the metrics are gathered
with ``multihost_utils.process_allgather``; ``result.states`` stay sharded global arrays).

Speed (what made the difference). Each group is one ``jax.jit`` call that runs all steps
(``chunk`` of them per call) as a ``lax.scan`` over steps, with the data made inside the program from
``(config, step)``: no per-step dispatch or host round trip. Within a device, ``vmap_size``
configurations run batched by ``vmap`` and the device's groups of them one after another
(``lax.map``). On GPU/TPU the default vmaps all of a device's configurations (the work of one
small configuration does not fill the device). On CPU the default is ``vmap_size=1``: a plain
``vmap`` of a small recurrent training step does *more* work per configuration than a single
one: the stacked scan residuals (e.g. ``[T=100, S=16, B=32, 4H=256]``, 52 MB) no longer fit in
the cache, the input projection of shared data and the weight gradients are computed as one wide
matmul and then transposed to the ``[T, S, ...]`` scan layout (extra copies per step), and XLA
splits the 16x larger element-wise ops over threads inside the time loop, paying a fork-join per
op. Measured on a 2-core CPU (LSTM H=64, T=100, B=32, Adam; single-threaded CPU time of 16
configurations x 10 steps): a loop of jitted steps 1.54 s, ``vmap_size=1`` 1.54 s, 2: 1.74 s,
4: 1.89 s, 16: 1.99 s. The CPU speedup of a sweep therefore comes from running configurations
on all cores (one CPU device per core, sharded as above) at the loop's per-configuration cost,
plus the per-step dispatch the loop pays. A loop of jitted steps already keeps about 1.3 of 2
cores busy (XLA's intra-op threads and asynchronous dispatch), so on a 2-core CPU the cores add
at most about 2/1.3 = 1.5x, times what the sweep saves on dispatch (1.73x measured in all,
``benchmarks/results/sweep/``); ``benchmarks/sweep.py`` reports the cores each method keeps busy
next to its time.

A hang that is not the sweep's: with jax 0.10.2 on CPU, a batched (vmapped) LAPACK QR splits its
batch over XLA's intra-op thread pool and blocks a pool thread until the pieces are done; two such
QRs at once on a 2-thread pool (a vmapped ``init`` with several orthogonal initialisers, on 2
cores) wait for each other forever with the CPU idle.
[`rnnjax.initializers.orthogonal`][rnnjax.initializers.orthogonal] therefore computes its QR one matrix at a
time under ``vmap``; a user ``init_fn`` that calls ``jnp.linalg.qr`` (or another batched decomposition) itself
can still hang on such a machine.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnnjax import engine
from rnnjax._checks import check_callable
from rnnjax.checkpoint import params_sha256
from rnnjax.optim import hyperparameter_errors
from rnnjax.train import TrainState, train_step

__all__ = [
    "StackedProgram",
    "SweepGroup",
    "SweepResult",
    "cpu_devices",
    "grid",
    "run_sweep",
    "sweep_step",
]

AXIS = "sweep"
_LINESTYLES = ("-", "--", "-.", ":")  # with the colour, so that no curve hides another
_INDEX = "__sweep_index__"  # an internal numeric entry, so that every group has a batched input


# ----------------------------------------------------------------------------- configurations


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """All combinations of the given values (cartesian product), the last axis varying fastest.

    ``grid(lr=[1e-3, 1e-2], seed=[0, 1])`` is ``[{lr: 1e-3, seed: 0}, {lr: 1e-3, seed: 1},
    {lr: 1e-2, seed: 0}, {lr: 1e-2, seed: 1}]``. NumPy scalars become Python numbers.

    Args:
      **axes: name -> a non-empty iterable of values.

    Returns:
      A list of dicts, ``prod(len(values))`` long.
    """
    if not axes:
        raise ValueError("grid needs at least one axis, e.g. grid(learning_rate=[1e-3, 1e-2])")
    names, values = [], []
    for name, vals in axes.items():
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
            raise TypeError(f"grid axis {name!r} must be an iterable of values, got {vals!r}")
        vals = [v.item() if isinstance(v, np.generic) else v for v in vals]
        if not vals:
            raise ValueError(f"grid axis {name!r} has no values")
        names.append(name)
        values.append(vals)
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def _is_numeric(v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, (np.ndarray, jax.Array)):
        return v.ndim == 0 and (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating))
    return isinstance(v, numbers.Real)


def _freeze(v: Any) -> Any:
    """A hashable stand-in for a static value (for grouping)."""
    try:
        hash(v)
        return v
    except TypeError:
        return ("unhashable", type(v).__name__, repr(v))


def _split(configs: Sequence[Mapping[str, Any]], static: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(static_keys, numeric_keys)`` of the configurations (checked to share their keys)."""
    if isinstance(configs, Mapping) or not isinstance(configs, Sequence) or not configs:
        raise ValueError("configs must be a non-empty list of dicts (e.g. rnnjax.sweep.grid(...))")
    for i, c in enumerate(configs):
        if not isinstance(c, Mapping):
            raise TypeError(f"configs[{i}] must be a dict, got {type(c).__name__}")
    keys = list(configs[0])
    for i, c in enumerate(configs):
        if set(c) != set(keys):
            raise ValueError(f"all configurations must have the same keys; configs[0] has "
                             f"{sorted(keys)}, configs[{i}] has {sorted(c)}")
    unknown = sorted(set(static) - set(keys))
    if unknown:
        raise ValueError(f"static keys {unknown} are not keys of the configurations {sorted(keys)}")
    static_keys = [k for k in keys if k in static or not all(_is_numeric(c[k]) for c in configs)]
    numeric_keys = [k for k in keys if k not in static_keys]
    return static_keys, numeric_keys


def _stack_numeric(configs: Sequence[Mapping[str, Any]], keys: Sequence[str],
                   indices: Sequence[int]) -> dict[str, np.ndarray]:
    """The numeric values stacked: ints as int32 (checked to fit), floats as float32."""
    out = {}
    info = np.iinfo(np.int32)
    for k in keys:
        vals = [c[k] for c in configs]
        if all(isinstance(v, (numbers.Integral, np.integer)) or
               (hasattr(v, "dtype") and np.issubdtype(v.dtype, np.integer)) for v in vals):
            for i, v in zip(indices, vals):
                if not info.min <= int(v) <= info.max:
                    raise ValueError(f"configs[{i}][{k!r}] = {int(v)} does not fit in int32, the "
                                     f"dtype a swept integer becomes; use a value in "
                                     f"[{info.min}, {info.max}] (e.g. a seed below 2**31)")
            out[k] = np.asarray(vals, np.int32)
        else:
            out[k] = np.asarray(vals, np.float32)
    return out


# ----------------------------------------------------------------------------- step helper


def sweep_step(
    loss_fn: Callable[..., Any],
    tx_fn: Callable[[Mapping[str, Any]], Any],
    *,
    has_aux: bool = False,
    project: Callable[[Any], Any] | None = None,
) -> Callable[[TrainState, Any, Mapping[str, Any]], tuple[TrainState, dict[str, jax.Array]]]:
    """A configuration-aware step ``step(state, batch, config)`` from
    [`rnnjax.train_step`][rnnjax.sweep.train_step].

    The step is ``rnnjax.train_step(lambda p, b, k: loss_fn(p, b, k, config), tx_fn(config),
    project=project)``:
    the loss sees the configuration (e.g. a dropout rate), and the optimizer is rebuilt from it for
    its structure (its numeric hyperparameters are read from ``state.opt_state``, where the
    ``init_fn`` of [`run_sweep`][rnnjax.sweep.run_sweep] stored this configuration's values).

    Args:
      loss_fn: ``loss_fn(params, batch, key, config) -> loss`` (or ``(loss, aux)`` with ``has_aux``).
      tx_fn: ``tx_fn(config) -> optax.GradientTransformation`` (e.g.
        [`rnnjax.optimizer`][rnnjax.optim.optimizer]); the same function the ``init_fn`` uses to create the
        state.
      has_aux: as in [`rnnjax.train_step`][rnnjax.sweep.train_step].
      project: as in [`rnnjax.train_step`][rnnjax.sweep.train_step]: ``project(params) -> params`` after every
        update (e.g. [`rnnjax.indrnn_projection`][rnnjax.indrnn_projection]), the same for every
        configuration.

    Returns:
      ``step(state, batch, config) -> (state, metrics)``.
    """
    if not callable(loss_fn) or not callable(tx_fn):
        raise TypeError("loss_fn and tx_fn must be callables")
    if project is not None and not callable(project):
        raise TypeError(f"project must be a callable params -> params or None, got {type(project).__name__}")

    def step(state, batch, config):
        loss = lambda p, b, k: loss_fn(p, b, k, config)
        return train_step(loss, tx_fn(config), has_aux=has_aux, project=project)(state, batch)

    return step


# ----------------------------------------------------------------------------- devices


def cpu_devices(n: int | None = None) -> int:
    """Ask JAX for ``n`` CPU devices (default: one per core), so a sweep runs on all cores.

    ``jax.config.update("jax_num_cpu_devices", n)``; it must run before JAX first computes
    anything (before the backend starts), otherwise it raises ``RuntimeError``.

    Returns:
      ``n``.
    """
    import os

    n = (os.cpu_count() or 1) if n is None else int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    jax.config.update("jax_num_cpu_devices", n)
    return n


def _global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host value every process holds in full (multi-host safe)."""
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _to_host(tree: Any) -> Any:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, jax.device_get(tree))


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass
class SweepGroup:
    """The configurations that share their static values, trained by one compiled program.

    Attributes:
      static: the static values (``{}`` when every key is numeric).
      indices: positions of the group's configurations in the list given to
        [`run_sweep`][rnnjax.sweep.run_sweep].
      state: their final TrainStates stacked on a leading sweep axis (``len(indices)`` long;
        padding removed). With several devices the leaves are sharded over them.
    """

    static: dict[str, Any]
    indices: list[int]
    state: TrainState


@dataclasses.dataclass(kw_only=True)
class SweepResult(engine.RunSummary):
    """What [`run_sweep`][rnnjax.sweep.run_sweep] returns: a
    [`rnnjax.engine.RunSummary`][rnnjax.engine.RunSummary] (``history``, ``final``, ``diverged``,
    ``params_sha256``, ``wall_time_s``, ``files`` ..., indexed by configuration, as for
    [`rnnjax.fit`][rnnjax.engine.fit]) and the sweep's own views.

    Attributes:
      configs: the configurations, in the order given.
      groups: the [`SweepGroup`][rnnjax.sweep.SweepGroup]\\ s (one per distinct static values).
      steps: the number of training steps.
    """

    configs: list[dict[str, Any]]
    groups: list[SweepGroup]
    steps: int

    @property
    def metrics(self) -> dict[str, np.ndarray]:
        """name -> ``[n_configs, K]``: the recorded steps
        ([`metric_steps`][rnnjax.sweep.SweepResult.metric_steps]; every step with ``log_every=1``) of each
        configuration (extra trailing axes for non-scalar metrics)."""
        return self.history.train

    @property
    def metric_steps(self) -> np.ndarray:
        """``[K]``: the step counts (1-based) of the columns of
        [`metrics`][rnnjax.sweep.SweepResult.metrics]."""
        return self.history.train_steps

    @property
    def eval_metrics(self) -> dict[str, np.ndarray]:
        """name -> ``[n_configs, n_evals]``: ``eval_fn``'s values ({} without one)."""
        return self.history.eval

    @property
    def eval_steps(self) -> np.ndarray:
        """``[n_evals]``: the step count at each evaluation."""
        return self.history.eval_steps

    def __len__(self) -> int:
        return len(self.configs)

    @property
    def states(self) -> TrainState:
        """All final states stacked on a leading sweep axis, in the order of ``configs``.

        Only when all configurations share one group (same shapes); else use
        [`state`][rnnjax.sweep.SweepResult.state] or ``groups``.
        """
        if len(self.groups) != 1:
            raise ValueError(f"the sweep has {len(self.groups)} groups of different static values "
                             f"(shapes); use result.state(i) or result.groups[g].state")
        return self.groups[0].state

    def state(self, i: int) -> TrainState:
        """The final TrainState of configuration ``i`` (unstacked)."""
        for g in self.groups:
            if i in g.indices:
                j = g.indices.index(i)
                return jax.tree.map(lambda a, j=j: a[j], g.state)
        raise IndexError(f"no configuration {i} (the sweep has {len(self.configs)})")

    def final_values(self, metric: str = "loss", last: int = 1) -> np.ndarray:
        """``[n_configs]``: the mean of ``metric`` over the last ``last`` records of each
        configuration."""
        if metric not in self.metrics:
            raise KeyError(f"no metric {metric!r}; the sweep recorded {sorted(self.metrics)}")
        k = self.metrics[metric].shape[1]
        if not 1 <= last <= k:
            raise ValueError(f"last must lie in [1, {k}] (the records), got {last}")
        return np.asarray(self.metrics[metric][:, k - last:], np.float64).mean(axis=1)

    def best(self, metric: str = "loss", *, mode: str = "min", last: int = 1) -> int:
        """Index of the best configuration by [`final_values`][rnnjax.sweep.SweepResult.final_values] (NaN/inf
        and diverged configurations count as the worst)."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        v = self.final_values(metric, last)
        v = np.where([d is None for d in self.diverged] if self.diverged else True, v, np.nan)
        v = np.where(np.isfinite(v), v if mode == "min" else -v, np.inf)
        return int(np.argmin(v))

    def table(self, metric: str = "loss", *, last: int = 1) -> list[dict[str, Any]]:
        """One row per configuration: its values, ``final_<metric>``, ``nonfinite_steps`` and
        ``diverged`` (the step at which the guard froze it, or None)."""
        v = self.final_values(metric, last)
        bad = self.metrics.get("nonfinite")
        rows = []
        for i, c in enumerate(self.configs):
            row = {**c, f"final_{metric}": float(v[i])}
            if bad is not None:
                row["nonfinite_steps"] = int(np.nansum(bad[i]))
            row["diverged"] = self.diverged[i] if self.diverged else None
            rows.append(row)
        return rows

    def markdown(self, metric: str = "loss", *, last: int = 1) -> str:
        """[`table`][rnnjax.sweep.SweepResult.table] as a markdown table; the best row is marked with
        ``*``."""
        rows = self.table(metric, last=last)
        best = self.best(metric, last=last)
        cols = ["#"] + list(rows[0])

        def fmt(x):
            if isinstance(x, float):
                return f"{x:.4g}"
            return getattr(x, "__name__", None) or str(x)

        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for i, r in enumerate(rows):
            mark = f"{i}*" if i == best else str(i)
            lines.append("| " + " | ".join([mark] + [fmt(r[k]) for k in rows[0]]) + " |")
        return "\n".join(lines)

    def plot(self, path: str | None = None, metric: str = "loss", *, ax: Any = None,
             label_keys: Sequence[str] | None = None, logy: bool = True, title: str | None = None):
        """Curves of ``metric`` against the step for all configurations, in one plot.

        Args:
          path: save the figure there (PNG, PDF ...) if given.
          metric: the metric to draw.
          ax: a matplotlib axes to draw into (a new figure if None).
          label_keys: configuration keys shown in the legend (default: those that vary).
          logy: logarithmic y axis.
          title: the title (default: the metric).

        Returns:
          The matplotlib figure.
        """
        from rnnjax._checks import require

        matplotlib = require("matplotlib", "plot", "SweepResult.plot")
        if ax is None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        if metric not in self.metrics:
            raise KeyError(f"no metric {metric!r}; the sweep recorded {sorted(self.metrics)}")
        if label_keys is None:
            label_keys = [k for k in self.configs[0]
                          if len({repr(c[k]) for c in self.configs}) > 1] or list(self.configs[0])
        fig = ax.figure if ax is not None else plt.figure(figsize=(7, 4.5))
        ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
        colors = plt.cm.viridis(np.linspace(0, 0.95, len(self.configs)))
        t = self.metric_steps
        for i, c in enumerate(self.configs):
            label = ", ".join(f"{k}={c[k]:.3g}" if isinstance(c[k], float) else f"{k}={c[k]}"
                              for k in label_keys)
            ax.plot(t, self.metrics[metric][i], color=colors[i], lw=1.2,
                    ls=_LINESTYLES[i % len(_LINESTYLES)], label=label)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(title or f"{metric} of {len(self.configs)} configurations")
        if len(self.configs) <= 20:
            ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


# ----------------------------------------------------------------------------- the program


def _resolve_vmap_size(vmap_size: int | str | None) -> int | None:
    if vmap_size == "auto":
        return 1 if jax.default_backend() == "cpu" else None
    if vmap_size is None:
        return None
    if isinstance(vmap_size, bool) or not isinstance(vmap_size, (int, np.integer)) or vmap_size < 1:
        raise ValueError(f"vmap_size must be 'auto', None or a positive int, got {vmap_size!r}")
    return int(vmap_size)


_PROGRAMS: dict[tuple, tuple] = {}


def _cached_program(static: dict, init_fn, step_fn, batch_fn, eval_fn, mesh: Mesh | None,
                    vmap_size: int | None):
    """`_program`, memoised so that a repeated sweep reuses its compiled programs."""
    key = (tuple((k, _freeze(v)) for k, v in static.items()), init_fn, step_fn, batch_fn, eval_fn,
           None if mesh is None else (tuple(d.id for d in mesh.devices.flat)), vmap_size)
    try:
        hash(key)
    except TypeError:
        return _program(static, init_fn, step_fn, batch_fn, eval_fn, mesh, vmap_size)
    if key not in _PROGRAMS:
        if len(_PROGRAMS) >= 64:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[key] = _program(static, init_fn, step_fn, batch_fn, eval_fn, mesh, vmap_size)
    return _PROGRAMS[key]


def _program(static: dict, init_fn, step_fn, batch_fn, eval_fn, mesh: Mesh | None,
             vmap_size: int | None):
    """``(init, run, evaluate)``: jitted functions over a group's stacked numeric values;
    ``run(states, nums, start, n)`` runs ``n`` steps of each."""

    def config(num):
        return {**static, **{k: v for k, v in num.items() if k != _INDEX}}

    def init_all(nums):
        return jax.vmap(lambda num: init_fn(config(num)))(nums)

    def one(state, num, start, n):
        cfg = config(num)

        def body(st, t):
            return step_fn(st, batch_fn(cfg, t), cfg)

        return jax.lax.scan(body, state, start + jnp.arange(n, dtype=jnp.int32))

    def per_config(f, *args):
        """``f(state, num, ...)`` for every configuration: vmapped in batches of ``vmap_size``."""
        size = args[1][_INDEX].shape[0]
        if vmap_size is None or vmap_size >= size:
            return jax.vmap(f)(*args)
        return jax.lax.map(lambda a: f(*a), args, batch_size=None if vmap_size == 1 else vmap_size)

    def local(states, nums, start, n):
        return per_config(lambda s, u: one(s, u, start, n), states, nums)

    def local_eval(states, nums):
        return per_config(lambda s, u: eval_fn(s.params, config(u)), states, nums)

    if mesh is None:
        return (jax.jit(init_all), jax.jit(local, static_argnums=3),
                None if eval_fn is None else jax.jit(local_eval))

    spec = PartitionSpec(AXIS)
    init = jax.jit(init_all, out_shardings=NamedSharding(mesh, spec))

    def run_sharded(states, nums, start, n):
        f = jax.shard_map(lambda s, u, t: local(s, u, t, n), mesh=mesh,
                          in_specs=(spec, spec, PartitionSpec()), out_specs=(spec, spec),
                          check_vma=False)
        return f(states, nums, start)

    def eval_sharded(states, nums):
        return jax.shard_map(local_eval, mesh=mesh, in_specs=(spec, spec), out_specs=spec,
                             check_vma=False)(states, nums)

    return (init, jax.jit(run_sharded, static_argnums=3),
            None if eval_fn is None else jax.jit(eval_sharded))


@dataclasses.dataclass
class _Group:
    static: dict[str, Any]
    indices: list[int]
    size: int  # with the padding that makes it divide over the devices
    nums: dict[str, jax.Array]
    init: Callable
    run: Callable
    evaluate: Callable | None


class StackedProgram:
    """Many configurations trained together: an [`rnnjax.engine.Program`][rnnjax.engine.Program] for
    [`rnnjax.engine.drive`][rnnjax.engine.drive]. Each group of configurations with the same static values is
    one compiled program over their stacked states (``vmap``-ed, sharded over ``devices``); ``state``
    is the tuple of the groups' stacked states. See [`run_sweep`][rnnjax.sweep.run_sweep]."""

    def __init__(self, configs: list[dict[str, Any]], init_fn: Callable, step_fn: Callable,
                 batch_fn: Callable, eval_fn: Callable | None, *, static: Sequence[str],
                 devices: Sequence[jax.Device], vmap_size: int | None):
        self.configs = configs
        self.step_fn, self.batch_fn, self.eval_fn = step_fn, batch_fn, eval_fn
        static_keys, self.numeric_keys = _split(configs, static)
        self.static_keys = static_keys
        n_dev = len(devices)
        self.mesh = Mesh(np.asarray(devices), (AXIS,)) if n_dev > 1 else None
        self.sharding = NamedSharding(self.mesh, PartitionSpec(AXIS)) if self.mesh is not None else None
        self.device = devices[0]
        by_static: dict[tuple, list[int]] = {}
        for i, c in enumerate(configs):
            by_static.setdefault(tuple(_freeze(c[k]) for k in static_keys), []).append(i)
        self.groups: list[_Group] = []
        states = []
        for indices in by_static.values():
            members = [configs[i] for i in indices]
            padded = members + [members[-1]] * (-len(members) % n_dev)
            where = indices + [indices[-1]] * (len(padded) - len(members))
            nums = _stack_numeric(padded, self.numeric_keys, where)
            nums[_INDEX] = np.arange(len(padded), dtype=np.int32)
            static_vals = {k: members[0][k] for k in static_keys}
            init, run, evaluate = _cached_program(static_vals, init_fn, step_fn, batch_fn, eval_fn,
                                                  self.mesh, vmap_size)
            placed = {k: self._place_array(v) for k, v in nums.items()}
            g = _Group(static_vals, list(indices), len(padded), placed, init, run, evaluate)
            try:
                state = init(placed)
            except TypeError as e:  # includes jax's ConcretizationTypeError & co.
                raise TypeError(f"init_fn failed with {type(e).__name__}: {e}\nIf it needs a Python "
                                f"value (e.g. a size) of a numeric key, name that key in static=...; "
                                f"the numeric (swept, traced) keys are {self.numeric_keys}") from e
            if not isinstance(state, TrainState):
                raise TypeError(f"init_fn must return an rnnjax.TrainState, got {type(state).__name__}")
            self.groups.append(g)
            states.append(state)
        self.state = tuple(states)

    def _place_array(self, x: np.ndarray) -> jax.Array:
        return _global(x, self.sharding) if self.sharding is not None else jax.device_put(x, self.device)

    # -- checks

    def check(self, start: int) -> None:
        for g, state in zip(self.groups, self.state):
            one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state)
            num = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in g.nums.items() if k != _INDEX}

            def step(s, u, g=g):
                cfg = {**g.static, **u}
                return self.step_fn(s, self.batch_fn(cfg, jnp.asarray(start, jnp.int32)), cfg)

            try:
                out = jax.eval_shape(step, one, num)
            except jax.errors.ConcretizationTypeError as e:
                raise TypeError(
                    f"batch_fn(config, step), step_fn or a numeric config value needed a concrete "
                    f"value while tracing: in a sweep, step and the numeric values of a "
                    f"configuration are traced (make batches with jax ops such as "
                    f"jax.random.fold_in(key, step); name size-setting keys in static=...): {e}") from e
            engine.check_step_output("step_fn", out, TrainState)
            eval_fn = self.eval_fn
            if eval_fn is not None:
                out = jax.eval_shape(lambda s, u, g=g, f=eval_fn: f(s.params, {**g.static, **u}), one, num)
                engine.check_metrics("eval_fn", out, scalars_only=True)
        errors = []
        for i, hp in enumerate(self.hyperparams(self.state)):
            errors += [f"configs[{i}] {self.configs[i]}: {e}" for e in hyperparameter_errors(hp)]
        if errors:
            raise ValueError("hyperparameters out of range (concrete values are checked before "
                             "training; traced ones cannot be): " + "; ".join(errors[:8]))

    # -- steps

    def start_step(self) -> int:
        return 0

    def run(self, t: int, n: int, streak: np.ndarray, limit: int | None) -> engine.Chunk:
        """The steps of every configuration, and the guard. The program itself runs unguarded,
        so a configuration computes bit for bit what it computes without the guard, whatever the
        others do; a configuration whose ``streak`` of non-finite steps reaches ``limit`` is then
        put back to its last good state (its params and optimizer state did not change during the
        non-finite steps, [`rnnjax.train_step`][rnnjax.sweep.train_step]), and stays there: its later steps
        are computed and discarded, their metrics NaN (``nonfinite`` 1)."""
        out: dict[str, np.ndarray] = {}
        states = []
        for g, before in zip(self.groups, self.state):
            state, m = g.run(before, g.nums, jnp.asarray(t, jnp.int32), n)
            m = {key: np.array(v[:len(g.indices)]) for key, v in _to_host(m).items()}
            if limit is not None and "nonfinite" in m:
                state = self._freeze(g, before, state, m, t, streak[g.indices], limit)
            states.append(state)
            self._scatter(out, m, g.indices)
        self.state = tuple(states)
        return engine.Chunk(out)

    def _freeze(self, g: _Group, before: Any, state: Any, m: dict[str, np.ndarray], t: int,
                streak: np.ndarray, limit: int) -> Any:
        """Members of group ``g`` whose streak reaches ``limit`` in this chunk (or had reached it)
        get their last good state back in ``state``, and frozen metrics from then on (in ``m``)."""
        n = m["nonfinite"].shape[1]
        for j in range(len(g.indices)):
            run, stop = int(streak[j]), None
            if run >= limit:
                stop = 0  # frozen before this chunk
            else:
                for i in range(n):
                    run = run + 1 if m["nonfinite"][j, i] > 0 else 0
                    if run >= limit:
                        stop = i + 1
                        break
            if stop is None:
                continue
            last_good = t + stop - run  # the step count after the last finite step
            if last_good > t:  # inside this chunk: run the group again up to it
                source, _ = g.run(before, g.nums, jnp.asarray(t, jnp.int32), last_good - t)
            else:
                source = before
            state = jax.tree.map(lambda a, b, j=j: a.at[j].set(b[j]), state, source)
            for key, v in m.items():
                if key == "nonfinite":
                    v[j, stop:] = 1
                elif v.dtype.kind == "f":
                    v[j, stop:] = np.nan
                else:
                    v[j, stop:] = 0
        return state

    def _scatter(self, out: dict[str, np.ndarray], m: dict[str, np.ndarray], indices: list[int]) -> None:
        for key, v in m.items():
            if key not in out:
                out[key] = np.full((len(self.configs),) + v.shape[1:], np.nan,
                                   v.dtype if v.dtype.kind == "f" else np.float32)
            if out[key].shape[1:] != v.shape[1:]:
                raise ValueError(f"metric {key!r} has shape {v.shape[1:]} in one group and "
                                 f"{out[key].shape[1:]} in another")
            out[key][indices] = v

    def evaluate(self) -> dict[str, np.ndarray] | None:
        if self.eval_fn is None:
            return None
        out: dict[str, np.ndarray] = {}
        for g, state in zip(self.groups, self.state):
            e = _to_host(g.evaluate(state, g.nums))  # type: ignore[misc]
            self._scatter(out, {key: v[:len(g.indices)] for key, v in e.items()}, g.indices)
        return out

    # -- state

    def host_state(self) -> Any:
        return tuple(_to_host_state(s) for s in self.state)

    def load(self, host_state: Any) -> None:
        self.state = tuple(jax.tree.map(lambda h, like: _place(h, like, self.sharding, self.device), h, s)
                           for h, s in zip(host_state, self.state))

    def hyperparams(self, state: Any) -> list[dict[str, float]]:
        out: list[dict[str, float]] = [{} for _ in self.configs]
        for g, s in zip(self.groups, state):
            hp = engine.opt_hyperparams(s.opt_state) or {}
            host = {k: np.asarray(jax.device_get(_to_host(v) if isinstance(v, jax.Array) else v))
                    for k, v in hp.items()}
            for j, i in enumerate(g.indices):
                out[i] = {k: float(v[j]) for k, v in host.items() if v.ndim == 1}
        return out

    def with_hyperparams(self, host_state: Any, template: Any) -> Any:
        out = []
        for h, t in zip(host_state, template):
            hp = engine.opt_hyperparams(t.opt_state)
            out.append(h if hp is None else h.replace(opt_state=h.opt_state._replace(hyperparams=hp)))
        return tuple(out)

    def params_sha256(self) -> list[str]:
        out = [""] * len(self.configs)
        for g, s in zip(self.groups, self.state):
            params = _to_host(s.params)
            for j, i in enumerate(g.indices):
                out[i] = params_sha256(jax.tree.map(lambda a, j=j: a[j], params))
        return out

    def num_params(self) -> list[int]:
        out = [0] * len(self.configs)
        for g, s in zip(self.groups, self.state):
            n = int(sum(np.prod(np.shape(x)[1:]) for x in jax.tree_util.tree_leaves(s.params)))
            for i in g.indices:
                out[i] = n
        return out

    def result_groups(self) -> list[SweepGroup]:
        """The groups with their final states (padding removed)."""
        out = []
        for g, s in zip(self.groups, self.state):
            if g.size > len(g.indices):
                s = jax.tree.map(lambda a, k=len(g.indices): a[:k], s)
            out.append(SweepGroup(g.static, list(g.indices), s))
        return out


def _place(host: Any, like: jax.Array, sharding, device) -> jax.Array:
    if jnp.issubdtype(like.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(host))
        impl = jax.random.key_impl(like)
        arr = _global(data, sharding) if sharding is not None else jax.device_put(data, device)
        return jax.random.wrap_key_data(arr, impl=impl)
    host = np.asarray(host)
    return _global(host, sharding) if sharding is not None else jax.device_put(host, device)


def _to_host_state(state: Any) -> Any:
    """The stacked states on the host (gathered from every process), typed keys kept typed."""

    def one(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(jnp.asarray(_to_host(jax.random.key_data(x))), impl=impl)
        return _to_host(x)

    return jax.tree.map(one, state)


# ----------------------------------------------------------------------------- run


def run_sweep(
    configs: Sequence[Mapping[str, Any]],
    init_fn: Callable[[dict[str, Any]], TrainState],
    step_fn: Callable[[TrainState, Any, dict[str, Any]], tuple[TrainState, dict[str, jax.Array]]],
    batch_fn: Callable[[dict[str, Any], jax.Array], Any],
    *,
    steps: int,
    static: Sequence[str] = (),
    devices: Sequence[jax.Device] | None = None,
    vmap_size: int | str | None = "auto",
    chunk: int | None = None,
    eval_fn: Callable[[Any, dict[str, Any]], dict[str, jax.Array]] | None = None,
    eval_every: int | None = None,
    workdir: str | None = None,
    ckpt_every: int | None = None,
    config: Mapping[str, Any] | None = None,
    log_every: int = engine.DEFAULTS["log_every"],
    max_to_keep: int = engine.DEFAULTS["max_to_keep"],
    max_consecutive_nonfinite: int | None = engine.DEFAULTS["max_consecutive_nonfinite"],
    callback: Callable[[Any, dict[str, Any]], None] | None = None,
    tensorboard: bool | None = None,
    baseline: float | None = None,
    override_hyperparams: bool = False,
    progress: bool = True,
) -> SweepResult:
    """Train every configuration for ``steps`` steps, all at once: the engine of
    [`rnnjax.fit`][rnnjax.engine.fit] over a [`StackedProgram`][rnnjax.sweep.StackedProgram].

    For each group of configurations with the same static values, the numeric values are stacked
    (``[n]`` arrays: ints as int32, floats as float32), the states are built by
    ``vmap(init_fn)``, and one jitted program runs a chunk of steps of every configuration: step
    ``t`` is ``state, metrics = step_fn(state, batch_fn(config, t), config)`` (the same order as
    [`rnnjax.fit`][rnnjax.engine.fit], so configuration ``i`` gives what training it alone gives, to float
    rounding). The sweep axis is sharded over ``devices`` (see the module docstring).

    The same loop as [`rnnjax.fit`][rnnjax.engine.fit] ([`rnnjax.engine.drive`][rnnjax.engine.drive]), with
    the same defaults and guarantees: the per-configuration **non-finite guard** (a configuration whose step
    is non-finite ``max_consecutive_nonfinite`` times in a row is frozen at its last good state and
    reported in ``result.diverged`` and ``results.json``, with the step, while the others train
    on, bit for bit as without it); checks before training (the step's and ``eval_fn``'s outputs,
    the concrete hyperparameters of every configuration, naming it); with ``workdir``: the lock,
    checkpoints of all states with the history (``ckpt_every``, at the end and on an exception),
    bitwise resume, ``metrics.jsonl`` (one line per configuration and recorded step, with its
    index ``config``), TensorBoard events per configuration (``tb/config_<i>/``), ``loss.png`` and
    ``results.json``.

    Args:
      configs: a list of dicts with the same keys (e.g. [`grid`][rnnjax.sweep.grid]).
      init_fn: ``init_fn(config) -> TrainState``; numeric values are 0-d arrays, static values
        as given. Build the optimizer from the configuration here.
      step_fn: ``step_fn(state, batch, config) -> (state, metrics)`` (e.g.
        [`sweep_step`][rnnjax.sweep.sweep_step]).
      batch_fn: ``batch_fn(config, step) -> batch`` with ``step`` a traced int32 scalar.
      steps: number of training steps.
      static: keys whose values are static even if numeric (sizes: ``("hidden_size",)``).
      devices: the devices to shard the sweep axis over (default ``jax.devices()``).
      vmap_size: configurations run batched (``vmap``) at once on a device; the device's batches
        run one after another (``lax.map``). ``None``: all of them. ``"auto"``: 1 on CPU, all
        elsewhere (see the module docstring).
      chunk: steps per compiled call (default 100), as in [`rnnjax.fit`][rnnjax.engine.fit].
      eval_fn: ``eval_fn(params, config) -> dict`` of scalars (traceable; run for every
        configuration in one program) every ``eval_every`` steps and at the end.
      eval_every: evaluation period in steps (None: only at the end).
      workdir: the sweep's directory; None keeps nothing on disk.
      ckpt_every: checkpoint period in steps with ``workdir`` (default 1000) and at the end.
      config: extra JSON-able settings recorded (and checked on resume) with the configurations.
      log_every: record the metrics every this many steps (and the last step, and every
        non-finite one) in the history, ``metrics.jsonl`` and TensorBoard.
      max_to_keep: checkpoints kept.
      max_consecutive_nonfinite: freeze a configuration after this many consecutive non-finite
        steps (None: never).
      callback: ``callback(states, record)`` for every step after its chunk ran and after the
        evaluation; ``states`` is the tuple of the groups' stacked states, ``record`` holds
        ``step`` and each metric as an array ``[n_configs]`` (and ``eval_<name>``).
      tensorboard: write TensorBoard event files, one directory per configuration (None, the
        default, or True: yes; written by rnnjax itself; view with ``tensorboard --logdir``).
      baseline: a reference loss drawn in ``loss.png``.
      override_hyperparams: on resume, continue with the hyperparameters ``init_fn`` makes now.
      progress: one progress bar for the whole sweep.

    Returns:
      A [`SweepResult`][rnnjax.sweep.SweepResult].
    """
    for name, fn in (("init_fn", init_fn), ("step_fn", step_fn), ("batch_fn", batch_fn)):
        check_callable(name, fn, "(see run_sweep's docstring)")
    check_callable("eval_fn", eval_fn, "(params, config) -> dict of scalars", allow_none=True)
    if isinstance(static, str):
        static = (static,)
    if isinstance(configs, Sequence) and not isinstance(configs, (str, Mapping)):
        configs = [dict(c) for c in configs]
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must not be empty")
    program = StackedProgram(configs, init_fn, step_fn, batch_fn, eval_fn, static=static,  # type: ignore[arg-type]
                             devices=devices, vmap_size=_resolve_vmap_size(vmap_size))
    run_config = None if workdir is None else {"configs": configs, "static": sorted(program.static_keys),
                                               **dict(config or {})}
    settings = engine.Settings(
        steps=steps, workdir=workdir, config=run_config, chunk=chunk, ckpt_every=ckpt_every,
        eval_every=eval_every, log_every=log_every, max_to_keep=max_to_keep,
        max_consecutive_nonfinite=max_consecutive_nonfinite, callback=callback, progress=progress,
        tensorboard=tensorboard, baseline=baseline, override_hyperparams=override_hyperparams,
        label=f"sweep of {len(configs)}", sweep=True)
    summary = engine.drive(program, settings)
    return SweepResult(configs=list(program.configs), groups=program.result_groups(), steps=int(steps),
                       **{f.name: getattr(summary, f.name) for f in dataclasses.fields(engine.RunSummary)})
