"""Long-memory and gradient-vanishing benchmarks as a kit feature: benchmark a cell of one's own.

    from rnnjax import bench

    rows = bench.run({"leaky": make_leaky}, ["adding:50,100", "copy:50"], bench.Recipe(steps=1000),
                     seeds=4, workdir="runs/b")
    print(bench.report(rows, out="out/b"))    # your rows next to the reference rows

``make(hidden_size, T)`` returns an ``rnnjax.Cell`` (or ``(Cell, project)``). Each (cell, task) is
ONE ``rnnjax.run_sweep`` over the seeds and the recipe's learning rates, with the held-out metric
every ``eval_every`` steps and the exact per-step gradient norms ``||dL/d carry_t||`` at
initialisation and after training. The reference rows (every built-in cell under the default
recipe, and the papers' rows under their recipes) ship with the package. The same from the command
line: ``python -m rnnjax.bench --help``.
"""

from rnnjax.bench import tasks
from rnnjax.bench.core import (
    BUILTIN_ROWS,
    Recipe,
    builtin,
    load_factory,
    median_steps,
    steps_to_solve,
    train_row,
)
from rnnjax.bench.report import reference_meta, reference_rows, report
from rnnjax.bench.rows import Row, load, run, save
from rnnjax.bench.tasks import Task

__all__ = [
    "BUILTIN_ROWS",
    "Recipe",
    "Row",
    "Task",
    "builtin",
    "load",
    "load_factory",
    "median_steps",
    "reference_meta",
    "reference_rows",
    "report",
    "run",
    "save",
    "steps_to_solve",
    "tasks",
    "train_row",
]
