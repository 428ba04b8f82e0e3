"""Training rows: a cell on a task under a recipe, its seeds (and learning rates) as ONE sweep.

A row is one [`rnnjax.run_sweep`][rnnjax.sweep.run_sweep] whose configurations are
``{"lr", "seed"}``: every seed and learning rate of the recipe trained at once in one compiled
program, with the held-out metric evaluated every ``eval_every`` steps and the gradient flow
``log10 ||dL/d carry_t||`` measured at initialisation and after training (computed in log space,
so nothing underflows). With a workdir a finished row is read back and an interrupted one resumes
from the engine's checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from rnnjax._checks import check_int, check_number
from rnnjax.bench.tasks import DATA_ROOT, Task

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")


# ------------------------------------------------------------------------------------- the recipe

@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a row is trained.

    Attributes:
      hidden_size: the cell's hidden size ``H``.
      optimizer: a name of [`rnnjax.optimizer`][rnnjax.optim.optimizer] (``"adam"``, ``"rmsprop"`` ...).
      lr: the learning rate, or a tuple of them: each is trained next to the seeds in the same
        sweep (the row then holds every learning rate).
      clip: global-norm gradient clipping (None: none).
      batch: sequences per training step.
      steps: training steps.
      eval_every: evaluate the held-out metric every this many steps.
      test_size: held-out sequences.
      lr_factors: ``((cell param name, factor), ...)``: a per-leaf learning rate (the update of that
        cell parameter is multiplied by ``factor``).
      opt_kwargs: ``((name, value), ...)``: more [`rnnjax.optimizer`][rnnjax.optim.optimizer] arguments.
      init: a label of the initialisation, for the tables.
    """

    hidden_size: int = 64
    optimizer: str = "adam"
    lr: float | tuple[float, ...] = 1e-2
    clip: float | None = 1.0
    batch: int = 32
    steps: int = 1000
    eval_every: int = 50
    test_size: int = 500
    lr_factors: tuple[tuple[str, float], ...] = ()
    opt_kwargs: tuple[tuple[str, Any], ...] = ()
    init: str = ""

    def __post_init__(self):
        check_int("hidden_size", self.hidden_size)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        lrs = self.lr if isinstance(self.lr, tuple) else (self.lr,)
        if not lrs:
            raise ValueError("lr must be a positive number or a non-empty tuple of them, got ()")
        for v in lrs:
            check_number("lr", v, positive=True)
        if self.clip is not None:
            check_number("clip", self.clip, positive=True)
        check_int("batch", self.batch)
        check_int("steps", self.steps)
        check_int("eval_every", self.eval_every)
        check_int("test_size", self.test_size)
        for pair in (*self.lr_factors, *self.opt_kwargs):
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                raise ValueError(f"lr_factors and opt_kwargs hold (name, value) pairs, got {pair!r}")
        for _, f in self.lr_factors:
            check_number("lr_factors", f, positive=True)

    @property
    def lrs(self) -> tuple[float, ...]:
        """The learning rates of the row (one or several)."""
        return tuple(float(v) for v in (self.lr if isinstance(self.lr, tuple) else (self.lr,)))

    @property
    def eval_at(self) -> int:
        """The evaluation cadence, at most the budget."""
        return min(self.eval_every, self.steps)

    def record(self, lr: float) -> dict:
        """The recipe as a row's record states it, at learning rate ``lr``."""
        return {"hidden_size": self.hidden_size, "optimizer": self.optimizer, "lr": float(lr),
                "clip_norm": self.clip, "batch": self.batch, "lr_factors": dict(self.lr_factors),
                **dict(self.opt_kwargs), "steps": self.steps, "eval_every": self.eval_at,
                "test_size": self.test_size, "init": self.init}

    def config(self, row: str, task: Task, seeds: Sequence[int]) -> dict:
        """The row's configuration (what a workdir compares to resume or read back)."""
        lrs = self.lrs
        d = {"row": row, "task": task.name, "T": task.T, "steps": self.steps, "H": self.hidden_size,
             "batch": self.batch, "lr": lrs[0], "lrs": list(lrs) if len(lrs) > 1 else [],
             "clip": self.clip, "optimizer": self.optimizer,
             "lr_factors": [list(p) for p in self.lr_factors],
             "opt_kwargs": [list(p) for p in self.opt_kwargs],
             "eval_every": self.eval_at, "test_size": self.test_size, "seeds": [int(s) for s in seeds]}
        if task.lengths or task.splits:  # the accuracy tasks: what the loss tasks' rows never held
            d["lengths"] = list(task.lengths)
            d["splits"] = [s for s, _ in task.splits]
        return d


