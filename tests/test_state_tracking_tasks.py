"""Tests for the state-tracking and recall tasks of rnnjax.tasks: values against independent Python
references, label statistics, the documented memoryless baselines, determinism, jit, the registry
and bad arguments."""

import functools
import itertools
import math

import jax
import numpy as np
import pytest

from rnnjax import tasks
from rnnjax.tasks import (
    FLIP_FLOP_IGNORE,
    FLIP_FLOP_READ,
    FLIP_FLOP_WRITE,
    LISTOPS_TOKENS,
    TASKS,
    flip_flop,
    held_out,
    induction_heads,
    induction_heads_baseline,
    listops,
    listops_baseline,
    listops_task,
    modular_counting,
    modular_counting_baseline,
    mqar,
    mqar_baseline,
    parity,
    parity_baseline,
    permutation_group,
    selective_copy,
    selective_copy_baseline,
    word_problem,
    word_problem_baseline,
)


def _np(*arrays):
    return tuple(np.asarray(a) for a in arrays)


def memoryless_accuracy(inputs, targets, mask):
    """Accuracy over the masked steps of the best predictor that sees only (step, current input):
    the majority target of each (t, x_t) group, estimated from the batch."""
    T = inputs.shape[0]
    t = np.broadcast_to(np.arange(T)[:, None], inputs.shape)[mask]
    x, y = inputs[mask].astype(np.int64), targets[mask].astype(np.int64)
    group = (t * (x.max() + 1) + x) * (y.max() + 1) + y
    _, counts = np.unique(group, return_counts=True)
    keys = np.unique(group) // (y.max() + 1)
    best = {}
    for k, c in zip(keys, counts):
        best[k] = max(best.get(k, 0), c)
    return sum(best.values()) / mask.sum()


# ------------------------------------------------------------------------------ parity / counting


def test_parity_and_modular_counting_values_and_labels(key):
    xs, ys, mask = _np(*parity(key, 4000, 8))
    assert xs.dtype == np.int32 and ys.dtype == np.int32 and mask.dtype == bool
    np.testing.assert_array_equal(ys, np.cumsum(xs, axis=0) % 2)
    assert mask.all()
    # labels ~50/50 at every step (4 standard errors)
    assert np.all(np.abs(ys.mean(1) - 0.5) < 4 * 0.5 / math.sqrt(4000))
    # the final form: same data, only the last step scored
    xf, yf, mf = _np(*parity(key, 4000, 8, running=False))
    np.testing.assert_array_equal(xf, xs)
    np.testing.assert_array_equal(yf, ys)
    np.testing.assert_array_equal(mf, np.arange(8)[:, None].repeat(4000, 1) == 7)
    xm, ym, _ = _np(*modular_counting(key, 3000, 9, modulus=3))
    assert set(np.unique(xm)) == {0, 1, 2}
    np.testing.assert_array_equal(ym, np.cumsum(xm, axis=0) % 3)


def test_counting_baselines_match_the_best_memoryless_predictor(key):
    assert parity_baseline(8) == pytest.approx((1 + 7 / 2) / 8)
    assert parity_baseline(8, running=False) == 0.5 and parity_baseline(1, running=False) == 1.0
    assert modular_counting_baseline(9, 3) == pytest.approx((1 + 8 / 3) / 9)
    assert memoryless_accuracy(*_np(*parity(key, 4000, 8))) == pytest.approx(parity_baseline(8), abs=0.015)
    data = _np(*parity(key, 4000, 8, running=False))
    assert memoryless_accuracy(*data) == pytest.approx(0.5, abs=0.03)
    data = _np(*modular_counting(key, 3000, 9, modulus=3))
    assert memoryless_accuracy(*data) == pytest.approx(modular_counting_baseline(9, 3), abs=0.015)


# ------------------------------------------------------------------------------ groups


