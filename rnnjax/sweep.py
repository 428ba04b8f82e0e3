"""Hyperparameter sweeps: many configurations trained at once, in one compiled program per shape.

Describe the configurations (a grid or any list of dicts), say how to build a
:class:`~rnnjax.TrainState` from one, how to take a step and how to make a batch; ``run_sweep``
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

- optimizer hyperparameters are array leaves of ``opt_state.hyperparams`` (:func:`rnnjax.optimizer`
  uses ``optax.inject_hyperparams``): ``init_fn`` builds the optimizer from the configuration, so
  every configuration's state holds its own values, and the step reads them from the state;
- init scale, forget bias: ``init_fn`` scales / shifts the params it creates;
- the seed: ``jax.random.key(config["seed"])`` in ``init_fn`` (params and the state's key, hence
  dropout keys) and in ``batch_fn`` (data order, e.g. :func:`rnnjax.tasks.batch_indices`);
- anything the loss needs (a dropout rate): :func:`sweep_step` passes the configuration to
  ``loss_fn(params, batch, key, config)``.

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
spans them, and every host gets the full :class:`SweepResult` (the metrics are gathered with
``multihost_utils.process_allgather``; ``result.states`` stay sharded global arrays).

Speed (what made the difference). Each group is one ``jax.jit`` call that runs all steps
(``steps_per_call``) as a ``lax.scan`` over steps, with the data made inside the program from
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
cores) wait for each other forever with the CPU idle. :func:`rnnjax.initializers.orthogonal`
therefore computes its QR one matrix at a time under ``vmap``; a user ``init_fn`` that calls
``jnp.linalg.qr`` (or another batched decomposition) itself can still hang on such a machine.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnnjax.train import TrainState, _boundaries, train_step

__all__ = [
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


def _stack_numeric(configs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, np.ndarray]:
    out = {}
    for k in keys:
        vals = [c[k] for c in configs]
        if all(isinstance(v, (numbers.Integral, np.integer)) or
               (hasattr(v, "dtype") and np.issubdtype(v.dtype, np.integer)) for v in vals):
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
    """A configuration-aware step ``step(state, batch, config)`` from :func:`rnnjax.train_step`.

    The step is ``rnnjax.train_step(lambda p, b, k: loss_fn(p, b, k, config), tx_fn(config),
    project=project)``:
    the loss sees the configuration (e.g. a dropout rate), and the optimizer is rebuilt from it for
    its structure (its numeric hyperparameters are read from ``state.opt_state``, where the
    ``init_fn`` of :func:`run_sweep` stored this configuration's values).

    Args:
      loss_fn: ``loss_fn(params, batch, key, config) -> loss`` (or ``(loss, aux)`` with ``has_aux``).
      tx_fn: ``tx_fn(config) -> optax.GradientTransformation`` (e.g. :func:`rnnjax.optimizer`);
        the same function the ``init_fn`` uses to create the state.
      has_aux: as in :func:`rnnjax.train_step`.
      project: as in :func:`rnnjax.train_step`: ``project(params) -> params`` after every update
        (e.g. :func:`rnnjax.indrnn_projection`), the same for every configuration.

    Returns:
      ``step(state, batch, config) -> (state, metrics)``.
    """
    if not callable(loss_fn) or not callable(tx_fn):
        raise TypeError("loss_fn and tx_fn must be callables")
    if project is not None and not callable(project):
        raise TypeError(f"project must be a callable params -> params or None, got {type(project).__name__}")

    def step(state, batch, config):
        loss = lambda p, b, k: loss_fn(p, b, k, config)  # noqa: E731
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
      indices: positions of the group's configurations in the list given to :func:`run_sweep`.
      state: their final TrainStates stacked on a leading sweep axis (``len(indices)`` long;
        padding removed). With several devices the leaves are sharded over them.
    """

    static: dict[str, Any]
    indices: list[int]
    state: TrainState


@dataclasses.dataclass
class SweepResult:
    """What :func:`run_sweep` returns.

    Attributes:
      configs: the configurations, in the order given.
      metrics: name -> array ``[n_configs, steps]`` (step ``t`` of configuration ``i`` at
        ``[i, t]``; extra trailing axes for non-scalar metrics).
      groups: the :class:`SweepGroup`\\ s (one per distinct static values).
      steps: the number of training steps.
      eval_metrics: name -> array ``[n_configs, n_evals]``: ``eval_fn``'s values ({} without one).
      eval_steps: ``[n_evals]``, the step count at each evaluation (multiples of ``eval_every``
        and the last step).
    """

    configs: list[dict[str, Any]]
    metrics: dict[str, np.ndarray]
    groups: list[SweepGroup]
    steps: int
    eval_metrics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    eval_steps: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.configs)

    @property
    def states(self) -> TrainState:
        """All final states stacked on a leading sweep axis, in the order of ``configs``.

        Only when all configurations share one group (same shapes); else use :meth:`state` or
        ``groups``.
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
                return jax.tree.map(lambda a: a[j], g.state)
        raise IndexError(f"no configuration {i} (the sweep has {len(self.configs)})")

    def final(self, metric: str = "loss", last: int = 1) -> np.ndarray:
        """``[n_configs]``: the mean of ``metric`` over the last ``last`` steps of each configuration."""
        if metric not in self.metrics:
            raise KeyError(f"no metric {metric!r}; the sweep recorded {sorted(self.metrics)}")
        if not 1 <= last <= self.steps:
            raise ValueError(f"last must lie in [1, {self.steps}], got {last}")
        return np.asarray(self.metrics[metric][:, self.steps - last:], np.float64).mean(axis=1)

    def best(self, metric: str = "loss", *, mode: str = "min", last: int = 1) -> int:
        """Index of the best configuration by :meth:`final` (NaN/inf count as the worst)."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        v = self.final(metric, last)
        v = np.where(np.isfinite(v), v if mode == "min" else -v, np.inf)
        return int(np.argmin(v))

    def table(self, metric: str = "loss", *, last: int = 1) -> list[dict[str, Any]]:
        """One row per configuration: its values, ``final_<metric>`` and ``nonfinite_steps``."""
        v = self.final(metric, last)
        bad = self.metrics.get("nonfinite")
        rows = []
        for i, c in enumerate(self.configs):
            row = {**c, f"final_{metric}": float(v[i])}
            if bad is not None:
                row["nonfinite_steps"] = int(np.sum(bad[i]))
            rows.append(row)
        return rows

    def markdown(self, metric: str = "loss", *, last: int = 1) -> str:
        """:meth:`table` as a markdown table; the best row is marked with ``*``."""
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
        import matplotlib

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
        t = np.arange(1, self.steps + 1)
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


