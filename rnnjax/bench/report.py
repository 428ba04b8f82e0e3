"""Tables and plots of benchmark rows, with the reference rows shipped in the package next to them.

The reference rows are the records of the kit's gradient-vanishing study (every built-in cell on
adding T = 50..1000 and copy T = 50..500 under one recipe, 4 seeds each, and the papers' rows under
their own recipes), so a researcher's cell is compared without re-running the built-in cells. A
row joins a table only with rows trained under the same recipe on the same task and length.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources

import numpy as np

from rnnjax.bench.rows import Row

REFERENCE = "vanishing.json"
"""The reference rows' file in ``rnnjax/bench/reference/``."""


def reference_meta() -> dict:
    """Where the reference rows come from: the command, machine and versions of the study."""
    return _reference()["meta"]


def reference_rows(task: str | None = None, T: int | None = None) -> list[Row]:
    """The reference rows (optionally of one task and length)."""
    rows = [Row.from_dict({**d, "reference": True}) for d in _reference()["rows"]]
    return [r for r in rows if (task is None or r.task == task) and (T is None or r.T == T)]


_CACHE: dict = {}


def _reference() -> dict:
    if "data" not in _CACHE:
        text = resources.files("rnnjax.bench").joinpath("reference", REFERENCE).read_text()
        _CACHE["data"] = json.loads(text)
    return _CACHE["data"]


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _span(lg) -> float | None:
    """``log10 ||dL/d carry_0|| - log10 ||dL/d carry_T-1||``: decades the gradient gains (> 0) or
    loses (< 0) over the sequence."""
    if not lg or lg[0] is None or lg[-1] is None:
        return None
    return float(lg[0] - lg[-1])


def _flow_spans(r: Row) -> tuple[float | None, float | None]:
    init = r.get("flow_span_at_init", _span(r.get("log10_flow_at_init")))
    trained = r.get("flow_span_trained", _span(r.get("trained_log10_flow")))
    return init, trained


def _recipe_text(r: Row) -> str:
    rc = r["recipe"]
    extra = {k: v for k, v in rc.items() if k not in ("hidden_size", "optimizer", "lr", "clip_norm", "batch",
                                                    "steps", "eval_every", "test_size", "init", "lr_factors")}
    text = (f"{rc['steps']} steps of {rc['optimizer']} (lr {rc['lr']:g}, clip {rc['clip_norm']}), batch "
            f"{rc['batch']}, H={rc['hidden_size']}, held-out {rc['test_size']} sequences every "
            f"{rc['eval_every']} steps")
    if rc.get("lr_factors"):
        text += f", per-leaf lr factors {rc['lr_factors']}"
    if extra:
        text += ", " + ", ".join(f"{k} {v}" for k, v in extra.items())
    return text


