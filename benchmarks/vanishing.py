"""The gradient-vanishing study: how gradients vanish or explode in each cell, and who learns what.

Part 1 (gradient flow at initialisation): ``log10 ||dL/d carry_t||`` against the distance
``T-1-t`` for every cell and initialisation, on adding-problem inputs with the loss on the last
output (computed in log space, so nothing underflows), and the fitted decay rate per step (``exp``
of the slope of ``log norms[t]`` against ``T-1-t``; below 1 vanishes, above 1 explodes).

Part 2 (long-memory tasks, equal budget): every cell type trained with clipped Adam and the same
step budget on the adding problem and the copy task for several ``T``. Each row is ONE
``rnnjax.sweep.run_sweep`` call over its seeds (the numeric sweep axis, sharded over the CPU
cores); the held-out test loss is evaluated every ``--eval-every`` steps. A seed's
*steps-to-solve* is the first evaluation at which its test loss is below 0.1 x the no-memory
baseline; a row is *solved* when at least half of its seeds are.

Part 3 (the papers' claims, the papers' recipes): rows ``<cell>-paper`` trained with the recipe
their paper states (hidden size, layers, optimizer, learning rates, batch, clipping,
initialisation), with the step budget used here next to the paper's (and ``lru-long``: the LRU
with the eigenvalue range its paper uses for long-range tasks). The RMSprop recipes run PyTorch's
form (``eps`` added to the root, as their papers' code); the rows ``<row>-eps-in-sqrt`` are the
same recipes with optax's form (``eps`` inside the root), kept as the measured contrast
(``benchmarks/rmsprop_eps.py`` measures the difference per parameter leaf).

Outputs in ``--out``: ``results.json`` (``meta``: command, machine, versions, wall time;
``records``: one per training row with ``task, cell, T, seeds, solved_seeds, solved, per_seed,
final_loss_median, final_loss_iqr, recipe``, and one per gradient-flow row; ``runs``: the curves),
``results.md`` (tables), ``gradient_flow.png``, ``curves_<task>.png``, ``curves_paper.png``,
``gradient_flow_trained.png``.

    python benchmarks/vanishing.py --quick --out out/demo      # make demo: ~40 s of CPU time
    python benchmarks/vanishing.py --full --out benchmarks/results/vanishing --workdir W
    # stopped? the same command again resumes: finished rows are read back from W, a row that
    # was cut off resumes from the engine's checkpoints in its sub-workdir W/<task>-T<T>-<row>.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from rnnjax import bench

SOLVED_FRACTION = bench.tasks.SOLVED_FRACTION  # a seed is solved when its test loss < SOLVED_FRACTION x baseline
DATA_ROOT, TEST_ROOT = bench.tasks.DATA_ROOT, bench.tasks.TEST_ROOT  # data: key(0) + seed, step; test: key(1)


# ------------------------------------------------------------------------------------- the rows

@dataclass(frozen=True)
class Paper:
    """A claim of a paper and the recipe it states (what the table shows next to the result)."""

    claim: str
    recipe_text: str
    paper_budget: str


@dataclass(frozen=True)
class Spec:
    """One row of the study."""

    name: str  # row label
    cell: str  # cell type
    init: str  # initialisation label
    train: bool = False  # trained in the equal-budget grid (one row per cell type)
    flow: bool = True  # drawn in the gradient flow at initialisation
    recipe: Any = None  # a paper row's rnnjax.bench.Recipe (None: the grid's)
    paper: Paper | None = None
    runs: tuple = ()  # ((task, T), ...): a paper row's tasks


SPECS_ALL = [
    Spec("elman-glorot", "elman", "glorot uniform"),
    Spec("elman-orth", "elman", "orthogonal", train=True),
    Spec("elman-rho0.9", "elman", "spectral radius 0.9"),
    Spec("elman-rho1.0", "elman", "spectral radius 1.0"),
    Spec("elman-rho1.1", "elman", "spectral radius 1.1"),
    Spec("irnn", "irnn", "identity", train=True),
    Spec("jordan", "jordan", "orthogonal", train=True),
    Spec("lstm-fb0", "lstm", "forget bias 0"),
    Spec("lstm-fb1", "lstm", "forget bias 1", train=True),
    Spec("lstm-chrono", "lstm", "chrono", train=True),
    Spec("lstm-peep-fb1", "lstm-peephole", "forget bias 1"),
    Spec("lstm-peep-chrono", "lstm-peephole", "chrono"),
    Spec("gru-before", "gru", "reset before (Cho)", train=True),
    Spec("gru-after", "gru-after", "reset after (cuDNN)"),
    Spec("mgu", "mgu", "orthogonal", train=True),
    Spec("indrnn", "indrnn", "U[0, 2^(1/T)]", train=True),
    Spec("lru", "lru", "ring r in [0.9, 0.999]", train=True),
    Spec("mingru", "mingru", "glorot uniform", train=True),
    Spec("minlstm", "minlstm", "glorot uniform", train=True),
    Spec("exprnn", "orthogonal", "expm(A - A^T), Henaff", train=True),
    Spec("cornn", "cornn", "default", train=True),
    Spec("lem", "lem", "default", train=True),
    Spec("linoss", "linoss", "default", train=True),
    Spec("rglru", "rglru", "default", train=True),
    Spec("slstm", "slstm", "default", train=True),
    Spec("mlstm", "mlstm", "default", train=True),
    Spec("antisymmetric", "antisymmetric", "default", train=True),
    Spec("lipschitz", "lipschitz", "default", train=True),
    # the papers' claims with the papers' recipes
    Spec("indrnn-paper", "indrnn", "2 layers; u1 ~ U[0, 2^(1/T)], u2 ~ U[2^(-1/T), 2^(1/T)]", flow=False,
         recipe=bench.Recipe(hidden_size=128, optimizer="adam", lr=2e-4, clip=None, batch=32,
                             opt_kwargs=(("schedule", "exponential"), ("decay_steps", 20000),
                                         ("decay_rate", 0.1)), steps=3000, eval_every=150),
         runs=(("adding", 1000), ("adding", 5000)),
         paper=Paper("IndRNN solves adding at T=1000 and T=5000 where LSTM and IRNN fail (Li et al. 2018)",
                     "2 layers x 128 ReLU; input weights N(0, 0.001^2); u of layer 1 ~ U(0, 2^(1/T)), "
                     "layer 2 ~ U((1/2)^(1/T), 2^(1/T)); |u| clipped to 2^(1/T) after every update; "
                     "Adam 2e-4 (x0.1 every 20k steps; here a smooth exponential decay); batch 32; "
                     "one marker in each half",
                     "order 10^4 steps (Li et al. 2018, Fig. 2)")),
    Spec("lstm-chrono-paper", "lstm", "chrono, T_max = 3T/2", flow=False,
         recipe=bench.Recipe(hidden_size=128, optimizer="rmsprop", lr=1e-3, clip=None, batch=32,
                             opt_kwargs=(("decay", 0.9), ("eps_in_sqrt", False)), steps=20000, eval_every=100),
         runs=(("copy", 500),),
         paper=Paper("chrono initialisation lets an LSTM solve copy at T=500 where the standard LSTM "
                     "stays at the baseline (Tallec & Ollivier 2018)",
                     "128 units; RMSprop (alpha 0.9, eps 1e-8 added to the root: PyTorch's form) lr 1e-3; "
                     "batch 32; chrono T_max = 3T/2; no clipping",
                     "order 10^4 iterations (Tallec & Ollivier 2018, copy-task figure)")),
    Spec("exprnn-paper", "orthogonal", "expm(A - A^T), Henaff", flow=False,
         recipe=bench.Recipe(hidden_size=190, optimizer="rmsprop", lr=2e-4, clip=None, batch=128,
                             lr_factors=(("a", 0.1),), opt_kwargs=(("decay", 0.99), ("eps_in_sqrt", False)),
                             steps=4000, eval_every=100),
         runs=(("copy", 1000),),
         paper=Paper("expRNN solves copy at T=1000 (Lezcano-Casado & Martinez-Rubio 2019)",
                     "hidden 190, Henaff init, modReLU; RMSprop (PyTorch's: alpha 0.99, eps 1e-8 added to "
                     "the root) lr 2e-4, 2e-5 on the skew-symmetric parameter; batch 128; no clipping",
                     "4000 iterations")),
    Spec("lem-paper", "lem", "dt 0.0242", flow=False,
         recipe=bench.Recipe(hidden_size=128, optimizer="adam", lr=2.6e-3, clip=None, batch=50, steps=5000,
                             eval_every=100),
         runs=(("adding", 2000),),
         paper=Paper("LEM solves adding at T=2000, test MSE ~5e-5 (Rusch et al. 2022)",
                     "hidden 128; Adam 2.6e-3; batch 50; dt 0.0242; no clipping",
                     "the authors' T=2000 log (tk-rusch/LEM, src/adding/results) holds 300 test "
                     "evaluations; its test MSE is below 0.1 x the baseline from the 20th on and "
                     "reaches ~5e-5 after the 130th")),
    Spec("cornn-paper", "cornn", "dt 0.06, gamma 66, epsilon 15", flow=False,
         recipe=bench.Recipe(hidden_size=128, optimizer="adam", lr=2e-2, clip=None, batch=50, steps=2000,
                             eval_every=100),
         runs=(("adding", 2000),),
         paper=Paper("coRNN solves adding at long T (Rusch & Mishra 2021)",
                     "hidden 128; Adam 2e-2; batch 50; dt 0.06, gamma 66, epsilon 15; no clipping",
                     "up to 60,000 steps (max_steps of the authors' adding_task.py, tk-rusch/coRNN), "
                     "test MSE every 100")),
    Spec("lru-long", "lru", "ring r in [0.99, 0.9999]", flow=False,
         recipe=bench.Recipe(hidden_size=64, optimizer="adam", lr=3e-3, clip=1.0, batch=32, steps=1000,
                             eval_every=50),
         runs=(("copy", 500),),
         paper=Paper("an LRU whose eigenvalue radii start near 1 holds long memories (Orvieto et al. 2023)",
                     "2 LRU layers x 64 with a GELU between; radii r in [0.99, 0.9999] (r_min pushed "
                     "towards 1, as the paper does for long-range tasks); Adam 3e-3, clip 1, batch 32",
                     "the paper trains on the Long Range Arena, not this task")),
    Spec("irnn-paper", "irnn", "identity", flow=False,
         recipe=bench.Recipe(hidden_size=100, optimizer="sgd", lr=(1e-2, 1e-3), clip=10.0, batch=16,
                             steps=20000, eval_every=1000),
         runs=(("adding", 150),),
         paper=Paper("IRNN solves adding at T=150-300 (Le et al. 2015)",
                     "hidden 100, identity init, input weights N(0, 0.001^2); plain SGD with gradient "
                     "clipping (norm 10), batch 16; learning rates 1e-2 and 1e-3 swept (the paper chose "
                     "them by search)",
                     "over 10^6 iterations, as the uRNN paper (Arjovsky et al. 2016) reports")),
]

EPS_IN_SQRT = "-eps-in-sqrt"


def _eps_in_sqrt_contrast(spec: Spec, steps: int | None = None) -> Spec:
    """The paper row ``spec`` (PyTorch's RMSprop) with optax's RMSprop form instead, eps inside the
    root: the measured contrast (there, weights whose RMS gradient is below ~1e-4, such as the
    one-hot input weights of the copy task, move a small fraction of PyTorch's step). ``steps``:
    its own budget (None: the paper row's)."""
    kw = tuple(kv for kv in spec.recipe.opt_kwargs if kv[0] != "eps_in_sqrt")
    p = spec.paper
    recipe = dataclasses.replace(spec.recipe, opt_kwargs=kw, steps=steps or spec.recipe.steps)
    return dataclasses.replace(
        spec, name=spec.name + EPS_IN_SQRT, recipe=recipe,
        paper=Paper(p.claim, f"as {spec.name}, but RMSprop with eps 1e-8 inside the root, sqrt(v + eps) "
                             "(optax's and TensorFlow's form; not the paper's PyTorch form)", p.paper_budget))


# each contrast right after its paper row; the chrono contrast stopped at 10000 steps, flat at the
# baseline from step ~4000 on, and was not raised with its paper row
for _base, _steps in (("lstm-chrono-paper", 10000), ("exprnn-paper", None)):
    _i = next(i for i, s in enumerate(SPECS_ALL) if s.name == _base)
    SPECS_ALL.insert(_i + 1, _eps_in_sqrt_contrast(SPECS_ALL[_i], _steps))


def specs() -> list[Spec]:
    """The rows of the study."""
    return list(SPECS_ALL)


def spec_by_name(name: str) -> Spec:
    for s in SPECS_ALL:
        if s.name == name:
            return s
    raise ValueError(f"unknown row {name!r}; known: {', '.join(s.name for s in SPECS_ALL)}")


# The rows that train a cell of ``rnnjax.registry`` as the registry builds it (row -> registry
# name; ``rnnjax.bench.builtin`` builds them, two layers for the cells whose recurrence is linear in
# the carry); every registered cell has one. The other rows are variants of a cell
# (initialisations, the papers' constants), built in :func:`make_model`.
REGISTRY_ROWS: dict[str, str] = {row: name for name, row in bench.BUILTIN_ROWS.items()}
REGISTRY_ROWS["irnn-paper"] = "irnn"
REGISTRY_ROWS["exprnn-paper"] = "orthogonal"
# Registered cells that joined rnnjax after the committed study, so have no row yet.
NO_ROW_YET = ("deltanet", "gated_deltanet", "s6")


def make_model(spec: Spec, H: int, T: int):
    """``(cell, project)``: the cell (or stack) of ``spec`` with hidden size ``H`` for horizon ``T``,
    and the projection applied to the params after every optimizer step (or None): IndRNN's
    ``|u| <= 2^(1/T)`` (``rnnjax.indrnn_projection``, which finds the IndRNN layers in any layout,
    the model's whole params included). The rows of :data:`REGISTRY_ROWS` are
    ``rnnjax.bench.builtin``'s model of the registry's cell.
    """
    import jax

    import rnnjax
    from rnnjax import initializers as inits
    from rnnjax import layers

    def two(make, gelu=True):
        first = make()
        return layers.stack(layers.map_output(first, jax.nn.gelu) if gelu else first, make())

    if spec.name.endswith(EPS_IN_SQRT):  # the same model as the paper row it contrasts
        return make_model(dataclasses.replace(spec, name=spec.name[:-len(EPS_IN_SQRT)]), H, T)
    rho = {"elman-rho0.9": 0.9, "elman-rho1.0": 1.0, "elman-rho1.1": 1.1}
    if spec.name in rho:
        return rnnjax.elman(H, recurrent_init=inits.spectral_radius(rho[spec.name])), None
    if spec.name in REGISTRY_ROWS:
        return bench.builtin(REGISTRY_ROWS[spec.name])(H, T)
    if spec.name == "indrnn-paper":
        bound, project = rnnjax.indrnn_max_abs(T), rnnjax.indrnn_projection(T)

        def uniform(lo, hi):
            return lambda key, shape, dtype=jax.numpy.float32: jax.random.uniform(key, shape, dtype, lo, hi)

        cell = layers.stack(
            rnnjax.indrnn(H, input_init=inits.normal(0.001), recurrent_init=uniform(0.0, bound)),
            rnnjax.indrnn(H, input_init=inits.normal(0.001), recurrent_init=uniform(1.0 / bound, bound)))
        return cell, project
    table: dict[str, Callable] = {
        "elman-glorot": lambda: rnnjax.elman(H, recurrent_init=inits.glorot_uniform),
        "lstm-fb0": lambda: rnnjax.lstm(H, forget_bias=0.0),
        "lstm-chrono": lambda: rnnjax.lstm(H, chrono=T),
        "lstm-chrono-paper": lambda: rnnjax.lstm(H, chrono=1.5 * T),
        "lstm-peep-fb1": lambda: rnnjax.lstm(H, peephole=True),
        "lstm-peep-chrono": lambda: rnnjax.lstm(H, peephole=True, chrono=T),
        "gru-after": lambda: rnnjax.gru(H, reset="after"),
        "lru-long": lambda: two(lambda: rnnjax.lru(H, H, r_min=0.99, r_max=0.9999)),
        "lem-paper": lambda: rnnjax.lem(H, dt=0.0242),
        "cornn-paper": lambda: rnnjax.cornn(H, dt=0.06, gamma=66.0, epsilon=15.0),
    }
    return table[spec.name](), None


# ---------------------------------------------------------------------------- part 1: gradient flow

def decay_rate(norms: np.ndarray | None = None, *, log10_norms: np.ndarray | None = None) -> float:
    """Per-step factor ``10 ** rnnjax.log10_decay_rate(...)``: the least-squares slope of the log
    norms against the distance ``T-1-t`` (steps with a finite log and distance >= 1).

    Give the norms or (better, as nothing underflows) their base-10 logarithms.
    """
    import rnnjax

    if (norms is None) == (log10_norms is None):
        raise ValueError("give exactly one of norms and log10_norms")
    if log10_norms is None:
        with np.errstate(divide="ignore"):
            log10_norms = np.log10(np.asarray(norms, np.float64))
    return float(10.0 ** float(rnnjax.log10_decay_rate(np.asarray(log10_norms, np.float32))))


def flow_at_init(spec: Spec, T: int, H: int, B: int, seed: int) -> dict:
    """Gradient flow at initialisation on adding inputs, loss on the last output."""
    import jax
    import jax.numpy as jnp

    import rnnjax

    cell, _ = make_model(spec, H, T)
    kp, kd, kr = jax.random.split(jax.random.key(seed), 3)
    xs, ys = rnnjax.tasks.adding(kd, B, T)
    params = cell.init(kp, 2)
    readout = rnnjax.layers.dense(1)
    r = readout.init(kr, rnnjax.layers.output_size(cell, params, 2))

    def loss_fn(outs):
        return jnp.mean((readout.apply(r, outs[-1]) - ys) ** 2)

    flow = jax.jit(lambda p, x: rnnjax.gradient_flow(cell, p, x, loss_fn))(params, xs)
    lg = np.asarray(flow.log10_norms, np.float64)
    rate = decay_rate(log10_norms=lg)
    ratio = 10.0 ** (lg[0] - lg[-1]) if np.isfinite(lg[0]) and np.isfinite(lg[-1]) else float("nan")
    return {"name": spec.name, "cell": spec.cell, "init": spec.init, "T": T,
            "log10_norms": [_finite(v) for v in lg], "rate": _finite(rate), "ratio": _finite(ratio)}


# ------------------------------------------------------------------------------ part 2: training

GRID_RECIPE = bench.Recipe()
STUDY_BUDGET = GRID_RECIPE.steps
"""The equal-budget grid's recipe: ``rnnjax.bench``'s default (H 64, Adam 1e-2, clip 1, batch 32,
1000 steps, evaluation every 50 steps on 500 held-out sequences)."""


def factory(spec: Spec):
    """``make(hidden_size, T)`` of a row, for ``rnnjax.bench``."""
    def make(H: int, T: int):
        return make_model(spec, H, T)

    make.__name__ = spec.name
    return make


_FACTORIES: dict[str, Any] = {}


def train_row(spec: Spec, task: bench.Task, recipe: bench.Recipe, seeds=(0, 1, 2, 3), *,
              workdir: str | None = None, trained_flow: bool = True, progress: bool = False) -> list[dict]:
    """One row of the study through ``rnnjax.bench.train_row`` (one ``run_sweep`` over the seeds and
    the recipe's learning rates): one record per learning rate. With ``workdir``, a finished row
    is read back from ``workdir/<task>-T<T>-<row>/row.json`` and an interrupted one resumes."""
    make = _FACTORIES.setdefault(spec.name, factory(spec))  # one function per row: programs reused
    recipe = dataclasses.replace(recipe, init=spec.init)
    return bench.train_row(spec.name, make, task, recipe, seeds, workdir=workdir, cell_type=spec.cell,
                           paper=spec.paper is not None, flow=False, trained_flow=trained_flow,
                           progress=progress)


def finished_row(spec: Spec, task: bench.Task, recipe: bench.Recipe, seeds, workdir: str, *,
                 shorter: bool = False) -> list[dict] | None:
    """The records of a row finished in ``workdir`` (``rnnjax.bench.core.finished``)."""
    from rnnjax.bench.core import finished

    return finished(spec.name, task, recipe, seeds, workdir, shorter=shorter)


steps_to_solve = bench.steps_to_solve
median_steps = bench.median_steps


def build_training(spec: Spec, task: bench.Task, recipe: bench.Recipe):
    """The pure functions of a row's training (``rnnjax.bench.core.build``)."""
    from rnnjax.bench.core import build

    return build(factory(spec), task, recipe)


def _finite(v) -> float | None:
    """A float for JSON, or None where it is NaN/inf (strict JSON has neither)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# ------------------------------------------------------------------------------------- reporting

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#000000", "#aec7e8", "#98df8a"]
_STYLES = ["-", "--", ":", "-."]


def line_style(i: int) -> dict:
    """Colour and line style of curve ``i``: both change from one curve to the next, and no two of
    the first 52 curves share both (13 colours x 4 styles, coprime)."""
    return {"color": _COLORS[i % len(_COLORS)], "linestyle": _STYLES[i % len(_STYLES)]}


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _cell_text(r: dict) -> str:
    """``k/n · steps · ratio`` of a run for the tables."""
    steps = "—" if r["steps_to_solve_median"] is None else f"{r['steps_to_solve_median']:.0f}"
    ratio = r["ratio_median"]
    ratio = "diverged" if ratio is None else (f"{ratio:.3f}" if ratio < 100 else f"{ratio:.2g}")
    return f"{r['solved_seeds']}/{r['seeds']}{' ✓' if r['solved'] else ''} · {steps} · {ratio}"


SOLVED_LINE = ("**solved**: a seed's loss on {n} held-out sequences falls below 0.1 × the no-memory "
               "baseline at an evaluation (its steps-to-solve); a row is solved (✓) when at least half "
               "its seeds are. Baselines: adding — MSE 1/6 of always predicting 1.0; copy — "
               "cross-entropy 10·log 8/(T+20) of predicting blanks, then uniform symbols.")
TABLE_KEY = ("Each entry: `k/n` seeds solved · median steps-to-solve (— : not within the budget for "
             "half the seeds) · median final test loss / baseline.")


def _band_plot(ax, run, i, plt):
    steps = np.asarray(run["eval_steps"], float)
    losses = np.asarray([[np.nan if v is None else v for v in s] for s in run["test_loss"]], float)
    ratio = losses / run["baseline"]
    with np.errstate(invalid="ignore"), _warnings_off():
        med = np.nanmedian(ratio, axis=0)
        lo, hi = np.nanmin(ratio, axis=0), np.nanmax(ratio, axis=0)
    st = line_style(i)
    ax.plot(steps, med, lw=1.4, label=f"{run['name']} ({run['solved_seeds']}/{run['seeds']})", **st)
    ax.fill_between(steps, lo, hi, color=st["color"], alpha=0.12, lw=0)


from rnnjax.bench.report import _quiet as _warnings_off  # noqa: E402  (RuntimeWarnings of all-NaN bands)


def _thresholds(ax):
    ax.axhline(1.0, color="0.4", ls="-", lw=0.8)
    ax.axhline(SOLVED_FRACTION, color="k", ls=":", lw=1.0)
    box = dict(fc="white", ec="none", alpha=0.8, pad=1.0)
    ax.annotate("no-memory baseline", (0.99, 1.0), xycoords=("axes fraction", "data"), fontsize=7,
                va="bottom", ha="right", color="0.3", bbox=box)
    ax.annotate(f"solved: {SOLVED_FRACTION:g} × baseline", (0.99, SOLVED_FRACTION),
                xycoords=("axes fraction", "data"), fontsize=7, va="bottom", ha="right", bbox=box)


def _curves(path, panels, title_fn, plt):
    """One panel per (key, runs); median test loss / baseline with the min-max band over seeds."""
    n = len(panels)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (key, rs) in zip(axes.flat, panels):
        for i, r in enumerate(rs):
            _band_plot(ax, r, i, plt)
        _thresholds(ax)
        ax.set_yscale("log")
        ax.set_title(title_fn(key, rs), fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("test loss / baseline\n(median, band: min-max over seeds)", fontsize=8)
        ax.legend(fontsize=6.5, ncol=1 if len(rs) <= 12 else 2, loc="lower left", framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def literature_comparison(runs: list[dict]) -> str:
    """Say, from the measured grid, where the figures agree with the literature and where not."""
    grid = [r for r in runs if not r["paper"]]

    def longest(row, task):
        rs = [r for r in grid if r["row"] == row and r["task"] == task]
        solved = [r["T"] for r in rs if r["solved"]]
        return (max(solved) if solved else None), sorted(r["T"] for r in rs)

    lines = ["## Against the literature (equal-budget grid)\n",
             "Expected (Arjovsky, Shah & Bengio 2016; Li et al. 2018; Le et al. 2015): the tanh RNN "
             "fails the adding problem by T≈200; the LSTM solves it up to T≈400; a small LSTM stays at "
             "the copy baseline beyond T≈100; IRNN and IndRNN reach long horizons on adding; "
             "orthogonal RNNs solve copy. Measured here:\n"]
    for row, task, claim in [
        ("elman-orth", "adding", "tanh RNN fails by T≈200"),
        ("lstm-fb1", "adding", "LSTM solves adding to T≈400"),
        ("lstm-fb1", "copy", "LSTM stays at the copy baseline beyond T≈100"),
        ("lstm-chrono", "adding", "chrono LSTM holds longer memories (Tallec & Ollivier 2018)"),
        ("irnn", "adding", "IRNN solves adding to long T (Le et al. 2015)"),
        ("indrnn", "adding", "IndRNN solves adding to T=5000 (Li et al. 2018)"),
        ("exprnn", "copy", "orthogonal RNN solves copy (Lezcano-Casado & Martinez-Rubio 2019)"),
    ]:
        best, tried = longest(row, task)
        if tried:
            got = f"longest T solved: {best}" if best else "solved at no T"
            line = f"- {claim}: {row} on {task} — {got} (tried T = {', '.join(map(str, tried))})"
            budget = min(r.get("steps", STUDY_BUDGET) for r in grid if r["row"] == row and r["task"] == task)
            if budget < STUDY_BUDGET:  # e.g. the demo: no verdict on the claim either way
                line += (f"; {budget} steps is too short a budget to test this claim (the committed study "
                         f"trains {STUDY_BUDGET} steps, T up to 1000: see benchmarks/results/vanishing-multiseed)")
            lines.append(line + ".")
    if len(lines) == 2:
        lines.append("- none of these rows is finished yet.")
    lines.append("\nThe grid gives every cell the same budget and recipe; the papers' own recipes "
                 "and budgets are tested in the table of claims.")
    return "\n".join(lines)


def claims_table(runs: list[dict]) -> list[str]:
    paper = [r for r in runs if r["paper"]]
    if not paper:
        return []
    md = ["\n## The papers' claims, with the papers' recipes\n",
          "| row | claim | paper's recipe | step budget | result here | verdict |",
          "|---|---|---|---|---|---|"]
    for r in paper:
        p = next(s.paper for s in SPECS_ALL if s.name == r["row"])
        iqr = r["final_loss_iqr"]
        res = (f"{r['task']} T={r['T']}: {r['solved_seeds']}/{r['seeds']} seeds solved; median steps-to-solve "
               f"{_fmt(r['steps_to_solve_median'], '.0f') if r['steps_to_solve_median'] else 'not within budget'}; "
               f"median final {r['metric']} {_fmt(r['final_loss_median'], '.3g')} "
               f"(IQR {_fmt(iqr[0], '.3g')}–{_fmt(iqr[1], '.3g')}; baseline {r['baseline']:.3g})")
        lg = r.get("trained_log10_flow")
        if lg and lg[0] is not None and lg[-1] is not None:  # the measured reason, when it is vanishing
            res += f"; after training ||dL/dh_0|| = 10^{lg[0] - lg[-1]:.1f} × ||dL/dh_T-1||"
        if r.get("diverged_seeds"):
            res += f"; {r['diverged_seeds']} seed(s) diverged"
        verdict = "reproduced" if r["solved"] else "not reproduced at this budget"
        if r["row"].endswith(EPS_IN_SQRT):  # a contrast to a paper row, not a test of the claim
            verdict = "contrast, not the paper's recipe: " + ("solved" if r["solved"] else "not solved")
        budget = f"here {r['steps']} steps"
        if r.get("budget_planned"):  # a row whose budget was raised, still continuing
            budget += f" so far (of {r['budget_planned']} planned; continuing)"
            verdict += " (so far)" if not r["solved"] else ""
        name = r["name"]
        md.append(f"| {name} | {p.claim} | {p.recipe_text} | {budget}; paper: {p.paper_budget} | "
                  f"{res} | {verdict} |")
    return md


def write_outputs(out: str, flows: list[dict], runs: list[dict], meta: dict) -> str:
    """Write ``results.json``, ``results.md`` and the plots; return the markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    records = []
    for f in flows:
        records.append({"task": "gradient_flow", "cell": f["cell"], "name": f["name"], "init": f["init"],
                        "T": f["T"], "metric": "decay_rate_per_step", "value": f["rate"],
                        "baseline": 1.0, "solved": None, "norm_ratio_first_last": f["ratio"]})
    curve_keys = ("eval_steps", "test_loss", "train_loss_median", "trained_log10_flow")
    for r in runs:
        records.append({k: v for k, v in r.items() if k not in curve_keys})
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump({"meta": meta, "records": records, "runs": runs, "flows": flows}, fh, indent=1,
                  allow_nan=False)

    md = [f"# Gradient-vanishing study\n\nCommand: `{meta['command']}`  \n"
          f"Machine: {meta['machine']}  \nVersions: {meta['versions']}  \n"
          f"Wall time: {meta['seconds']:.0f} s this invocation; {meta.get('compute_seconds', 0):.0f} s "
          f"of training summed over all rows (including rows read back from a workdir).\n"]
    if meta.get("pending"):
        n_done = len({(r["row"], r["task"], r["T"]) for r in runs if not r.get("budget_planned")})
        md.append(f"**Partial results: {n_done} of {n_done + len(meta['pending'])} training rows are "
                  f"finished.** The study continues (finished rows are read back; a row whose budget "
                  f"was raised continues from its checkpoints) with\n\n"
                  f"    {meta['continue_command']}\n\nPending:\n")
        by_row: dict[str, dict[str, list[str]]] = {}
        for q in meta["pending"]:
            t = str(q["T"])
            if "steps_done" in q:
                t += f" (finished at {q['steps_done']} of {q['steps']} steps; shown below)"
            by_row.setdefault(q["row"], {}).setdefault(q["task"], []).append(t)
        md += [f"- {row}: " + "; ".join(f"{task} T={', '.join(Ts)}" for task, Ts in tasks.items())
               for row, tasks in by_row.items()]
        md.append("")
    if flows:
        T = flows[0]["T"]
        md.append(f"## Gradient flow at initialisation (T={T}, H={meta.get('flow_H', meta['H'])}, loss on the "
                  "last output)\n\n"
                  "`rate` = per-step factor of `||dL/dcarry_t||` (fit of log norm against T-1-t); "
                  "`ratio` = `||dL/dcarry_0|| / ||dL/dcarry_T-1||`.\n\n"
                  "| cell | init | rate per step | ratio first/last |\n|---|---|---|---|")
        for f in flows:
            md.append(f"| {f['name']} | {f['init']} | {_fmt(f['rate'], '.4f')} | {_fmt(f['ratio'], '.3g')} |")
        fig, ax = plt.subplots(figsize=(11, 6.5))
        for i, f in enumerate(flows):
            lg = np.asarray([np.nan if v is None else v for v in f["log10_norms"]], float)
            ax.plot(np.arange(len(lg))[::-1], lg, lw=1.3, label=f"{f['name']} ({f['init']})", **line_style(i))
        ax.set_xlabel("T - 1 - t (steps back from the loss)")
        ax.set_ylabel("log10 ||dL / d carry_t||")
        ax.set_title(f"Gradient flow at initialisation, adding inputs, T={T} (computed in log space)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(os.path.join(out, "gradient_flow.png"), dpi=110)
        plt.close(fig)
    grid = [r for r in runs if not r["paper"]]
    order = {s.name: i for i, s in enumerate(SPECS_ALL)}
    for task in sorted({r["task"] for r in grid}):
        rs = [r for r in grid if r["task"] == task]
        Ts = sorted({r["T"] for r in rs})
        names = sorted({r["name"] for r in rs}, key=lambda n: order.get(n.split(" ")[0], 99))
        ref = rs[0]["recipe"]
        md.append(f"\n## {task}: equal budget — {rs[0]['steps']} steps of {ref['optimizer']} "
                  f"(lr {ref['lr']:g}, clip {ref['clip_norm']}), batch {ref['batch']}, "
                  f"H={ref['hidden_size']}, {rs[0]['seeds']} seeds per row\n")
        md.append(TABLE_KEY + "\n")
        md.append("| cell | " + " | ".join(f"T={T}" for T in Ts) + " |")
        md.append("|---|" + "---|" * len(Ts))
        for name in names:
            row = []
            for T in Ts:
                r = next((r for r in rs if r["name"] == name and r["T"] == T), None)
                row.append("" if r is None else _cell_text(r))
            md.append(f"| {name} | " + " | ".join(row) + " |")
        md.append("\n" + SOLVED_LINE.format(n=rs[0]["recipe"].get("test_size", "the")))
        panels = [(T, sorted([r for r in rs if r["T"] == T], key=lambda r: order.get(r["row"], 99)))
                  for T in Ts]
        _curves(os.path.join(out, f"curves_{task}.png"), panels,
                lambda T, rr: f"{task}, T={T}: test loss ({rr[0]['seeds']} seeds)", plt)
    paper = [r for r in runs if r["paper"]]
    if paper:
        md += claims_table(runs)
        md.append("\n" + SOLVED_LINE.format(n=paper[0]["recipe"].get("test_size", "the")))
        panels = [((r["name"], r["task"], r["T"]), [r]) for r in paper]
        _curves(os.path.join(out, "curves_paper.png"), panels,
                lambda k, rr: f"{k[0]}: {k[1]}, T={k[2]} ({rr[0]['seeds']} seeds)", plt)
    trained = [r for r in runs if r.get("trained_log10_flow")]
    if trained:
        groups = {}
        for r in trained:
            if r["paper"]:
                groups.setdefault(("paper", r["task"], r["T"]), []).append(r)
        for task in sorted({r["task"] for r in grid}):
            Tmax = max(r["T"] for r in grid if r["task"] == task)
            groups[("grid", task, Tmax)] = [r for r in grid if r["task"] == task and r["T"] == Tmax]
        keys = sorted(groups, key=lambda k: (k[0] != "grid", k[1], k[2]))
        cols = min(len(keys), 2)
        nrows = -(-len(keys) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(7.5 * cols, 4.6 * nrows), squeeze=False)
        for ax in axes.flat[len(keys):]:
            ax.set_visible(False)
        for ax, key in zip(axes.flat, keys):
            for i, r in enumerate(groups[key]):
                lg = np.asarray([np.nan if v is None else v for v in r["trained_log10_flow"]], float)
                ax.plot(np.arange(len(lg))[::-1], lg, lw=1.2,
                        label=f"{r['name']} ({'solved' if r['solved'] else 'not solved'})", **line_style(i))
            ax.set_xlabel("T - 1 - t (steps back from the end)")
            ax.set_ylabel("log10 ||dL / d carry_t|| after training")
            ax.set_title(f"{'paper rows' if key[0] == 'paper' else 'equal budget'}: {key[1]}, T={key[2]} "
                         "(seed with the median loss)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6.5, ncol=1 if len(groups[key]) <= 12 else 2)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "gradient_flow_trained.png"), dpi=110)
        plt.close(fig)
        md.append("\n`gradient_flow_trained.png`: `log10 ||dL/dcarry_t||` of the trained networks (the "
                  "seed with the median final loss) on 64 test sequences, for the longest T of each "
                  "task and every paper row: it separates the failures whose gradient vanishes before "
                  "the first marker from those whose gradient reaches it but that still did not learn.")
    if grid:
        md.append("\n" + literature_comparison(runs))
    notes = os.path.join(out, "notes.md")
    if os.path.exists(notes):  # the analysis written after reading the figures (kept by --replot)
        with open(notes) as fh:
            md.append("\n" + fh.read())
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(text)
    return text


def summary_table(runs: list[dict]) -> str:
    """A short plain table for the terminal (``make demo``)."""
    lines = []
    if runs and all(r["task"] == "adding" for r in runs):
        lines += ["The adding problem: T steps of (value, marker) pairs; output the sum of the two marked "
                  "values at the end.", ""]
    lines += [f"{'task':<7} {'T':>5}  {'cell':<22} {'seeds solved':>12}  {'median steps-to-solve':>21}  "
              f"{'median test loss / baseline':>27}"]
    for r in runs:
        s = r["steps_to_solve_median"]
        lines.append(f"{r['task']:<7} {r['T']:>5}  {r['name']:<22} {r['solved_seeds']:>6}/{r['seeds']:<5}  "
                     f"{('not within ' + str(r['steps'])) if s is None else f'{s:.0f}':>21}  "
                     f"{_fmt(r['ratio_median'], '.3f'):>27}")
    lines.append("")
    lines.append("solved: a seed's loss on held-out test sequences falls below 0.1 x the no-memory "
                 "baseline (adding: MSE 1/6,\nwhat always predicting 1.0 scores) at one of its "
                 "evaluations; a row is solved when at least half its seeds are.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- main

GRIDS = {
    # flow_T, flow_specs, flow_H: part 1; train_specs, adding, copy, steps, H, seeds: part 2
    # quick: every compiled program costs seconds of CPU (about 16 s per trained row, 4 s per
    # gradient flow on a 2-core x86), so the demo trains 3 rows and draws no gradient flow
    "quick": dict(flow_T=200, flow_H=16, flow_specs=[],
                  train_specs=["elman-orth", "lstm-fb1", "lstm-chrono"], adding=[50], copy=[],
                  steps=300, H=24, seeds=4, eval_every=25, test_size=200, paper=False,
                  trained_flow=False),
    "full": dict(flow_T=1000, flow_H=64, flow_specs=None,  # None: every row with flow=True
                 train_specs=None,  # None: every row with train=True
                 adding=[50, 100, 200, 500, 1000], copy=[50, 100, 200], steps=1000, H=64, seeds=4,
                 eval_every=50, test_size=500, paper=True, trained_flow=True,
                 # the copy task at T=500 only for the long-memory cells and the chrono LSTM
                 copy_long=([500], ["lstm-chrono", "indrnn", "lru", "mingru", "minlstm", "exprnn",
                                    "cornn", "lem", "linoss", "rglru", "slstm", "mlstm",
                                    "antisymmetric", "lipschitz"])),
}


class Planned(NamedTuple):
    """A training row of the study: the row, its task, its recipe and its seeds."""

    spec: Spec
    task: bench.Task
    recipe: bench.Recipe
    seeds: tuple


def plan(grid: dict, *, cells: list[str] | None, steps: int | None, hidden: int | None, lr: float,
         seeds: int | None, eval_every: int | None, test_size: int | None,
         paper_steps: int | None) -> list[Planned]:
    """The training rows of a grid: the equal-budget grid, then the paper rows."""
    avail = specs()
    names = cells if cells is not None else [s.name for s in avail if s.train and (
        grid["train_specs"] is None or s.name in grid["train_specs"])]
    n_seeds = seeds or grid["seeds"]
    out = []
    for n in names:
        s = spec_by_name(n)
        if s.paper is not None:
            continue
        wanted = [("adding", T) for T in grid["adding"]] + [("copy", T) for T in grid["copy"]]
        if "copy_long" in grid and n in grid["copy_long"][1]:
            wanted += [("copy", T) for T in grid["copy_long"][0]]
        recipe = dataclasses.replace(GRID_RECIPE, steps=steps or grid["steps"], hidden_size=hidden or grid["H"],
                                     lr=lr, eval_every=eval_every or grid["eval_every"],
                                     test_size=test_size or grid["test_size"])
        for task, T in wanted:
            out.append(Planned(s, bench.tasks.get(task, T), recipe, tuple(range(n_seeds))))
    paper_names = [n for n in names if spec_by_name(n).paper is not None] if cells is not None else (
        [s.name for s in avail if s.paper is not None] if grid["paper"] else [])
    for n in paper_names:
        s = spec_by_name(n)
        rc = s.recipe
        budget = paper_steps or rc.steps
        recipe = dataclasses.replace(rc, steps=budget, eval_every=min(eval_every or rc.eval_every, budget),
                                     test_size=test_size or grid["test_size"])
        for task, T in s.runs:
            out.append(Planned(s, bench.tasks.get(task, T), recipe, tuple(range(max(3, seeds or grid["seeds"])))))
    return out


REFERENCE_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "rnnjax", "bench", "reference",
                             "vanishing.json")


def export_reference(results: str, out: str = REFERENCE_OUT) -> int:
    """Write the committed study's rows (``results``: its ``results.json``) as ``rnnjax.bench``'s
    reference rows: every record with its per-seed values and held-out curves (5 significant
    digits), the gradient-flow spans instead of the whole flows, and the study's machine."""
    with open(results) as fh:
        data = json.load(fh)
    meta = data["meta"]

    def sig(v):
        return None if v is None else float(f"{v:.5g}")

    rows = []
    for r in data["runs"]:
        lg = r.get("trained_log10_flow")
        finite = [v for v in (lg or []) if v is not None]
        rec = {k: v for k, v in r.items() if k not in ("train_loss_median", "trained_log10_flow", "resumed",
                                                         "test_loss")}
        rec["test_loss"] = [[sig(v) for v in s] for s in r["test_loss"]]
        rec["flow_span_trained"] = (lg[0] - lg[-1]) if lg and lg[0] is not None and lg[-1] is not None else (
            (finite[0] - finite[-1]) if len(finite) > 1 else None)
        rec["flow_span_at_init"] = None
        rec["machine"] = meta["machine"]
        rec["goal"] = "min"
        rows.append(rec)
    ref_meta = {k: meta[k] for k in ("command", "machine", "versions")}
    ref_meta["command"] = meta.get("continue_command", meta["command"])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"meta": ref_meta, "rows": rows}, fh, separators=(",", ":"), allow_nan=False)
    print(f"wrote {len(rows)} reference rows to {out} ({os.path.getsize(out) / 1e6:.2f} MB)")
    return 0


def _versions() -> str:
    import importlib.metadata as md

    out = [f"python {platform.python_version()}"]
    for pkg in ("jax", "jaxlib", "optax", "numpy", "rnnjax"):
        try:
            out.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(out)


def main(argv=None) -> int:
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true",
                   help="the demo grid (what `make demo` runs: 3 cells, adding T=50, 4 seeds, 300 steps; "
                        "about 40 s of CPU time on a 2-core x86); the default when neither is given")
    g.add_argument("--full", action="store_true",
                   help="the whole study: every cell, adding T=50..1000, copy T=50..500, 1000 steps, "
                        "4 seeds, plus the paper rows (hours on 2 CPU cores; use --workdir)")
    p.add_argument("--out", default="out/vanishing", help="output directory (results.json, results.md, plots)")
    p.add_argument("--workdir", default=None,
                   help="resumable working directory: finished rows are read back, an interrupted row "
                        "resumes from the engine's checkpoints in <workdir>/<task>-T<T>-<row>/; "
                        "None: no resume")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per equal-budget row (None: the grid's, 300 quick / 1000 full)")
    p.add_argument("--paper-steps", type=int, default=None,
                   help="step budget of every paper row (None: each row's own, stated in the claims table)")
    p.add_argument("--hidden", type=int, default=None,
                   help="hidden size of the equal-budget rows (None: the grid's, 24 quick / 64 full)")
    p.add_argument("--cells", default=None,
                   help="comma-separated rows to train, e.g. lstm-fb1,indrnn-paper (None: the grid's); "
                        "no gradient flow at initialisation is drawn then; known: "
                        + ", ".join(s.name for s in specs()))
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per row (None: 4, which costs what 3 cost on 2 devices, as a sweep is "
                        "padded to a multiple of the device count; paper rows at least 3)")
    p.add_argument("--lr", type=float, default=1e-2,
                   help="Adam learning rate of the equal-budget rows (clip norm 1); paper rows use "
                        "their own optimizer, lr, H and batch")
    p.add_argument("--eval-every", type=int, default=None,
                   help="evaluate the held-out test loss every this many steps (None: the grid's, "
                        "25 quick / 50 full; paper rows their own)")
    p.add_argument("--test-size", type=int, default=None,
                   help="held-out test sequences (None: 200 quick / 500 full)")
    p.add_argument("--no-flow", action="store_true", help="skip the gradient flow at initialisation")
    p.add_argument("--flow-only", action="store_true",
                   help="only part 1: the gradient flow at initialisation of every cell (minutes), "
                        "no training rows")
    p.add_argument("--finished-only", action="store_true",
                   help="train nothing: write the results of the rows already finished in --workdir "
                        "and list the others as pending (to commit a study that is still running)")
    p.add_argument("--export-reference", action="store_true",
                   help="only write --out/results.json's rows as rnnjax.bench's reference rows "
                        "(rnnjax/bench/reference/vanishing.json)")
    p.add_argument("--replot", action="store_true",
                   help="only rewrite results.md and the plots from --out/results.json")
    args = p.parse_args(argv)
    path = os.path.join(args.out, "results.json")
    if args.export_reference:
        if not os.path.exists(path):
            p.error(f"--export-reference: no {path}")
        return export_reference(path)
    if args.replot:
        if not os.path.exists(path):
            p.error(f"--replot: no {path}")
        with open(path) as fh:
            data = json.load(fh)
        if data["runs"] and "per_seed" not in data["runs"][0]:
            p.error(f"--replot: {path} is from the single-seed study; rerun the study to regenerate it")
        print(write_outputs(args.out, data["flows"], data["runs"], data["meta"]))
        return 0
    for name in ("steps", "paper_steps", "hidden", "eval_every", "test_size"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {v}")
    if args.seeds is not None and args.seeds < 1:
        p.error(f"--seeds must be positive, got {args.seeds}")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    grid = dict(GRIDS["full" if args.full else "quick"])
    cells = args.cells.split(",") if args.cells else None
    try:
        for n in cells or []:
            spec_by_name(n)
        rows = plan(grid, cells=cells, steps=args.steps, hidden=args.hidden, lr=args.lr, seeds=args.seeds,
                    eval_every=args.eval_every, test_size=args.test_size, paper_steps=args.paper_steps)
    except ValueError as e:
        p.error(f"--cells: {e}")
    flow_names = [] if args.no_flow or cells is not None else (
        [s.name for s in specs() if s.flow] if grid["flow_specs"] is None else grid["flow_specs"])
    if args.flow_only:
        if args.no_flow or cells is not None:
            p.error("--flow-only draws every cell's flow: it cannot be combined with --no-flow or --cells")
        rows = []
    if not rows and not flow_names:
        p.error(f"no runs: the grid has none for --cells {args.cells}")
    pending = []
    partial_runs: list[dict] = []  # --finished-only: rows finished at a smaller budget than planned
    if args.finished_only:
        if args.workdir is None:
            p.error("--finished-only reads the finished rows from --workdir: give it")
        flow_names = []  # nothing is computed
        done = []
        for pl in rows:
            if finished_row(*pl, args.workdir) is not None:
                done.append(pl)
                continue
            pending.append(pl)
            partial = finished_row(*pl, args.workdir, shorter=True)
            if partial is not None:  # finished at a smaller budget: shown, and still pending
                partial_runs.extend(partial)
        rows = done

    import jax

    flows = []
    for n in flow_names:
        flows.append(flow_at_init(spec_by_name(n), grid["flow_T"], grid["flow_H"], 16, 0))
        f = flows[-1]
        print(f"[{time.perf_counter() - t_start:6.0f}s] flow {f['name']:<18} rate/step {_fmt(f['rate'], '.4f')}",
              flush=True)
    runs = []
    for pl in rows:
        new = train_row(*pl, workdir=args.workdir, trained_flow=grid["trained_flow"],
                        progress=args.full)
        for r in new:
            print(f"[{time.perf_counter() - t_start:6.0f}s] {r['task']:<6} T={r['T']:<5} {r['name']:<22} "
                  f"{r['solved_seeds']}/{r['seeds']} solved, median loss/baseline {_fmt(r['ratio_median'], '.3f')}"
                  + (" (read back from the workdir)" if r.get("resumed") else f" ({r['seconds']:.0f}s)"),
                  flush=True)
        runs += new
    runs += partial_runs
    argv_used = list(argv if argv is not None else sys.argv[1:])
    command = "python benchmarks/vanishing.py " + " ".join(argv_used)
    from rnnjax import machine as rnnjax_machine

    m = rnnjax_machine()
    meta = {"command": command,
            "machine": f"{m['cpu']} ({m['cpu_isa']}), {m['cpu_count']} cores, {m['platform']}; "
                       f"{len(jax.devices())} {jax.default_backend()} device(s)",
            "versions": _versions(), "backend": jax.default_backend(),
            "H": args.hidden or grid["H"], "flow_H": grid["flow_H"],
            "seconds": time.perf_counter() - t_start,
            "compute_seconds": float(sum(r["seconds"] for r in runs))}
    if args.finished_only:
        done_at = {(r["row"], r["task"], r["T"]): r["steps"] for r in partial_runs}
        meta["pending"] = [{"row": pl.spec.name, "task": pl.task.name, "T": pl.task.T,
                            **({"steps_done": done_at[(pl.spec.name, pl.task.name, pl.task.T)],
                                "steps": pl.recipe.steps}
                               if (pl.spec.name, pl.task.name, pl.task.T) in done_at else {})}
                           for pl in pending]
        meta["continue_command"] = "python benchmarks/vanishing.py " + " ".join(
            a for a in argv_used if a != "--finished-only")
    text = write_outputs(args.out, flows, runs, meta)
    if args.full:
        print(text)
    else:
        print(summary_table(runs))
    print(f"\nwrote {args.out}/results.json, results.md and plots in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    import rnnjax.sweep

    rnnjax.sweep.cpu_devices()  # one CPU device per core, so a row's seeds run on all cores
    sys.exit(main())
