"""Plumbing shared by the experiment scripts: flags, the work directory, resumable training, logs.

Every script builds a model, a :class:`rnnjax.TrainState`, a pure ``step_fn`` (from
:func:`rnnjax.train_step`) and a jit-traceable ``batch_fn(step)`` that is a pure function of the
seed and the step, then calls :func:`train`. :func:`train`

- resumes from the newest intact checkpoint in ``--workdir`` (``rnnjax.checkpoint``), refusing a
  work directory made with a different config;
- runs the steps in jitted chunks (``lax.scan`` over up to ``--chunk`` steps, the batch made
  inside the scan from the traced step); chunk boundaries are fixed multiples of ``--chunk``,
  ``--ckpt-every`` and ``--eval-every``, so an interrupted and resumed run executes exactly the
  same compiled chunks over the same steps as an uninterrupted one, and ends bitwise equal;
- saves the whole TrainState every ``--ckpt-every`` steps and at the end (never after a skipped,
  non-finite step), stops after ``--max-nonfinite`` consecutive non-finite steps naming the step;
- writes ``metrics.jsonl`` (one JSON object a line), ``loss.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax
from rnnjax.checkpoint import Checkpointer, params_sha256, write_json_atomic

# Flags that may change between a run and its resumption (they do not change the result).
RESUME_FREE = ("workdir", "no_progress", "max_nonfinite", "max_to_keep")

EXIT_NONFINITE = 3


# ----------------------------------------------------------------------------- flags


def training_args(p: argparse.ArgumentParser, *, eval_batch: int) -> argparse._ArgumentGroup:
    """The task-and-model flags shared by the synthetic-task scripts (adding, copy)."""
    g = p.add_argument_group("task and model")
    g.add_argument("--cell", choices=CELLS, default="lstm", help="recurrent cell")
    g.add_argument("--hidden", type=int, default=64, help="hidden size H")
    g.add_argument("--batch", type=int, default=64, help="sequences per training step")
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd", "momentum", "rmsprop"), default="adam",
                   help="the direction after global-norm clipping")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    g.add_argument("--clip-norm", type=float, default=1.0, help="global gradient-norm clip")
    g.add_argument("--schedule", choices=("constant", "cosine", "linear"), default="cosine",
                   help="learning-rate schedule over --steps")
    g.add_argument("--eval-batch", type=int, default=eval_batch, help="size of the fixed evaluation set")
    return g


def classification(logits: Callable, data: Any, data_key: jax.Array, batch: int):
    """``(loss_fn, batch_fn, eval_fn)`` for sequence classification of time-major ``data``.

    ``data = (x_train [T, N, D], y_train [N], x_test, y_test)``; ``logits(params, xs) -> [B, C]``.
    Mini-batches are a pure function of ``(data_key, step)`` (``rnnjax.tasks.batch_indices``).
    """
    x_train, y_train, x_test, y_test = data
    N = x_train.shape[1]

    def loss_fn(p, batch_, key):
        del key
        xs, ys = batch_
        out = logits(p, xs)
        return rnnjax.losses.categorical_cross_entropy(out, ys), {
            "accuracy": rnnjax.losses.accuracy(out, ys)}

    def batch_fn(step):
        idx = rnnjax.tasks.batch_indices(data_key, step, N, batch)
        return x_train[:, idx], y_train[idx]

    def eval_fn(p):
        out = logits(p, x_test)
        return {"loss": rnnjax.losses.categorical_cross_entropy(out, y_test),
                "accuracy": rnnjax.losses.accuracy(out, y_test)}

    return loss_fn, batch_fn, eval_fn


class _Parser(argparse.ArgumentParser):
    """Prints every flag's default in ``--help``, also for flags given without a help text."""

    def format_help(self):
        for action in self._actions:
            if action.help is None and action.default is not argparse.SUPPRESS:
                action.help = "(default: %(default)s)"
        return super().format_help()


