"""The benchmark's tasks: a generator made on the device, its metric, baseline, solved threshold and
fixed held-out set, in one registry.

A `Task` is a pure function ``make_batch(key, batch) -> (xs, ys)`` (``xs [T, B, D]``) with
the loss the model is trained on, the metric that decides "solved", the metric's no-memory
baseline and threshold, and a held-out set drawn from a fixed key. The long-memory problems of
Hochreiter & Schmidhuber (1997), `adding` and `copy`, measure their loss against the
no-memory baseline; the state-tracking and recall tasks of ``rnnjax.tasks.TASKS`` (`state`)
measure accuracy on the scored steps against the memoryless predictor's accuracy.

    bench.tasks.adding(100)                 # the adding problem, T = 100
    bench.tasks.parse("copy:50,100")        # [copy(50), copy(100)]
    bench.tasks.state("parity", 64)         # running parity (Delétang et al. 2023)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._checks import check_int

SOLVED_FRACTION = 0.1
"""A loss task is solved by a seed whose held-out loss falls below ``0.1 x`` the no-memory baseline."""

DATA_ROOT, TEST_ROOT = 0, 1
"""Training batches: ``key(DATA_ROOT)`` folded with the seed, then the step; the held-out set:
``key(TEST_ROOT)``."""

LISTOPS_POOL = 4096
"""ListOps is generated on the host: training batches are drawn from a fixed pool of this many."""


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A benchmark task at one sequence length.

    Attributes:
      name: the registry name (``"adding"``, ``"copy"``, ``"parity"`` ...).
      T: the training length (the number of input steps the generator's argument names).
      make_batch: ``make_batch(key, batch) -> (xs [T_in, B, D] float32, ys)``, jit-able (``batch``
        static), a pure function of the key.
      input_size: ``D``.
      output_size: the model's outputs per step (the readout's size).
      loss: ``loss(outputs [T_in, B, output_size], ys) -> scalar``, what the model is trained on.
      metrics: ``metrics(outputs, ys) -> {name: scalar}`` evaluated on the held-out set; it holds
        ``"test_loss"`` and the metric `key` names.
      key: the metric that decides "solved" (``"test_loss"`` or ``"test_accuracy"``).
      metric: the metric's display name (``"test_mse"``, ``"test_cross_entropy"``, ``"accuracy"``).
      goal: ``"min"`` (a loss) or ``"max"`` (an accuracy).
      baseline: the metric of the best predictor without memory.
      threshold: a seed is solved at the first evaluation whose metric is below (``goal="min"``)
        or at least (``goal="max"``) this.
      target_axis: the batch axis of every leaf of ``ys`` (``xs`` is time-major: batch axis 1).
      lengths: the lengths the final parameters are also evaluated at (length generalisation);
        empty for the loss tasks.
      splits: ``((name, held(n) -> (xs, ys)), ...)``: more held-out test splits the final
        parameters are evaluated on (e.g. flip-flop's sparse and dense splits).
      generate: ``generate(key, batch, length) -> (xs, ys)``: `make_batch` at another length.
      held: ``held(n, length) -> (xs, ys)``, the held-out set when it is not drawn with
        ``generate(key(TEST_ROOT), n, length)`` (a host-generated task's own pool).
      paper: where the task and its threshold come from.
    """

    name: str
    T: int
    make_batch: Callable[[Any, int], tuple[Any, Any]]
    input_size: int
    output_size: int
    loss: Callable[[Any, Any], Any]
    metrics: Callable[[Any, Any], dict]
    key: str
    metric: str
    goal: str
    baseline: float
    threshold: float
    target_axis: int
    lengths: tuple[int, ...] = ()
    splits: tuple[tuple[str, Callable[[int], tuple[Any, Any]]], ...] = ()
    generate: Callable[[Any, int, int], tuple[Any, Any]] | None = None
    held: Callable[[int, int], tuple[Any, Any]] | None = None
    paper: str = ""

    @property
    def label(self) -> str:
        """``name:T``, the form the command line takes."""
        return f"{self.name}:{self.T}"

    def held_out(self, n: int, length: int | None = None) -> tuple[Any, Any]:
        """The fixed held-out set: ``n`` sequences from ``key(TEST_ROOT)`` (the same for every
        seed, evaluation and run), at the training length or ``length``."""
        n = check_int("n", n)
        length = self.T if length is None else check_int("length", length)
        if self.held is not None:
            return self.held(n, length)
        key = jax.random.key(TEST_ROOT)
        if length == self.T:
            return self.make_batch(key, n)
        if self.generate is None:
            raise ValueError(f"task {self.label} has no generator for other lengths; got length={length}")
        return self.generate(key, n, length)

    def solved_at(self, value: float) -> bool:
        """Whether a metric value counts as solved (NaN never does)."""
        if not np.isfinite(value):
            return False
        return bool(value < self.threshold) if self.goal == "min" else bool(value >= self.threshold)

    def describe(self) -> dict:
        """The task's JSON-able description (for a row's record)."""
        return {"task": self.name, "T": self.T, "metric": self.metric, "goal": self.goal,
                "baseline": self.baseline, "threshold": self.threshold, "lengths": list(self.lengths)}


