"""Last-state readout against attention readout of the same recurrent cell, on three tasks.

The same cell (LSTM by default) is trained on the adding problem, the copy problem and MNIST-1D
twice: once read out from its last state(s), once through attention pooling over all its outputs
(additive, Bahdanau, Cho & Bengio 2015, with a learned query as in Raffel & Ellis 2016; or scaled
dot-product, Vaswani et al. 2017: ``--attention``). Each (task, readout) pair is trained for
``--seeds`` seeds with one ``rnnjax.sweep.run_sweep`` call per task (seed and readout are the
sweep axes; the readout changes the params' shapes, so each readout is its own compiled group).

Readouts per task:

* adding (``xs [T, B, 2]``, target the sum of the two marked values; MSE, baseline 1/6):
  ``last``: ``dense(h_{T-1})``; ``attention``: ``dense(sum_t alpha_t h_t)``.
* copy (recall 10 symbols after ``--copy-delay`` blank steps; cross-entropy and accuracy over the
  10 recall steps, baseline log 8 and 1/8): ``last``: ``dense(h_t)`` at each of the last 10 steps
  (the usual per-step readout); ``attention``: 10 attention poolings (one learned query per
  recalled position, the layer vmapped over its params), each followed by the dense readout.
* MNIST-1D (40 steps, 10 classes; Greydanus 2020): ``last``: ``dense(h_{T-1})``; ``attention``:
  ``dense(sum_t alpha_t h_t)``.

Then the gradient-flow picture (``rnnjax.gradient_flow``): ``log10 ||dL/dh_t||`` against ``t`` for
both readouts, at initialisation and after training (seed 0), on test sequences. With a last-state
readout the loss reaches ``h_t`` only through the recurrence from ``t`` to the end, so the norm
decays with the distance to the end; with attention every ``h_t`` has a path of length one to the
loss. Writes ``results.json``, ``results.md``, ``attention.png`` (test metrics per readout: median
and min-max band over seeds), ``gradient_flow.png`` and ``attention_weights.png`` to ``--out``::

    python experiments/attention.py --out experiments/results/attention
"""

from __future__ import annotations

import os
import sys

# This folder holds scripts named like packages (mnist1d, copy): search it after everything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [q for q in sys.path if os.path.abspath(q or ".") != _HERE] + [_HERE]

import argparse
import json
import math
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax
import _common

