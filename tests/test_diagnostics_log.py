"""Log-space gradient flow: magnitudes beyond float32's range, NaN-safe padding, resets.

References: closed forms (a linear cell), a float64 autodiff computation (``jax.enable_x64``)
written independently of ``rnnjax.diagnostics``, and runs of the segments on their own.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax.diagnostics import gradient_flow, jacobian_norms, log10_decay_rate

LOG10_HALF = np.log10(0.5)


def _linear_elman(H, D, a, key):
    """``h_t = x_t W_x + a h_{t-1}`` (identity activation, ``W_h = a I``, ``b = 0``)."""
    cell = rnnjax.elman(H, activation=lambda z: z)
    params = {"w_x": jax.random.normal(key, (D, H)), "w_h": a * jnp.eye(H), "b": jnp.zeros(H)}
    return cell, params


def _autodiff_log10_norms(cell, params, xs, loss_fn, dtype):
    """``log10 ||dL/d carry_t||`` per carry leaf and in total by plain autodiff in ``dtype``
    (perturbations ``eps_t`` added to the carries, ``y_t`` = the first carry leaf), reduced in
    float64 NumPy. With float32 this is what a naive diagnostic reports (``-inf`` = flushed)."""
    with jax.enable_x64(dtype == jnp.float64):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), dtype), params)
        xs = jnp.asarray(np.asarray(xs), dtype)
        carry = cell.initial_carry(params, xs.shape[1:-1])
        eps = jax.tree_util.tree_map(lambda c: jnp.zeros((xs.shape[0], *c.shape), c.dtype), carry)

        def total(eps):
            def step(c, inp):
                x, e = inp
                c = jax.tree_util.tree_map(jnp.add, cell.apply(params, c, x)[0], e)
                return c, jax.tree_util.tree_leaves(c)[0]

            return loss_fn(jax.lax.scan(step, carry, (xs, eps))[1])

        grads = jax.jit(jax.grad(total))(eps)
        assert all(g.dtype == dtype for g in jax.tree_util.tree_leaves(grads))
    sq = [np.sum(np.asarray(g, np.float64).reshape(xs.shape[0], -1) ** 2, axis=1)
          for g in jax.tree_util.tree_leaves(grads)]
    with np.errstate(divide="ignore"):
        return [0.5 * np.log10(s) for s in sq], 0.5 * np.log10(sum(sq))


def test_linear_elman_closed_form_far_below_float32():
    """``||dL/dh_t|| = ||dL/dh_{T-1}|| a^(T-1-t)``; at a = 0.5, T = 400 the first is ~1e-120."""
    T, B, D, H, a = 400, 2, 3, 4, 0.5
    cell, params = _linear_elman(H, D, a, jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    flow = gradient_flow(cell, params, xs, lambda ys: jnp.sum(ys[-1]))
    k = T - 1 - np.arange(T)
    expected = 0.5 * np.log10(B * H) + k * LOG10_HALF  # dL/dh_{T-1} = ones
    assert expected[0] < -119
    log10 = np.asarray(flow.log10_norms, np.float64)
    assert np.all(np.isfinite(log10))
    np.testing.assert_allclose(log10, expected, rtol=0, atol=1e-4)  # asked for: 0.01 decades
    np.testing.assert_allclose(flow.log10_leaf_norms, expected, rtol=0, atol=1e-4)  # one leaf
    # the float fields where float32 can hold the value, exactly 0 below its range
    norms = np.asarray(flow.norms, np.float64)
    ok = expected > -37
    np.testing.assert_allclose(norms[ok], 10.0 ** expected[ok], rtol=1e-5)
    assert np.all(norms[expected < -46] == 0)
    np.testing.assert_allclose(flow.grads[ok], np.broadcast_to(0.5 ** k[ok][:, None, None], (ok.sum(), B, H)),
                               rtol=1e-5)
    np.testing.assert_allclose(flow.loss, jnp.sum(rnnjax.unroll(cell, params, xs)[1][-1]), rtol=1e-5)
    # the decay rate fitted in log space is the exact per-step factor
    np.testing.assert_allclose(log10_decay_rate(flow.log10_norms), LOG10_HALF, atol=1e-5)
    # readout=None: the last step has no path to the loss (log10 = -inf), the others are the same
    flow0 = gradient_flow(cell, params, xs, lambda ys: jnp.sum(ys[-1]), readout=None)
    assert np.isneginf(flow0.log10_norms[-1]) and float(flow0.norms[-1]) == 0.0
    np.testing.assert_allclose(flow0.log10_norms[:-1], expected[:-1], rtol=0, atol=1e-4)
    # Jacobian products: d h_{T-1} / d h_s = a^(T-1-s) I, in log space too
    jn = jacobian_norms(cell, params, xs[:, 0], steps=(-1, 300), key=jax.random.key(2), iters=2)
    np.testing.assert_allclose(jn.log10_spectral_norms, [T * LOG10_HALF, (T - 301) * LOG10_HALF],
                               rtol=0, atol=1e-4)
    assert float(jn.spectral_norms[0]) == 0.0  # 1e-120: below float32
    np.testing.assert_allclose(jn.spectral_norms[1], 0.5 ** (T - 301), rtol=1e-5)


def test_log10_decay_rate():
    k = np.arange(9, -1, -1)
    y = np.stack([2.0 + k * np.log10(0.8), 2.0 + k * 0.1])  # [2, T]: vanishing, exploding
    np.testing.assert_allclose(log10_decay_rate(y), [np.log10(0.8), 0.1], rtol=1e-5)
    y0 = y[0].copy()
    y0[3] = -np.inf  # an exactly zero gradient is left out of the fit
    np.testing.assert_allclose(log10_decay_rate(y0), np.log10(0.8), rtol=1e-5)
    # min_distance=1 (default) skips the last step; 0 includes it
    y1 = y[0].copy()
    y1[-1] = 50.0
    np.testing.assert_allclose(log10_decay_rate(y1), np.log10(0.8), rtol=1e-5)
    assert float(log10_decay_rate(y1, min_distance=0)) < -1  # pulled down by the outlier at k = 0
    assert np.isnan(log10_decay_rate(np.array([-np.inf, -np.inf, 0.0])))
    with pytest.raises(ValueError, match="log10_norms"):
        log10_decay_rate(np.float32(1.0))
    with pytest.raises(ValueError, match="min_distance"):
        log10_decay_rate(y, min_distance=-1)


def _tiny_lstm(H, D):
    cell = rnnjax.lstm(H)
    p = cell.init(jax.random.key(3), D)
    b = p["b"].at[H:2 * H].set(-3.0)  # forget gate ~0.05: the cell state forgets at once
    return cell, {**p, "w_h": 0.5 * p["w_h"], "b": b}


def _tiny_gru(H, D):
    cell = rnnjax.gru(H)
    p = cell.init(jax.random.key(4), D)
    b = p["b"].at[H:2 * H].set(3.0)  # update gate ~0.95: h_{t-1} is mostly replaced
    return cell, {**p, "w_h": 0.25 * p["w_h"], "b": b}


@pytest.mark.parametrize("make", [_tiny_lstm, _tiny_gru], ids=["lstm", "gru"])
def test_lstm_gru_against_float64_reference(make):
    T, B, D, H = 150, 2, 3, 8
    cell, params = make(H, D)
    xs = jax.random.normal(jax.random.key(5), (T, B, D))
    w = jax.random.normal(jax.random.key(6), (B, H))

    def loss_fn(ys):  # the last outputs and a little of the middle
        return jnp.sum(w * ys[-1]) + 0.1 * jnp.sum(ys[T // 2] ** 2)

    flow = gradient_flow(cell, params, xs, loss_fn)
    leaves64, total64 = _autodiff_log10_norms(cell, params, xs, loss_fn, jnp.float64)
    _, total32 = _autodiff_log10_norms(cell, params, xs, loss_fn, jnp.float32)
    assert np.all(np.isfinite(total64)) and total64[0] < -60  # representable in float64, not float32
    # float32 autodiff cannot represent those steps: it reports exact zeros, or (on CPUs whose
    # kernels keep subnormals in part of the step, seen on an AVX-512 EPYC) a floor near the
    # smallest normal float32, decades away from the true value
    wrong32 = np.isneginf(total32) | (np.abs(total32 - total64) > 5.0)
    assert np.sum(wrong32) >= 20
    got = np.asarray(flow.log10_norms, np.float64)
    err = np.max(np.abs(got - total64))
    assert err < 5e-4, err  # 1e-3 relative
    for got_leaf, ref_leaf in zip(jax.tree_util.tree_leaves(flow.log10_leaf_norms), leaves64):
        np.testing.assert_allclose(got_leaf, ref_leaf, rtol=0, atol=5e-4)
    # where float32 holds the values, the float fields agree with the float32 computation
    ok = total64 > -30
    np.testing.assert_allclose(np.log10(np.asarray(flow.norms, np.float64)[ok]), total64[ok], atol=5e-4)


def _sep_loss(v):
    """A loss summed over steps and sequences (so that sequences and segments separate); the same
    function object for every run, so that equal shapes reuse one compiled program."""
    return lambda ys: jnp.sum(v.reshape((1,) * (ys.ndim - 1) + (-1,)) * jnp.square(ys - 0.3))


def _combine_log10(*log10s):
    """log10 sqrt(sum 10**(2 l)) of per-part log10 norms (float64)."""
    stacked = np.stack([np.asarray(x, np.float64) for x in log10s])
    with np.errstate(divide="ignore"):
        return 0.5 * np.log10(np.sum(10.0 ** (2 * stacked), axis=0))


def test_nan_and_inf_padding_never_reach_the_flow():
    T, D, H = 12, 2, 4
    cell = rnnjax.gru(H)
    params = cell.init(jax.random.key(7), D)
    xs = jax.random.normal(jax.random.key(8), (T, 3, D))
    lengths = jnp.array([T, 5, 0])
    bad = xs.at[5:, 1].set(jnp.nan).at[:, 2].set(jnp.inf).at[0, 2, 0].set(jnp.nan)
    loss_fn = _sep_loss(jnp.linspace(0.5, 1.5, H))
    flow = gradient_flow(cell, params, bad, loss_fn, lengths=lengths)
    for leaf in jax.tree_util.tree_leaves(flow):
        assert not np.any(np.isnan(np.asarray(leaf)))
    # each sequence on its own, unpadded (a padded step's loss is that of an output 0)
    alone0 = gradient_flow(cell, params, xs[:, 0], loss_fn)
    alone1 = gradient_flow(cell, params, xs[:5, 1], loss_fn)
    pad_loss = float(loss_fn(jnp.zeros((T - 5 + T, H))))
    np.testing.assert_allclose(flow.loss, alone0.loss + alone1.loss + pad_loss, rtol=1e-5)
    np.testing.assert_allclose(flow.grads[:, 0], alone0.grads, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flow.grads[:5, 1], alone1.grads, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(flow.grads[5:, 1], 0.0)  # padded: the carry reaches no output
    np.testing.assert_array_equal(flow.grads[:, 2], 0.0)  # length 0: no output depends on anything
    expected = _combine_log10(alone0.log10_norms, np.concatenate([alone1.log10_norms, np.full(T - 5, -np.inf)]))
    np.testing.assert_allclose(flow.log10_norms, expected, rtol=0, atol=1e-5)
    assert np.all(np.isfinite(flow.log10_norms))
    # readout=None (the output path is not perturbed): the same run as with zeros in the padding
    flow0 = gradient_flow(cell, params, bad, loss_fn, lengths=lengths, readout=None)
    clean0 = gradient_flow(cell, params, jnp.where(jnp.isfinite(bad), bad, 0.0), loss_fn, lengths=lengths,
                           readout=None)
    for got, ref in zip(jax.tree_util.tree_leaves(flow0), jax.tree_util.tree_leaves(clean0)):
        assert not np.any(np.isnan(np.asarray(got)))
        np.testing.assert_array_equal(got, ref)
    assert np.isneginf(flow0.log10_norms[-1]) and np.all(np.isfinite(flow0.log10_norms[:-1]))
    # a batch holding only the length-0 sequence: zero gradients, log10 = -inf, no NaN
    flow_empty = gradient_flow(cell, params, bad[:, 2:], loss_fn, lengths=lengths[2:])
    assert np.all(np.isneginf(flow_empty.log10_norms)) and np.all(np.asarray(flow_empty.norms) == 0)
    np.testing.assert_allclose(flow_empty.loss, float(loss_fn(jnp.zeros((T, H)))), rtol=1e-5)


def test_resets_equal_separate_segments():
    T, B, D, H = 8, 2, 3, 4
    cell = rnnjax.lstm(H)
    params = cell.init(jax.random.key(9), D)
    xs = jax.random.normal(jax.random.key(10), (T, B, D))
    carry = jax.tree_util.tree_map(lambda c: 0.5 * jnp.ones_like(c), cell.initial_carry(params, (B,)))
    resets = np.zeros((T, B), bool)
    resets[4, 0] = True  # sequence 0: segments [0, 4) and [4, 8)
    resets[[2, 6], 1] = True  # sequence 1: [0, 2), [2, 6) and [6, 8)
    loss_fn = _sep_loss(jnp.linspace(0.5, 1.5, H))
    flow = gradient_flow(cell, params, xs, loss_fn, carry, resets=jnp.asarray(resets))
    assert np.all(np.isfinite(flow.log10_norms))
    loss, parts = 0.0, []
    for b, cuts in ((0, (0, 4, 8)), (1, (0, 2, 6, 8))):
        c_b = jax.tree_util.tree_map(lambda c, b=b: c[b], carry)
        seq = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):  # each segment from the initial carry, on its own
            seg = gradient_flow(cell, params, xs[lo:hi, b], loss_fn, c_b)
            loss += float(seg.loss)
            seq.append(seg.log10_norms)
            for got, ref in zip(jax.tree_util.tree_leaves(flow.grads), jax.tree_util.tree_leaves(seg.grads)):
                np.testing.assert_allclose(got[lo:hi, b], ref, rtol=1e-5, atol=1e-6)
        parts.append(np.concatenate(seq))
    np.testing.assert_allclose(flow.loss, loss, rtol=1e-5)
    np.testing.assert_allclose(flow.log10_norms, _combine_log10(*parts), rtol=0, atol=1e-5)
    _, ys = rnnjax.unroll(cell, params, xs, carry, resets=jnp.asarray(resets))  # the same run
    np.testing.assert_allclose(flow.loss, loss_fn(ys), rtol=1e-5)
    with pytest.raises(ValueError, match="resets"):
        gradient_flow(cell, params, xs, loss_fn, resets=jnp.zeros((T, B + 1), bool))
    with pytest.raises(TypeError, match="resets"):
        gradient_flow(cell, params, xs, loss_fn, resets=jnp.zeros((T, B)))