# ---------------------------------------------------------------------------------------- cells

Factory = Callable[[int, int], Any]
"""``make(hidden_size, T) -> Cell`` or ``(Cell, project)`` (``project(params) -> params`` after
every update, or None)."""


def _two_layers(make: Callable[[], Any], gelu: bool):
    import jax

    from rnnjax import layers

    first = make()
    return layers.stack(layers.map_output(first, jax.nn.gelu) if gelu else first, make())


BUILTIN_ROWS: dict[str, str] = {
    "elman": "elman-orth", "irnn": "irnn", "jordan": "jordan", "lstm": "lstm-fb1", "gru": "gru-before",
    "mgu": "mgu", "indrnn": "indrnn", "lru": "lru", "mingru": "mingru", "minlstm": "minlstm",
    "orthogonal": "exprnn", "cornn": "cornn", "lem": "lem", "linoss": "linoss", "rglru": "rglru",
    "slstm": "slstm", "mlstm": "mlstm", "antisymmetric": "antisymmetric", "lipschitz": "lipschitz",
}
"""Built-in cell (a name of ``rnnjax.registry``) -> the reference row that trained it."""

TWO_LAYERS: dict[str, bool] = {"lru": True, "mingru": False, "minlstm": False, "linoss": True,
                               "rglru": True, "mlstm": True}
"""Cells whose recurrence is linear in the carry run as two layers, as their papers use them (with a
GELU between for the LRU-like ones), so the model is not linear in time."""


def builtin(name: str) -> Factory:
    """The factory of a built-in cell, as the reference rows built it: ``rnnjax.registry``'s cell
    with hidden size ``H`` for horizon ``T`` (two layers for `TWO_LAYERS`) and its projection."""
    from rnnjax import registry

    if name not in registry.names():
        raise ValueError(f"unknown built-in cell {name!r}; known: {', '.join(registry.names())}")

    def make(H: int, T: int):
        cell = (_two_layers(lambda: registry.cell(name, H, T), TWO_LAYERS[name]) if name in TWO_LAYERS
                else registry.cell(name, H, T))
        return cell, registry.projection(name, T)

    make.__name__ = name
    return make