def parser(description: str, *, name: str, steps: int, ckpt_every: int, eval_every: int,
           chunk: int = 50, log_every: int = 10) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the flags every script shares (defaults printed by ``--help``)."""
    p = _Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--workdir", default=f"runs/{name}",
                   help="checkpoints, metrics.jsonl, loss.png, results.json; the same command "
                        "with the same workdir resumes from the newest checkpoint")
    g.add_argument("--seed", type=int, default=0, help="seed of params, data order and keys")
    g.add_argument("--steps", type=int, default=steps, help="total training steps")
    g.add_argument("--ckpt-every", type=int, default=ckpt_every,
                   help="save the whole TrainState every this many steps (and at the end)")
    g.add_argument("--max-to-keep", type=int, default=3, help="checkpoints kept in the workdir")
    g.add_argument("--eval-every", type=int, default=eval_every, help="evaluate every this many steps")
    g.add_argument("--log-every", type=int, default=log_every,
                   help="write training metrics to metrics.jsonl every this many steps")
    g.add_argument("--chunk", type=int, default=chunk,
                   help="steps per jitted lax.scan chunk (fewer Python round trips)")
    g.add_argument("--max-nonfinite", type=int, default=10,
                   help="stop after this many consecutive non-finite (skipped) steps")
    g.add_argument("--nan-at-step", type=int, default=None,
                   help="testing: make the float inputs of every step >= this one NaN (the non-finite guard)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def check_args(args: argparse.Namespace) -> None:
    for name in ("steps", "ckpt_every", "eval_every", "log_every", "chunk", "max_nonfinite",
                 "max_to_keep"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


CELLS = ("elman", "irnn", "lstm", "gru", "mgu", "indrnn", "lru", "mingru", "minlstm", "orthogonal")


def make_cell(name: str, hidden: int, *, seq_len: int | None = None) -> rnnjax.Cell:
    """The cell ``name`` (one of :data:`CELLS`) with ``hidden`` units, in its paper's setup."""
    if name == "elman":
        return rnnjax.elman(hidden)
    if name == "irnn":
        return rnnjax.irnn(hidden)
    if name == "lstm":
        return rnnjax.lstm(hidden, forget_bias=1.0)
    if name == "gru":
        return rnnjax.gru(hidden)
    if name == "mgu":
        return rnnjax.mgu(hidden)
    if name == "indrnn":
        return rnnjax.indrnn(hidden, max_timescale=seq_len)
    if name == "lru":
        return rnnjax.lru(hidden, hidden, r_min=0.9, r_max=0.999)
    if name == "mingru":
        return rnnjax.mingru(hidden)
    if name == "minlstm":
        return rnnjax.minlstm(hidden)
    if name == "orthogonal":
        return rnnjax.orthogonal(hidden)
    raise ValueError(f"unknown cell {name!r}; choose from {CELLS}")


def keys(seed: int) -> dict[str, jax.Array]:
    """Independent keys of a run, all derived from ``seed``: init, train (dropout...), data, eval."""
    root = jax.random.key(seed)
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(("init", "train", "data", "eval"))}


def num_params(params: Any) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------- workdir


def _config(args: argparse.Namespace, name: str) -> dict[str, Any]:
    return {"script": name, **{k: v for k, v in sorted(vars(args).items())}}


def _check_config(workdir: Path, config: dict[str, Any]) -> None:
    path = workdir / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), config.get(k)) for k in set(old) | set(config)
                if k not in RESUME_FREE and old.get(k) != config.get(k)}
        if diff:
            raise SystemExit(f"{workdir} holds a run with a different config "
                             f"(flag: (saved, now)) {diff}; use another --workdir to start a new run")
    write_json_atomic(path, config)