# ----------------------------------------------------------------------------- run


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
    """:func:`_program`, memoised so that a repeated sweep reuses its compiled programs."""
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
    """``(init, run, evaluate)``: jitted functions over a group's stacked numeric values."""

    def config(num):
        return {**static, **{k: v for k, v in num.items() if k != _INDEX}}

    def init_all(nums):
        return jax.vmap(lambda num: init_fn(config(num)))(nums)

    def one(state, num, start, n):
        cfg = config(num)

        def body(st, t):
            return step_fn(st, batch_fn(cfg, t), cfg)

        return jax.lax.scan(body, state, start + jnp.arange(n, dtype=jnp.int32))

    def per_config(f, states, nums):
        """``f(state, num)`` for every configuration: vmapped in batches of ``vmap_size``."""
        size = nums[_INDEX].shape[0]
        if vmap_size is None or vmap_size >= size:
            return jax.vmap(f)(states, nums)
        return jax.lax.map(lambda a: f(*a), (states, nums),
                           batch_size=None if vmap_size == 1 else vmap_size)

    def local(states, nums, start, n):
        return per_config(lambda s, u: one(s, u, start, n), states, nums)

    def local_eval(states, nums):
        return per_config(lambda s, u: eval_fn(s.params, config(u)), states, nums)

    if mesh is None:
        init = jax.jit(init_all)
        run = jax.jit(local, static_argnums=3, donate_argnums=0)
        evaluate = None if eval_fn is None else jax.jit(local_eval)
        return init, run, evaluate

    spec = PartitionSpec(AXIS)
    sharded = NamedSharding(mesh, spec)
    init = jax.jit(init_all, out_shardings=sharded)

    def run_sharded(states, nums, start, n):
        f = jax.shard_map(lambda s, u, t: local(s, u, t, n), mesh=mesh,
                          in_specs=(spec, spec, PartitionSpec()), out_specs=(spec, spec),
                          check_vma=False)
        return f(states, nums, start)

    def eval_sharded(states, nums):
        return jax.shard_map(local_eval, mesh=mesh, in_specs=(spec, spec), out_specs=spec,
                             check_vma=False)(states, nums)

    run = jax.jit(run_sharded, static_argnums=3, donate_argnums=0)
    evaluate = None if eval_fn is None else jax.jit(eval_sharded)
    return init, run, evaluate