TASKS = ("adding", "copy", "mnist1d")
READOUTS = ("last", "attention")
METRIC = {"adding": ("loss", "test MSE"), "copy": ("accuracy", "test recall accuracy"),
          "mnist1d": ("accuracy", "test accuracy")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="experiments/results/attention", help="output directory")
    p.add_argument("--workdir", default="runs/attention",
                   help="the sweeps' work directories (<workdir>/<task>), when the engine keeps them")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per (task, readout)")
    p.add_argument("--steps", type=int, default=1500, help="training steps per run")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ", ".join(TASKS))
    p.add_argument("--cell", choices=_common.CELLS, default="lstm", help="the recurrent cell")
    p.add_argument("--hidden", type=int, default=32, help="hidden size H")
    p.add_argument("--attention", choices=("additive", "dot"), default="additive",
                   help="additive (Bahdanau) or scaled dot-product attention")
    p.add_argument("--attention-size", type=int, default=32,
                   help="width of the additive score layer / key size of the dot-product score")
    p.add_argument("--batch", type=int, default=64, help="sequences per training step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (cosine decay)")
    p.add_argument("--clip-norm", type=float, default=1.0, help="global gradient-norm clip")
    p.add_argument("--adding-T", type=int, default=100, help="sequence length of the adding problem")
    p.add_argument("--copy-delay", type=int, default=30, help="delay T of the copy problem")
    p.add_argument("--eval-batch", type=int, default=1000, help="test sequences of adding / copy")
    p.add_argument("--eval-every", type=int, default=250, help="evaluate every this many steps")
    p.add_argument("--flow-batch", type=int, default=32, help="test sequences of the gradient flow")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = sorted(set(args.tasks) - set(TASKS))
    if bad or not args.tasks:
        p.error(f"--tasks must be a comma-separated subset of {TASKS}, got {bad or args.tasks}")
    for name in ("seeds", "steps", "hidden", "attention_size", "batch", "adding_T", "copy_delay",
                 "eval_batch", "eval_every", "flow_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


# ----------------------------------------------------------------------------- engine


def sweep(configs, init_fn, step_fn, batch_fn, *, steps, eval_fn, eval_every, workdir, progress, config):
    """``rnnjax.sweep.run_sweep`` with evaluation; returns ``(result, eval_metrics, eval_steps)``."""
    res = rnnjax.sweep.run_sweep(configs, init_fn, step_fn, batch_fn, steps=steps,
                                 eval_fn=eval_fn, eval_every=eval_every, workdir=workdir,
                                 config=config, progress=progress)
    return res, {k: np.asarray(v) for k, v in res.eval_metrics.items()}, np.asarray(res.eval_steps)


# ----------------------------------------------------------------------------- models


def make_attention(args):
    if args.attention == "additive":
        return rnnjax.additive_attention(args.attention_size)
    return rnnjax.dot_product_attention(args.attention_size,
                                        query_init=rnnjax.initializers.normal(1.0 / math.sqrt(args.attention_size)))


class Task:
    """Model, data, loss and evaluation of one task, for both readouts (``config["readout"]``)."""

    def __init__(self, name, args):
        self.name, self.args = name, args
        self.att = make_attention(args)
        k_eval = jax.random.key(10_000)  # one test set for every seed and readout
        if name == "adding":
            self.D, self.out, self.L = 2, 1, None
            self.T = args.adding_T
            self.cell = _common.make_cell(args.cell, args.hidden, seq_len=self.T)
            self.test = rnnjax.tasks.adding(k_eval, args.eval_batch, self.T)
            self.baseline = {"loss": rnnjax.tasks.ADDING_BASELINE_MSE}
        elif name == "copy":
            self.L = rnnjax.tasks.COPY_LENGTH
            self.D, self.out = rnnjax.tasks.COPY_VOCAB, rnnjax.tasks.COPY_NUM_SYMBOLS + 1
            self.T = args.copy_delay + 20
            self.cell = _common.make_cell(args.cell, args.hidden, seq_len=self.T)
            xs, ys = rnnjax.tasks.copy_memory(k_eval, args.eval_batch, args.copy_delay)
            self.test = (xs, ys[-self.L:])
            self.baseline = {"loss": math.log(rnnjax.tasks.COPY_NUM_SYMBOLS),
                             "accuracy": 1.0 / rnnjax.tasks.COPY_NUM_SYMBOLS}
        else:
            data = rnnjax.tasks.mnist1d()
            self.data = data
            self.D, self.out, self.L = 1, 10, None
            self.T = data.x_train.shape[0]
            self.cell = _common.make_cell(args.cell, args.hidden, seq_len=self.T)
            self.test = (data.x_test, data.y_test)
            self.baseline = {"accuracy": rnnjax.tasks.CHANCE_ACCURACY}
        self.readout = rnnjax.dense(self.out)

    # params and forward pass
    def init(self, key, readout):
        kc, ka, kr = jax.random.split(key, 3)
        H = self.args.hidden
        p = {"cell": self.cell.init(kc, self.D), "readout": self.readout.init(kr, H)}
        if readout == "attention":
            if self.L is None:
                p["att"] = self.att.init(ka, H)
            else:  # one query (and score layer) per recalled position
                p["att"] = jax.vmap(self.att.init, in_axes=(0, None))(jax.random.split(ka, self.L), H)
        return p

    def pool(self, p, hs, readout):
        """The readout's features: ``[B, H]`` (``[L, B, H]`` for copy)."""
        if readout == "last":
            return hs[-1] if self.L is None else hs[-self.L:]
        if self.L is None:
            return self.att.apply(p["att"], hs)[0]
        return jax.vmap(lambda a: self.att.apply(a, hs)[0])(p["att"])

    def head(self, p, hs, readout):
        return self.readout.apply(p["readout"], self.pool(p, hs, readout))

    def objective(self, out, ys):
        """``(loss, metrics)`` of the outputs against the targets."""
        if self.name == "adding":
            loss = rnnjax.losses.mse(out, ys)
            return loss, {"loss": loss, "loss_over_baseline": loss / rnnjax.tasks.ADDING_BASELINE_MSE}
        loss = rnnjax.losses.categorical_cross_entropy(out, ys)
        return loss, {"loss": loss, "accuracy": rnnjax.losses.accuracy(out, ys)}

    def forward(self, p, xs, readout):
        _, hs = rnnjax.unroll(self.cell, p["cell"], xs)
        return self.head(p, hs, readout)

    # engine pieces
    def batch_fn(self, config, step):
        key = jax.random.fold_in(jax.random.key(config["seed"]), step)
        if self.name == "adding":
            return rnnjax.tasks.adding(key, self.args.batch, self.T)
        if self.name == "copy":
            xs, ys = rnnjax.tasks.copy_memory(key, self.args.batch, self.args.copy_delay)
            return xs, ys[-self.L:]
        n = self.data.x_train.shape[1]
        idx = rnnjax.tasks.batch_indices(jax.random.fold_in(jax.random.key(config["seed"]), 1), step,
                                         n, self.args.batch)
        return self.data.x_train[:, idx], self.data.y_train[idx]

    def tx(self, config):
        del config
        return rnnjax.optimizer("adam", self.args.lr, clip_norm=self.args.clip_norm,
                                schedule="cosine", decay_steps=self.args.steps, end_factor=0.1)

    def init_fn(self, config):
        key = jax.random.key(config["seed"])
        params = self.init(jax.random.fold_in(key, 0), config["readout"])
        return rnnjax.TrainState.create(params, self.tx(config), key=jax.random.fold_in(key, 2))

    def loss_fn(self, p, batch, key, config):
        del key
        xs, ys = batch
        loss, m = self.objective(self.forward(p, xs, config["readout"]), ys)
        return loss, {k: v for k, v in m.items() if k != "loss"}

    def eval_fn(self, p, config):
        xs, ys = self.test
        return self.objective(self.forward(p, xs, config["readout"]), ys)[1]

    def flow(self, p, readout):
        """``log10 ||dL/dh_t||`` (``[T]``) on the first ``--flow-batch`` test sequences."""
        n = self.args.flow_batch
        xs, ys = self.test
        xs, ys = xs[:, :n], (ys[:, :n] if self.name == "copy" else ys[:n])

        def loss_of_outputs(hs):
            return self.objective(self.head(p, hs, readout), ys)[0]

        gf = rnnjax.gradient_flow(self.cell, p["cell"], xs, loss_of_outputs)
        log10 = getattr(gf, "log10_norms", None)
        return jnp.log10(gf.norms) if log10 is None else log10


# ----------------------------------------------------------------------------- plots


def _band(ax, x, ys, color, label):
    ys = np.asarray(ys, np.float64)
    ax.plot(x, np.median(ys, 0), color=color, lw=1.5, label=label)
    ax.fill_between(x, ys.min(0), ys.max(0), color=color, alpha=0.25, lw=0)


COLORS = {"last": "tab:blue", "attention": "tab:red"}


def plot_metrics(path, runs, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(runs), figsize=(4.6 * len(runs), 7), squeeze=False)
    for j, (task, r) in enumerate(runs.items()):
        metric, label = METRIC[task]
        ax = axes[0, j]
        steps = np.asarray(r["eval_steps"])
        for readout in READOUTS:
            vals = np.asarray(r["eval"][readout][metric])  # [seeds, n_evals]
            if len(steps) > 1:
                _band(ax, steps, vals, COLORS[readout], readout)
            else:
                x = READOUTS.index(readout)
                ax.scatter(np.full(vals.shape[0], x), vals[:, -1], color=COLORS[readout], label=readout)
                ax.errorbar(x, np.median(vals[:, -1]), fmt="_", ms=30, color="k")
        for k, v in r["baseline"].items():
            if k == metric:
                ax.axhline(v, color="gray", ls=":", lw=1, label="baseline")
        ax.set_title(f"{task}: {label}")
        if len(steps) > 1:
            ax.set_xlabel("step")
        else:
            ax.set_xticks(range(len(READOUTS)), READOUTS)
            ax.set_xlim(-0.5, len(READOUTS) - 0.5)
        if task == "adding":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax = axes[1, j]
        for readout in READOUTS:
            loss = np.asarray(r["train_loss"][readout])  # [seeds, steps]
            w = max(1, loss.shape[1] // 50)
            sm = np.stack([np.convolve(l, np.ones(w) / w, mode="valid") for l in loss])
            _band(ax, np.arange(sm.shape[1]) + w, sm, COLORS[readout], readout)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{task}: training loss (median, min-max over {args.seeds} seeds)", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{args.cell.upper()} H={args.hidden}: last-state vs {args.attention} attention "
                 f"readout ({args.seeds} seeds, {args.steps} steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_flow(path, runs, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 3.8), squeeze=False)
    for ax, (task, r) in zip(axes[0], runs.items()):
        for readout in READOUTS:
            for when, ls in (("init", "--"), ("trained", "-")):
                y = np.asarray(r["gradient_flow"][readout][when])
                ax.plot(np.arange(len(y)), y, ls, color=COLORS[readout], lw=1.3,
                        label=f"{readout}, {when}")
        ax.set_xlabel("step t")
        ax.set_ylabel("log10 ||dL/dh_t||")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Gradient flow of the loss to the {args.cell.upper()}'s states (seed 0): "
                 f"attention gives every step a path of length one")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_weights(path, task, params, args):
    """Where the trained attention of the adding model looks, on 4 test sequences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = task.test[0][:, :4]
    _, hs = rnnjax.unroll(task.cell, params["cell"], xs)
    _, w = task.att.apply(params["att"], hs)
    fig, axes = plt.subplots(4, 1, figsize=(8, 5), sharex=True)
    for b, ax in enumerate(axes):
        ax.bar(np.arange(xs.shape[0]), np.asarray(w[:, b]), color="tab:red", label="attention weight")
        for t in np.flatnonzero(np.asarray(xs[:, b, 1])):
            ax.axvline(t, color="k", ls=":", lw=1)
        ax.set_ylabel(f"seq {b}")
    axes[0].set_title("adding problem: attention weights of the trained model (dotted: marked steps)")
    axes[-1].set_xlabel("step t")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def _run_config(args, task):
    """What the work directory records: a rerun with other flags is refused, not mixed in."""
    skip = {"argv", "out", "workdir", "no_progress", "tasks"}
    return {"script": "attention", "task": task, **{k: v for k, v in vars(args).items() if k not in skip}}


def _machine():
    return {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
            "loadavg_end": os.getloadavg()}


def _fmt(v):
    return f"{v:.4g}"


def _findings(runs):
    """Plain statements read off the numbers (which readout wins, by how much, on how many seeds)."""
    out = []
    for task, r in runs.items():
        metric, label = METRIC[task]
        better = (lambda a, b: a < b) if metric == "loss" else (lambda a, b: a > b)
        a, l = r["final"]["attention"][metric], r["final"]["last"][metric]
        wins = sum(better(x, y) for x, y in zip(sorted(a["seeds"]), sorted(l["seeds"])))
        n = len(a["seeds"])
        verdict = "attention better" if better(a["median"], l["median"]) else "last-state better or equal"
        g = r["gradient_flow"]
        out.append(f"- {task}: {label} attention {_fmt(a['median'])} vs last-state {_fmt(l['median'])} "
                   f"(median; {verdict}; attention ahead on {wins}/{n} seeds when both are sorted). "
                   f"Gradient flow after training: log10(||dL/dh_0|| / ||dL/dh_(T-1)||) is "
                   f"{g['last']['drop_trained']:+.2f} with the "
                   f"last-state readout and {g['attention']['drop_trained']:+.2f} with attention "
                   f"(at initialisation {g['last']['drop_init']:+.2f} and {g['attention']['drop_init']:+.2f}).")
    return out


def write_markdown(path, runs, args, wall):
    lines = [f"# Last-state vs attention readout ({args.cell.upper()}, H={args.hidden})", "",
             "Made with", "", f"    {' '.join(['python', 'experiments/attention.py'] + args.argv)}", "",
             f"Wall time {wall:.0f} s ({platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, jax {jax.__version__}); load average at the end "
             f"{os.getloadavg()[0]:.1f}.", "",
             f"{args.seeds} seeds per (task, readout), {args.steps} Adam steps (peak lr {args.lr}, "
             f"cosine decay, clip {args.clip_norm}), batch {args.batch}; attention: {args.attention} "
             f"(size {args.attention_size}). Adding T={args.adding_T}, copy delay {args.copy_delay} "
             f"(metrics over the 10 recall steps), MNIST-1D (4000 train / 1000 test). Test metrics "
             f"at the end: median [min, max] over seeds.", "",
             "| task | readout | test loss | test accuracy | baseline |", "|---|---|---|---|---|"]
    for task, r in runs.items():
        for readout in READOUTS:
            ev = r["final"][readout]
            acc = ev.get("accuracy")
            lines.append(f"| {task} | {readout} | {_fmt(ev['loss']['median'])} "
                         f"[{_fmt(ev['loss']['min'])}, {_fmt(ev['loss']['max'])}] | "
                         + (f"{_fmt(acc['median'])} [{_fmt(acc['min'])}, {_fmt(acc['max'])}]"
                            if acc else "-")
                         + " | " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["baseline"].items()) + " |")
    lines += ["", "Gradient flow (seed 0, trained): log10(||dL/dh_0|| / ||dL/dh_{T-1}||), the decades "
              "the gradient gains (+) or loses (-) on its way back from the last step to the first:", "",
              "| task | last | attention |", "|---|---|---|"]
    for task, r in runs.items():
        g = r["gradient_flow"]
        lines.append(f"| {task} | {g['last']['drop_trained']:.2f} | {g['attention']['drop_trained']:.2f} |")
    lines += ["", "## What it shows", ""] + _findings(runs) + ["",
              "Figures: `attention.png` (test metric during training and training loss: median and "
              "min-max band over seeds), `gradient_flow.png` (log10 ||dL/dh_t|| against t at "
              "initialisation, dashed, and after training, solid), `attention_weights.png` (where "
              "the trained adding model looks)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from pathlib import Path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("flags:", json.dumps({k: v for k, v in vars(args).items() if k != "argv"}), flush=True)
    configs = rnnjax.sweep.grid(readout=list(READOUTS), seed=list(range(args.seeds)))
    runs, trained = {}, {}
    for name in args.tasks:
        t0 = time.time()
        task = Task(name, args)
        res, ev, ev_steps = sweep(configs, task.init_fn, rnnjax.sweep.sweep_step(task.loss_fn, task.tx, has_aux=True),
                                  task.batch_fn, steps=args.steps, eval_fn=task.eval_fn,
                                  eval_every=args.eval_every, workdir=os.path.join(args.workdir, name),
                                  progress=not args.no_progress, config=_run_config(args, name))
        r = {"eval_steps": ev_steps.tolist(), "baseline": task.baseline, "eval": {}, "final": {},
             "train_loss": {}, "gradient_flow": {}, "seconds": None}
        flow = {ro: jax.jit(lambda p, ro=ro: task.flow(p, ro)) for ro in READOUTS}
        for readout in READOUTS:
            idx = [i for i, c in enumerate(configs) if c["readout"] == readout]
            r["eval"][readout] = {k: v[idx].tolist() for k, v in ev.items()}
            r["final"][readout] = {k: {"median": float(np.median(v[idx, -1])), "min": float(np.min(v[idx, -1])),
                                       "max": float(np.max(v[idx, -1])), "seeds": v[idx, -1].tolist()}
                                   for k, v in ev.items()}
            r["train_loss"][readout] = np.asarray(res.metrics["loss"])[idx].tolist()
            i0 = idx[0]  # seed 0
            p_trained = res.state(i0).params
            p_init = task.init(jax.random.fold_in(jax.random.key(0), 0), readout)
            g_init, g_trained = (np.asarray(flow[readout](p)) for p in (p_init, p_trained))
            r["gradient_flow"][readout] = {"init": g_init.tolist(), "trained": g_trained.tolist(),
                                           "drop_init": float(g_init[0] - g_init[-1]),
                                           "drop_trained": float(g_trained[0] - g_trained[-1])}
            if readout == "attention":
                trained[name] = (task, p_trained)
        r["seconds"] = time.time() - t0
        runs[name] = r
        summary = ", ".join(f"{ro}: " + ", ".join(f"{k} {v['median']:.4g}" for k, v in r["final"][ro].items())
                            for ro in READOUTS)
        print(f"[attention] {name} ({r['seconds']:.0f} s): {summary}", flush=True)

    plot_metrics(out / "attention.png", runs, args)
    plot_flow(out / "gradient_flow.png", runs, args)
    if "adding" in trained:
        plot_weights(out / "attention_weights.png", *trained["adding"], args)
    wall = time.time() - t_start
    results = {"flags": {k: v for k, v in vars(args).items() if k != "argv"},
               "command": "python experiments/attention.py " + " ".join(args.argv),
               "wall_time_s": wall, "machine": _machine(),
               "tasks": runs}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_markdown(out / "results.md", runs, args, wall)
    print(f"[attention] done in {wall:.0f} s; results in {out}", flush=True)
    return results


if __name__ == "__main__":
    main()