@pytest.mark.parametrize("group, size", [("S3", 6), ("S5", 120), ("A5", 60), ("A4", 12)])
def test_permutation_group_tables(group, size):
    elements, table = permutation_group(group)
    n = elements.shape[1]
    assert table.shape == (size, size) and len({tuple(e) for e in elements}) == size
    np.testing.assert_array_equal(elements[0], np.arange(n))  # identity first
    np.testing.assert_array_equal(table[0], np.arange(size))
    np.testing.assert_array_equal(table[:, 0], np.arange(size))
    # composition a(b(i)) for every pair, by Python tuples
    index = {tuple(e): i for i, e in enumerate(elements.tolist())}
    for a, b in itertools.product(range(size), repeat=2):
        assert table[a, b] == index[tuple(elements[a][elements[b]])]
    # associativity over all triples, and a Latin square (every element has an inverse)
    left = table[table[:, :, None], np.arange(size)[None, None, :]]  # (ab)c
    right = table[np.arange(size)[:, None, None], table[None, :, :]]  # a(bc)
    np.testing.assert_array_equal(left, right)
    assert all(sorted(row) == list(range(size)) for row in table.tolist())
    assert not np.array_equal(table, table.T)  # non-abelian
    if group[0] == "A":  # even permutations only
        signs = [sum(p[i] > p[j] for i in range(n) for j in range(i + 1, n)) % 2 for p in elements.tolist()]
        assert not any(signs)


def test_word_problem_against_python_composition(key):
    elements, _ = permutation_group("S5")
    xs, ys, mask = _np(*word_problem(key, 3, 12, group="S5"))
    index = {tuple(e): i for i, e in enumerate(elements.tolist())}
    for b in range(3):
        state = tuple(range(5))
        for t in range(12):
            g = elements[xs[t, b]]
            state = tuple(state[g[i]] for i in range(5))  # state · g: apply g, then state
            assert ys[t, b] == index[state]
    assert mask.all()


def test_word_problem_labels_uniform_and_baseline(key):
    xs, ys, _ = _np(*word_problem(key, 6000, 4, group="S5"))
    for t in range(4):  # each step's label ~ uniform over 120: chi-square with 119 dof
        counts = np.bincount(ys[t], minlength=120)
        chi2 = ((counts - 50.0) ** 2 / 50.0).sum()
        assert counts.min() > 0 and chi2 < 119 + 5 * math.sqrt(2 * 119)
    assert word_problem_baseline(4, "S5") == pytest.approx((1 + 3 / 120) / 4)
    data = _np(*word_problem(key, 4000, 6, group="S3"))
    assert memoryless_accuracy(*data) == pytest.approx(word_problem_baseline(6, "S3"), abs=0.03)
    assert word_problem_baseline(6, "S3", running=False) == pytest.approx(1 / 6)


# ------------------------------------------------------------------------------ MQAR


def test_mqar_pairs_queries_and_targets(key):
    K, V, T, B = 6, 40, 24, 300
    xs, ys, mask = _np(*mqar(key, B, T, num_pairs=K, vocab_size=V, num_queries=4))
    assert xs.shape == ys.shape == mask.shape == (T, B)
    keys, values = xs[0:2 * K:2], xs[1:2 * K:2]
    assert keys.min() >= 1 and keys.max() < V // 2 and values.min() >= V // 2 and values.max() < V
    assert all(len(set(keys[:, b])) == K for b in range(B))  # every key distinct in a sequence
    assert not mask[:2 * K].any() and np.all(mask.sum(0) == 4)
    for b in range(B):
        pairs = dict(zip(keys[:, b], values[:, b]))
        steps = np.flatnonzero(mask[:, b])
        assert len(set(xs[steps, b])) == 4  # distinct keys queried
        for t in steps:
            assert ys[t, b] == pairs[xs[t, b]]
        rest = np.setdiff1d(np.arange(2 * K, T), steps)
        assert np.all(xs[rest, b] == tasks.MQAR_BLANK) and np.all(ys[rest, b] == 0)
    # query steps spread over the tail; default: every key queried once
    assert len(np.unique(np.nonzero(mask)[0])) == T - 2 * K
    _, _, m8 = _np(*mqar(key, 2, 18, num_pairs=K, vocab_size=V))
    assert np.all(m8.sum(0) == K)


