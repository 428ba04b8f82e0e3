"""Synthetic long-memory tasks: the adding problem and the copy-memory problem.

Both follow Arjovsky, Shah & Bengio 2016 ("Unitary evolution recurrent neural networks"), as also
used by Li et al. 2018 (IndRNN). Every generator is a pure function of an explicit key: the same key
gives bitwise the same batch. Arrays are time-major.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnjax.tasks._common import check_int, check_key
from rnnjax.types import Array, PRNGKey

ADDING_BASELINE_MSE = 1.0 / 6.0
"""MSE of the best constant predictor (``1.0``) on [`adding`][rnnjax.tasks.synthetic.adding]: the variance of
``U+V``, two independent ``U[0, 1]`` values, is ``2 · 1/12 = 1/6``. A model beats it only by remembering."""

COPY_NUM_SYMBOLS = 8
COPY_LENGTH = 10
COPY_BLANK = 0
COPY_DELIMITER = 9
COPY_VOCAB = 10


def adding(key: PRNGKey, batch: int, T: int) -> tuple[Array, Array]:
    """The adding problem (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016; Li et al. 2018).

    Channel 0 of ``xs`` holds values ``U[0, 1]``; channel 1 is a marker, ``1`` at exactly two
    steps: one drawn uniformly in the first half ``[0, T//2)`` and one in the second half
    ``[T//2, T)``, ``0`` elsewhere. The target is the sum of the two marked values.
    Baseline: predicting ``1.0`` has MSE [`ADDING_BASELINE_MSE`][rnnjax.tasks.synthetic.ADDING_BASELINE_MSE]
      ``= 1/6``.

    Args:
      key: PRNG key; the same key gives the same batch.
      batch: B >= 1.
      T: sequence length >= 2.

    Returns:
      ``(xs [T, B, 2] float32, ys [B, 1] float32)``.
    """
    key = check_key(key)
    B = check_int("batch", batch)
    T = check_int("T", T, minimum=2)
    kv, k1, k2 = jax.random.split(key, 3)
    values = jax.random.uniform(kv, (T, B), jnp.float32)
    half = T // 2
    first = jax.random.randint(k1, (B,), 0, half)
    second = jax.random.randint(k2, (B,), half, T)
    steps = jnp.arange(T)[:, None]
    marker = ((steps == first[None, :]) | (steps == second[None, :])).astype(jnp.float32)
    xs = jnp.stack([values, marker], axis=-1)
    ys = jnp.sum(values * marker, axis=0)[:, None]
    return xs, ys


def adding_baseline() -> float:
    """MSE of the constant predictor ``1.0`` on [`adding`][rnnjax.tasks.synthetic.adding] (``1/6``)."""
    return ADDING_BASELINE_MSE


def copy_memory(key: PRNGKey, batch: int, T: int, *, one_hot: bool = True) -> tuple[Array, Array]:
    """The copy-memory problem (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).

    Tokens: ``0`` blank, ``1..8`` symbols, ``9`` delimiter. Each input sequence has length
    ``T + 20``: 10 symbols drawn uniformly from ``1..8``, then ``T - 1`` blanks, the delimiter
    (at step ``T + 9``), then 10 blanks. The target is blank for the first ``T + 10`` steps and the
    10 symbols, in order, on the last 10 steps: the model must recall them ``T`` steps later.
    Baseline: [`copy_baseline`][rnnjax.tasks.synthetic.copy_baseline].

    Args:
      key: PRNG key; the same key gives the same batch.
      batch: B >= 1.
      T: the delay (number of steps between the last symbol and the delimiter, plus one), >= 1.
      one_hot: inputs as one-hot float32 ``[T+20, B, 10]`` (default), else int32 tokens
        ``[T+20, B]``.

    Returns:
      ``(xs, targets)`` with ``xs`` one-hot ``[T+20, B, 10]`` float32 (or int32 tokens
      ``[T+20, B]``) and ``targets`` int32 ``[T+20, B]`` in ``0..8``.
    """
    key = check_key(key)
    B = check_int("batch", batch)
    T = check_int("T", T)
    if not isinstance(one_hot, bool):
        raise TypeError(f"one_hot must be a bool, got {type(one_hot).__name__}")
    L = COPY_LENGTH
    symbols = jax.random.randint(key, (L, B), 1, COPY_NUM_SYMBOLS + 1, dtype=jnp.int32)
    tokens = jnp.concatenate([
        symbols,
        jnp.zeros((T - 1, B), jnp.int32),
        jnp.full((1, B), COPY_DELIMITER, jnp.int32),
        jnp.zeros((L, B), jnp.int32),
    ])
    targets = jnp.concatenate([jnp.zeros((T + L, B), jnp.int32), symbols])
    xs = jax.nn.one_hot(tokens, COPY_VOCAB, dtype=jnp.float32) if one_hot else tokens
    return xs, targets


def copy_baseline(T: int) -> float:
    """Cross-entropy (nats per step, averaged over all ``T + 20`` steps) of the best memoryless
    predictor on [`copy_memory`][rnnjax.tasks.synthetic.copy_memory]: blank with probability 1 on the first
    ``T + 10`` steps (loss 0) and uniform over the 8 symbols on the last 10 (loss ``log 8`` each): ``10 log 8
    / (T + 20)``.
    """
    T = check_int("T", T)
    return COPY_LENGTH * math.log(COPY_NUM_SYMBOLS) / (T + 20)
