"""Recall tasks: multi-query associative recall, selective copying, induction heads, flip-flop.

Each generator is a pure function of an explicit key, a batch size and a sequence length,
generated on the device with ``jax.numpy`` (jit-able with ``batch``, ``length`` and the task
arguments static). Every one returns int32 token ids ``inputs [T, B]``, int32 ``targets [T, B]``
and a bool ``mask [T, B]`` of the scored steps (targets are 0 where the mask is False): a model
reads ``inputs[t]`` and is scored on predicting ``targets[t]`` where ``mask[t]``. ``T`` is always
exactly ``length``, so the same task is evaluated at 1x, 2x and 4x the training length by
changing one argument.

Each task documents the accuracy of the best predictor *without memory* (one that sees the
current input token and the step index, never the past): a model beats it only by remembering.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp

from rnnjax._checks import check_number
from rnnjax.tasks._common import check_int, check_key
from rnnjax.types import Array, PRNGKey

MQAR_BLANK = 0
"""Token of the non-query steps after the key-value context of [`mqar`][rnnjax.tasks.recall.mqar]."""

FLIP_FLOP_WRITE = 2
"""Token of the write instruction of [`flip_flop`][rnnjax.tasks.recall.flip_flop] (the bits are the tokens
``0`` and ``1``)."""
FLIP_FLOP_READ = 3
"""Token of the read instruction of [`flip_flop`][rnnjax.tasks.recall.flip_flop]."""
FLIP_FLOP_IGNORE = 4
"""Token of the ignore instruction of [`flip_flop`][rnnjax.tasks.recall.flip_flop]."""
FLIP_FLOP_VOCAB = 5
"""Input vocabulary size of [`flip_flop`][rnnjax.tasks.recall.flip_flop]: the bits ``0``/``1``, write, read,
ignore."""

FLIP_FLOP_BASELINE = 0.5
"""Memoryless accuracy on [`flip_flop`][rnnjax.tasks.recall.flip_flop]: the read instruction says nothing
about the bit."""

FLIP_FLOP_SPARSE = 0.98
"""``p_ignore`` of Liu et al.'s sparse test split (training uses ``0.8``)."""
FLIP_FLOP_DENSE = 0.1
"""``p_ignore`` of Liu et al.'s dense test split (training uses ``0.8``)."""


def _rows(B: int) -> Array:
    return jnp.arange(B)[:, None]


def _draw(key: PRNGKey, B: int, *widths: int) -> list[Array]:
    """Random uint32 blocks ``[B, w]`` for each width, from ONE threefry call (each call adds
    about 0.2 s to a CPU compile; the tests compile many small programs)."""
    bits = jax.random.bits(key, (B, sum(widths)), jnp.uint32)
    return jnp.split(bits, list(itertools.accumulate(widths))[:-1], axis=1)


def _ints(bits: Array, lo: int, hi: int) -> Array:
    """Uniform ints in ``lo..hi-1`` from uint32 bits (modulo bias below ``(hi - lo) / 2**32``)."""
    return lo + (bits % jnp.uint32(hi - lo)).astype(jnp.int32)


def _uniform(bits: Array) -> Array:
    """Uniform floats in ``[0, 1)`` on the grid of ``2**-24`` (exact in float32)."""
    return (bits >> 8).astype(jnp.float32) * (2.0 ** -24)


def _first_k_of_permutation(bits: Array, k: int) -> Array:
    """``[B, k]`` distinct indices in ``0..n-1`` per row of ``bits [B, n]`` (the first k of the
    random permutation that sorts the bits)."""
    return jnp.argsort(bits, axis=1)[:, :k].astype(jnp.int32)


