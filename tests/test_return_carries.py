"""unroll(..., return_carries=True): every carry, against a Python loop over apply, on every path
(plain scan, fused LSTM/GRU, associative scan plain / log-space / block, remat, remat_chunk) with
lengths, reverse and resets, values and gradients; and unroll's carry and traced-lengths checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rnnjax
from helpers import tree_allclose
from rnnjax.cells import fused
from rnnjax.types import Cell

T, B, D = 6, 3, 2
LENGTHS = np.array([6, 2, 4])
RESETS = np.zeros((T, B), bool)
RESETS[3, 0] = True      # a segment start inside a full sequence
RESETS[[1, 5], 2] = True  # seq 2: a start at 1, and one at 5 in its padding (ignored)
RESETS[4, 1] = True       # in seq 1's padding (ignored)


def _plain(cell):
    return Cell(cell.init, cell.initial_carry, cell.apply)


def _ref(cell, params, xs, c0, reverse, lengths, resets):
    """(carries [T + 1, B, ...], ys) by a Python loop over ``apply`` (the batch at once, numpy
    masks): carries[t] = the carry after the valid steps of xs[:t] (forwards) or xs[t:] (reverse)."""
    T_, B_ = xs.shape[:2]
    n = np.full(B_, T_) if lengths is None else np.asarray(lengths)
    sel = lambda m, a, b: jax.tree_util.tree_map(  # noqa: E731
        lambda u, v: jnp.where(m.reshape((-1,) + (1,) * (u.ndim - 1)), u, v), a, b)
    c, after, ys = c0, {}, {}
    for t in (range(T_ - 1, -1, -1) if reverse else range(T_)):
        valid = t < n
        start = np.zeros(B_, bool)
        if resets is not None:  # the carry entering t is reset (backwards: t + 1 starts a segment)
            start = ((t + 1 < n) & resets[min(t + 1, T_ - 1)]) if reverse else resets[t] & valid
        new, y = cell.apply(params, sel(start, c0, c), xs[t])
        c = sel(valid, new, c)
        after[t], ys[t] = c, jnp.where(valid[:, None], y, jnp.zeros_like(y))
    seq = [after[t] for t in range(T_)]
    seq = seq + [c0] if reverse else [c0] + seq
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *seq), jnp.stack([ys[t] for t in range(T_)])


def _loss(out):
    carries, ys = out
    total = jnp.sum(jnp.cos(jnp.arange(ys.size, dtype=jnp.float32)).reshape(ys.shape) * ys)
    for leaf in jax.tree_util.tree_leaves(carries):
        w = jnp.sin(jnp.arange(leaf.size, dtype=jnp.float32)).reshape(leaf.shape)
        total = total + jnp.sum(w * jnp.real(leaf) + 0.5 * jnp.abs(leaf) ** 2)
    return total


# (id, cell factory, unroll options, reverse, lengths, resets)
CASES = [
    ("lstm-fused-len-resets", lambda: rnnjax.lstm(3), {}, False, True, True),
    ("lstm-fused-rev-len", lambda: rnnjax.lstm(3), {}, True, True, False),
    ("gru-after-fused-rev-resets", lambda: rnnjax.gru(3, reset="after"), {}, True, False, True),
    ("elman-remat-rev-len-resets", lambda: rnnjax.elman(3), dict(remat=True), True, True, True),
    ("lstm-chunk-rev-len-resets", lambda: rnnjax.lstm(3), dict(remat_chunk=4), True, True, True),
    ("elman-chunk-sqrt-len", lambda: _plain(rnnjax.lstm(2)), dict(remat_chunk="sqrt"), False, True, False),
    ("lru-parallel-len-resets", lambda: rnnjax.lru(3, 2), dict(parallel=True), False, True, True),
    ("mingru-logspace-parallel-rev-len-resets", lambda: rnnjax.mingru(3), dict(parallel=True), True, True, True),
    ("minlstm-plain-parallel-rev", lambda: rnnjax.minlstm(3, log_space=False), dict(parallel=True), True, False, False),
    ("linoss-block-parallel-rev-len", lambda: rnnjax.linoss(3, 2), dict(parallel=True, remat=True), True, True, False),
    ("stack-len-resets", lambda: rnnjax.stack(rnnjax.lstm(3), rnnjax.elman(2)), {}, False, True, True),
]


SLOW_CASES = ['elman-chunk-sqrt-len', 'elman-remat-rev-len-resets', 'gru-after-fused-rev-resets', 'lru-parallel-len-resets', 'lstm-fused-rev-len', 'minlstm-plain-parallel-rev', 'stack-len-resets']  # the same paths at other options: in `make test-slow` (suite time)


def _marked(cases):
    return [pytest.param(*c, marks=pytest.mark.slow) if c[0] in SLOW_CASES else c for c in cases]


@pytest.mark.parametrize("name,make,opts,reverse,use_len,use_resets", _marked(CASES), ids=[c[0] for c in CASES])
def test_carries_equal_python_loop(name, make, opts, reverse, use_len, use_resets):
    cell = make()
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    c0 = jax.tree_util.tree_map(
        lambda a: a + (0.5 * jax.random.normal(jax.random.key(2), a.shape)).astype(a.dtype),
        cell.initial_carry(params, (B,)))
    lengths = jnp.asarray(LENGTHS) if use_len else None
    resets = jnp.asarray(RESETS) if use_resets else None

    def run(p, x, c):
        return rnnjax.unroll(cell, p, x, c, reverse=reverse, lengths=lengths, resets=resets,
                             return_carries=True, **opts)

    def both(p, x, c):
        plain = rnnjax.unroll(cell, p, x, c, reverse=reverse, lengths=lengths, resets=resets, **opts)
        return jax.value_and_grad(lambda *a: (_loss(run(*a)), run(*a)), argnums=(0, 1, 2),
                                  has_aux=True)(p, x, c), plain

    (out, grads), plain_out = jax.jit(both)(params, xs, c0)
    ref = lambda *a: _ref(cell, *a, reverse, LENGTHS if use_len else None,  # noqa: E731
                          RESETS if use_resets else None)
    expected, expected_grads = jax.value_and_grad(lambda *a: (_loss(ref(*a)), ref(*a)),
                                                  argnums=(0, 1, 2), has_aux=True)(params, xs, c0)
    tree_allclose(out[1], expected[1], atol=2e-5, rtol=2e-5)
    tree_allclose(grads, expected_grads, atol=5e-5, rtol=5e-5)
    # the same tree as (final_carry, ys); the final carry and ys are unroll's
    assert jax.tree_util.tree_structure(plain_out) == jax.tree_util.tree_structure(out[1])
    carries, ys = out[1]
    tree_allclose(jax.tree_util.tree_map(lambda a: a[0 if reverse else -1], carries), plain_out[0],
                  atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ys), np.asarray(plain_out[1]), atol=1e-6)


def test_carries_batch_major_and_empty():
    cell = rnnjax.gru(3)
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    cs_t, ys_t = rnnjax.unroll(cell, params, xs, return_carries=True, reverse=True)
    cs_b, ys_b = rnnjax.unroll(cell, params, jnp.swapaxes(xs, 0, 1), time_major=False,
                               return_carries=True, reverse=True)
    assert cs_b.shape == (B, T + 1, 3)  # after the batch axes, like ys [B, T, H]
    np.testing.assert_allclose(jnp.swapaxes(cs_b, 0, 1), cs_t, atol=1e-6)
    np.testing.assert_allclose(jnp.swapaxes(ys_b, 0, 1), ys_t, atol=1e-6)
    c0 = rnnjax.LSTMState(jnp.ones((B, 3)), -jnp.ones((B, 3)))
    cs, ys = rnnjax.unroll(rnnjax.lstm(3), rnnjax.lstm(3).init(jax.random.key(0), D),
                           jnp.zeros((0, B, D)), c0, return_carries=True)
    assert ys.shape == (0, B, 3)
    tree_allclose(cs, jax.tree_util.tree_map(lambda a: a[None], c0), atol=0)


def test_fused_history_check_grads():
    """The fused custom VJPs with the carry history as an output, against numerical derivatives."""
    H, Tn, Bn = 2, 4, 2
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(0), 5)
        w_x = jax.random.normal(k[0], (D, 4 * H), jnp.float64) * 0.5
        w_h = jax.random.normal(k[1], (H, 4 * H), jnp.float64) * 0.5
        b = jax.random.normal(k[2], (4 * H,), jnp.float64) * 0.5
        h0, c0 = jax.random.normal(k[3], (2, Bn, H), jnp.float64)
        xs = jax.random.normal(k[4], (Tn, Bn, D), jnp.float64)
        mask = jnp.array([[1, 1], [1, 1], [1, 0], [1, 0]], bool)

        def lstm(w_x, w_h, b, h0, c0, xs):
            hT, cT, ys, hs, cs = fused.lstm_scan(True, 1, "step", w_x, w_h, b, h0, c0, xs, mask,
                                                 history=True)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(hT * cT) + jnp.sum(jnp.cos(hs) * cs)

        def gru(w_x, w_h, b, h0, xs):
            hT, ys, hs = fused.gru_scan(False, True, 1, "hoisted", w_x[:, :3 * H], w_h[:, :3 * H],
                                        b[:3 * H], b[3 * H:], h0, xs, mask, history=True)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(hT ** 2) + jnp.sum(jnp.cos(hs) * hs)

        check_grads(jax.jit(lstm), (w_x, w_h, b, h0, c0, xs), order=1, modes=("rev",), atol=1e-5,
                    rtol=1e-5)
        check_grads(jax.jit(gru), (w_x, w_h, b, h0, xs), order=1, modes=("rev",), atol=1e-5,
                    rtol=1e-5)


# --------------------------------------------------------------------- unroll's argument checks

def test_carry_of_the_wrong_hidden_size_names_the_leaf():
    cell = rnnjax.lstm(4)
    params = cell.init(jax.random.key(0), D)
    xs = jnp.zeros((T, B, D))
    wrong = rnnjax.lstm(5).initial_carry(params, (B,))
    with pytest.raises(ValueError, match=r"carry\.h has shape \(3, 5\) but the 'lstm' cell's carry "
                                         r"for batch shape \(3,\) has shape \(3, 4\)"):
        rnnjax.unroll(cell, params, xs, wrong)
    with pytest.raises(ValueError, match=r"carry has structure .* but the 'lstm' cell's carry has "
                                         r"structure"):
        rnnjax.unroll(cell, params, xs, (jnp.zeros((B, 4)), jnp.zeros((B, 4))))
    with pytest.raises(ValueError, match=r"carry has shape \(3, 7\) .* has shape \(3, 4\)"):
        rnnjax.unroll(rnnjax.gru(4), rnnjax.gru(4).init(jax.random.key(0), D), xs,
                      jnp.zeros((B, 7)))


@pytest.mark.parametrize("opts", [dict(), dict(parallel=True), dict(remat_chunk=2, reverse=True)],
                         ids=["fused", "parallel", "chunk-rev"])
def test_traced_lengths_out_of_range_are_nan(opts):
    """Under jit lengths cannot be checked: out-of-range sequences become NaN, the others exact."""
    cell = rnnjax.mingru(3) if opts.get("parallel") else rnnjax.lstm(3)
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (T, 4, D))
    f = jax.jit(lambda n: rnnjax.unroll(cell, params, xs, lengths=n, return_carries=True, **opts))
    carries, ys = f(jnp.array([6, 7, -1, 2]))
    ref_carries, ref_ys = rnnjax.unroll(cell, params, xs, lengths=jnp.array([6, 6, 0, 2]),
                                        return_carries=True, **opts)
    for got, want in ((ys, ref_ys), *zip(jax.tree_util.tree_leaves(carries),
                                         jax.tree_util.tree_leaves(ref_carries))):
        assert bool(jnp.isnan(got[:, 1:3]).all())
        np.testing.assert_allclose(np.asarray(got[:, [0, 3]]), np.asarray(want[:, [0, 3]]), atol=1e-6)
    final, _ = jax.jit(lambda n: rnnjax.unroll(cell, params, xs, lengths=n, **opts))(
        jnp.array([6, 7, -1, 2]))
    for leaf in jax.tree_util.tree_leaves(final):
        assert bool(jnp.isnan(leaf[1:3]).all()) and bool(jnp.isfinite(leaf[jnp.array([0, 3])]).all())