def test_mqar_baseline(key):
    assert mqar_baseline(40) == 1 / 20 and mqar_baseline(41) == 1 / 21
    xs, ys, mask = _np(*mqar(key, 3000, 16, num_pairs=4, vocab_size=16))
    counts = np.bincount(ys[mask], minlength=16)[8:]  # values of queries ~ uniform over the half
    assert np.abs(counts / counts.sum() - 1 / 8).max() < 0.02
    # a memoryless predictor (key -> its most frequent value) does no better than 1/8 (the
    # in-sample maximum over 8 counts of ~1700 is biased up by ~1.4 standard errors, 0.011)
    group = xs[mask] * 16 + ys[mask]
    table = np.bincount(group, minlength=256).reshape(16, 16)
    assert table.max(1).sum() / mask.sum() == pytest.approx(mqar_baseline(16) + 0.011, abs=0.01)


# ------------------------------------------------------------------------------ selective copy, induction


def test_selective_copy_layout_and_baseline(key):
    K, S, T, B = 4, 6, 14, 2000
    xs, ys, mask = _np(*selective_copy(key, B, T, num_tokens=K, num_symbols=S))
    C = T - K - 1
    np.testing.assert_array_equal(xs[C], S + 1)  # delimiter
    np.testing.assert_array_equal(xs[C + 1:], 0)
    np.testing.assert_array_equal(mask, np.arange(T)[:, None].repeat(B, 1) > C)
    np.testing.assert_array_equal(ys[~mask], 0)
    for b in range(B):
        context = xs[:C, b]
        np.testing.assert_array_equal(context[context > 0], ys[C + 1:, b])  # in order
    assert len(np.unique(np.nonzero(xs[:C])[0])) == C  # spacing varies over every step
    freq = np.bincount(ys[mask], minlength=S + 1)[1:] / mask.sum()
    np.testing.assert_allclose(freq, 1 / S, atol=0.02)
    assert selective_copy_baseline(S) == 1 / S
    assert memoryless_accuracy(xs, ys, mask) == pytest.approx(1 / S, abs=0.03)


def test_induction_heads_layout_and_baseline(key):
    V, T, B = 8, 10, 3000
    xs, ys, mask = _np(*induction_heads(key, B, T, vocab_size=V))
    np.testing.assert_array_equal(xs[-1], V)
    assert np.all((xs == V).sum(0) == 2)
    first = (xs[:-1] == V).argmax(0)
    assert first.max() <= T - 3 and len(np.unique(first)) == T - 2
    np.testing.assert_array_equal(ys[-1], xs[first + 1, np.arange(B)])
    np.testing.assert_array_equal(mask[-1], True)
    assert mask.sum() == B
    assert induction_heads_baseline(V) == 1 / V
    assert memoryless_accuracy(xs, ys, mask) == pytest.approx(1 / V, abs=0.02)


# ------------------------------------------------------------------------------ flip-flop