# ----------------------------------------------------------------------------- the loss tasks

def _mse_last(outs, ys):
    from rnnjax import losses

    return losses.mse(outs[-1], ys)  # outs [T, B, 1]: the last step predicts the sum


def _sequence_ce(outs, ys):
    from rnnjax import losses

    return losses.sequence_cross_entropy(outs, ys)


def adding(T: int) -> Task:
    """The adding problem (Hochreiter & Schmidhuber 1997): ``T`` steps of (value, marker) pairs; the
    last output predicts the sum of the two marked values. Metric: held-out MSE; baseline 1/6
    (always predicting 1.0); solved below 0.1 x baseline."""
    from rnnjax import tasks

    T = check_int("T", T, minimum=2)
    loss = _mse_last
    return Task("adding", T, lambda k, b: tasks.adding(k, b, T), 2, 1, loss,
                lambda o, y: {"test_loss": loss(o, y)}, "test_loss", "test_mse", "min",
                tasks.ADDING_BASELINE_MSE, SOLVED_FRACTION * tasks.ADDING_BASELINE_MSE, 0,
                generate=lambda k, b, n: tasks.adding(k, b, n),
                paper="Hochreiter & Schmidhuber, Long Short-Term Memory, Neural Computation 1997")


def copy(T: int) -> Task:
    """The copy task (Hochreiter & Schmidhuber 1997; the form of Arjovsky et al. 2016): 10 symbols,
    ``T`` blanks, a cue, then the symbols again. Metric: held-out cross-entropy over all ``T + 20``
    steps; baseline ``10 log 8 / (T + 20)`` (blanks, then uniform symbols); solved below 0.1 x it."""
    from rnnjax import tasks

    T = check_int("T", T, minimum=1)
    loss = _sequence_ce
    base = tasks.copy_baseline(T)
    return Task("copy", T, lambda k, b: tasks.copy_memory(k, b, T), tasks.COPY_VOCAB,
                tasks.COPY_NUM_SYMBOLS + 1, loss, lambda o, y: {"test_loss": loss(o, y)}, "test_loss",
                "test_cross_entropy", "min", base, SOLVED_FRACTION * base, 1,
                paper="Arjovsky, Shah & Bengio, Unitary Evolution Recurrent Neural Networks, ICML 2016")


# --------------------------------------------------------------- state tracking and recall

def _masked_ce(outs, ys):
    targets, mask = ys
    logp = jax.nn.log_softmax(outs, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    m = mask.astype(outs.dtype)
    return jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)


def _masked_metrics(outs, ys):
    targets, mask = ys
    m = mask.astype(outs.dtype)
    right = (jnp.argmax(outs, axis=-1) == targets).astype(outs.dtype)
    return {"test_loss": _masked_ce(outs, ys),
            "test_accuracy": jnp.sum(right * m) / jnp.maximum(jnp.sum(m), 1.0)}


def _one_hot_batch(generate, vocab):
    def make(key, batch, length):
        tokens, targets, mask = generate(key, batch, length)
        return jax.nn.one_hot(tokens, vocab, dtype=jnp.float32), (targets, mask)

    return make


@functools.lru_cache(maxsize=8)
def _host_pool(name: str, length: int, seed: int, n: int):
    from rnnjax.tasks import TASKS

    tokens, targets, mask = TASKS[name].generate(jax.random.key(seed), n, length)
    return np.asarray(tokens), np.asarray(targets), np.asarray(mask)


def _pooled(name: str, vocab: int):
    """A host-generated task (ListOps) as a device generator: training batches drawn with the key
    from a fixed pool of `LISTOPS_POOL` sequences (generated once, from seed 0); the held-out
    set is a pool of its own (seed 1)."""

    def one_hot(tokens, targets, mask, idx):
        xs = jax.nn.one_hot(jnp.asarray(tokens)[:, idx], vocab, dtype=jnp.float32)
        return xs, (jnp.asarray(targets)[:, idx], jnp.asarray(mask)[:, idx])

    def make(key, batch, length):
        tokens, targets, mask = _host_pool(name, length, 0, LISTOPS_POOL)
        return one_hot(tokens, targets, mask, jax.random.randint(key, (batch,), 0, LISTOPS_POOL))

    def held(n, length):
        tokens, targets, mask = _host_pool(name, length, 1, n)
        return one_hot(tokens, targets, mask, jnp.arange(n))

    return make, held


