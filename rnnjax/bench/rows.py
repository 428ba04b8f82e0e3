"""A benchmark row: one cell on one task at one learning rate, over its seeds; and running many."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rnnjax.bench.core import Factory, Recipe, builtin, train_row
from rnnjax.bench.tasks import Task, parse

_RECIPE_KEYS = ("hidden_size", "optimizer", "lr", "clip_norm", "batch", "lr_factors", "steps", "eval_every",
                "test_size")


@dataclasses.dataclass(frozen=True, eq=False)
class Row:
    """One cell on one task at one learning rate, over its seeds: a JSON record with typed access.

    The record holds ``task, T, cell, name, row, metric, goal, baseline, threshold, seeds,
    solved_seeds, solved, per_seed`` (``seed, final_test_loss`` (the final held-out metric, an
    accuracy for the accuracy tasks), ``final_ratio, steps_to_solve, nonfinite_steps``, and
    ``at_lengths`` for length generalisation), ``final_loss_median, final_loss_iqr, ratio_median,
    steps_to_solve_median, diverged_seeds, recipe, steps, seconds, machine``, the held-out curves
    ``eval_steps, test_loss [seed][eval]``, and the gradient flow ``log10_flow_at_init`` and
    ``trained_log10_flow`` (``log10 ||dL/d carry_t||``, ``t = 0..T-1``).
    """

    record: dict
    reference: bool = False

    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.record.get(key, default)

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def task(self) -> str:
        return self.record["task"]

    @property
    def T(self) -> int:
        return int(self.record["T"])

    @property
    def lr(self) -> float:
        return float(self.record["recipe"]["lr"])

    @property
    def solved(self) -> bool:
        return bool(self.record["solved"])

    @property
    def finals(self) -> list[float | None]:
        """The final held-out metric of each seed (None: diverged)."""
        return [p["final_test_loss"] for p in self.record["per_seed"]]

    def recipe_key(self) -> tuple:
        """What must be equal for two rows to sit in one table (the recipe, not the cell)."""
        r = self.record["recipe"]
        extra = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in r.items()
                             if k not in _RECIPE_KEYS and k != "init"))
        return (self.task, self.T, *(json.dumps(r.get(k), sort_keys=True) for k in _RECIPE_KEYS), extra)

    def as_dict(self) -> dict:
        return {**self.record, "reference": self.reference}

    @classmethod
    def from_dict(cls, d: Mapping) -> Row:
        d = dict(d)
        reference = bool(d.pop("reference", False))
        return cls(d, reference)


def _cells(cells) -> dict[str, Factory]:
    if isinstance(cells, str):
        cells = [cells]
    if isinstance(cells, Mapping):
        items = list(cells.items())
    elif isinstance(cells, Sequence):
        items = [(c, c) for c in cells]
    else:
        raise TypeError(f"cells must map names to factories make(hidden_size, T) (or name built-ins), "
                        f"got {type(cells).__name__}")
    out: dict[str, Factory] = {}
    for name, make in items:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"cells: a name must be a non-empty string without '/', got {name!r}")
        if isinstance(make, str):
            make = builtin(make)
        if not callable(make):
            raise TypeError(f"cells[{name!r}] must be a factory make(hidden_size, T) -> Cell or "
                            f"(Cell, project), or a built-in cell's name; got {type(make).__name__}")
        out[name] = make
    if not out:
        raise ValueError("cells is empty: give at least one cell")
    return out


def _tasks(tasks) -> list[Task]:
    if isinstance(tasks, (Task, str)):
        tasks = [tasks]
    out: list[Task] = []
    for t in tasks:
        if isinstance(t, str):
            out += parse(t)
        elif isinstance(t, Task):
            out.append(t)
        else:
            raise TypeError(f"tasks must hold bench.Task objects or 'name:T' strings, got {type(t).__name__}")
    if not out:
        raise ValueError("tasks is empty: give at least one task")
    return out


def _seeds(seeds) -> tuple[int, ...]:
    if isinstance(seeds, bool):
        raise TypeError("seeds must be a count or a sequence of ints, got a bool")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return tuple(range(seeds))
    out = tuple(seeds)
    if not out or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in out):
        raise ValueError(f"seeds must be a count >= 1 or a non-empty sequence of ints >= 0, got {seeds!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    return out


def run(cells, tasks, recipe: Recipe | None = None, seeds: int | Sequence[int] = 4,
        workdir: str | None = None, *, flow: bool = True, trained_flow: bool = True, progress: bool = False,
        callback: Callable[[Row], None] | None = None) -> list[Row]:
    """Benchmark ``cells`` on ``tasks``: one [`rnnjax.run_sweep`][rnnjax.sweep.run_sweep] per (cell, task)
    over the seeds (and the recipe's learning rates).

    Args:
      cells: ``{name: make}`` with ``make(hidden_size, T) -> Cell`` or ``(Cell, project)``
        (``project(params) -> params`` after every update, e.g. IndRNN's bound), or a built-in
        cell's name (``"lstm"``: the reference rows' model of ``rnnjax.registry``'s cell); a list
        of built-in names is accepted too.
      tasks: [`bench.tasks`][rnnjax.bench.tasks] objects or ``"name:T1,T2"`` strings.
      recipe: a [`Recipe`][rnnjax.bench.Recipe]; the default is the reference study's common recipe
        (H 64, Adam 1e-2, clip 1, batch 32, 1000 steps, evaluation every 50 on 500 sequences), so
        its rows are comparable to the reference rows.
      seeds: a count (``range(seeds)``) or the seeds.
      workdir: a folder: finished rows are read back, an interrupted row resumes from the
        engine's checkpoints (``<workdir>/<task>-T<T>-<cell>/``); rows added later extend it.
      flow: measure the gradient flow at initialisation (one compile per row).
      trained_flow: measure it after training (the seed with the median final metric).
      progress: the engine's progress bar.
      callback: called with each finished row.

    Returns:
      One [`Row`][rnnjax.bench.Row] per (cell, task, learning rate).
    """
    recipe = Recipe() if recipe is None else recipe
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a bench.Recipe, got {type(recipe).__name__}")
    makes, task_list, seed_list = _cells(cells), _tasks(tasks), _seeds(seeds)
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
    rows = []
    for task in task_list:
        for name, make in makes.items():
            for rec in train_row(name, make, task, recipe, seed_list, workdir=workdir, flow=flow,
                                 trained_flow=trained_flow, progress=progress):
                row = Row(rec)
                rows.append(row)
                if callback is not None:
                    callback(row)
    return rows


def save(rows: Sequence[Row], path: str) -> None:
    """Write rows to a JSON file (strict JSON: NaN as null)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump([r.as_dict() for r in rows], fh, allow_nan=False)
    os.replace(tmp, path)


def load(path: str) -> list[Row]:
    """Rows written by [`save`][rnnjax.bench.save]."""
    with open(path) as fh:
        return [Row.from_dict(d) for d in json.load(fh)]