@pytest.mark.parametrize("p_ignore", [0.98, 0.8, 0.1])
def test_flip_flop_reads_equal_last_write_and_ignore_rate(key, p_ignore):
    T, B = 40, 500
    xs, ys, mask = _np(*flip_flop(key, B, T, p_ignore=p_ignore))
    instr, bits = xs[0::2], xs[1::2]
    assert np.all(instr[0] == FLIP_FLOP_WRITE) and np.all(instr[-1] == FLIP_FLOP_READ)
    assert set(np.unique(bits)) <= {0, 1}
    middle = instr[1:-1]
    n = middle.size
    for token, p in [(FLIP_FLOP_IGNORE, p_ignore), (FLIP_FLOP_WRITE, (1 - p_ignore) / 2),
                     (FLIP_FLOP_READ, (1 - p_ignore) / 2)]:
        assert abs((middle == token).mean() - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9
    np.testing.assert_array_equal(mask[1::2], False)
    np.testing.assert_array_equal(mask[0::2], instr == FLIP_FLOP_READ)
    for b in range(B):
        memory = None
        for j in range(T // 2):
            if instr[j, b] == FLIP_FLOP_WRITE:
                memory = bits[j, b]
            elif instr[j, b] == FLIP_FLOP_READ:
                assert bits[j, b] == memory and ys[2 * j, b] == memory
    if p_ignore == 0.1:  # read targets ~50/50: the memoryless baseline 0.5
        assert abs(ys[mask].mean() - 0.5) < 4 * 0.5 / math.sqrt(mask.sum())
        assert memoryless_accuracy(xs, ys, mask) == pytest.approx(tasks.FLIP_FLOP_BASELINE, abs=0.04)


# ------------------------------------------------------------------------------ ListOps


def _evaluate(expression: str) -> int:
    """An independent evaluator of a ListOps expression string (recursive descent)."""
    words = expression.split()

    def parse(i):
        w = words[i]
        if w.isdigit():
            return int(w), i + 1
        args, i = [], i + 1
        while words[i] != "]":
            v, i = parse(i)
            args.append(v)
        ops = {"[MAX": max, "[MIN": min, "[SM": lambda a: sum(a) % 10,
               "[MED": lambda a: int(np.median(a))}
        return ops[w](args), i + 1

    value, end = parse(0)
    assert end == len(words)
    return value


def test_listops_values_equal_python_evaluation():
    tokens, values, lengths = _np(*listops(7, 200, 48, min_length=10, max_depth=4))
    assert tokens.shape == (48, 200) and values.shape == lengths.shape == (200,)
    assert lengths.min() >= 10 and lengths.max() <= 48
    depths, seen = [], set()
    for b in range(200):
        n = lengths[b]
        assert np.all(tokens[n:, b] == tasks.LISTOPS_PAD) and np.all(tokens[:n, b] > 0)
        words = [LISTOPS_TOKENS[i] for i in tokens[:n, b]]
        seen |= set(w for w in words if w.startswith("["))
        assert words[0].startswith("[") and words[-1] == "]"
        assert values[b] == _evaluate(" ".join(words))
        depths.append(max(itertools.accumulate(w.startswith("[") - (w == "]") for w in words)))
    assert max(depths) <= 4 and min(depths) >= 1 and len(set(depths)) > 2
    assert seen == {"[MAX", "[MIN", "[MED", "[SM"}
    a, b = listops(7, 5, 48), listops(7, 5, 48)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(listops(8, 5, 48)[0], a[0])


def test_listops_baseline_and_task_form(key):
    base = listops_baseline(32, min_length=8)
    _, values, _ = _np(*listops(123, 2000, 32, min_length=8))
    freq = np.bincount(values, minlength=10) / 2000
    assert base == pytest.approx(freq.max(), abs=4 * math.sqrt(0.25 / 2000) * 1.5)
    assert 0.1 < base < 0.3
    xs, ys, mask = _np(*listops_task(key, 20, 32))
    assert np.all(mask.sum(0) == 1)
    last = mask.argmax(0)
    assert np.all(xs[last, np.arange(20)] == 15)  # the input at the scored step is "]"
    assert last.min() >= 15  # expressions of length // 2 .. length tokens
    for b in range(20):
        words = [LISTOPS_TOKENS[i] for i in xs[: last[b] + 1, b]]
        assert ys[last[b], b] == _evaluate(" ".join(words))


# ------------------------------------------------------------------------------ registry


def test_registry_entries_determinism_jit_and_held_out(key):
    other = jax.random.key(1)
    for name, spec in TASKS.items():
        L = {"mqar": 24, "selective_copy": 36}.get(name, 12)
        x, y, m = _np(*spec.generate(key, 3, L))
        assert x.shape == y.shape == m.shape == (L, 3), name
        assert x.min() >= 0 and x.max() < spec.vocab_size, name
        assert y.min() >= 0 and y.max() < spec.num_classes, name
        assert np.all(m.sum(0) >= 1), name
        assert 0 < spec.baseline(L) < spec.solved <= 1, name
        again = _np(*spec.generate(key, 3, L))
        assert all(np.array_equal(u, v) for u, v in zip((x, y, m), again)), name
        assert not np.array_equal(_np(spec.generate(other, 3, L)[0])[0], x), name
        if spec.on_device:  # traceable with a traced key (compiling each again would be slow)
            jaxpr = jax.make_jaxpr(functools.partial(spec.generate, batch=3, length=L))(key)
            assert [v.aval.shape for v in jaxpr.jaxpr.outvars] == [(L, 3)] * 3, name
        h = _np(*held_out(name, key, 3, L))
        assert all(np.array_equal(u, v) for u, v in zip(h, _np(*held_out(name, key, 3, L))))
        assert not np.array_equal(h[0], x), name
    # compiled under jit: the same values; length generalisation: 2x and 4x the length
    spec = TASKS["flip_flop_sparse"]
    jitted = _np(*jax.jit(functools.partial(spec.generate, batch=3, length=12))(key))
    assert all(np.array_equal(u, v) for u, v in zip(jitted, _np(*spec.generate(key, 3, 12))))
    for L in (24, 48):
        x, y, m = _np(*held_out("parity", key, 2, L))
        np.testing.assert_array_equal(y, np.cumsum(x, axis=0) % 2)
    assert held_out("parity", key, 2)[0].shape == (TASKS["parity"].length, 2)


def test_generators_vmap_over_keys(key):
    keys = jax.random.split(key, 2)
    xs, ys, _ = jax.vmap(lambda k: mqar(k, 2, 12, num_pairs=3, vocab_size=10))(keys)
    for i in range(2):
        np.testing.assert_array_equal(xs[i], mqar(keys[i], 2, 12, num_pairs=3, vocab_size=10)[0])


@pytest.mark.parametrize("call, error, match", [
    (lambda k: parity(k, 0, 4), ValueError, "batch must be an int >= 1"),
    (lambda k: parity(k, 2, 0), ValueError, "length must be an int >= 1"),
    (lambda k: parity(k, 2, 4, running=1), TypeError, "running must be a bool"),
    (lambda k: parity(0, 2, 4), TypeError, "key must be a jax PRNG key"),
    (lambda k: modular_counting(k, 2, 4, modulus=1), ValueError, "modulus must be an int >= 2"),
    (lambda k: word_problem(k, 2, 4, group="S6"), ValueError, "group must be one of"),
    (lambda k: mqar(k, 2, 20, num_pairs=8, vocab_size=16), ValueError, "vocab_size must be an int >= 18"),
    (lambda k: mqar(k, 2, 20, num_pairs=8, vocab_size=64), ValueError, "length must be an int >= 24"),
    (lambda k: mqar(k, 2, 30, num_pairs=4, num_queries=5), ValueError,
     "num_queries must be an int in 1..num_pairs=4"),
    (lambda k: selective_copy(k, 2, 8, num_tokens=4), ValueError, "length must be an int >= 9"),
    (lambda k: selective_copy(k, 2, 20, num_symbols=0), ValueError, "num_symbols must be an int >= 1"),
    (lambda k: induction_heads(k, 2, 2), ValueError, "length must be an int >= 3"),
    (lambda k: flip_flop(k, 2, 9), ValueError, "length must be an even int >= 4"),
    (lambda k: flip_flop(k, 2, 8, p_ignore=1.5), ValueError, "p_ignore must be <= 1.0"),
    (lambda k: listops(0, 2, 16, min_length=17), ValueError, "min_length must be an int in 1..max_length=16"),
    (lambda k: listops(0, 2, 16, p_op=1.0), ValueError, r"p_op must be a number in \[0, 1\)"),
    (lambda k: listops(-1, 2, 16), ValueError, "seed must be an int >= 0"),
    (lambda k: listops(0, 2, 64, min_length=60, max_depth=1, max_args=2), ValueError, "no expression of"),
    (lambda k: held_out("parityy", k, 2), ValueError, "name must be one of"),
    (lambda k: held_out("parity", k, 0), ValueError, "n must be an int >= 1"),
])
def test_bad_arguments_name_the_argument(key, call, error, match):
    with pytest.raises(error, match=match):
        call(key)


def test_public_names():
    for name in tasks.__all__:
        assert hasattr(tasks, name), name