def _read_metrics(path: Path, upto: int) -> list[dict]:
    """The records of ``metrics.jsonl`` up to step ``upto`` (a killed run may have written more)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if rec.get("step", 0) <= upto:
            out.append(rec)
    return out


def _poison(batch: Any, on: jax.Array) -> Any:
    """NaN in every float input leaf when ``on`` (a test hook for the non-finite guard)."""

    def f(x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.where(on, jnp.full_like(x, jnp.nan), x)
        return x

    return jax.tree.map(f, batch)


def _machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
            "loadavg": load}


# ----------------------------------------------------------------------------- plotting


def plot_metrics(records: list[dict], path: Path, title: str) -> None:
    """Training loss (and every eval_* metric) against the step, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    eval_keys = sorted({k for r in evals for k in r if k.startswith("eval_")})
    n = 1 + len(eval_keys)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.6), squeeze=False)
    ax = axes[0, 0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
    for k in eval_keys:
        if "loss" in k:
            ax.plot([r["step"] for r in evals], [r[k] for r in evals], "o-", ms=3, label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if train and all(r["loss"] > 0 for r in train if np.isfinite(r["loss"])):
        ax.set_yscale("log")
    ax.legend()
    ax.set_title(title)
    for ax, k in zip(axes[0, 1:], eval_keys):
        ax.plot([r["step"] for r in evals], [r[k] for r in evals], "o-", ms=3)
        ax.set_xlabel("step")
        ax.set_title(k)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- training


def train(
    args: argparse.Namespace,
    *,
    name: str,
    state: rnnjax.TrainState,
    step_fn: Callable,
    batch_fn: Callable[[jax.Array], Any],
    eval_fn: Callable[[Any], dict[str, Any]] | None = None,
    final_fn: Callable[[Any], dict[str, Any]] | None = None,
    info: dict[str, Any] | None = None,
    t0: float | None = None,
) -> dict[str, Any]:
    """Train ``state`` to ``args.steps`` with checkpoints and resume; write the run's files.

    Args:
      args: the parsed flags of :func:`parser` (plus the script's own; all go into the config).
      name: the script's name (the config records it; the plot's title).
      state: the initial state, also the template that checkpoints are restored onto.
      step_fn: pure ``step_fn(state, batch) -> (state, metrics)`` (from ``rnnjax.train_step``).
      batch_fn: ``batch_fn(step) -> batch``, jit-traceable and a pure function of the seed and of
        ``step`` (a traced int32 scalar).
      eval_fn: optional ``eval_fn(params) -> dict`` of scalars (jitted here), every
        ``--eval-every`` steps and at the end; logged as ``eval_<name>``.
      final_fn: optional ``final_fn(params) -> dict`` (any JSON values) run once at the end, not
        jitted (e.g. samples of a language model); merged into ``results["final"]``.
      info: extra JSON values for ``results.json`` (e.g. parameter count, data origin).
      t0: ``time.time()`` when the script's ``main`` started (data and model set-up included in
        ``wall_time_s``); default: when this function was called.

    Returns:
      The results dict also written to ``results.json``. Exits with status 3 (after printing a
      message naming the step) when ``--max-nonfinite`` consecutive steps were non-finite.
    """
    check_args(args)
    t_start = time.time() if t0 is None else t0
    machine_start = _machine()
    workdir = Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    config = _config(args, name)
    _check_config(workdir, config)
    steps = args.steps

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=args.max_to_keep)
    restored = ckpt.restore_latest(state)
    resumed_from = None
    if restored is not None:
        state = restored
        resumed_from = int(state.step)
        print(f"[{name}] resuming from the checkpoint of step {resumed_from} in {ckpt.directory}",
              flush=True)
    start = int(state.step)
    metrics_path = workdir / "metrics.jsonl"
    records = _read_metrics(metrics_path, start)
    with open(metrics_path.with_name("metrics.jsonl.tmp"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(metrics_path.with_name("metrics.jsonl.tmp"), metrics_path)

    nan_at = args.nan_at_step

    def body(s, _):
        batch = batch_fn(s.step)
        if nan_at is not None:
            batch = _poison(batch, s.step >= nan_at)
        return step_fn(s, batch)

    chunk_fns: dict[int, Callable] = {}

    def run_chunk(s, n):
        if n not in chunk_fns:
            chunk_fns[n] = jax.jit(lambda s0: jax.lax.scan(body, s0, None, length=n))
        return chunk_fns[n](s)

    jit_eval = None if eval_fn is None else jax.jit(eval_fn)

    def evaluate(params) -> dict[str, float]:
        return {f"eval_{k}": float(v) for k, v in jax.device_get(jit_eval(params)).items()}

    def next_boundary(t: int) -> int:
        cands = [steps, (t // args.chunk + 1) * args.chunk, (t // args.ckpt_every + 1) * args.ckpt_every]
        if eval_fn is not None:
            cands.append((t // args.eval_every + 1) * args.eval_every)
        return min(cands)

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=min(start, steps), disable=args.no_progress, desc=name,
               dynamic_ncols=True, mininterval=1.0)
    log = open(metrics_path, "a")
    streak, t, last_eval = 0, start, {}
    try:
        while t < steps:
            nb = next_boundary(t)
            n = nb - t
            t_chunk = time.time()
            state, m = run_chunk(state, n)
            m = jax.device_get(m)
            dt = time.time() - t_chunk
            for i in range(n):
                done = t + i + 1
                if int(m["nonfinite"][i]):
                    streak += 1
                else:
                    streak = 0
                if done % args.log_every == 0 or done == nb or streak:
                    rec = {"kind": "train", "step": done,
                           **{k: float(v[i]) for k, v in m.items() if np.ndim(v[i]) == 0},
                           "sec_per_step": dt / n}
                    log.write(json.dumps(rec) + "\n")
                if streak >= args.max_nonfinite:
                    log.flush()
                    bar.close()
                    last_good = done - streak
                    saved = ckpt.latest_step()
                    print(f"\n[{name}] stopped at step {done}: {streak} consecutive non-finite "
                          f"steps (NaN/inf loss, gradients or updates; steps "
                          f"{last_good + 1}..{done} were skipped, params unchanged since step "
                          f"{last_good}). Nothing was saved after the last good checkpoint "
                          f"(step {saved}, {ckpt.path(saved) if saved is not None else 'none'}). "
                          f"Lower --lr or --clip-norm, or check the data.", file=sys.stderr,
                          flush=True)
                    raise SystemExit(EXIT_NONFINITE)
            t = nb
            post = {"loss": f"{float(m['loss'][-1]):.4g}"}
            if jit_eval is not None and (t % args.eval_every == 0 or t == steps):
                last_eval = evaluate(state.params)
                log.write(json.dumps({"kind": "eval", "step": t, **last_eval}) + "\n")
                post.update({k[5:]: f"{v:.4g}" for k, v in last_eval.items()})
            log.flush()
            if (t % args.ckpt_every == 0 or t == steps) and streak == 0:
                ckpt.save(state)
            bar.set_postfix(post, refresh=False)
            bar.update(n)
    finally:
        bar.close()
        log.close()

    params = state.params
    if jit_eval is not None and not last_eval:  # resumed at the end: evaluate the restored params
        last_eval = evaluate(params)
    final = dict(last_eval)
    if final_fn is not None:
        final.update(final_fn(params))
    records = _read_metrics(metrics_path, steps)
    train_recs = [r for r in records if r.get("kind") == "train"]
    tail = [r["loss"] for r in train_recs[-10:] if math.isfinite(r["loss"])]
    if tail:
        final["train_loss_last10"] = float(np.mean(tail))
    plot_metrics(records, workdir / "loss.png", name)
    results = {
        "config": config,
        "final": final,
        "steps": int(state.step),
        "resumed_from_step": resumed_from,
        "wall_time_s": time.time() - t_start,
        "params_sha256": params_sha256(params),
        "num_params": num_params(params),
        "checkpoints": ckpt.steps(),
        "machine_start": machine_start,
        "machine_end": _machine(),
        **(info or {}),
    }
    write_json_atomic(workdir / "results.json", results)
    ckpt.close()
    print(f"[{name}] done: step {int(state.step)}, wall time {results['wall_time_s']:.1f} s, "
          f"params_sha256 {results['params_sha256'][:16]}...; results in {workdir / 'results.json'}",
          flush=True)
    for k, v in final.items():
        if isinstance(v, float):
            print(f"  {k}: {v:.6g}")
    return results
