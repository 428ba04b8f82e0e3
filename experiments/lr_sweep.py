"""Learning rate x gradient clipping on the adding problem, as one sweep (Pascanu et al. 2013).

Trains a recurrent network on the adding problem for every pair of (learning rate, clip norm):
16 log-spaced learning rates times 4 clip norms (``inf``: no clipping) by default, all at once
with ``rnnjax.sweep.run_sweep``, and plots the final loss against the learning rate, one line per
clip norm. Without clipping, the loss blows up (or training stalls on skipped non-finite steps)
beyond some learning rate; clipping the global gradient norm keeps larger rates stable: the
picture of how clipping widens the range of usable learning rates (Pascanu, Mikolov & Bengio,
"On the difficulty of training recurrent neural networks", ICML 2013).

    python experiments/lr_sweep.py --out out/lr_sweep
    python experiments/lr_sweep.py --steps 50 --n-lr 6 --out /tmp/lr_sweep   # quick

Writes ``lr_sweep.png`` (final loss vs learning rate), ``lr_sweep_curves.png`` (all loss curves)
and ``lr_sweep.json`` (the flags, every configuration and its final loss) to ``--out``. The sweep
itself runs in ``--workdir`` through the engine (checkpoints of the stacked states, metrics,
TensorBoard events, ``results.json`` with each configuration's ``params_sha256``): the same
command after an interruption resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# experiments/ holds scripts named like standard modules (copy.py): keep it off the import path,
# and put the repository root on it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="out/lr_sweep", help="output directory of the plots and table")
    p.add_argument("--workdir", default="runs/lr_sweep",
                   help="the sweep's work directory (checkpoints, metrics, results.json); the "
                        "same command with the same workdir resumes")
    p.add_argument("--ckpt-every", type=int, default=100, help="checkpoint every this many steps")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--cell", choices=["tanh", "lstm"], default="tanh",
                   help="tanh Elman RNN (as in Pascanu et al.) or LSTM")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "momentum", "adam", "rmsprop"],
                   help="rnnjax.optimizer name")
    p.add_argument("--hidden", type=int, default=32, help="hidden size H")
    p.add_argument("--T", type=int, default=50, help="sequence length of the adding problem")
    p.add_argument("--batch", type=int, default=32, help="batch size")
    p.add_argument("--steps", type=int, default=300, help="training steps")
    p.add_argument("--n-lr", type=int, default=16, help="number of learning rates")
    p.add_argument("--lr-min", type=float, default=1e-4, help="smallest learning rate")
    p.add_argument("--lr-max", type=float, default=1.0, help="largest learning rate")
    p.add_argument("--clip-norms", default="inf,10,1,0.1",
                   help="comma-separated global-norm clip thresholds (inf: no clipping)")
    p.add_argument("--seed", type=int, default=0, help="seed of the params (data: seed + 1)")
    p.add_argument("--last", type=int, default=20, help="final loss = mean over the last steps")
    p.add_argument("--cpu-devices", type=int, default=os.cpu_count() or 1,
                   help="on CPU, JAX devices to shard the sweep over (one per core)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    print("flags:", json.dumps(vars(args)), flush=True)
    import jax

    if args.cpu_devices > 1:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before JAX starts
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import rnnjax
    from rnnjax import sweep

    H = args.hidden
    cell = rnnjax.elman(H) if args.cell == "tanh" else rnnjax.lstm(H)
    readout = rnnjax.dense(1)
    clips = [float(c) for c in args.clip_norms.split(",")]
    lrs = np.logspace(np.log10(args.lr_min), np.log10(args.lr_max), args.n_lr)
    configs = sweep.grid(clip_norm=clips, learning_rate=lrs)

    def make_tx(config):
        return rnnjax.optimizer(args.optimizer, config["learning_rate"], clip_norm=config["clip_norm"])

    def init_fn(config):
        k1, k2, k3 = jax.random.split(jax.random.key(args.seed), 3)
        params = {"cell": cell.init(k1, 2), "readout": readout.init(k2, H)}
        return rnnjax.TrainState.create(params, make_tx(config), key=k3)

    def loss_fn(params, batch, key, config):
        xs, ys = batch
        _, hs = rnnjax.unroll(cell, params["cell"], xs)
        return rnnjax.losses.mse(readout.apply(params["readout"], hs[-1]), ys)

    data_key = jax.random.key(args.seed + 1)

    def batch_fn(config, step):  # the same batches for every configuration
        return rnnjax.tasks.adding(jax.random.fold_in(data_key, step), args.batch, args.T)

    print(f"{len(configs)} configurations on {len(jax.devices())} device(s)", flush=True)
    run_config = {k: v for k, v in vars(args).items() if k not in ("out", "cpu_devices")}
    result = sweep.run_sweep(configs, init_fn, sweep.sweep_step(loss_fn, make_tx), batch_fn,
                             steps=args.steps, workdir=args.workdir, ckpt_every=args.ckpt_every,
                             config=run_config, progress=not args.no_progress)
    final = result.final_values("loss", last=min(args.last, args.steps))
    skipped = result.metrics["nonfinite"].sum(axis=1)
    print(result.markdown(last=min(args.last, args.steps)))

    os.makedirs(args.out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cap = 10.0 * rnnjax.tasks.ADDING_BASELINE_MSE  # diverged / non-finite runs drawn at the cap
    for c_i, clip in enumerate(clips):
        idx = [i for i, c in enumerate(configs) if c["clip_norm"] == clip]
        y = np.array([final[i] for i in idx])
        shown = np.where(np.isfinite(y), np.minimum(y, cap), cap)
        label = "no clipping" if np.isinf(clip) else f"clip norm {clip:g}"
        line, = ax.plot(lrs, shown, ("o-", "s--", "^-.", "d:")[c_i % 4], ms=5 - c_i % 3,
                        lw=1.4, alpha=0.85, label=label)
        bad = [j for j, i in enumerate(idx) if not np.isfinite(final[i]) or final[i] >= cap or skipped[i] > 0]
        ax.plot(lrs[bad], shown[bad], "x", color=line.get_color(), ms=9)
    ax.axhline(rnnjax.tasks.ADDING_BASELINE_MSE, color="gray", ls="--", lw=1,
               label="predict 1 (MSE 1/6)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"final loss (mean of last {min(args.last, args.steps)} steps)")
    ax.set_title(f"adding problem T={args.T}, {args.cell} H={H}, {args.optimizer}, "
                 f"{args.steps} steps\n(x: diverged, capped at {cap:.2g}, or had skipped non-finite steps)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "lr_sweep.png"), dpi=120)
    result.plot(os.path.join(args.out, "lr_sweep_curves.png"),
                title=f"loss of {len(configs)} configurations (lr x clip norm)")
    rows = result.table(last=min(args.last, args.steps))
    with open(os.path.join(args.out, "lr_sweep.json"), "w") as f:
        json.dump({"flags": vars(args), "best": rows[result.best(last=min(args.last, args.steps))],
                   "configurations": [{k: (None if isinstance(v, float) and not np.isfinite(v) and k != "clip_norm"
                                           else (str(v) if isinstance(v, float) and np.isinf(v) else v))
                                       for k, v in r.items()} for r in rows]}, f, indent=2)
    print(f"wrote {args.out}/lr_sweep.png, lr_sweep_curves.png, lr_sweep.json")
    return result


if __name__ == "__main__":
    main()