def mqar(key: PRNGKey, batch: int, length: int, *, num_pairs: int = 8, vocab_size: int = 64,
         num_queries: int | None = None) -> tuple[Array, Array, Array]:
    """Multi-query associative recall, MQAR (Arora et al. 2023, Zoology).

    The first ``2K`` steps are ``K = num_pairs`` key-value pairs ``k_1 v_1 ... k_K v_K``: keys
    distinct within a sequence, drawn from ``1 .. vocab_size//2 - 1``; values drawn uniformly (with
    replacement) from the other half ``vocab_size//2 .. vocab_size - 1``. The remaining
    ``length - 2K`` steps hold ``Q = num_queries`` queries, distinct keys of the context in random
    order at distinct uniformly random steps, and [`MQAR_BLANK`][rnnjax.tasks.recall.MQAR_BLANK] elsewhere. At
    a query step the target is the value paired with that key: ``targets[t] = v_j`` where ``inputs[t] = k_j``;
    every other step is masked. (Zoology places queries with a power-law gap; here they are
    uniform.) Baseline: [`mqar_baseline`][rnnjax.tasks.recall.mqar_baseline] ``= 1 / (vocab_size -
    vocab_size//2)``.

    Reference: Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra & Ré, "Zoology: Measuring and
    Improving Recall in Efficient Language Models", ICLR 2024 (arXiv 2312.04927, 2023).

    Args:
      key: PRNG key; the same key gives the same batch.
      batch: B >= 1.
      length: T >= 2 * num_pairs + num_queries.
      num_pairs: K >= 1 key-value pairs per sequence.
      vocab_size: V >= 2K + 2 (the key half ``1..V//2-1`` must hold K distinct keys).
      num_queries: Q in ``1..K``; default K (every key is queried once).

    Returns:
      ``(inputs [T, B] int32 in 0..V-1, targets [T, B] int32, mask [T, B] bool)``.
    """
    key = check_key(key)
    B = check_int("batch", batch)
    K = check_int("num_pairs", num_pairs)
    V = check_int("vocab_size", vocab_size, minimum=2 * K + 2)
    Q = K if num_queries is None else check_int("num_queries", num_queries)
    if Q > K:
        raise ValueError(f"num_queries must be an int in 1..num_pairs={K}, got {Q}")
    T = check_int("length", length, minimum=2 * K + Q)
    return _mqar(key, B, T, K, V, Q)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _mqar(key: PRNGKey, B: int, T: int, K: int, V: int, Q: int) -> tuple[Array, Array, Array]:
    half = V // 2
    bk, bv, bq, bp = _draw(key, B, half - 1, K, K, T - 2 * K)
    keys = 1 + _first_k_of_permutation(bk, K)
    values = _ints(bv, half, V)
    which = _first_k_of_permutation(bq, Q)
    where = 2 * K + _first_k_of_permutation(bp, Q)
    context = jnp.stack([keys, values], axis=2).reshape(B, 2 * K)
    rows = _rows(B)
    tokens = jnp.full((B, T), MQAR_BLANK, jnp.int32).at[:, : 2 * K].set(context)
    tokens = tokens.at[rows, where].set(jnp.take_along_axis(keys, which, axis=1))
    targets = jnp.zeros((B, T), jnp.int32).at[rows, where].set(jnp.take_along_axis(values, which, axis=1))
    mask = jnp.zeros((B, T), bool).at[rows, where].set(True)
    return tokens.T, targets.T, mask.T


