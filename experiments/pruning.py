"""Test accuracy against sparsity: magnitude pruning of an LSTM and a GRU on MNIST-1D, as one sweep.

A unidirectional cell (``--hidden`` units) reads the 40 steps of MNIST-1D (Greydanus 2020); its
outputs are pooled over time (mean and max, concatenated) into a dense readout. Its weight
matrices (``w_x`` and ``w_h``; ``--include``) are pruned by magnitude with the gradual schedule of
Zhu & Gupta (2017), ``s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(n dt))^3``, from ``s_i = 0`` at
``--prune-begin`` to the target ``s_f`` at ``--prune-end`` (fractions of ``--steps``), pruning
every ``--prune-every`` steps, then fine-tuned with the masks fixed. The pruning is
``rnnjax.prune``, the last link of the optimizer's Optax chain; the target sparsity is an array
leaf of its state, so all levels (0, 50, 80, 90, 95 % by default) and seeds of a cell are trained
by one ``rnnjax.sweep.run_sweep`` call (the cell type is static: one compiled group per cell).

Writes ``results.json``, ``results.md`` (the table: test accuracy per cell and sparsity, median
and range over seeds, the measured fraction of zero weights) and ``pruning.png`` (accuracy against
sparsity, and the test accuracy during training) to ``--out``::

    python experiments/pruning.py --out experiments/results/pruning
"""

from __future__ import annotations

import os
import sys

# This folder holds scripts named like packages (mnist1d, copy): search it after everything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [q for q in sys.path if os.path.abspath(q or ".") != _HERE] + [_HERE]

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax
import _common

