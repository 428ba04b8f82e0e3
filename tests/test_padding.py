"""Padding cannot poison training: NaN and inf in padded steps reach no output, carry or gradient,
on every path of unroll (plain scan, fused LSTM/GRU, associative scan, reverse, remat,
remat_chunk, stacks, sequences of length 0)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from helpers import tree_allclose
from rnnjax.types import Cell

T, B, D = 6, 3, 2
LENGTHS = np.array([6, 3, 0])  # full, padded, empty


def _plain(cell):
    """The same cell without its fused/parallel hooks: ``unroll`` scans ``apply``."""
    return Cell(cell.init, cell.initial_carry, cell.apply)


def _poisoned(xs):
    """``xs`` with NaN, +inf and -inf in every padded step."""
    bad = jnp.array([jnp.nan, jnp.inf, -jnp.inf], xs.dtype)
    t = jnp.arange(T)[:, None, None]
    fill = bad[(t + jnp.arange(D)[None, None, :]) % 3]  # [T, 1, D]
    pad = (jnp.arange(T)[:, None] >= jnp.asarray(LENGTHS)[None])[..., None]
    return jnp.where(pad, jnp.broadcast_to(fill, xs.shape), xs)


def _unpadded_runs(cell, params, xs, c0, reverse):
    """Reference: each sequence alone, only its valid steps (a Python loop over ``apply``)."""
    ys_all, finals = [], []
    for b in range(B):
        n = int(LENGTHS[b])
        c = jax.tree_util.tree_map(lambda a: a[b:b + 1], c0)
        seq = xs[:n, b:b + 1]
        ys = []
        for t in range(n):
            c, y = cell.apply(params, c, seq[n - 1 - t] if reverse else seq[t])
            ys.append(y)
        if ys:
            y = jnp.stack(ys[::-1] if reverse else ys)
        else:
            y_size = jax.eval_shape(lambda p, cc: cell.apply(p, cc, xs[0, :1]), params, c)[1].shape[-1]
            y = jnp.zeros((0, 1, y_size), xs.dtype)
        ys_all.append(jnp.concatenate([y, jnp.zeros((T - n,) + y.shape[1:], y.dtype)]))
        finals.append(c)
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *finals), jnp.concatenate(ys_all, axis=1)


def _loss(out):
    carry, ys = out
    w = jnp.cos(jnp.arange(ys.size, dtype=jnp.float32)).reshape(ys.shape)
    return jnp.sum(w * ys) + sum(jnp.sum(jnp.abs(c) ** 2) for c in jax.tree_util.tree_leaves(carry))


# (id, cell factory, unroll options, reverse)
CASES = [
    ("lstm-fused", lambda: rnnjax.lstm(3), {}, False),
    ("lstm-fused-rev", lambda: rnnjax.lstm(3), {}, True),
    ("lstm-scan", lambda: _plain(rnnjax.lstm(3)), {}, False),
    ("lstm-remat", lambda: rnnjax.lstm(3), dict(remat=True), False),
    ("lstm-fused-chunk", lambda: rnnjax.lstm(3), dict(remat_chunk=4), False),
    ("gru-fused", lambda: rnnjax.gru(3), {}, False),
    ("gru-fused-chunk-rev", lambda: rnnjax.gru(3, reset="after"), dict(remat_chunk=4), True),
    ("elman-scan", lambda: rnnjax.elman(3), {}, False),
    ("elman-remat-rev", lambda: rnnjax.elman(3), dict(remat=True), True),
    ("elman-chunk-rev", lambda: rnnjax.elman(3), dict(remat_chunk="sqrt"), True),
    ("lru-scan", lambda: rnnjax.lru(3, 2), dict(parallel=False), False),
    ("lru-parallel-rev", lambda: rnnjax.lru(3, 2), dict(parallel=True), True),
    ("mingru-parallel", lambda: rnnjax.mingru(3), dict(parallel=True), False),
    ("mingru-parallel-remat-rev", lambda: rnnjax.mingru(3), dict(parallel=True, remat=True), True),
    ("mingru-scan-rev", lambda: rnnjax.mingru(3), dict(parallel=False), True),
    ("stack", lambda: rnnjax.stack(rnnjax.lstm(3), rnnjax.gru(2)), {}, False),
    ("stack-rev", lambda: rnnjax.stack(rnnjax.elman(3), rnnjax.gru(2)), {}, True),
]


@pytest.mark.parametrize("name,make,opts,reverse", CASES, ids=[c[0] for c in CASES])
def test_nan_and_inf_padding_reach_nothing(name, make, opts, reverse):
    cell = make()
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    c0 = jax.tree_util.tree_map(
        lambda a: a + (0.5 * jax.random.normal(jax.random.key(2), a.shape)).astype(a.dtype),
        cell.initial_carry(params, (B,)))
    bad = _poisoned(xs)
    assert not bool(jnp.isfinite(bad).all())

    def run(p, x, c):
        return rnnjax.unroll(cell, p, x, c, lengths=jnp.asarray(LENGTHS), reverse=reverse, **opts)

    out, grads = jax.jit(jax.value_and_grad(lambda *a: (_loss(run(*a)), run(*a)), argnums=(0, 1, 2),
                                            has_aux=True))(params, bad, c0)
    for leaf in jax.tree_util.tree_leaves((out, grads)):
        assert bool(jnp.isfinite(leaf).all()), name
    expected, expected_grads = jax.value_and_grad(
        lambda *a: (_loss(_unpadded_runs(cell, *a, reverse)), _unpadded_runs(cell, *a, reverse)),
        argnums=(0, 1, 2), has_aux=True)(params, xs, c0)
    tree_allclose(out[1], expected[1], atol=2e-5, rtol=2e-5)
    tree_allclose(grads, expected_grads, atol=5e-5, rtol=5e-5)
    # padded inputs get exactly zero gradient, valid ones a non-zero one
    gx = np.asarray(grads[1])
    for b, n in enumerate(LENGTHS):
        np.testing.assert_array_equal(gx[n:, b], 0.0)
        assert n == 0 or np.abs(gx[:n, b]).sum() > 0


def test_all_sequences_empty_with_nan_inputs():
    """lengths all 0 (e.g. a padding-only batch): carry unchanged, outputs and gradients zero."""
    cell = rnnjax.lstm(3)
    params = cell.init(jax.random.key(0), D)
    xs = jnp.full((T, B, D), jnp.nan)
    c0 = rnnjax.LSTMState(jnp.ones((B, 3)), -jnp.ones((B, 3)))

    def loss(p, x):
        c, ys = rnnjax.unroll(cell, p, x, c0, lengths=jnp.zeros((B,), jnp.int32))
        return jnp.sum(ys) + jnp.sum(c.h), (c, ys)

    (_, (c, ys)), (gp, gx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs)
    tree_allclose(c, c0)
    np.testing.assert_array_equal(ys, 0.0)
    np.testing.assert_array_equal(gx, 0.0)
    for leaf in jax.tree_util.tree_leaves(gp):
        np.testing.assert_array_equal(leaf, 0.0)