def load_factory(text: str) -> Factory:
    """``"lstm"`` (a built-in) or ``"package.module:function"`` (a factory of one's own, imported)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"a cell must be a built-in name or 'module:function', got {text!r}")
    if ":" not in text:
        return builtin(text)
    module, _, attr = text.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"cell {text!r}: cannot import module {module!r} ({e})") from e
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ValueError(f"cell {text!r}: module {module!r} has no callable {attr!r}")
    return fn


def _model(make: Factory, H: int, T: int):
    """``(cell, project)`` from a factory, checked."""
    from rnnjax.types import Cell

    out = make(H, T)
    cell, project = (out, None) if isinstance(out, Cell) or not isinstance(out, tuple) or len(out) != 2 \
        else out
    if not isinstance(cell, Cell):
        raise TypeError(f"a cell factory make(hidden_size, T) must return an rnnjax.Cell or (Cell, project); "
                        f"{getattr(make, '__name__', make)!r} returned {type(cell).__name__}")
    if project is not None and not callable(project):
        raise TypeError(f"the project of a cell factory must be callable or None, got "
                        f"{type(project).__name__}")
    return cell, project


# ------------------------------------------------------------------------------------ training

def scale_cell_leaves(factors: Mapping[str, float]):
    """Multiply the updates of the cell params named in ``factors`` (e.g. ``{"a": 0.1}``).

    After an Adam/RMSprop step this is a per-parameter learning rate: the direction is computed
    per element, so scaling the update by ``f`` is the same as training that leaf at ``f * lr``.
    """
    import jax
    import optax

    def scale(updates, params=None):
        del params
        return {**updates, "cell": {k: (jax.tree.map(lambda u, f=factors[k]: u * f, v) if k in factors else v)
                                    for k, v in updates["cell"].items()}}

    return optax.stateless(scale)


class Training(NamedTuple):
    """The pure functions of a row's training (see `build`)."""

    init_fn: Callable  # init_fn(config) -> TrainState
    step_fn: Callable  # step_fn(state, batch, config) -> (state, metrics), projection included
    batch_fn: Callable  # batch_fn(config, step) -> batch
    eval_fn: Callable  # eval_fn(params, config) -> the task's held-out metrics
    make_tx: Callable  # make_tx(config) -> the optax chain
    cell: Any
    readout: Any
    forward: Callable  # forward(params, xs) -> outputs
    test_batch: Callable  # test_batch() -> the held-out (xs, ys)