INCLUDE = {
    "cell": lambda name, _: name.startswith("cell/") and name.rsplit("/", 1)[-1].startswith("w"),
    "w_h": lambda name, _: name == "cell/w_h",
    "all": rnnjax.losses.is_weight,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="experiments/results/pruning", help="output directory")
    p.add_argument("--workdir", default="runs/pruning",
                   help="the sweep's work directory, when the engine keeps one")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0 .. N-1 per (cell, sparsity)")
    p.add_argument("--steps", type=int, default=1500, help="training steps per run")
    p.add_argument("--cells", default="lstm,gru", help="comma-separated cells (see experiments/_common.py)")
    p.add_argument("--sparsities", default="0,0.5,0.8,0.9,0.95", help="comma-separated target sparsities")
    p.add_argument("--hidden", type=int, default=64, help="hidden size H")
    p.add_argument("--include", choices=sorted(INCLUDE), default="cell",
                   help="which weights to prune: the cell's w_x and w_h, only w_h, or every weight "
                        "(readout included)")
    p.add_argument("--scope", choices=("leaf", "global"), default="leaf",
                   help="each pruned matrix reaches the target, or one threshold over all of them")
    p.add_argument("--prune-begin", type=float, default=0.2, help="first pruning step, fraction of --steps")
    p.add_argument("--prune-end", type=float, default=0.7, help="last pruning step, fraction of --steps")
    p.add_argument("--prune-every", type=int, default=25, help="steps between pruning steps (dt)")
    p.add_argument("--batch", type=int, default=100, help="sequences per training step")
    p.add_argument("--lr", type=float, default=5e-3, help="peak Adam learning rate (cosine decay)")
    p.add_argument("--clip-norm", type=float, default=1.0, help="global gradient-norm clip")
    p.add_argument("--eval-every", type=int, default=250, help="evaluate every this many steps")
    p.add_argument("--data-seed", type=int, default=42, help="seed of the MNIST-1D generator")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    args.cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = sorted(set(args.cells) - set(_common.CELLS))
    if bad or not args.cells:
        p.error(f"--cells must name cells among {_common.CELLS}, got {bad or args.cells}")
    try:
        args.sparsities = [float(s) for s in args.sparsities.split(",")]
    except ValueError:
        p.error(f"--sparsities must be comma-separated numbers, got {args.sparsities!r}")
    if not all(0.0 <= s <= 1.0 for s in args.sparsities):
        p.error(f"--sparsities must lie in [0, 1], got {args.sparsities}")
    for name in ("seeds", "steps", "hidden", "prune_every", "batch", "eval_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.prune_begin <= args.prune_end <= 1.0:
        p.error(f"need 0 <= --prune-begin <= --prune-end <= 1, got {args.prune_begin}, {args.prune_end}")
    return args


def sweep(configs, init_fn, step_fn, batch_fn, *, steps, static, eval_fn, eval_every, workdir, progress, config):
    """``rnnjax.sweep.run_sweep`` with evaluation; returns ``(result, eval_metrics, eval_steps)``."""
    res = rnnjax.sweep.run_sweep(configs, init_fn, step_fn, batch_fn, steps=steps, static=static,
                                 eval_fn=eval_fn, eval_every=eval_every, workdir=workdir,
                                 config=config, progress=progress)
    return res, {k: np.asarray(v) for k, v in res.eval_metrics.items()}, np.asarray(res.eval_steps)


def build(args, data):
    """The engine's pieces: ``(init_fn, step_fn, batch_fn, eval_fn)`` over configurations."""
    readout = rnnjax.dense(10)
    include = INCLUDE[args.include]
    begin = int(round(args.prune_begin * args.steps))
    end = int(round(args.prune_end * args.steps))
    n_train = data.x_train.shape[1]

    def cell_of(config):
        return _common.make_cell(config["cell"], args.hidden, seq_len=data.x_train.shape[0])

    def tx_fn(config):
        opt = rnnjax.optimizer("adam", args.lr, clip_norm=args.clip_norm, schedule="cosine",
                               decay_steps=args.steps, end_factor=0.05)
        return rnnjax.pruned(opt, config["sparsity"], include=include, scope=args.scope,
                             begin_step=begin, end_step=end, frequency=args.prune_every)

    def logits(p, xs, config):
        _, hs = rnnjax.unroll(cell_of(config), p["cell"], xs)
        return readout.apply(p["readout"], jnp.concatenate([hs.mean(0), hs.max(0)], axis=-1))

    def init_fn(config):
        key = jax.random.key(config["seed"])
        kc, kr = jax.random.split(jax.random.fold_in(key, 0))
        params = {"cell": cell_of(config).init(kc, 1), "readout": readout.init(kr, 2 * args.hidden)}
        return rnnjax.TrainState.create(params, tx_fn(config), key=jax.random.fold_in(key, 2))

    def loss_fn(p, batch, key, config):
        del key
        xs, ys = batch
        out = logits(p, xs, config)
        return rnnjax.losses.categorical_cross_entropy(out, ys), {"accuracy": rnnjax.losses.accuracy(out, ys)}

    def batch_fn(config, step):
        idx = rnnjax.tasks.batch_indices(jax.random.fold_in(jax.random.key(config["seed"]), 1), step,
                                         n_train, args.batch)
        return data.x_train[:, idx], data.y_train[idx]

    def eval_fn(p, config):
        out = logits(p, data.x_test, config)
        return {"loss": rnnjax.losses.categorical_cross_entropy(out, data.y_test),
                "accuracy": rnnjax.losses.accuracy(out, data.y_test),
                "zero_fraction": rnnjax.pruning.sparsity(p, include=include)}

    step_fn = rnnjax.sweep.sweep_step(loss_fn, tx_fn, has_aux=True)
    return init_fn, step_fn, batch_fn, eval_fn, (begin, end)


def plot(path, table, curves, eval_steps, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    colors = {"lstm": "tab:blue", "gru": "tab:orange"}
    for cell in args.cells:
        rows = [r for r in table if r["cell"] == cell]
        x = np.asarray([100 * r["sparsity"] for r in rows])
        med = np.asarray([r["accuracy"]["median"] for r in rows])
        ax.plot(x, med, "o-", color=colors.get(cell), label=cell.upper())
        ax.fill_between(x, [r["accuracy"]["min"] for r in rows], [r["accuracy"]["max"] for r in rows],
                        color=colors.get(cell), alpha=0.25, lw=0)
    ax.axhline(rnnjax.tasks.CHANCE_ACCURACY, color="gray", ls=":", lw=1, label="chance")
    ax.set_xlabel(f"sparsity of the pruned weights ({args.include}), %")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"MNIST-1D, H={args.hidden}: accuracy vs sparsity\n(median, min-max over {args.seeds} seeds)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    ax = axes[1]
    cmap = plt.cm.viridis(np.linspace(0, 0.9, len(args.sparsities)))
    steps = np.asarray(eval_steps)
    for cell, ls in zip(args.cells, ("-", "--", ":", "-.")):
        for s, c in zip(args.sparsities, cmap):
            acc = np.asarray(curves[(cell, s)])  # [seeds, n_evals]
            ax.plot(steps, np.median(acc, 0), ls, color=c, marker="o" if len(steps) == 1 else None,
                    label=f"{cell} {100 * s:.0f}%")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy (median over seeds)")
    ax.set_title(f"during training: pruning from step {int(round(args.prune_begin * args.steps))} "
                 f"to {int(round(args.prune_end * args.steps))}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("flags:", json.dumps(vars(args)), flush=True)
    data = rnnjax.tasks.mnist1d(seed=args.data_seed)
    init_fn, step_fn, batch_fn, eval_fn, (begin, end) = build(args, data)
    configs = rnnjax.sweep.grid(cell=args.cells, sparsity=args.sparsities, seed=list(range(args.seeds)))
    res, ev, ev_steps = sweep(configs, init_fn, step_fn, batch_fn, steps=args.steps, static=("cell",),
                              eval_fn=eval_fn, eval_every=args.eval_every, workdir=args.workdir,
                              progress=not args.no_progress,
                              config={"script": "pruning", **{k: v for k, v in vars(args).items()
                                                              if k not in ("out", "workdir", "no_progress")}})
    table, curves = [], {}
    n_pruned = None
    for cell in args.cells:
        for s in args.sparsities:
            idx = [i for i, c in enumerate(configs) if c["cell"] == cell and c["sparsity"] == s]
            st = res.state(idx[0])
            cur = float(rnnjax.pruning.current_sparsity(st.opt_state))
            n_pruned = int(sum(np.size(m) for m in jax.tree.leaves(rnnjax.pruning.masks(st.opt_state))))
            row = {"cell": cell, "sparsity": s, "mask_sparsity_seed0": cur, "pruned_weights_total": n_pruned,
                   "kept_weights": int(round((1 - cur) * n_pruned)),
                   "params_total": int(sum(np.size(x) for x in jax.tree.leaves(st.params)))}
            for k in ("accuracy", "loss", "zero_fraction"):
                v = ev[k][idx, -1]
                row[k] = {"median": float(np.median(v)), "min": float(np.min(v)), "max": float(np.max(v)),
                          "seeds": v.tolist()}
            table.append(row)
            curves[(cell, s)] = ev["accuracy"][idx].tolist()
    plot(out / "pruning.png", table, curves, ev_steps, args)
    wall = time.time() - t_start
    results = {"flags": vars(args), "command": "python experiments/pruning.py " + " ".join(argv),
               "prune_steps": {"begin": begin, "end": end, "every": args.prune_every},
               "wall_time_s": wall,
               "machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpu_count": os.cpu_count(), "jax": jax.__version__,
                           "backend": jax.default_backend(), "loadavg_end": os.getloadavg()},
               "eval_steps": np.asarray(ev_steps).tolist(), "table": table,
               "test_accuracy_curves": {f"{c}/{s}": v for (c, s), v in curves.items()},
               "train_loss": np.asarray(res.metrics["loss"]).tolist()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [f"# Magnitude pruning on MNIST-1D: test accuracy against sparsity", "", "Made with", "",
             f"    python experiments/pruning.py {' '.join(argv)}", "",
             f"Wall time {wall:.0f} s ({platform.processor() or platform.machine()}, {os.cpu_count()} "
             f"cores, jax {jax.__version__}); load average at the end {os.getloadavg()[0]:.1f}.", "",
             f"Unidirectional cells, H={args.hidden}, mean+max pooling and a dense readout; Adam (peak lr "
             f"{args.lr}, cosine decay, clip {args.clip_norm}), batch {args.batch}, {args.steps} steps; "
             f"{args.seeds} seeds. Pruned: {args.include} weights ({n_pruned} weights per model), scope "
             f"{args.scope}; gradual schedule (Zhu & Gupta 2017) from step {begin} to {end}, every "
             f"{args.prune_every} steps, then fine-tuning with fixed masks. One run_sweep call: the "
             f"sparsity is a swept array leaf of the optimizer state; the cell is static (one compiled "
             f"group per cell).", "",
             "| cell | target sparsity | zero weights (measured) | test accuracy | test loss |",
             "|---|---|---|---|---|"]
    for r in table:
        a, l, z = r["accuracy"], r["loss"], r["zero_fraction"]
        lines.append(f"| {r['cell']} | {100 * r['sparsity']:.0f}% | {100 * z['median']:.1f}% | "
                     f"{a['median']:.4f} [{a['min']:.4f}, {a['max']:.4f}] | {l['median']:.4f} |")
    lines += ["", "## What it shows", ""]
    for cell in args.cells:
        rows = [r for r in table if r["cell"] == cell]
        dense = rows[0]["accuracy"]["median"]
        lines.append(f"- {cell.upper()}: dense ({100 * rows[0]['sparsity']:.0f}%) {dense:.4f}; "
                     + "; ".join(f"{100 * r['sparsity']:.0f}%: {r['accuracy']['median']:.4f} "
                                 f"({r['accuracy']['median'] - dense:+.4f})" for r in rows[1:]) + ".")
    lines += ["", "`pruning.png`: left, test accuracy against the target sparsity (median and min-max "
              "band over seeds); right, test accuracy during training (median over seeds)."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(args.cells) - 3:]))
    print(f"[pruning] done in {wall:.0f} s; results in {out}", flush=True)
    return results


if __name__ == "__main__":
    main()
