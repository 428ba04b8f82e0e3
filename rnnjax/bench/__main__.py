"""``python -m rnnjax.bench``: benchmark cells on the long-memory and state-tracking tasks from the
command line, with the reference rows next to them.

    python -m rnnjax.bench --cell mypkg.cells:leaky --cell lstm --task adding:100,200 --task copy:50 \\
        --seeds 4 --steps 1000 --workdir runs/b --out out/b

A ``--cell`` is a built-in cell's name (``lstm``, ``gru``, ... : ``--list``) or ``module:function``,
a factory ``make(hidden_size, T) -> Cell`` (or ``(Cell, project)``) imported from the current
directory or the installed packages; ``label=spec`` names its rows. The run is resumable: the same
command again reads the finished rows back from ``--workdir`` and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time


def _lrs(text: str) -> float | tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"learning rates must be numbers separated by commas, got {text!r}") from None
    if not vals or not all(v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"learning rates must be positive, got {text!r}")
    return vals[0] if len(vals) == 1 else vals


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _clip(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--clip must be a positive number or 'none', got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"--clip must be a positive number or 'none', got {text!r}")
    return v


def parser() -> argparse.ArgumentParser:
    from rnnjax.bench.core import OPTIMIZERS, Recipe

    d = Recipe()
    p = argparse.ArgumentParser(prog="python -m rnnjax.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cell", action="append", default=[], metavar="[LABEL=]SPEC",
                   help="a built-in cell (e.g. lstm) or module:function, a factory make(hidden_size, T); "
                        "repeat for several")
    p.add_argument("--task", action="append", default=[], metavar="NAME[:T1,T2]",
                   help="a task and its lengths, e.g. adding:100,200 or parity (its training length); repeat "
                        "for several")
    p.add_argument("--seeds", type=_positive, default=4, help="seeds per row (0..n-1)")
    p.add_argument("--steps", type=_positive, default=d.steps, help="training steps per row")
    p.add_argument("--hidden", type=_positive, default=d.hidden_size, help="hidden size H")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--lr", type=_lrs, default=d.lr, help="learning rate, or several separated by commas "
                   "(trained in the same sweep as the seeds)")
    p.add_argument("--clip", type=_clip, default=d.clip, help="global-norm clipping, or 'none'")
    p.add_argument("--batch", type=_positive, default=d.batch)
    p.add_argument("--eval-every", type=_positive, default=d.eval_every)
    p.add_argument("--test-size", type=_positive, default=d.test_size, help="held-out sequences")
    p.add_argument("--workdir", default=None, help="resumable working directory")
    p.add_argument("--out", default="out/bench", help="results.md, rows.json and plots")
    p.add_argument("--no-reference", action="store_true", help="leave the reference rows out of the report")
    p.add_argument("--no-flow", action="store_true", help="skip the gradient flow (saves two compiles a row)")
    p.add_argument("--list", action="store_true", help="list the built-in cells and the tasks, and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)
    from rnnjax import bench, registry

    if args.list:
        print("built-in cells:", ", ".join(registry.names()))
        print("tasks:", ", ".join(bench.tasks.names()))
        return 0
    if not args.cell:
        p.error("give at least one --cell (a built-in name such as lstm, or module:function)")
    if not args.task:
        p.error("give at least one --task (e.g. adding:100)")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # module:function factories from the current directory
    cells = {}
    for spec in args.cell:
        label, _, target = spec.rpartition("=")
        try:
            make = bench.load_factory(target)
        except ValueError as e:
            p.error(f"--cell {spec}: {e}")
        label = label or (target.rpartition(":")[2] if ":" in target else target)
        if label in cells:
            p.error(f"--cell {spec}: the label {label!r} is given twice (name one LABEL=SPEC)")
        cells[label] = make
    tasks = []
    for spec in args.task:
        try:
            tasks += bench.tasks.parse(spec)
        except ValueError as e:
            p.error(f"--task {spec}: {e}")
    recipe = bench.Recipe(hidden_size=args.hidden, optimizer=args.optimizer, lr=args.lr, clip=args.clip,
                          batch=args.batch, steps=args.steps, eval_every=args.eval_every,
                          test_size=args.test_size)
    t0 = time.perf_counter()

    def show(row):
        print(f"[{time.perf_counter() - t0:6.0f}s] {row.task:<8} T={row.T:<5} {row.name:<22} "
              f"{row['solved_seeds']}/{row['seeds']} solved, median final {row['metric']} "
              f"{'n/a' if row['final_loss_median'] is None else format(row['final_loss_median'], '.4g')}"
              + (" (read back from the workdir)" if row.get("resumed") else ""), flush=True)

    rows = bench.run(cells, tasks, recipe, seeds=args.seeds, workdir=args.workdir, flow=not args.no_flow,
                     trained_flow=not args.no_flow, callback=show)
    command = f"cd {shlex.quote(os.getcwd())} && python -m rnnjax.bench {shlex.join(argv)}"
    text = bench.report(rows, reference=not args.no_reference, out=args.out, command=command,
                        title="Benchmark: " + ", ".join(cells))
    print(text)
    print(f"wrote {os.path.join(args.out, 'results.md')} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    from rnnjax.sweep import cpu_devices

    cpu_devices()  # one CPU device per core, so a row's seeds run on all cores
    sys.exit(main())