def from_generator(name: str, T: int, generate: Callable, vocab_size: int, num_classes: int,
                   baseline: float, solved: float, *, paper: str = "",
                   splits: dict[str, Callable] | None = None) -> Task:
    """A token task as a `Task`: ``generate(key, batch, length) -> (tokens [T, B] int32,
    targets [T, B] int32, mask [T, B] bool)`` jit-able, inputs one-hot over ``vocab_size``, the
    model predicting one of ``num_classes`` at every step, accuracy on the masked steps scored
    against ``baseline`` (the memoryless predictor's) and ``solved``; evaluated at 2x and 4x ``T``
    too, and on each of ``splits`` (``{name: generate}`` at length ``T``, from the held-out key)."""
    T = check_int("T", T, minimum=2)
    make = _one_hot_batch(generate, vocab_size)
    extra = tuple((k, functools.partial(_split, _one_hot_batch(g, vocab_size), T))
                  for k, g in (splits or {}).items())
    return Task(name, T, lambda k, b: make(k, b, T), vocab_size, num_classes, _masked_ce, _masked_metrics,
                "test_accuracy", "accuracy", "max", float(baseline), float(solved), 1, lengths=(2 * T, 4 * T),
                splits=extra, generate=make, paper=paper)


def _split(make, T, n):
    return make(jax.random.key(TEST_ROOT), n, T)


def state(name: str, T: int | None = None) -> Task:
    """A state-tracking or recall task of ``rnnjax.tasks.TASKS`` (parity, modular counting, the S3/S5/A5
    word problems, MQAR, selective copying, induction heads, flip-flop, ListOps) at length ``T``
    (default: the task's training length). Inputs one-hot; the model predicts a class at every
    step and the scored steps (the task's mask) count. Metric: held-out accuracy on the scored
    steps; baseline: the memoryless predictor's accuracy; solved at the task's threshold (0.9 for
    state tracking, after Delétang et al. 2023; 0.99 for recall; 1.0 for flip-flop, Liu et al.
    2023). The final parameters are also evaluated at 2x and 4x ``T`` (length generalisation)."""
    from rnnjax.tasks import TASKS

    if name not in TASKS:
        raise ValueError(f"name must be one of {sorted(TASKS)}, got {name!r}")
    spec = TASKS[name]
    T = spec.length if T is None else check_int("T", T, minimum=4)
    if spec.on_device:
        splits = None
        if name == "flip_flop":  # Liu et al.'s test splits of the training task
            splits = {s: TASKS[f"flip_flop_{s}"].generate for s in ("sparse", "dense")}
        return from_generator(name, T, spec.generate, spec.vocab_size, spec.num_classes, spec.baseline(T),
                              spec.solved, paper=spec.paper, splits=splits)
    generate, held = _pooled(name, spec.vocab_size)
    return Task(name, T, lambda k, b: generate(k, b, T), spec.vocab_size, spec.num_classes, _masked_ce,
                _masked_metrics, "test_accuracy", "accuracy", "max", float(spec.baseline(T)),
                float(spec.solved), 1, lengths=(2 * T, 4 * T), generate=generate, held=held,
                paper=spec.paper)


# ------------------------------------------------------------------------------- the registry

def _loss_tasks() -> dict[str, Callable[[int], Task]]:
    return {"adding": adding, "copy": copy}


def names() -> list[str]:
    """Every task the registry knows: ``adding``, ``copy`` and the state-tracking and recall tasks."""
    from rnnjax.tasks import TASKS

    return [*_loss_tasks(), *TASKS]


def get(name: str, T: int | None = None) -> Task:
    """The task ``name`` at length ``T`` (the loss tasks need ``T``; the others default to their
    training length)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a task name (str), got {type(name).__name__}")
    loss = _loss_tasks()
    if name in loss:
        if T is None:
            raise ValueError(f"task {name!r} needs a length T, e.g. '{name}:100'")
        return loss[name](T)
    if name in names():
        return state(name, T)
    raise ValueError(f"unknown task {name!r}; known: {', '.join(names())}")


def parse(text: str) -> list[Task]:
    """``"adding:100,200"`` -> ``[adding(100), adding(200)]``; ``"parity"`` -> the task at its
    training length. Raises ``ValueError`` naming the text and what was expected."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a task must be 'name' or 'name:T1,T2,...', got {text!r}")
    name, _, lengths = text.strip().partition(":")
    if not lengths:
        return [get(name)]
    out = []
    for part in lengths.split(","):
        try:
            T = int(part)
        except ValueError:
            raise ValueError(f"task {text!r}: lengths must be integers, got {part!r}") from None
        out.append(get(name, T))
    return out