def table(rows: Sequence[Row]) -> list[str]:
    """One markdown table of comparable rows (same task, length and recipe)."""
    first = rows[0]
    acc = first.get("goal") == "max"
    lengths = sorted({L for r in rows for p in r["per_seed"] for L in (p.get("at_lengths") or {})}, key=int)
    head = ["cell", "seeds solved", "median steps-to-solve",
            f"median final {first['metric']} (IQR)", "median / baseline",
            *[f"median at T={L}" for L in lengths],
            "flow at init", "flow trained", "time"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        iqr = r["final_loss_iqr"]
        spec = ".3f" if acc else ".3g"
        init, trained = _flow_spans(r)
        at = []
        for L in lengths:
            vals = [p.get("at_lengths", {}).get(L) for p in r["per_seed"]]
            ok = [v for v in vals if v is not None]
            at.append(_fmt(float(np.median(ok)) if ok else None, ".3f"))
        name = f"{r.name} (reference)" if r.reference else f"**{r.name}**"
        md.append("| " + " | ".join([
            name, f"{r['solved_seeds']}/{r['seeds']}{' ✓' if r.solved else ''}",
            _fmt(r["steps_to_solve_median"], ".0f"),
            f"{_fmt(r['final_loss_median'], spec)} ({_fmt(iqr[0], spec)}–{_fmt(iqr[1], spec)})",
            _fmt(r.get("ratio_median"), ".3g"), *at,
            _fmt(init, "+.1f"), _fmt(trained, "+.1f"),
            _fmt(r.get("seconds"), ".0f") + " s"]) + " |")
    return md


KEY = ("**Key.** A seed is *solved* at the first evaluation whose held-out metric passes the task's "
       "threshold (loss tasks: below 0.1 × the no-memory baseline; accuracy tasks: at least the task's "
       "solved accuracy); a row is solved (✓) when at least half its seeds are. *median steps-to-solve*: "
       "— when half the seeds are unsolved within the budget. *flow*: log10 ‖dL/dh_0‖ − log10 "
       "‖dL/dh_T−1‖, the decades the gradient of the loss gains (+) or loses (−) from the last step back "
       "to the first (at initialisation; after training, the seed with the median final metric); — : "
       "not measured. Reference rows come from the kit's committed study (machine and command below); "
       "they sit only in tables whose recipe, task and length are theirs.")


def groups(rows: Sequence[Row]) -> list[list[Row]]:
    """Rows grouped by (task, length, recipe), in first-seen order."""
    out: dict[tuple, list[Row]] = {}
    for r in rows:
        out.setdefault(r.recipe_key(), []).append(r)
    return list(out.values())


def report(rows: Sequence[Row], reference: bool = True, out: str | None = None, *,
           title: str = "Benchmark", command: str | None = None) -> str:
    """Markdown tables of ``rows`` with the reference rows of the same task, length and recipe
    next to them (``reference=False``: without), and with ``out`` the files ``results.md``,
    ``rows.json`` and one plot per table (``curves_<task>_T<T>_<i>.png``: the held-out metric over
    training, median and min-max band over seeds; needs the ``plot`` extra).

    Reference rows of the same task and length trained under another recipe get a table of their
    own under the user's, labelled as not comparable: no row shares a table with one trained
    differently.
    """
    rows = list(rows)
    if not all(isinstance(r, Row) for r in rows):
        raise TypeError("rows must be bench.Row objects (what bench.run returns)")
    if not rows:
        raise ValueError("rows is empty: nothing to report")
    md = [f"# {title}\n"]
    if command:
        md.append(f"Command: `{command}`  ")
    machines = sorted({r.get("machine") for r in rows if r.get("machine")})
    if machines:
        md.append(f"Machine: {'; '.join(machines)}  ")
    md.append("")
    plots = []
    for i, group in enumerate(groups(rows)):
        first = group[0]
        ref: list[Row] = []
        other: list[Row] = []
        if reference:
            key = first.recipe_key()
            for r in reference_rows(first.task, first.T):
                (ref if r.recipe_key() == key else other).append(r)
        md.append(f"## {first.task}, T={first.T}: {_recipe_text(first)}\n")
        md += table(group + ref)
        md.append("")
        if other:  # the same task and length under another recipe: shown apart, never mixed in
            for sub in groups(other):
                md.append(f"Reference rows on {first.task}, T={first.T} under another recipe (not comparable "
                          f"with the table above): {_recipe_text(sub[0])}\n")
                md += table(sub)
                md.append("")
        if out is not None:
            name = f"curves_{first.task}_T{first.T}_{i}.png"
            if _plot(os.path.join(out, name), group, ref, f"{first.task}, T={first.T}"):
                plots.append(name)
                md.append(f"![{first.task} T={first.T}]({name})\n")
    md.append(KEY + "\n")
    if reference:
        meta = reference_meta()
        md.append(f"Reference rows: `{meta['command']}` on {meta['machine']} ({meta['versions']}).\n")
    text = "\n".join(md)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "results.md"), "w") as fh:
            fh.write(text)
        from rnnjax.bench.rows import save

        save(rows, os.path.join(out, "rows.json"))
    return text


def _plot(path: str, rows: Sequence[Row], ref: Sequence[Row], title: str) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    acc = rows[0].get("goal") == "max"
    for r in [*rows, *ref]:
        steps = np.asarray(r["eval_steps"], float)
        v = np.asarray([[np.nan if x is None else x for x in s] for s in r["test_loss"]], float)
        if not acc:
            v = v / r["baseline"]
        with np.errstate(invalid="ignore"), _quiet():
            med, lo, hi = np.nanmedian(v, axis=0), np.nanmin(v, axis=0), np.nanmax(v, axis=0)
        user = not r.reference
        line, = ax.plot(steps, med, lw=2.0 if user else 1.0, ls="-" if user else "--",
                        label=f"{r.name}{'' if user else ' (ref)'} ({r['solved_seeds']}/{r['seeds']})")
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.12 if user else 0.05, lw=0)
    thr = rows[0]["threshold"]
    if acc:
        ax.axhline(thr, color="k", ls=":", lw=1.0)
        ax.axhline(rows[0]["baseline"], color="0.4", lw=0.8)
        ax.set_ylabel("held-out accuracy (median, band: min-max over seeds)", fontsize=8)
    else:
        ax.set_yscale("log")
        ax.axhline(1.0, color="0.4", lw=0.8)
        ax.axhline(thr / rows[0]["baseline"], color="k", ls=":", lw=1.0)
        ax.set_ylabel("held-out loss / no-memory baseline\n(median, band: min-max over seeds)", fontsize=8)
    ax.set_xlabel("training step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6.5, ncol=1 if len(rows) + len(ref) <= 12 else 2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


class _quiet:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