def build(make: Factory, task: Task, recipe: Recipe) -> Training:
    """The functions of a row, following [`rnnjax.run_sweep`][rnnjax.sweep.run_sweep]: a configuration
    holds ``seed`` and ``lr`` (numeric: the sweep axis); the rest is static."""
    import jax
    import jax.numpy as jnp
    import optax

    import rnnjax

    cell, project = _model(make, recipe.hidden_size, task.T)
    readout = rnnjax.layers.dense(task.output_size)
    factors = dict(recipe.lr_factors)
    D = task.input_size

    def make_tx(config):
        tx = rnnjax.optimizer(recipe.optimizer, config["lr"], clip_norm=recipe.clip,
                              **dict(recipe.opt_kwargs))
        return optax.chain(tx, scale_cell_leaves(factors)) if factors else tx

    def init_fn(config):
        k_cell, k_out, k_run = jax.random.split(jax.random.key(config["seed"]), 3)
        cp = cell.init(k_cell, D)
        params = {"cell": cp, "readout": readout.init(k_out, rnnjax.layers.output_size(cell, cp, D))}
        return rnnjax.TrainState.create(params, make_tx(config), key=k_run)

    def forward(p, xs):
        _, outs = rnnjax.unroll(cell, p["cell"], xs)
        return readout.apply(p["readout"], outs)

    def loss_fn(p, batch, key):
        del key
        return task.loss(forward(p, batch[0]), batch[1])

    def step_fn(state, batch, config):
        return rnnjax.train_step(loss_fn, make_tx(config), project=project)(state, batch)

    def batch_fn(config, step):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(DATA_ROOT), config["seed"]), step)
        return task.make_batch(key, recipe.batch)

    chunk = min(recipe.test_size, 100)
    n_chunks = -(-recipe.test_size // chunk)

    def test_batch():
        return task.held_out(n_chunks * chunk)

    def split(tree, axis):  # [.., n_chunks * chunk, ..] -> [n_chunks, .., chunk, ..]
        def one(a):
            a = a.reshape(*a.shape[:axis], n_chunks, chunk, *a.shape[axis + 1:])
            return jnp.moveaxis(a, axis, 0)

        return jax.tree.map(one, tree)

    def eval_fn(params, config):
        del config
        xs, ys = test_batch()  # the same held-out sequences for every seed and evaluation
        per = jax.lax.map(lambda b: task.metrics(forward(params, b[0]), b[1]),
                          (split(xs, 1), split(ys, task.target_axis)))
        return jax.tree.map(jnp.mean, per)

    return Training(init_fn, step_fn, batch_fn, eval_fn, make_tx, cell, readout, forward, test_batch)


def _finite(v) -> float | None:
    """A float for JSON, or None where it is NaN/inf (strict JSON has neither)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def steps_to_solve(eval_steps, values, threshold: float, goal: str = "min") -> int | None:
    """The first evaluation step whose metric is below (``goal="min"``) or at least (``"max"``)
    ``threshold`` (None: never; NaN never counts).

    Args:
      eval_steps: ``[n_evals]`` step counts of the evaluations, increasing.
      values: ``[n_evals]`` the held-out metric there.
      threshold: the solved threshold.
      goal: ``"min"`` or ``"max"``.
    """
    steps = np.asarray(eval_steps)
    v = np.asarray(values, np.float64)
    if steps.shape != v.shape or steps.ndim != 1:
        raise ValueError(f"eval_steps and values must be 1-d of one length, got {steps.shape} and {v.shape}")
    if goal not in ("min", "max"):
        raise ValueError(f"goal must be 'min' or 'max', got {goal!r}")
    ok = np.isfinite(v) & ((v < threshold) if goal == "min" else (v >= threshold))
    hit = np.flatnonzero(ok)
    return int(steps[hit[0]]) if hit.size else None


def median_steps(per_seed_steps: Sequence[int | None]) -> float | None:
    """Median steps-to-solve over seeds, an unsolved seed counting as infinitely many steps
    (None when at least half the seeds are unsolved: the median is then 'not within budget')."""
    v = np.sort([np.inf if s is None else float(s) for s in per_seed_steps])
    m = float(np.median(v)) if v.size else np.inf
    return m if math.isfinite(m) else None


def _config_hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def row_id(row: str, task: Task) -> str:
    """The row's folder in a workdir: ``<task>-T<T>-<row>``."""
    return f"{task.name}-T{task.T}-{row}"


def finished(row: str, task: Task, recipe: Recipe, seeds: Sequence[int], workdir: str, *,
             shorter: bool = False) -> list[dict] | None:
    """The records of a row finished in ``workdir`` with this very configuration, or None.

    ``shorter=True`` also accepts the row finished with the same configuration but a smaller step
    budget (a study whose budget was raised, continuing from that row's checkpoints): its records
    then carry ``budget_planned`` next to ``steps`` (the budget they finished).
    """
    cached = os.path.join(workdir, row_id(row, task), "row.json")
    if not os.path.exists(cached):
        return None
    with open(cached) as fh:
        old = json.load(fh)
    want = recipe.config(row, task, seeds)
    if old.get("config_hash") != _config_hash(want):
        got = old.get("config", {})
        same_but_budget = ({k: v for k, v in got.items() if k != "steps"}
                           == {k: v for k, v in want.items() if k != "steps"})
        if not (shorter and same_but_budget and int(got.get("steps", 0)) < recipe.steps):
            return None
        for r in old["runs"]:
            r["budget_planned"] = recipe.steps
    for r in old["runs"]:
        r["resumed"] = True
    return old["runs"]


_BUILT: dict = {}


_JITTED: dict = {}


def _jitted(training: Training, task: Task, what: str):
    """One compiled function per row and purpose (the flow, the metric at other lengths)."""
    import jax

    import rnnjax

    key = (id(training), what)
    if key not in _JITTED:
        if len(_JITTED) >= 32:
            _JITTED.pop(next(iter(_JITTED)))
        cell, readout = training.cell, training.readout
        if what == "flow":
            fn = jax.jit(lambda p, x, y: rnnjax.gradient_flow(
                cell, p["cell"], x, lambda outs: task.loss(readout.apply(p["readout"], outs), y)).log10_norms)
        else:
            fn = jax.jit(lambda p, x, y: task.metrics(training.forward(p, x), y))
        _JITTED[key] = (training, fn)  # the training kept alive, so its id stays unique
    return _JITTED[key][1]


def _flow(training: Training, task: Task, params, n: int = 64) -> list[float | None]:
    """``log10 ||dL/d carry_t||`` of the task's loss on ``n`` held-out sequences."""
    import jax

    xs, ys = training.test_batch()
    xs = xs[:, :n]
    ys = jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, min(n, a.shape[task.target_axis]),
                                                     axis=task.target_axis), ys)
    lg = _jitted(training, task, "flow")(params, xs, ys)
    return [_finite(v) for v in np.asarray(lg, np.float64)]