def mqar_baseline(vocab_size: int = 64) -> float:
    """Memoryless accuracy on [`mqar`][rnnjax.tasks.recall.mqar]: a query's value is uniform over the value
    half, ``1 / (vocab_size - vocab_size//2)``, whatever the key and step."""
    V = check_int("vocab_size", vocab_size, minimum=4)
    return 1.0 / (V - V // 2)


def selective_copy(key: PRNGKey, batch: int, length: int, *, num_tokens: int = 16,
                   num_symbols: int = 16) -> tuple[Array, Array, Array]:
    """Selective copying (Gu & Dao 2023, Mamba): recall scattered tokens, in order, after a cue.

    Tokens: ``0`` blank (the noise between the tokens to memorise), ``1..S`` symbols
    (``S = num_symbols``), ``S + 1`` delimiter; vocabulary ``S + 2``. The first
    ``C = length - K - 1`` steps hold ``K = num_tokens`` symbols, drawn uniformly, at distinct
    uniformly random steps (blank elsewhere); step ``C`` is the delimiter; the last ``K`` steps are
    blank inputs whose targets are the K symbols in their order of appearance (only those are
    scored). Unlike the copy task ([`copy_memory`][rnnjax.tasks.copy_memory]), the spacing varies, so a fixed
    delay line cannot solve it. Baseline:
    [`selective_copy_baseline`][rnnjax.tasks.recall.selective_copy_baseline] ``= 1/S``.

    Reference: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
    COLM 2024 (arXiv 2312.00752, 2023), section 3.1 and appendix E.1.

    Args:
      key: PRNG key; the same key gives the same batch.
      batch: B >= 1.
      length: T >= 2K + 1 (at least K context steps, the delimiter and K answer steps).
      num_tokens: K >= 1 tokens to memorise.
      num_symbols: S >= 1.

    Returns:
      ``(inputs [T, B] int32 in 0..S+1, targets [T, B] int32 in 0..S, mask [T, B] bool)``.
    """
    key = check_key(key)
    B = check_int("batch", batch)
    K = check_int("num_tokens", num_tokens)
    S = check_int("num_symbols", num_symbols)
    T = check_int("length", length, minimum=2 * K + 1)
    return _selective_copy(key, B, T, K, S)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _selective_copy(key: PRNGKey, B: int, T: int, K: int, S: int) -> tuple[Array, Array, Array]:
    C = T - K - 1
    bp, bs = _draw(key, B, C, K)
    where = jnp.sort(_first_k_of_permutation(bp, K), axis=1)
    symbols = _ints(bs, 1, S + 1)
    context = jnp.zeros((B, C), jnp.int32).at[_rows(B), where].set(symbols)
    tokens = jnp.concatenate(
        [context, jnp.full((B, 1), S + 1, jnp.int32), jnp.zeros((B, K), jnp.int32)], axis=1)
    targets = jnp.concatenate([jnp.zeros((B, C + 1), jnp.int32), symbols], axis=1)
    mask = jnp.concatenate([jnp.zeros((B, C + 1), bool), jnp.ones((B, K), bool)], axis=1)
    return tokens.T, targets.T, mask.T


def selective_copy_baseline(num_symbols: int = 16) -> float:
    """Memoryless accuracy on [`selective_copy`][rnnjax.tasks.recall.selective_copy]: the answer steps' inputs
    are blank and the symbols uniform, ``1 / num_symbols``."""
    return 1.0 / check_int("num_symbols", num_symbols)


def induction_heads(key: PRNGKey, batch: int, length: int, *,
                    vocab_size: int = 16) -> tuple[Array, Array, Array]:
    """Induction heads (the form of Olsson et al. 2022, as used by Gu & Dao 2023).

    A uniformly random sequence over ``0..V-1`` (``V = vocab_size``); the special token ``V``
    appears once at a uniformly random step ``p`` in ``0..T-3``, followed by a token ``b`` drawn
    uniformly; the last step is the special token again. Only the last step is scored, with
    target ``b``: after "special", predict what followed it before. Baseline:
    [`induction_heads_baseline`][rnnjax.tasks.recall.induction_heads_baseline] ``= 1/V``.

    Reference: Olsson, Elhage, Nanda, Joseph, DasSarma, Henighan, Mann, Askell, Bai, Chen et al.,
    "In-context Learning and Induction Heads", Transformer Circuits Thread, 2022.

    Args:
      key: PRNG key; the same key gives the same batch.
      batch: B >= 1.
      length: T >= 3.
      vocab_size: V >= 1 ordinary tokens (the input vocabulary is V + 1 with the special token).

    Returns:
      ``(inputs [T, B] int32 in 0..V, targets [T, B] int32 in 0..V-1, mask [T, B] bool)``.
    """
    key = check_key(key)
    B = check_int("batch", batch)
    V = check_int("vocab_size", vocab_size)
    T = check_int("length", length, minimum=3)
    return _induction_heads(key, B, T, V)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _induction_heads(key: PRNGKey, B: int, T: int, V: int) -> tuple[Array, Array, Array]:
    bs, bp, bb = _draw(key, B, T, 1, 1)
    tokens = _ints(bs, 0, V)
    p = _ints(bp, 0, T - 2)
    b = _ints(bb, 0, V)
    rows = _rows(B)
    tokens = tokens.at[rows, p].set(V).at[rows, p + 1].set(b).at[:, T - 1].set(V)
    last = jnp.arange(T)[None, :] == T - 1
    targets = jnp.where(last, b, 0)
    mask = jnp.broadcast_to(last, (B, T))
    return tokens.T, targets.T, mask.T


def induction_heads_baseline(vocab_size: int = 16) -> float:
    """Memoryless accuracy on [`induction_heads`][rnnjax.tasks.recall.induction_heads]: the last input is
    always the special token and ``b`` is uniform, ``1 / vocab_size``."""
    return 1.0 / check_int("vocab_size", vocab_size)


def flip_flop(key: PRNGKey, batch: int, length: int, *,
              p_ignore: float = 0.8) -> tuple[Array, Array, Array]:
    """Flip-flop language modelling, FFL(p_ignore) (Liu et al. 2023): remember the last written bit.

    A sequence of ``length / 2`` instruction-bit pairs. The first instruction is write, the last
    read; every other one is ignore with probability ``p_ignore``, else write or read with
    probability ``(1 - p_ignore)/2`` each. The bit after write or ignore is uniform; the bit
    after read is the bit of the last write. Tokens: [`FLIP_FLOP_WRITE`][rnnjax.tasks.recall.FLIP_FLOP_WRITE],
    [`FLIP_FLOP_READ`][rnnjax.tasks.recall.FLIP_FLOP_READ],
    [`FLIP_FLOP_IGNORE`][rnnjax.tasks.recall.FLIP_FLOP_IGNORE], the bits ``0``/``1``. As in the paper, only
    the deterministic bits are scored: at the step whose input is a read instruction, the target is the next
    token, the last written bit. Liu et al. train at ``p_ignore = 0.8`` and test also at
    [`FLIP_FLOP_SPARSE`][rnnjax.tasks.recall.FLIP_FLOP_SPARSE] ``= 0.98`` and
    [`FLIP_FLOP_DENSE`][rnnjax.tasks.recall.FLIP_FLOP_DENSE] ``= 0.1``. Baseline:
    [`FLIP_FLOP_BASELINE`][rnnjax.tasks.recall.FLIP_FLOP_BASELINE] ``= 0.5``.

    Reference: Liu, Ash, Goel, Krishnamurthy & Zhang, "Exposing Attention Glitches with Flip-Flop
    Language Modeling", NeurIPS 2023.

    Args:
      key: PRNG key; the same key gives the same batch.
      batch: B >= 1.
      length: T, even and >= 4 (the paper uses 512).
      p_ignore: probability of an ignore instruction, in [0, 1].

    Returns:
      ``(inputs [T, B] int32 in 0..4, targets [T, B] int32 in {0, 1}, mask [T, B] bool)``.
    """
    key = check_key(key)
    B = check_int("batch", batch)
    T = check_int("length", length, minimum=4)
    if T % 2:
        raise ValueError(f"length must be an even int >= 4 (instruction-bit pairs), got {T}")
    p = check_number("p_ignore", p_ignore, lo=0.0, hi=1.0)
    return _flip_flop(key, B, T, p)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _flip_flop(key: PRNGKey, B: int, T: int, p: float) -> tuple[Array, Array, Array]:
    P = T // 2
    bi, bb = _draw(key, B, P, P)
    u = _uniform(bi)
    instr = jnp.where(u < p, FLIP_FLOP_IGNORE,
                      jnp.where(u < p + (1.0 - p) / 2, FLIP_FLOP_WRITE, FLIP_FLOP_READ))
    pair = jnp.arange(P)[None, :]
    instr = jnp.where(pair == 0, FLIP_FLOP_WRITE, jnp.where(pair == P - 1, FLIP_FLOP_READ, instr))
    instr = instr.astype(jnp.int32)
    bits = (bb >> 31).astype(jnp.int32)
    last_write = jax.lax.cummax(jnp.where(instr == FLIP_FLOP_WRITE, pair, -1), axis=1)
    memory = jnp.take_along_axis(bits, last_write, axis=1)
    read = instr == FLIP_FLOP_READ
    data = jnp.where(read, memory, bits)
    tokens = jnp.stack([instr, data], axis=2).reshape(B, T)
    targets = jnp.stack([jnp.where(read, memory, 0), jnp.zeros_like(data)], axis=2).reshape(B, T)
    mask = jnp.stack([read, jnp.zeros_like(read)], axis=2).reshape(B, T)
    return tokens.T, targets.T, mask.T
