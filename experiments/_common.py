"""What the experiment scripts share: flags, model building, and the call of the engine.

Every script builds a model, a :class:`rnnjax.TrainState`, a pure ``step_fn`` (from
:func:`rnnjax.train_step`) and a jit-traceable ``batch_fn(step)`` that is a pure function of the
seed and the step, then calls :func:`train`, which hands them to :func:`rnnjax.fit` with
``--workdir``: the library's engine resumes from the newest intact checkpoint (refusing a work
directory made with a different config), runs compiled chunks of steps, saves the whole
TrainState every ``--ckpt-every`` steps, stops after ``--max-nonfinite`` consecutive non-finite
steps naming the step, and writes ``metrics.jsonl``, TensorBoard events, ``loss.png`` and
``results.json``. There is no training loop here: a script in your own repository looks the same.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax
from rnnjax import registry
from rnnjax.checkpoint import write_json_atomic

EXIT_NONFINITE = 3


# ----------------------------------------------------------------------------- flags


def training_args(p: argparse.ArgumentParser, *, eval_batch: int) -> argparse._ArgumentGroup:
    """The task-and-model flags shared by the synthetic-task scripts (adding, copy)."""
    g = p.add_argument_group("task and model")
    g.add_argument("--cell", type=cell_arg, default="lstm", metavar="CELL",
                   help="recurrent cell: a name of rnnjax.registry (" + ", ".join(CELLS) + "), or "
                        "your own factory as module:function (or path/to/file.py:function), called "
                        "as make(hidden_size, T) and returning a rnnjax.Cell or (Cell, project)")
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


CELLS = registry.names()  # every cell of rnnjax.registry: each script accepts each of them
FACTORY_FORM = "make(hidden_size, T) -> rnnjax.Cell or (Cell, project)"
_PROJECTS: dict[tuple[str, int | None], Callable[[Any], Any] | None] = {}


def load_factory(value: str) -> Callable[..., Any]:
    """The function named by ``module:function`` (a module on ``sys.path`` or the current
    directory) or ``path/to/file.py:function``; a ``ValueError`` saying what failed otherwise."""
    module_name, sep, attr = value.rpartition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise ValueError(f"{value!r} is not of the form module:function")
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if spec is None or spec.loader is None or not Path(module_name).is_file():
                raise FileNotFoundError(f"no file {module_name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except Exception as e:  # the user's module: any error while importing it
        raise ValueError(f"cannot import {module_name!r} ({type(e).__name__}: {e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"module {module_name!r} has no function {attr!r}")
    return fn


def cell_arg(value: str) -> str:
    """``--cell``'s argparse type: a registered name, or a factory ``module:function`` that imports."""
    if value in CELLS:
        return value
    if ":" not in value:
        raise argparse.ArgumentTypeError(
            f"unknown cell {value!r}: give one of rnnjax.registry's cells ({', '.join(CELLS)}) or "
            f"a factory module:function, {FACTORY_FORM}")
    try:
        load_factory(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"the factory {value!r}: {e}") from None
    return value


def build_cell(name: str, hidden: int, *, seq_len: int | None = None
               ) -> tuple[rnnjax.Cell, Callable[[Any], Any] | None]:
    """``(cell, project)``: the registered cell ``name`` in its paper's setup with its projection
    (``rnnjax.registry``), or what the factory ``module:function`` returns for
    ``(hidden, seq_len)`` (a ``Cell``, or ``(Cell, project)``; ``project`` may be None)."""
    if name in CELLS:
        return registry.cell(name, hidden, seq_len), registry.projection(name, seq_len)
    built = load_factory(name)(hidden, seq_len)
    cell, project = built if isinstance(built, tuple) and not isinstance(built, rnnjax.Cell) \
        and len(built) == 2 else (built, None)
    if not isinstance(cell, rnnjax.Cell) or not (project is None or callable(project)):
        raise SystemExit(f"--cell {name}: the factory returned {type(built).__name__}; expected "
                         f"{FACTORY_FORM}")
    _PROJECTS[(name, seq_len)] = project
    return cell, project


def make_cell(name: str, hidden: int, *, seq_len: int | None = None) -> rnnjax.Cell:
    """The cell ``name`` (one of `CELLS`, or a factory ``module:function``) with ``hidden`` units:
    the first element of `build_cell` (the projection is `projection`, passed to
    ``rnnjax.train_step``)."""
    return build_cell(name, hidden, seq_len=seq_len)[0]