def _check_count(name: str, value: Any, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


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
    steps_per_call: int | None = None,
    eval_fn: Callable[[Any, dict[str, Any]], dict[str, jax.Array]] | None = None,
    eval_every: int | None = None,
    workdir: str | None = None,
    ckpt_every: int | None = None,
    config: Mapping[str, Any] | None = None,
    log_every: int = 10,
    max_to_keep: int = 2,
    tensorboard: bool | None = None,
    progress: bool = True,
) -> SweepResult:
    """Train every configuration for ``steps`` steps, all at once: :func:`rnnjax.fit` over a sweep.

    For each group of configurations with the same static values, the numeric values are stacked
    (``[n]`` arrays: ints as int32, floats as float32), the states are built by
    ``vmap(init_fn)``, and one jitted program runs a chunk of steps of every configuration: step
    ``t`` is ``state, metrics = step_fn(state, batch_fn(config, t), config)`` (the same order as
    :func:`rnnjax.fit`, so configuration ``i`` gives what training it alone with
    ``fit(init_fn(configs[i]), ..., batch_fn=lambda t: batch_fn(configs[i], t))`` gives, to
    float rounding). The sweep axis is sharded over ``devices`` (see the module docstring).

    With ``workdir`` the sweep is resumable like ``fit``: the stacked states of each group are
    checkpointed (``checkpoints/group_<g>/``, every ``ckpt_every`` steps and at the end) with
    the metrics so far; calling ``run_sweep`` again with the same arguments continues from the
    newest intact checkpoints and ends bitwise equal to an uninterrupted sweep (a larger ``steps``
    extends it; changed configurations are refused, naming the keys). The directory also gets
    ``metrics.npz`` (all metrics), TensorBoard events per configuration (``tb/config_<i>/``, every
    ``log_every`` steps), ``loss.png`` and ``results.json``: the configurations, each one's final
    metrics, ``params_sha256`` as a list in the order given, and the wall time summed over every
    process that worked on the sweep.

    Args:
      configs: a list of dicts with the same keys (e.g. :func:`grid`).
      init_fn: ``init_fn(config) -> TrainState``; numeric values are 0-d arrays, static values
        as given. Build the optimizer from the configuration here (its hyperparameters become
        array leaves of the state).
      step_fn: ``step_fn(state, batch, config) -> (state, metrics)`` (e.g. :func:`sweep_step`).
      batch_fn: ``batch_fn(config, step) -> batch`` with ``step`` a traced int32 scalar.
      steps: number of training steps (>= 1).
      static: keys whose values are static even if numeric (sizes: ``("hidden_size",)``).
      devices: the devices to shard the sweep axis over (default ``jax.devices()``); one device
        runs without sharding.
      vmap_size: configurations run batched (``vmap``) at once on a device; the device's batches
        run one after another (``lax.map``). ``None``: all of them. ``"auto"``: 1 on CPU (it
        measured fastest there, see the module docstring), all elsewhere.
      steps_per_call: steps per compiled call (default: all ``steps``, or up to the next
        evaluation or checkpoint); smaller values bound the metrics kept on the device.
      eval_fn: ``eval_fn(params, config) -> dict`` of scalars (traceable; run for every
        configuration in one program) every ``eval_every`` steps and at the end.
      eval_every: evaluation period in steps (None: only at the end).
      workdir: the sweep's directory (see above); None keeps nothing on disk. One that holds a
        sweep already beyond ``steps`` (the total) raises ``rnnjax.WorkdirError``.
      ckpt_every: checkpoint period in steps with ``workdir`` (default: 1000) and at the end.
      config: extra JSON-able settings recorded (and checked on resume) with the configurations.
      log_every: TensorBoard period in steps (the metrics arrays hold every step).
      max_to_keep: checkpoints kept per group.
      tensorboard: write TensorBoard events (needs ``tensorboardX``); None: when installed.
      progress: one progress bar for the whole sweep (steps, steps/s, ETA, best loss).

    Returns:
      A :class:`SweepResult`.
    """
    import time

    from tqdm.auto import tqdm

    from rnnjax import _workdir as wd
    from rnnjax.checkpoint import params_sha256

    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    for name, value in (("steps_per_call", steps_per_call), ("eval_every", eval_every),
                        ("ckpt_every", ckpt_every)):
        _check_count(name, value)
    _check_count("log_every", log_every, allow_none=False)
    _check_count("max_to_keep", max_to_keep, allow_none=False)
    for name, fn in (("init_fn", init_fn), ("step_fn", step_fn), ("batch_fn", batch_fn)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable (params, config) -> dict, got {type(eval_fn).__name__}")
    if isinstance(static, str):
        static = (static,)
    configs = [dict(c) for c in configs] if isinstance(configs, Sequence) else configs
    static_keys, numeric_keys = _split(configs, static)
    vmap_size = _resolve_vmap_size(vmap_size)
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must not be empty")
    mesh = Mesh(np.asarray(devices), (AXIS,)) if len(devices) > 1 else None
    n_dev = len(devices)
    steps = int(steps)
    if workdir is not None and ckpt_every is None:
        ckpt_every = 1000
    t_start = time.time()

    run_dir = None
    if workdir is not None:
        run_dir = wd.Workdir(workdir, config={"configs": configs, "static": sorted(static_keys),
                                              **dict(config or {})},
                             steps=steps, write=jax.process_index() == 0)
    use_tb = run_dir is not None and run_dir.write and (
        wd.tensorboard_available() if tensorboard is None else tensorboard)

    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(tuple(_freeze(c[k]) for k in static_keys), []).append(i)

    n = len(configs)
    metrics: dict[str, np.ndarray] = {}
    eval_metrics: dict[str, np.ndarray] = {}
    eval_steps: list[int] = []
    out_groups = []
    bar = tqdm(total=steps * len(groups), disable=not progress or jax.process_index() != 0,
               desc=f"sweep of {n}", dynamic_ncols=True, mininterval=0.5)
    try:
        for g, indices in enumerate(groups.values()):
            members = [configs[i] for i in indices]
            static_vals = {k: members[0][k] for k in static_keys}
            padded = members + [members[-1]] * (-len(members) % n_dev)
            nums = _stack_numeric(padded, numeric_keys)
            nums[_INDEX] = np.arange(len(padded), dtype=np.int32)
            init, run, evaluate = _cached_program(static_vals, init_fn, step_fn, batch_fn, eval_fn,
                                                  mesh, vmap_size)
            sharding = NamedSharding(mesh, PartitionSpec(AXIS)) if mesh is not None else None
            if mesh is not None:
                nums = {k: _global(v, sharding) for k, v in nums.items()}
            else:
                nums = {k: jax.device_put(v, devices[0]) for k, v in nums.items()}
            try:
                state = init(nums)
            except TypeError as e:  # includes jax's ConcretizationTypeError & co.
                raise TypeError(f"init_fn failed with {type(e).__name__}: {e}\nIf it needs a Python "
                                f"value (e.g. a size) of a numeric key, name that key in static=...; "
                                f"the numeric (swept, traced) keys are {numeric_keys}") from e
            if not isinstance(state, TrainState):
                raise TypeError(f"init_fn must return an rnnjax.TrainState, got {type(state).__name__}")

            chunks: list[dict] = []
            evals: list[dict] = []
            g_eval_steps: list[int] = []
            start = 0
            ckpt = None
            if run_dir is not None:
                ckpt, state, start, chunks, evals, g_eval_steps = _resume_group(
                    run_dir, g, state, sharding, devices[0], max_to_keep)
                if start > steps:  # a smaller total would report the longer run as this one
                    from rnnjax._workdir import WorkdirError

                    raise WorkdirError(f"workdir {run_dir.path} holds a sweep already at step {start}, "
                                       f"beyond steps={steps}; pass steps >= {start} to continue it, "
                                       f"or another workdir for a new sweep")
            bar.update(start)
            events = None
            if use_tb:
                events = [wd.EventLog(run_dir.path / "tb" / f"config_{i:03d}",
                                      purge_step=start or None) for i in indices]
            t = start
            while t < steps:
                nb = _boundaries(t, steps, (steps_per_call, eval_every, ckpt_every))
                k = nb - t
                state, m = run(state, nums, jnp.asarray(t, jnp.int32), k)
                m = _to_host(m)
                chunks.append(m)
                if events is not None:
                    _log_events(events, m, t, log_every, prefix="train/")
                t = nb
                post = {}
                if "loss" in m:
                    last = np.asarray(m["loss"])[:len(indices), -1]
                    if np.isfinite(last).any():
                        post["best loss"] = f"{np.nanmin(np.where(np.isfinite(last), last, np.nan)):.4g}"
                if evaluate is not None and ((eval_every and t % eval_every == 0) or t == steps):
                    e = _to_host(evaluate(state, nums))
                    evals.append(e)
                    g_eval_steps.append(t)
                    if events is not None:
                        for j, ev in enumerate(events):
                            ev.scalars(t, {key: float(np.asarray(v)[j]) for key, v in e.items()},
                                       prefix="eval/")
                if ckpt is not None and (t % ckpt_every == 0 or t == steps):
                    _save_group(run_dir, g, ckpt, state, t, chunks, evals, g_eval_steps)
                if run_dir is not None:
                    run_dir.progress(0, t)
                bar.set_postfix(post, refresh=False)
                bar.update(k)
            if events is not None:
                for ev in events:
                    ev.close()
            if ckpt is not None:
                ckpt.close()
            m = {key: np.concatenate([np.asarray(c[key]) for c in chunks], axis=1)[:len(indices), :steps]
                 for key in chunks[0]} if chunks else {}
            _merge(metrics, m, indices, n)
            if evals:
                e = {key: np.stack([np.asarray(c[key]) for c in evals], axis=1)[:len(indices)]
                     for key in evals[0]}
                _merge(eval_metrics, e, indices, n)
                if eval_steps and eval_steps != g_eval_steps:
                    raise AssertionError("groups evaluated at different steps")
                eval_steps = g_eval_steps
            if len(padded) > len(indices):
                state = jax.tree.map(lambda a: a[:len(indices)], state)
            out_groups.append(SweepGroup(static_vals, list(indices), state))
    finally:
        bar.close()
    result = SweepResult(configs=list(configs), metrics=metrics, groups=out_groups, steps=steps,
                         eval_metrics=eval_metrics, eval_steps=np.asarray(eval_steps, np.int64))
    if run_dir is not None:
        _write_sweep_results(run_dir, result, params_sha256, time.time() - t_start)
    return result


def _merge(out: dict[str, np.ndarray], m: dict[str, np.ndarray], indices: list[int], n: int) -> None:
    for key, v in m.items():
        if key not in out:
            out[key] = np.full((n,) + v.shape[1:], np.nan,
                               v.dtype if v.dtype.kind == "f" else np.float64)
        if out[key].shape[1:] != v.shape[1:]:
            raise ValueError(f"metric {key!r} has shape {v.shape[1:]} in one group and "
                             f"{out[key].shape[1:]} in another")
        out[key][indices] = v


def _log_events(events, m: dict, t0: int, every: int, prefix: str) -> None:
    k = np.asarray(next(iter(m.values()))).shape[1]
    for i in range(k):
        step = t0 + i + 1
        if step % every:
            continue
        for j, ev in enumerate(events):
            ev.scalars(step, {key: float(np.asarray(v)[j, i]) for key, v in m.items()
                              if np.ndim(v) == 2}, prefix=prefix)


def _group_files(run_dir, g: int):
    return run_dir.path / "checkpoints" / f"group_{g}", run_dir.path / "checkpoints" / f"group_{g}_metrics"


def _save_group(run_dir, g, ckpt, state, t, chunks, evals, eval_steps) -> None:
    """The group's metrics up to ``t`` (written first, named by step), then its states."""
    from rnnjax.checkpoint import write_npz_atomic

    _, mdir = _group_files(run_dir, g)
    if run_dir.write:
        mdir.mkdir(parents=True, exist_ok=True)
        arrays = {f"train/{key}": np.concatenate([np.asarray(c[key]) for c in chunks], axis=1)
                  for key in chunks[0]}
        if evals:
            arrays.update({f"eval/{key}": np.stack([np.asarray(c[key]) for c in evals], axis=1)
                           for key in evals[0]})
        arrays["eval_steps"] = np.asarray(eval_steps, np.int64)
        write_npz_atomic(mdir / f"{t}.npz", arrays)
    ckpt.save(_to_host_state(state), step=t)
    if run_dir.write:
        keep = set(ckpt.steps())
        for f in mdir.glob("*.npz"):
            if f.stem.isdigit() and int(f.stem) not in keep:
                f.unlink()


def _resume_group(run_dir, g, template, sharding, device, max_to_keep):
    """``(checkpointer, state, step, chunks, evals, eval_steps)`` of group ``g``: restored from its
    newest intact checkpoint with the metrics saved at that step, or the fresh state at step 0."""
    from rnnjax.checkpoint import Checkpointer

    cdir, mdir = _group_files(run_dir, g)
    ckpt = Checkpointer(cdir, max_to_keep=max_to_keep)
    restored = ckpt.restore_latest(_to_host_state(template))
    if restored is None:
        return ckpt, template, 0, [], [], []
    step = int(np.asarray(restored.step).reshape(-1)[0])
    # the metrics are written before the states, so they exist for every finished checkpoint
    with np.load(mdir / f"{step}.npz") as z:
        train = {k[6:]: z[k] for k in z.files if k.startswith("train/")}
        ev = {k[5:]: z[k] for k in z.files if k.startswith("eval/")}
        eval_steps = [int(s) for s in z["eval_steps"]]
    evals = [{k: v[:, i] for k, v in ev.items()} for i in range(len(eval_steps))]
    state = jax.tree.map(lambda h, tpl: _place(h, tpl, sharding, device), restored, template)
    return ckpt, state, step, [train] if train else [], evals, eval_steps


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


def _write_sweep_results(run_dir, result: "SweepResult", params_sha256, elapsed: float) -> None:
    from rnnjax import _workdir as wd

    finals = []
    for i in range(len(result)):
        f = {key: float(v[i, -1]) for key, v in result.metrics.items() if v.ndim == 2}
        f.update({f"eval_{key}": float(v[i, -1]) for key, v in result.eval_metrics.items() if v.ndim == 2})
        finals.append(f)
    shas = [params_sha256(_to_host(result.state(i).params)) for i in range(len(result))]
    sessions = run_dir.sessions()  # one reading of the clock for both fields
    results = {
        "config": run_dir.config,
        "configs": wd._jsonable(result.configs),
        "steps": result.steps,
        "final": finals,
        "params_sha256": shas,
        "eval_steps": [int(s) for s in result.eval_steps],
        "wall_time_s": run_dir.total_wall_time(sessions),
        "wall_time_this_process_s": elapsed,
        "sessions": sessions,
    }
    run_dir.results(results)
    if run_dir.write:
        from rnnjax.checkpoint import write_npz_atomic

        arrays = {f"train/{k}": v for k, v in result.metrics.items()}
        arrays.update({f"eval/{k}": v for k, v in result.eval_metrics.items()})
        arrays["eval_steps"] = result.eval_steps
        write_npz_atomic(run_dir.path / "metrics.npz", arrays)
        if "loss" in result.metrics:
            import matplotlib.pyplot as plt

            fig = result.plot(str(run_dir.path / "loss.png"))
            plt.close(fig)
