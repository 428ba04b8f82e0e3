"""State tracking and associative recall: every built-in cell on every task over a learning-rate grid
x seeds, with learning-rate robustness, length generalisation, and the papers' claims.

Every (cell, task) row is ONE ``rnnjax.bench`` row: a ``run_sweep`` over 5 log-spaced learning rates
x 3 seeds (15 configurations in one compiled program). Per task the report gives, per cell, the best
learning rate's median held-out accuracy and solved seeds, the **robustness** (the fraction of the
learning-rate grid whose row is solved: at least half its seeds reach the task's solved accuracy),
and the accuracy at 2x and 4x the training length; and a plot of accuracy against learning rate,
one line per cell. The claims rows test, at a budget that fits two CPU cores:

- Grazzi et al. (ICLR 2025): diagonal linear recurrences with eigenvalues in [0, 1] (minGRU,
  RG-LRU, DeltaNet, Gated DeltaNet) cannot learn parity; with [-1, 1] (``negative_eigenvalues``)
  they can;
- Delétang et al. (ICLR 2023): the LSTM solves parity and modular counting and generalises in
  length; so does the tanh RNN on these regular tasks;
- Liu et al. (NeurIPS 2023): an LSTM learns flip-flop with no error on the sparse test split;
- Arora et al. (ICLR 2024, Zoology): at a fixed state size, recurrent cells' MQAR accuracy falls as
  the number of key-value pairs grows;
- Beck et al. (NeurIPS 2024): sLSTM solves parity, mLSTM does not.

    python benchmarks/state_tracking.py --quick --out out/state      # minutes: 3 cells, 2 tasks
    python benchmarks/state_tracking.py --out benchmarks/results/state-tracking \\
        --workdir benchmarks/results/state-tracking-work            # hours on 2 cores; resumable
    # --finished-only writes the results of the rows finished so far (the study goes on)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import numpy as np

from rnnjax import bench

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
TASKS = ("parity", "modular_counting", "s3", "s5", "flip_flop", "mqar", "selective_copy", "induction_heads",
         "listops")
EXCLUDED = {"convlstm": "its inputs are images"}
GRIDS = {
    "full": dict(hidden=64, steps=1000, eval_every=100, test_size=256, seeds=3, batch=32, tasks=TASKS,
                 cells=None, claims=True, mqar_pairs=(2, 4, 8, 16)),
    "quick": dict(hidden=16, steps=60, eval_every=30, test_size=64, seeds=3, batch=16,
                  tasks=("parity", "flip_flop"), cells=("elman", "lstm", "mingru"), claims=False,
                  mqar_pairs=()),
}
NEGATIVE = ("mingru", "rglru", "deltanet", "gated_deltanet")
"""Cells with the ``negative_eigenvalues`` option (Grazzi et al. 2025)."""


def negative(name: str):
    """The built-in ``name`` with its eigenvalue range extended to [-1, 1], built as the built-in is."""
    import rnnjax
    from rnnjax.bench.core import TWO_LAYERS, _two_layers

    factory = getattr(rnnjax, name)

    def make(H: int, T: int):
        one = functools.partial(factory, H, negative_eigenvalues=True)
        return (_two_layers(one, TWO_LAYERS[name]) if name in TWO_LAYERS else one()), None

    make.__name__ = f"{name}-neg"
    return make


def mqar_task(pairs: int, T: int = 64, vocab: int = 64) -> bench.Task:
    """MQAR with ``pairs`` key-value pairs (Arora et al. 2024) at length ``T``."""
    from rnnjax.tasks import mqar, mqar_baseline

    gen = functools.partial(mqar, num_pairs=pairs, vocab_size=vocab)
    task = bench.tasks.from_generator("mqar", T, gen, vocab, vocab, mqar_baseline(vocab), 0.99,
                                      paper="Arora et al., Zoology, ICLR 2024")
    return task


def plan(grid: dict, cells: list[str] | None, tasks: list[str] | None):
    """``[(label, make, task, recipe), ...]``: the grid, then the claims rows."""
    from rnnjax import registry

    recipe = bench.Recipe(hidden_size=grid["hidden"], lr=LRS, clip=1.0, batch=grid["batch"], steps=grid["steps"],
                          eval_every=grid["eval_every"], test_size=grid["test_size"])
    names = list(cells or grid["cells"] or [n for n in registry.names() if n not in EXCLUDED])
    rows = []
    claims = grid["claims"] and cells is None and tasks is None
    for t in tasks or grid["tasks"]:
        task = bench.tasks.get(t)
        for n in names:
            rows.append((n, bench.builtin(n), task, recipe))
        if claims and t == "parity":
            for n in NEGATIVE:  # Grazzi et al.: [-1, 1] eigenvalues on parity
                rows.append((f"{n}-neg", negative(n), task, recipe))
        if claims and t == "mqar":
            for pairs in grid["mqar_pairs"]:  # Arora et al.: accuracy against the number of pairs
                if pairs == 8:
                    continue  # the grid's mqar row
                for n in ("lstm", "gru", "mingru", "rglru", "deltanet", "gated_deltanet", "mlstm"):
                    rows.append((f"{n}@pairs{pairs}", bench.builtin(n), mqar_task(pairs), recipe))
    return rows


# ------------------------------------------------------------------------------------- report


def summary(rows: list[dict]) -> dict:
    """Per (cell, task): the best learning rate, robustness, and length generalisation."""
    out: dict = {}
    for r in rows:
        key = (r["row"], r["task"], r["T"], r.get("pairs"))
        out.setdefault(key, []).append(r)
    table = {}
    for key, rs in out.items():
        rs = sorted(rs, key=lambda r: r["recipe"]["lr"])
        med = [r["final_loss_median"] if r["final_loss_median"] is not None else -1.0 for r in rs]
        best = rs[int(np.argmax(med))]
        at = {}
        for k in best["per_seed"][0].get("at_lengths", {}):
            vals = [p["at_lengths"][k] for p in best["per_seed"] if p["at_lengths"].get(k) is not None]
            at[k] = float(np.median(vals)) if vals else None
        table[key] = {"best_lr": best["recipe"]["lr"], "best_acc": best["final_loss_median"],
                      "best_solved": f"{best['solved_seeds']}/{best['seeds']}",
                      "robustness": sum(r["solved"] for r in rs) / len(rs), "n_lrs": len(rs), "at": at,
                      "lrs": [r["recipe"]["lr"] for r in rs], "acc_by_lr": [r["final_loss_median"] for r in rs],
                      "baseline": best["baseline"], "threshold": best["threshold"], "T": best["T"],
                      "seconds": sum(r["seconds"] for r in rs)}
    return table


def _f(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


def write(out: str, rows: list[dict], meta: dict) -> str:
    os.makedirs(out, exist_ok=True)
    table = summary(rows)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, allow_nan=False)
    md = ["# State tracking and associative recall\n",
          f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
          f"Recipe: {meta['recipe']}; learning rates {', '.join(f'{v:g}' for v in LRS)} x {meta['seeds']} "
          f"seeds per (cell, task), all in one sweep.\n"]
    if meta.get("pending"):
        md.append(f"**Partial results: {meta['n_done']} of {meta['n_done'] + len(meta['pending'])} rows are "
                  f"finished.** The study continues with\n\n    {meta['continue_command']}\n")
    md.append("Each entry: the best learning rate's median held-out accuracy on the scored steps "
              "(seeds solved at that rate) · **robustness** = the fraction of the learning-rate grid whose "
              "row is solved (at least half its seeds reach the task's solved accuracy) · median accuracy of "
              "the best rate at 2x and 4x the training length (length generalisation).\n")
    tasks = sorted({(k[1], k[2]) for k in table if "@" not in k[0]}, key=lambda t: TASKS.index(t[0])
                   if t[0] in TASKS else 99)
    for task, T in tasks:
        keys = [k for k in table if k[1] == task and k[2] == T and "@" not in k[0]]
        first = table[keys[0]]
        md.append(f"\n## {task} (T = {T}; chance/memoryless {first['baseline']:.3f}; solved at "
                  f"{first['threshold']:g})\n")
        extra = sorted({k for key in keys for k in table[key]["at"] if not k.isdigit()})
        head = ["cell", "best lr", "accuracy (solved)", "robustness", f"at {2 * T}", f"at {4 * T}",
                *[f"{e} split" for e in extra], "time"]
        md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key in keys:
            s = table[key]
            md.append("| " + " | ".join([
                key[0], f"{s['best_lr']:g}", f"{_f(s['best_acc'])} ({s['best_solved']})",
                f"{s['robustness']:.1f} ({round(s['robustness'] * s['n_lrs'])}/{s['n_lrs']})",
                _f(s["at"].get(str(2 * T))), _f(s["at"].get(str(4 * T))),
                *[_f(s["at"].get(e)) for e in extra], f"{s['seconds']:.0f} s"]) + " |")
        _plot(os.path.join(out, f"lr_{task}.png"), task, T, {k[0]: table[k] for k in keys})
        md.append(f"\nPlot: `lr_{task}.png` (median accuracy against learning rate, one line per cell).\n")
    pairs = [k for k in table if "@pairs" in k[0]]
    if pairs:
        md.append("\n## MQAR: accuracy against the number of key-value pairs (Arora et al. 2024)\n")
        cells = sorted({k[0].split("@")[0] for k in pairs})
        ns = sorted({int(k[0].split("@pairs")[1]) for k in pairs} | {8})
        md += ["| cell | " + " | ".join(f"{n} pairs" for n in ns) + " |", "|---|" + "---|" * len(ns)]
        for c in cells:
            vals = []
            for n in ns:
                k = next((k for k in table if (k[0] == f"{c}@pairs{n}") or (n == 8 and k[0] == c and k[1] == "mqar")),
                         None)
                vals.append("" if k is None else _f(table[k]["best_acc"]))
            md.append(f"| {c} | " + " | ".join(vals) + " |")
    md.append("\n" + claims(table))
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(text)
    return text


def claims(table: dict) -> str:
    """The claims table: each claim with the rows that test it, a verdict and the figures."""

    def get(cell, task):
        return next((v for k, v in table.items() if k[0] == cell and k[1] == task), None)

    def fig(cell, task, lengths=False):
        s = get(cell, task)
        if s is None:
            return None, "not run yet"
        text = f"{cell} {task}: best {_f(s['best_acc'])} at lr {s['best_lr']:g} ({s['best_solved']}), robustness " \
               f"{round(s['robustness'] * s['n_lrs'])}/{s['n_lrs']}"
        if lengths:
            text += f", at 2T {_f(s['at'].get(str(2 * s['T'])))}, 4T {_f(s['at'].get(str(4 * s['T'])))}"
        return s, text

    rows = []

    def verdict(ok, pending):
        return "pending" if pending else ("reproduced" if ok else "not reproduced at this budget")

    # Grazzi et al.
    parts, ok, pend = [], True, False
    for n in NEGATIVE:
        a, ta = fig(n, "parity")
        b, tb = fig(f"{n}-neg", "parity")
        parts += [ta, tb]
        pend |= a is None or b is None
        if a is not None and b is not None:
            ok &= a["robustness"] == 0 and b["robustness"] > 0
    rows.append(("Grazzi et al. 2025: eigenvalues in [0, 1] cannot learn parity; [-1, 1] can", parts,
                 verdict(ok, pend)))
    parts, pend, ok = [], False, True
    for c, t in (("lstm", "parity"), ("lstm", "modular_counting"), ("elman", "parity"), ("elman", "modular_counting")):
        s, text = fig(c, t, lengths=True)
        parts.append(text)
        pend |= s is None
        if s is not None:
            ok &= s["robustness"] > 0 and (s["at"].get(str(2 * s["T"])) or 0) >= s["threshold"]
    rows.append(("Delétang et al. 2023: the LSTM (and the tanh RNN) solve parity and modular counting and "
                 "generalise to longer inputs", parts, verdict(ok, pend)))
    s, text = fig("lstm", "flip_flop")
    sparse = None if s is None else s["at"].get("sparse")
    rows.append(("Liu et al. 2023: an LSTM learns flip-flop with no error on the sparse split",
                 [text + ("" if s is None else f", sparse split {_f(sparse, '.4f')}")],
                 verdict(sparse is not None and sparse >= 1.0, s is None)))
    mq = sorted((k for k in table if "@pairs" in k[0]), key=lambda k: (k[0].split("@")[0], int(k[0].split("@pairs")[1])))
    parts = [f"{k[0]}: {_f(table[k]['best_acc'])}" for k in mq]
    falls = True
    for c in {k[0].split("@")[0] for k in mq}:
        accs = [table[k]["best_acc"] or 0 for k in mq if k[0].startswith(c + "@")]
        falls &= accs == sorted(accs, reverse=True) or accs[0] > accs[-1]
    rows.append(("Arora et al. 2024: at a fixed state size MQAR accuracy falls as the pairs grow", parts or
                 ["not run yet"], verdict(falls, not mq)))
    a, ta = fig("slstm", "parity")
    b, tb = fig("mlstm", "parity")
    rows.append(("Beck et al. 2024: sLSTM solves parity, mLSTM does not", [ta, tb],
                 verdict(a is not None and b is not None and a["robustness"] > 0 and b["robustness"] == 0,
                         a is None or b is None)))
    md = ["## The papers' claims\n", "| claim | measured (best learning rate; robustness over 5 rates) | verdict |",
          "|---|---|---|"]
    for claim, parts, v in rows:
        md.append(f"| {claim} | {'; '.join(parts)} | {v} |")
    return "\n".join(md)


def _plot(path: str, task: str, T: int, by_cell: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    styles = ["-", "--", ":", "-."]
    for i, (cell, s) in enumerate(by_cell.items()):
        acc = [np.nan if v is None else v for v in s["acc_by_lr"]]
        ax.plot(s["lrs"], acc, marker="o", ms=3, lw=1.2, ls=styles[i % 4], label=cell)
    first = next(iter(by_cell.values()))
    ax.axhline(first["threshold"], color="k", ls=":", lw=1)
    ax.axhline(first["baseline"], color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (Adam, clip 1)")
    ax.set_ylabel("median held-out accuracy over seeds")
    ax.set_title(f"{task}, T={T}: accuracy against learning rate", fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 cells, parity and flip-flop, 60 steps (minutes)")
    p.add_argument("--out", default="out/state-tracking")
    p.add_argument("--workdir", default=None, help="resumable: finished rows are read back")
    p.add_argument("--cells", default=None, help="comma-separated built-in cells (default: all but convlstm)")
    p.add_argument("--tasks", default=None, help=f"comma-separated tasks (default: {','.join(TASKS)})")
    p.add_argument("--finished-only", action="store_true",
                   help="train nothing: write the results of the rows finished in --workdir")
    args = p.parse_args(argv)
    grid = GRIDS["quick" if args.quick else "full"]
    cells = args.cells.split(",") if args.cells else None
    tasks = args.tasks.split(",") if args.tasks else None
    try:
        rows = plan(grid, cells, tasks)
    except ValueError as e:
        p.error(str(e))
    if args.finished_only and not args.workdir:
        p.error("--finished-only reads the finished rows from --workdir: give it")
    from rnnjax import machine
    from rnnjax.bench.core import finished

    t0 = time.perf_counter()
    seeds = tuple(range(grid["seeds"]))
    records, pending = [], []
    for label, make, task, recipe in rows:
        if args.finished_only:
            got = finished(label, task, recipe, seeds, args.workdir)
            if got is None:
                pending.append(f"{label} {task.label}")
                continue
        else:
            got = bench.train_row(label, make, task, recipe, seeds, workdir=args.workdir, flow=False,
                                  trained_flow=False)
        for r in got:
            if "@pairs" in label:
                r["pairs"] = int(label.split("@pairs")[1])
        records += got
        if not args.finished_only:
            best = max((r["final_loss_median"] or 0) for r in got)
            print(f"[{time.perf_counter() - t0:6.0f}s] {task.label:<20} {label:<22} best median accuracy "
                  f"{best:.3f}; solved at {sum(r['solved'] for r in got)}/{len(got)} learning rates", flush=True)
    m = machine()
    meta = {"command": "python benchmarks/state_tracking.py " + " ".join(argv),
            "machine": f"{m['cpu']} ({m['cpu_isa']}), {m['cpu_count']} cores",
            "recipe": f"H={grid['hidden']}, Adam, clip 1, batch {grid['batch']}, {grid['steps']} steps, held-out "
                      f"{grid['test_size']} sequences every {grid['eval_every']} steps",
            "seeds": grid["seeds"], "pending": pending, "n_done": len(rows) - len(pending),
            "continue_command": "python benchmarks/state_tracking.py " + " ".join(
                a for a in argv if a != "--finished-only")}
    print(write(args.out, records, meta))
    return 0


if __name__ == "__main__":
    from rnnjax.sweep import cpu_devices

    cpu_devices()
    sys.exit(main())