def _at_lengths(training: Training, task: Task, params, n: int) -> dict[str, float | None]:
    """The metric of the final params at the task's other lengths (length generalisation, keyed by
    the length) and on its other test splits (keyed by name)."""
    out = {}
    metrics = _jitted(training, task, "metrics")
    for L in task.lengths:
        xs, ys = task.held_out(n, L)
        out[str(L)] = _finite(metrics(params, xs, ys)[task.key])
    for name, held in task.splits:
        xs, ys = held(n)
        out[name] = _finite(metrics(params, xs, ys)[task.key])
    return out


def train_row(row: str, make: Factory, task: Task, recipe: Recipe, seeds: Sequence[int] = (0, 1, 2, 3), *,
              workdir: str | None = None, cell_type: str | None = None, paper: bool = False,
              flow: bool = True, trained_flow: bool = True, progress: bool = False) -> list[dict]:
    """Train one row, every seed and learning rate of the recipe, in one ``run_sweep``.

    Returns one record per learning rate (the fields `rnnjax.bench.Row` reads): per-seed
    final metric, steps-to-solve and non-finite steps; the median and IQR over seeds; the solved
    count; the held-out curves; the gradient flow at initialisation (``flow``; seed ``seeds[0]``)
    and after training (``trained_flow``; the seed with the median final metric); the recipe, the
    machine and the time. With ``workdir`` a finished row is read back from
    ``workdir/<task>-T<T>-<row>/row.json`` (same configuration) and the engine checkpoints the
    sweep there, so an interrupted row resumes.
    """
    import jax

    from rnnjax import machine
    from rnnjax.sweep import run_sweep

    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed, got ()")
    row_dir = None if workdir is None else os.path.join(workdir, row_id(row, task))
    cfg_d = recipe.config(row, task, seeds)
    if row_dir is not None:
        old = finished(row, task, recipe, seeds, workdir)  # type: ignore[arg-type]
        if old is not None:
            return old
        os.makedirs(row_dir, exist_ok=True)

    # the same functions for the same row (whatever its budget), so the engine reuses its programs
    key = (make, task.label, json.dumps({k: v for k, v in cfg_d.items() if k != "steps"}, sort_keys=True))
    if key not in _BUILT:
        if len(_BUILT) >= 16:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[key] = build(make, task, recipe)
    training = _BUILT[key]
    lrs = recipe.lrs
    configs = [{"lr": float(lr), "seed": int(s)} for lr in lrs for s in seeds]
    t0 = time.perf_counter()
    eval_every = recipe.eval_at
    ckpt_every = eval_every * max(1, 500 // eval_every)  # on evaluation steps: one program per row
    sweep_dir = None if row_dir is None else os.path.join(row_dir, "sweep")
    result = run_sweep(configs, training.init_fn, training.step_fn, training.batch_fn, steps=recipe.steps,
                       eval_fn=training.eval_fn, eval_every=eval_every, workdir=sweep_dir,
                       ckpt_every=ckpt_every if sweep_dir else None,
                       config={k: v for k, v in cfg_d.items() if k != "steps"}, progress=progress)
    eval_steps = np.asarray(result.eval_steps)
    values = np.asarray(result.eval_metrics[task.key], np.float64)
    seconds = time.perf_counter() - t0
    if sweep_dir is not None and os.path.exists(os.path.join(sweep_dir, "results.json")):
        with open(os.path.join(sweep_dir, "results.json")) as fh:  # add the time earlier processes spent
            info = json.load(fh)
        seconds += max(0.0, float(info.get("wall_time_s", 0.0))
                       - float(info.get("wall_time_this_process_s", 0.0)))
    train_loss = np.asarray(result.metrics["loss"], np.float64)
    nonfinite = np.nansum(np.asarray(result.metrics.get("nonfinite", np.zeros_like(train_loss)), np.float64),
                          axis=1)
    # a seed the engine's non-finite guard froze has diverged: no final value, however finite the
    # metric of its frozen (last good) params
    for i, step in enumerate(result.diverged):
        if step is not None:
            values[i] = np.where(eval_steps >= step, np.nan, values[i])
    flow0 = None
    if flow:
        flow0 = _flow(training, task, jax.jit(training.init_fn)(configs[0]).params)
    m = machine()
    machine_text = f"{m['cpu']} ({m['cpu_isa']}), {m['cpu_count']} cores; {jax.default_backend()}"

    runs = []
    for lr in lrs:
        idx = [i for i, c in enumerate(configs) if c["lr"] == float(lr)]
        finals = values[idx, -1]
        per_seed = []
        for i in idx:
            final = float(values[i, -1])
            entry: dict[str, Any] = {"seed": configs[i]["seed"], "final_test_loss": _finite(final),
                     "final_ratio": _finite(final / task.baseline) if task.baseline else None,
                     "steps_to_solve": steps_to_solve(eval_steps, values[i], task.threshold, task.goal),
                     "nonfinite_steps": int(nonfinite[i])}
            if task.lengths or task.splits:
                entry["at_lengths"] = (
                    _at_lengths(training, task, result.state(i).params, recipe.test_size)
                    if result.diverged[i] is None
                    else {k: None for k in [*map(str, task.lengths), *(s for s, _ in task.splits)]})
            per_seed.append(entry)
        solved_seeds = sum(p["steps_to_solve"] is not None for p in per_seed)
        ok = finals[np.isfinite(finals)]
        q25, q50, q75 = (np.percentile(ok, [25, 50, 75]) if ok.size else (np.nan,) * 3)
        # the seed with the median final value (worst = NaN last)
        bad = np.inf if task.goal == "min" else -np.inf
        order = np.argsort(np.where(np.isfinite(finals), finals, bad))
        if task.goal == "max":
            order = order[::-1]
        mid = idx[int(order[(len(idx) - 1) // 2])]
        flow_lg = _flow(training, task, result.state(mid).params) if trained_flow else None
        median_train = np.nanmedian(train_loss[idx], axis=0)
        stride = max(1, recipe.steps // 200)
        runs.append({
            "task": task.name, "cell": cell_type or row, "name": row if len(lrs) == 1 else f"{row} lr={lr:g}",
            "row": row, "init": recipe.init, "T": task.T, "metric": task.metric, "goal": task.goal,
            "baseline": task.baseline, "threshold": task.threshold,
            "seeds": len(idx), "solved_seeds": solved_seeds, "solved": bool(2 * solved_seeds >= len(idx)),
            "per_seed": per_seed,
            "final_loss_median": _finite(q50), "final_loss_iqr": [_finite(q25), _finite(q75)],
            "ratio_median": _finite(q50 / task.baseline) if task.baseline else None,
            "steps_to_solve_median": median_steps([p["steps_to_solve"] for p in per_seed]),
            "diverged_seeds": int(np.sum(~np.isfinite(finals))),
            "recipe": recipe.record(lr), "paper": paper, "steps": recipe.steps,
            "seconds": seconds / len(lrs), "machine": machine_text,
            "eval_steps": [int(s) for s in eval_steps],
            "test_loss": [[_finite(v) for v in values[i]] for i in idx],
            "train_loss_median": [[int(t + 1), _finite(median_train[t])]
                                  for t in range(stride - 1, recipe.steps, stride)],
            "log10_flow_at_init": flow0,
            "trained_flow_seed": configs[mid]["seed"],
            "trained_log10_flow": flow_lg,
        })
    if row_dir is not None:
        tmp = os.path.join(row_dir, "row.json.tmp")
        with open(tmp, "w") as fh:
            json.dump({"config": cfg_d, "config_hash": _config_hash(cfg_d), "runs": runs}, fh,
                      allow_nan=False)
        os.replace(tmp, os.path.join(row_dir, "row.json"))
    return runs
