"""State-tracking tasks (parity, modular counting, group word problems, ListOps) and the registry
of the state-tracking and recall tasks.

The generators follow the conventions of `rnnjax.tasks.recall`: a pure function of an
explicit key, a batch size and a sequence length, on the device with ``jax.numpy`` (jit-able with
``batch``, ``length`` and the task arguments static), returning int32 token ids ``inputs [T, B]``,
int32 ``targets [T, B]`` and a bool ``mask [T, B]`` of the scored steps, with ``T = length``.
[`listops`][rnnjax.tasks.state_tracking.listops] is the exception: its trees are recursive, so it is generated
on the host with NumPy from an int seed.

Each task documents the accuracy of the best predictor *without memory* (one that sees the
current input and the step index, never the past). [`TASKS`][rnnjax.tasks.state_tracking.TASKS] names every
task with its vocabulary, classes, baseline, solved threshold and training length;
[`held_out`][rnnjax.tasks.state_tracking.held_out] draws a fixed held-out set of any of them.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._checks import check_number
from rnnjax.tasks._common import check_int, check_key
from rnnjax.tasks.recall import (
    FLIP_FLOP_BASELINE,
    FLIP_FLOP_DENSE,
    FLIP_FLOP_SPARSE,
    FLIP_FLOP_VOCAB,
    flip_flop,
    induction_heads,
    induction_heads_baseline,
    mqar,
    mqar_baseline,
    selective_copy,
    selective_copy_baseline,
)
from rnnjax.types import Array, PRNGKey

GROUPS = ("S3", "S4", "S5", "A4", "A5")
"""Permutation groups of [`word_problem`][rnnjax.tasks.state_tracking.word_problem]: symmetric groups S3-S5,
alternating groups A4, A5."""

SOLVED_ACCURACY = 0.9
"""Accuracy at which Delétang et al. (2023) count a task as solved."""


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _uniform_ints(key: PRNGKey, shape: tuple[int, int], n: int) -> Array:
    """Uniform ints in ``0..n-1`` from uint32 bits (modulo bias below ``n / 2**32``; one bits call
    compiles faster on a CPU than ``randint``)."""
    return (jax.random.bits(key, shape, jnp.uint32) % jnp.uint32(n)).astype(jnp.int32)


def _score_mask(T: int, B: int, running: bool) -> Array:
    if running:
        return jnp.ones((T, B), bool)
    return jnp.broadcast_to(jnp.arange(T)[:, None] == T - 1, (T, B))


def _memoryless(T: int, n: int, running: bool) -> float:
    # y_1 = x_1 is known from the input alone; afterwards y_t is uniform over n given x_t.
    if running:
        return (1.0 + (T - 1) / n) / T
    return 1.0 if T == 1 else 1.0 / n


def modular_counting(key: PRNGKey, batch: int, length: int, *, modulus: int = 5,
                     running: bool = True) -> tuple[Array, Array, Array]:
    """Modular counting: the running sum of the inputs modulo ``m`` (Delétang et al. 2023).

    ``x_t`` uniform over ``0..m-1``; ``y_t = (x_1 + ... + x_t) mod m`` (the word problem on the
    cyclic group Z_m; ``m = 2`` is parity). ``running=True`` scores every step, ``False`` only the
    last (Delétang et al.'s final-answer form). Every label is uniform over ``0..m-1``. Baseline:
    [`modular_counting_baseline`][rnnjax.tasks.state_tracking.modular_counting_baseline], ``1/m`` at every
    step but the first (where ``y_1 = x_1``).

    Reference: Delétang, Ruoss, Grau-Moya, Genewein, Wenliang, Catt, Cundy, Hutter, Legg, Veness &
    Ortega, "Neural Networks and the Chomsky Hierarchy", ICLR 2023 (the regular tasks parity check
    and modular arithmetic / cycle navigation).

    Args:
      key: PRNG key; the same key gives the same batch.
      batch: B >= 1.
      length: T >= 1.
      modulus: m >= 2.
      running: score every step (default) or only the last.

    Returns:
      ``(inputs [T, B] int32 in 0..m-1, targets [T, B] int32 in 0..m-1, mask [T, B] bool)``.
    """
    key = check_key(key)
    B = check_int("batch", batch)
    T = check_int("length", length)
    m = check_int("modulus", modulus, minimum=2)
    running = _check_bool("running", running)
    if T * (m - 1) >= 2**31:
        raise ValueError(f"length * (modulus - 1) must be < 2**31 (int32 running sums), got {T} * {m - 1}")
    return _modular_counting(key, B, T, m, running)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _modular_counting(key: PRNGKey, B: int, T: int, m: int, running: bool) -> tuple[Array, Array, Array]:
    xs = _uniform_ints(key, (T, B), m)
    ys = jnp.cumsum(xs, axis=0, dtype=jnp.int32) % m  # exact while T * m < 2**31
    return xs, ys, _score_mask(T, B, running)


def modular_counting_baseline(length: int, modulus: int = 5, running: bool = True) -> float:
    """Memoryless accuracy on [`modular_counting`][rnnjax.tasks.state_tracking.modular_counting]: ``(1 +
    (T-1)/m) / T`` over every step (the first label equals the input), or ``1/m`` at the last step alone (1
    when ``T = 1``)."""
    return _memoryless(check_int("length", length), check_int("modulus", modulus, minimum=2),
                       _check_bool("running", running))


def parity(key: PRNGKey, batch: int, length: int, *, running: bool = True) -> tuple[Array, Array, Array]:
    """Parity: the XOR of the bits seen so far (Delétang et al. 2023; Grazzi et al. 2025).

    ``x_t`` uniform bits, ``y_t = x_1 xor ... xor x_t``:
    [`modular_counting`][rnnjax.tasks.state_tracking.modular_counting] with ``modulus=2``. ``running=False``
    scores only the last step (Delétang et al.'s parity check). Baseline:
    [`parity_baseline`][rnnjax.tasks.state_tracking.parity_baseline] (``1/2`` at every step but the first).

    References: Delétang et al., "Neural Networks and the Chomsky Hierarchy", ICLR 2023; Grazzi,
    Siems, Zela, Franke, Hutter & Pontil, "Unlocking State-Tracking in Linear RNNs Through Negative
    Eigenvalues", ICLR 2025.

    Args:
      key: PRNG key; the same key gives the same batch.
      batch: B >= 1.
      length: T >= 1.
      running: score every step (default) or only the last.

    Returns:
      ``(inputs [T, B] int32 bits, targets [T, B] int32 bits, mask [T, B] bool)``.
    """
    return modular_counting(key, batch, length, modulus=2, running=running)


def parity_baseline(length: int, running: bool = True) -> float:
    """Memoryless accuracy on [`parity`][rnnjax.tasks.state_tracking.parity]: ``(1 + (T-1)/2) / T``, or
    ``1/2`` at the last step."""
    return modular_counting_baseline(length, 2, running)


@functools.cache
def _group(name: str) -> tuple[np.ndarray, np.ndarray]:
    n = int(name[1])
    perms = np.array(list(itertools.permutations(range(n))), np.int64)  # lexicographic
    if name[0] == "A":
        inversions = (perms[:, :, None] > perms[:, None, :]) & np.triu(np.ones((n, n), bool), 1)
        perms = perms[inversions.sum((1, 2)) % 2 == 0]
    code = perms @ (n ** np.arange(n))  # a permutation as a base-n integer
    index = {int(c): i for i, c in enumerate(code)}
    composed = perms[np.arange(len(perms))[:, None, None], perms[None, :, :]]  # [a, b, i] = a[b[i]]
    table = np.vectorize(index.__getitem__)(composed @ (n ** np.arange(n)))
    perms.setflags(write=False)
    table = table.astype(np.int32)
    table.setflags(write=False)
    return perms, table


def permutation_group(group: str) -> tuple[np.ndarray, np.ndarray]:
    """The elements and multiplication table of a permutation group named in
    [`GROUPS`][rnnjax.tasks.state_tracking.GROUPS].

    Elements are the permutations of ``0..n-1`` (all of them for ``S_n``, the even ones for
    ``A_n``) in lexicographic order, so element ``0`` is the identity. The product is composition,
    ``(a·b)(i) = a(b(i))``: ``table[a, b]`` is the index of ``elements[a][elements[b]]``.

    Args:
      group: one of [`GROUPS`][rnnjax.tasks.state_tracking.GROUPS].

    Returns:
      ``(elements [G, n] int64, table [G, G] int32)``, read-only NumPy arrays.
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    return _group(group)


def word_problem(key: PRNGKey, batch: int, length: int, *, group: str = "S5",
                 running: bool = True) -> tuple[Array, Array, Array]:
    """The word problem of a permutation group: track the running product of random elements.

    ``x_t`` uniform over the group's elements (indices of
    [`permutation_group`][rnnjax.tasks.state_tracking.permutation_group]), ``y_t = x_1 · x_2 · ... · x_t``
    (composition, ``table[y_{t-1}, x_t]``). Each label is uniform over the group. S5 and A5 are not solvable:
    Merrill et al. prove that no fixed-depth linear state-space model solves their word problem; S3 is the
    smallest non-abelian group. Baseline:
    [`word_problem_baseline`][rnnjax.tasks.state_tracking.word_problem_baseline], ``1/|G|`` at every step but
    the first.

    References: Merrill, Petty & Sabharwal, "The Illusion of State in State-Space Models",
    ICML 2024; Grazzi, Siems, Zela, Franke, Hutter & Pontil, "Unlocking State-Tracking in Linear
    RNNs Through Negative Eigenvalues", ICLR 2025.

    Args:
      key: PRNG key; the same key gives the same batch.
      batch: B >= 1.
      length: T >= 1.
      group: one of [`GROUPS`][rnnjax.tasks.state_tracking.GROUPS] (``"S3"``, ``"S4"``, ``"S5"``, ``"A4"``,
        ``"A5"``).
      running: score every step (default) or only the last.

    Returns:
      ``(inputs [T, B] int32, targets [T, B] int32, mask [T, B] bool)``, ids in ``0..|G|-1``.
    """
    key = check_key(key)
    B = check_int("batch", batch)
    T = check_int("length", length)
    running = _check_bool("running", running)
    permutation_group(group)
    return _word_problem(key, B, T, group, running)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _word_problem(key: PRNGKey, B: int, T: int, group: str, running: bool) -> tuple[Array, Array, Array]:
    table = permutation_group(group)[1]
    tab = jnp.asarray(table)
    xs = _uniform_ints(key, (T, B), table.shape[0])

    def step(state: Array, x: Array) -> tuple[Array, Array]:
        state = tab[state, x]
        return state, state

    _, ys = jax.lax.scan(step, jnp.zeros((B,), jnp.int32), xs)  # element 0 is the identity
    return xs, ys, _score_mask(T, B, running)


def word_problem_baseline(length: int, group: str = "S5", running: bool = True) -> float:
    """Memoryless accuracy on [`word_problem`][rnnjax.tasks.state_tracking.word_problem]: ``(1 + (T-1)/|G|) /
    T`` over every step, or ``1/|G|`` at the last step alone."""
    size = permutation_group(group)[1].shape[0]
    return _memoryless(check_int("length", length), size, _check_bool("running", running))


LISTOPS_TOKENS = ("<pad>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
                  "[MAX", "[MIN", "[MED", "[SM", "]")
"""The ListOps vocabulary: token id -> string (``0`` padding, ``d + 1`` the digit ``d``)."""

LISTOPS_PAD = 0
"""The padding token of [`listops`][rnnjax.tasks.state_tracking.listops] (after each expression's last
token)."""
LISTOPS_VOCAB = len(LISTOPS_TOKENS)
"""Input vocabulary size of [`listops`][rnnjax.tasks.state_tracking.listops] (16)."""
_OPEN, _CLOSE = 11, 15


def _median(args: list[int]) -> int:
    s = sorted(args)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) // 2  # int(np.median) for digits


_OPS = (max, min, _median, lambda args: sum(args) % 10)


class _TooLong(Exception):
    pass


def _listops_node(rng: np.random.Generator, depth: int, max_depth: int, max_args: int, p_op: float,
                  max_length: int, out: list[int]) -> int:
    """Appends a random subtree's tokens to ``out`` (the root, ``depth == 1``, is an operator)."""
    if len(out) >= max_length:
        raise _TooLong
    if depth > 1 and (depth > max_depth or rng.random() >= p_op):
        digit = int(rng.integers(10))
        out.append(digit + 1)
        return digit
    op = int(rng.integers(4))
    out.append(_OPEN + op)
    args = [_listops_node(rng, depth + 1, max_depth, max_args, p_op, max_length, out)
            for _ in range(int(rng.integers(2, max_args + 1)))]
    out.append(_CLOSE)
    if len(out) > max_length:
        raise _TooLong
    return _OPS[op](args)


def listops(seed: int, batch: int, max_length: int = 128, *, min_length: int = 1, max_depth: int = 10,
            max_args: int = 5, p_op: float = 0.25) -> tuple[Array, Array, Array]:
    """ListOps: evaluate a random nested list expression (Nangia & Bowman 2018; Long Range Arena).

    An expression is an operator applied to 2..``max_args`` arguments, each a digit ``0-9`` or
    (with probability ``p_op``, while the nesting depth stays <= ``max_depth``) another expression,
    in prefix form with brackets: ``[MAX 2 9 [MIN 4 7 ] 0 ]`` = 9. Operators: ``[MAX``, ``[MIN``,
    ``[MED`` (the median, rounded down for an even count: ``int(np.median)``), ``[SM`` (sum mod
    10). Expressions are drawn until ``min_length <= tokens <= max_length`` (the LRA generator's
    rejection, with its ``p_op = 0.25`` and ``max_args = 5``), then padded with
    [`LISTOPS_PAD`][rnnjax.tasks.state_tracking.LISTOPS_PAD] to ``max_length``. Token ids index
    [`LISTOPS_TOKENS`][rnnjax.tasks.state_tracking.LISTOPS_TOKENS]. Generated on the host with NumPy (trees
    are recursive), so not jit-able; the same seed gives the same batch. The value is read after the last
    token (step ``lengths - 1``), where the input is always ``]``; baseline:
    [`listops_baseline`][rnnjax.tasks.state_tracking.listops_baseline], the frequency of the most common
    value.

    References: Nangia & Bowman, "ListOps: A Diagnostic Dataset for Latent Tree Learning", NAACL
    Student Research Workshop 2018; Tay, Dehghani, Abnar, Shen, Bahri, Pham, Rao, Yang, Ruder &
    Metzler, "Long Range Arena: A Benchmark for Efficient Transformers", ICLR 2021.

    Args:
      seed: int >= 0 seeding ``np.random.default_rng``.
      batch: B >= 1.
      max_length: T >= 4, the padded length (LRA uses 2000; keep <= 128-256 on a CPU).
      min_length: the shortest expression kept, in 1..max_length.
      max_depth: >= 1, the deepest nesting of operators.
      max_args: >= 2.
      p_op: probability that an argument is itself an expression, in [0, 1).

    Returns:
      ``(tokens [T, B] int32, values [B] int32 in 0..9, lengths [B] int32)``.
    """
    seed = check_int("seed", seed, minimum=0)
    B = check_int("batch", batch)
    T = check_int("max_length", max_length, minimum=4)
    lo = check_int("min_length", min_length)
    if lo > T:
        raise ValueError(f"min_length must be an int in 1..max_length={T}, got {lo}")
    depth = check_int("max_depth", max_depth)
    args = check_int("max_args", max_args, minimum=2)
    p_op = check_number("p_op", p_op, lo=0.0)
    if p_op >= 1.0:
        raise ValueError(f"p_op must be a number in [0, 1), got {p_op}")
    rng = np.random.default_rng(seed)
    tokens = np.zeros((B, T), np.int32)
    values, lengths = np.zeros(B, np.int32), np.zeros(B, np.int32)
    i, tries = 0, 0
    while i < B:
        tries += 1
        if tries > 1000 * B + 10_000:
            raise ValueError(f"no expression of min_length={lo}..max_length={T} tokens in {tries - 1} "
                             f"draws: lower min_length or raise max_depth, max_args or p_op")
        out: list[int] = []
        try:
            value = _listops_node(rng, 1, depth, args, p_op, T, out)
        except _TooLong:
            continue
        if len(out) < lo:
            continue
        tokens[i, : len(out)], values[i], lengths[i] = out, value, len(out)
        i += 1
    return jnp.asarray(tokens.T), jnp.asarray(values), jnp.asarray(lengths)


@functools.lru_cache(maxsize=64)
def _listops_majority(max_length: int, min_length: int, max_depth: int, max_args: int,
                      p_op: float) -> float:
    _, values, _ = listops(0, 2048, max_length, min_length=min_length, max_depth=max_depth,
                           max_args=max_args, p_op=p_op)
    return float(np.bincount(np.asarray(values), minlength=10).max() / values.shape[0])


def listops_baseline(max_length: int = 128, *, min_length: int = 1, max_depth: int = 10, max_args: int = 5,
                     p_op: float = 0.25) -> float:
    """Memoryless accuracy on [`listops`][rnnjax.tasks.state_tracking.listops]: the frequency of the most
    common value, estimated on 2048 expressions of seed 0 (standard error below 0.011); the last input is
    always ``]``."""
    listops(0, 1, max_length, min_length=min_length, max_depth=max_depth, max_args=max_args,
            p_op=p_op)  # checks the arguments
    return _listops_majority(max_length, min_length, max_depth, max_args, float(p_op))


def listops_task(key: PRNGKey, batch: int, length: int = 128, *, max_depth: int = 12, p_op: float = 0.3,
                 min_fraction: float = 0.5) -> tuple[Array, Array, Array]:
    """[`listops`][rnnjax.tasks.state_tracking.listops] in the form of the other tasks: ``(inputs, targets,
    mask)`` from a key.

    Expressions of ``length * min_fraction`` to ``length`` tokens, so the same task evaluated at
    2x and 4x the length holds longer and deeper expressions. ``p_op = 0.3`` (LRA: 0.25) makes such
    expressions common at every length, so the rejection stays cheap (about 2-3 ms per expression
    at lengths 128-512 on one CPU core; pre-generate a training set rather than drawing per step).
    The target is the value at the expression's last token (``mask`` marks that one step; padding
    follows it). Host-side: the key must be concrete (not traced).

    Args:
      key: PRNG key; the seed of [`listops`][rnnjax.tasks.state_tracking.listops] is drawn from it.
      batch: B >= 1.
      length: T >= 4.
      max_depth: >= 1.
      p_op: in [0, 1), as in [`listops`][rnnjax.tasks.state_tracking.listops].
      min_fraction: in [0, 1]: the shortest expression kept is ``max(1, int(length * min_fraction))``.

    Returns:
      ``(inputs [T, B] int32, targets [T, B] int32 in 0..9, mask [T, B] bool)``.
    """
    key = check_key(key)
    T = check_int("length", length, minimum=4)
    frac = check_number("min_fraction", min_fraction, lo=0.0, hi=1.0)
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    tokens, values, lengths = listops(seed, batch, T, min_length=max(1, int(T * frac)),
                                      max_depth=max_depth, p_op=p_op)
    last = jnp.arange(T)[:, None] == (lengths - 1)[None, :]
    return tokens, jnp.where(last, values[None, :], 0), last


class TaskSpec(NamedTuple):
    """A task of [`TASKS`][rnnjax.tasks.state_tracking.TASKS], for a benchmark to train and evaluate on.

    Attributes:
      generate: ``generate(key, batch, length) -> (inputs [T, B] int32, targets [T, B] int32,
        mask [T, B] bool)`` with ``T = length``; jit-able (``batch``, ``length`` static) when
        ``on_device``.
      vocab_size: inputs lie in ``0..vocab_size-1`` (one-hot them with ``jax.nn.one_hot``).
      num_classes: targets lie in ``0..num_classes-1``.
      baseline: ``baseline(length)``, the accuracy over the masked steps of the best predictor
        without memory (seeing the current input and the step only).
      solved: the masked-step accuracy at which the task counts as solved.
      length: the training length; evaluate length generalisation at 2x and 4x it.
      on_device: generated with ``jax.numpy`` (jit-able), else on the host.
      paper: the paper the task and its solved threshold come from.
    """

    generate: Callable[[PRNGKey, int, int], tuple[Array, Array, Array]]
    vocab_size: int
    num_classes: int
    baseline: Callable[[int], float]
    solved: float
    length: int
    on_device: bool
    paper: str


def _constant(value: float) -> Callable[[int], float]:
    return lambda length: value


_DELETANG = "Delétang et al., Neural Networks and the Chomsky Hierarchy, ICLR 2023"
_MERRILL = ("Merrill, Petty & Sabharwal, The Illusion of State in State-Space Models, ICML 2024; "
            "Grazzi et al., Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues, ICLR 2025")
_LIU = "Liu et al., Exposing Attention Glitches with Flip-Flop Language Modeling, NeurIPS 2023"
_MQAR: dict[str, Any] = dict(num_pairs=8, vocab_size=64)
_COPY: dict[str, Any] = dict(num_tokens=16, num_symbols=16)


def _word(group: str, length: int) -> TaskSpec:
    size = permutation_group(group)[1].shape[0]
    return TaskSpec(functools.partial(word_problem, group=group), size, size,
                    functools.partial(word_problem_baseline, group=group), SOLVED_ACCURACY, length,
                    True, _MERRILL)


TASKS: dict[str, TaskSpec] = {
    "parity": TaskSpec(parity, 2, 2, parity_baseline, SOLVED_ACCURACY, 64, True, _DELETANG),
    "parity_final": TaskSpec(functools.partial(parity, running=False), 2, 2,
                             functools.partial(parity_baseline, running=False), SOLVED_ACCURACY, 64,
                             True, _DELETANG),
    "modular_counting": TaskSpec(modular_counting, 5, 5, modular_counting_baseline, SOLVED_ACCURACY,
                                 64, True, _DELETANG),
    "s3": _word("S3", 64),
    "s5": _word("S5", 64),
    "a5": _word("A5", 64),
    "mqar": TaskSpec(functools.partial(mqar, **_MQAR), _MQAR["vocab_size"], _MQAR["vocab_size"],
                     _constant(mqar_baseline(_MQAR["vocab_size"])), 0.99, 64, True,
                     "Arora et al., Zoology: Measuring and Improving Recall in Efficient Language "
                     "Models, ICLR 2024"),
    "selective_copy": TaskSpec(functools.partial(selective_copy, **_COPY), _COPY["num_symbols"] + 2,
                               _COPY["num_symbols"] + 1,
                               _constant(selective_copy_baseline(_COPY["num_symbols"])), 0.99, 128,
                               True, "Gu & Dao, Mamba: Linear-Time Sequence Modeling with Selective "
                               "State Spaces, COLM 2024"),
    "induction_heads": TaskSpec(induction_heads, 17, 16, _constant(induction_heads_baseline(16)), 0.99,
                                64, True, "Olsson et al., In-context Learning and Induction Heads, "
                                "Transformer Circuits Thread 2022"),
    "flip_flop": TaskSpec(flip_flop, FLIP_FLOP_VOCAB, 2, _constant(FLIP_FLOP_BASELINE), 1.0, 128, True,
                          _LIU),
    "flip_flop_sparse": TaskSpec(functools.partial(flip_flop, p_ignore=FLIP_FLOP_SPARSE), FLIP_FLOP_VOCAB,
                                 2, _constant(FLIP_FLOP_BASELINE), 1.0, 128, True, _LIU),
    "flip_flop_dense": TaskSpec(functools.partial(flip_flop, p_ignore=FLIP_FLOP_DENSE), FLIP_FLOP_VOCAB,
                                2, _constant(FLIP_FLOP_BASELINE), 1.0, 128, True, _LIU),
    "listops": TaskSpec(listops_task, LISTOPS_VOCAB, 10,
                        lambda length: listops_baseline(length, min_length=max(1, length // 2),
                                                        max_depth=12, p_op=0.3),
                        SOLVED_ACCURACY, 128, False,
                        "Nangia & Bowman, ListOps, NAACL SRW 2018; Tay et al., Long Range Arena, ICLR 2021"),
}
"""The state-tracking and recall tasks by name, for a benchmark registry to wrap.

Solved thresholds: accuracy >= [`SOLVED_ACCURACY`][rnnjax.tasks.state_tracking.SOLVED_ACCURACY] (0.9, Delétang
et al.'s criterion) for the state-tracking tasks and ListOps; >= 0.99 (near-perfect recall) for MQAR,
selective copying and induction heads; 1.0 (no error, Liu et al.'s criterion) for flip-flop, whose
``flip_flop_sparse`` and ``flip_flop_dense`` entries are the paper's test splits of the ``flip_flop`` training
task.
"""

HELD_OUT_FOLD = 0x5EED
"""[`held_out`][rnnjax.tasks.state_tracking.held_out] draws with ``jax.random.fold_in(key,
HELD_OUT_FOLD)``."""


def held_out(name: str, key: PRNGKey, n: int, length: int | None = None) -> tuple[Array, Array, Array]:
    """A fixed held-out set of the task ``TASKS[name]``: the same key gives the same set.

    The data are ``TASKS[name].generate(jax.random.fold_in(key, HELD_OUT_FOLD), n, length)``, so a
    held-out set never coincides with a training batch drawn with the same key.

    Args:
      name: a key of [`TASKS`][rnnjax.tasks.state_tracking.TASKS] (e.g. ``"flip_flop_sparse"`` for Liu et
        al.'s sparse test split).
      key: PRNG key.
      n: number of sequences >= 1.
      length: T >= the task's minimum; default the task's training length (use 2x and 4x it for
        length generalisation).

    Returns:
      ``(inputs [T, n] int32, targets [T, n] int32, mask [T, n] bool)``.
    """
    if name not in TASKS:
        raise ValueError(f"name must be one of {sorted(TASKS)}, got {name!r}")
    spec = TASKS[name]
    key = check_key(key)
    n = check_int("n", n)
    length = spec.length if length is None else check_int("length", length)
    return spec.generate(jax.random.fold_in(key, HELD_OUT_FOLD), n, length)