def projection(name: str, seq_len: int | None) -> Callable[[Any], Any] | None:
    """The projection the cell ``name``'s paper applies to the params after every update, or None.

    ``rnnjax.registry.projection(name, seq_len)``: for IndRNN (Li et al. 2018),
    ``rnnjax.indrnn_projection`` keeping ``|u| <= 2^(1/T)`` for the horizon ``T = seq_len``,
    which finds every IndRNN layer in the model's params. For a factory ``module:function``, the
    ``project`` it returned to `make_cell` (None when it returned a bare ``Cell``). Pass the result
    as ``project=`` to ``rnnjax.train_step``.
    """
    if name not in CELLS:
        if (name, seq_len) not in _PROJECTS:
            raise ValueError(f"projection({name!r}, {seq_len}): build the cell first (make_cell)")
        return _PROJECTS[(name, seq_len)]
    if seq_len is None and registry.spec(name).needs_T:
        raise ValueError(f"projection({name!r}, seq_len): seq_len (the horizon T) is required")
    return registry.projection(name, seq_len)


def keys(seed: int) -> dict[str, jax.Array]:
    """Independent keys of a run, all derived from ``seed``: init, train (dropout...), data, eval."""
    root = jax.random.key(seed)
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(("init", "train", "data", "eval"))}


def num_params(params: Any) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------- workdir


def _config(args: argparse.Namespace, name: str) -> dict[str, Any]:
    return {"script": name, **{k: v for k, v in sorted(vars(args).items())}}


def _poison(batch: Any, on: jax.Array) -> Any:
    """NaN in every float input leaf when ``on`` (a test hook for the non-finite guard)."""

    def f(x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.where(on, jnp.full_like(x, jnp.nan), x)
        return x

    return jax.tree.map(f, batch)


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
    baseline: float | None = None,
) -> dict[str, Any]:
    """Train ``state`` to ``args.steps`` with :func:`rnnjax.fit` in ``args.workdir``.

    Args:
      args: the parsed flags of :func:`parser` (plus the script's own; all go into the config).
      name: the script's name (the config records it).
      state: the initial state, also the template that checkpoints are restored onto.
      step_fn: pure ``step_fn(state, batch) -> (state, metrics)`` (from ``rnnjax.train_step``,
        with ``project=`` :func:`projection` of the cell where its paper constrains the params).
      batch_fn: ``batch_fn(step) -> batch``, jit-traceable and a pure function of the seed and of
        ``step`` (a traced int32 scalar).
      eval_fn: optional ``eval_fn(params) -> dict`` of scalars, every ``--eval-every`` steps and
        at the end; logged as ``eval_<name>``.
      final_fn: optional ``final_fn(params) -> dict`` (any JSON values) run once at the end, not
        jitted (e.g. samples of a language model); merged into ``results["final"]``.
      info: extra JSON values for ``results.json`` (e.g. parameter count, data origin).
      t0: unused (kept for the scripts' signature); the engine sums the wall time of every
        process that worked on the run.
      baseline: the no-skill loss, drawn and named in ``loss.png``.

    Returns:
      The results dict also written to ``results.json``. Exits with status 3 (after printing a
      message naming the step) when ``--max-nonfinite`` consecutive steps were non-finite.
    """
    del t0
    check_args(args)
    if args.nan_at_step is not None:
        clean, nan_at = batch_fn, args.nan_at_step

        def batch_fn(step):
            return _poison(clean(step), step >= nan_at)

    workdir = Path(args.workdir).absolute()
    try:
        fitted = rnnjax.fit(
            state, step_fn, batch_fn, steps=args.steps, workdir=workdir, config=_config(args, name),
            ckpt_every=args.ckpt_every, eval_fn=eval_fn, eval_every=args.eval_every,
            log_every=args.log_every, chunk=args.chunk, progress=not args.no_progress,
            max_consecutive_nonfinite=args.max_nonfinite, max_to_keep=args.max_to_keep,
            baseline=baseline)
    except rnnjax.NonFiniteError as e:
        saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) \
            if (workdir / "checkpoints").exists() else []
        print(f"\n[{name}] {e}\nNothing was saved after the last good checkpoint (step "
              f"{saved[-1] if saved else 'none'}). Lower --lr or --clip-norm, or check the data.",
              file=sys.stderr, flush=True)
        raise SystemExit(EXIT_NONFINITE) from None
    except ValueError as e:
        if isinstance(e, rnnjax.WorkdirError):
            raise SystemExit(f"[{name}] {e}") from None
        raise
    state, results = fitted.state, dict(fitted.results)
    if results.get("resumed_from_step") is not None:
        print(f"[{name}] resumed from the checkpoint of step {results['resumed_from_step']} in "
              f"{workdir / 'checkpoints'}", flush=True)
    final = results["final"][0]  # results.json is indexed by configuration; a fit has one
    if final_fn is not None:
        final.update(final_fn(state.params))
    results.update(info or {})
    write_json_atomic(workdir / "results.json", results)
    print(f"[{name}] done: step {int(state.step)}, wall time {results['wall_time_s']:.1f} s (all "
          f"sessions), params_sha256 {results['params_sha256'][0][:16]}...; results in "
          f"{workdir / 'results.json'}", flush=True)
    for k, v in final.items():
        if isinstance(v, float) and (k.startswith("eval_") or k == "train_loss_last10"):
            print(f"  {k}: {v:.6g}")
    return results
