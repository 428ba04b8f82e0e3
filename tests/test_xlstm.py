"""xLSTM cells: sLSTM and mLSTM (Beck et al., NeurIPS 2024)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loop_unroll, tree_allclose

import rnnjax
from rnnjax.cells.xlstm import MLSTMState, SLSTMState, mlstm_state, powerlaw_forget_bias

D, H, NH, T, B = 5, 6, 2, 5, 3  # odd sizes; head dim 3
CELLS = {
    "slstm": lambda: rnnjax.slstm(H, num_heads=NH, recurrent_init=rnnjax.initializers.normal(0.4)),
    "slstm_exp_plain": lambda: rnnjax.slstm(H, num_heads=NH, forget_gate="exp", stabilize=False,
                                            forget_bias=-0.5,
                                            recurrent_init=rnnjax.initializers.normal(0.4)),
    "mlstm": lambda: rnnjax.mlstm(H, num_heads=NH),
    "mlstm_exp_plain": lambda: rnnjax.mlstm(H, num_heads=NH, forget_gate="exp", stabilize=False),
}


def _params(cell, key):
    """Params with non-zero gate weights and biases (the default init zeroes some of them)."""
    params = cell.init(key, D)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [p + 0.3 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def _carry(cell, params, key, batch=(B,)):
    """A non-trivial initial carry (positive normaliser for the sLSTM)."""
    c0 = cell.initial_carry(params, batch)
    if isinstance(c0, SLSTMState):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        shape = c0.h.shape
        return SLSTMState(jax.random.normal(k1, shape), jax.random.normal(k2, shape),
                          0.5 + jnp.abs(jax.random.normal(k3, shape)), 0.3 * jax.random.normal(k4, shape))
    noise = 0.3 * jax.random.normal(key, c0.shape)
    return c0 + noise


def _loss(c, ys):
    w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(w * ys) + sum(jnp.sum(leaf ** 2) for leaf in jax.tree_util.tree_leaves(c))


def truncated_loops(cell, params, xs, c0, lengths, reverse):
    """Reference for ``lengths``/``reverse``: a Python loop of unbatched ``apply`` per sequence."""
    carries, outs = [], []
    for b, n in enumerate(lengths):
        c = jax.tree_util.tree_map(lambda leaf: leaf[b], c0)
        ys = [jnp.zeros((H,), xs.dtype)] * xs.shape[0]
        for t in (range(n - 1, -1, -1) if reverse else range(n)):
            c, ys[t] = cell.apply(params, c, xs[t, b])
        outs.append(jnp.stack(ys))
        carries.append(c)
    return jax.tree_util.tree_map(lambda *l: jnp.stack(l), *carries), jnp.stack(outs, axis=1)


# Gradients for the stabilised cells; values only for the plain ones (their gradients w.r.t. the
# sequential scan are checked against the parallel path below): compiling is the cost here.
@pytest.mark.parametrize("name,reverse,grads", [("slstm", True, True), ("slstm_exp_plain", False, False),
                                                ("mlstm", True, True), ("mlstm_exp_plain", False, False)])
def test_unroll_matches_loop(name, reverse, grads, key):
    """``unroll`` (scan, with lengths and reverse) equals a loop of ``apply``: values and gradients."""
    cell = CELLS[name]()
    k1, k2, k3 = jax.random.split(key, 3)
    params = _params(cell, k1)
    if name == "mlstm_exp_plain":  # exp forget gates below 1, so that nothing grows over T steps
        params["b_gates"] = params["b_gates"].at[NH:].set(-0.5)
    xs = jax.random.normal(k2, (T, B, D))
    c0 = _carry(cell, params, k3)
    lengths = [T, 2, 0]

    def loss(params, xs, ref):
        if ref:
            out = truncated_loops(cell, params, xs, c0, lengths, reverse)
        else:
            out = rnnjax.unroll(cell, params, xs, c0, lengths=jnp.array(lengths), reverse=reverse,
                                parallel=False)
        return _loss(*out), out

    @jax.jit
    def run(params, xs):
        if not grads:
            return [(loss(params, xs, ref), None) for ref in (False, True)]
        return [jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs, ref)
                for ref in (False, True)]

    ((_, (c, ys)), g), ((_, (c_ref, ys_ref)), g_ref) = run(params, xs)
    assert ys.shape == (T, B, H)
    assert float(jnp.abs(ys).max()) > 1e-2
    tree_allclose((c, ys), (c_ref, ys_ref), atol=1e-5, rtol=1e-5)
    if grads:
        tree_allclose(g, g_ref, atol=1e-4, rtol=1e-4)
        assert all(float(jnp.abs(leaf).max()) > 0 for leaf in jax.tree_util.tree_leaves(g[0]))


def _scaled_allclose(a, b, tol):
    """Leaf by leaf, ``|a - b| <= tol * max|b|`` (gradients over long sequences span many scales)."""
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        scale = float(jnp.abs(y).max())
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=tol * scale)


def _both_paths(cell, params, xs, c0, lengths, reverse, argnums=(0, 1, 2)):
    def loss(params, xs, c0, parallel):
        c, ys = rnnjax.unroll(cell, params, xs, c0, lengths=lengths, reverse=reverse, parallel=parallel)
        return _loss(c, ys), (c, ys)

    @jax.jit
    def run(params, xs, c0):
        return [jax.value_and_grad(loss, argnums=argnums, has_aux=True)(params, xs, c0, p)
                for p in (False, True)]

    (( _, seq), g_seq), ((_, par), g_par) = run(params, xs, c0)
    return seq, g_seq, par, g_par


def test_mlstm_parallel_matches_sequential(key):
    """Without the stabiliser the mLSTM's associative scan equals the sequential scan (odd T,
    lengths, reverse; values and gradients w.r.t. params, inputs and initial carry)."""
    cell = rnnjax.mlstm(H, num_heads=NH, stabilize=False)
    assert cell.linear is not None
    k1, k2, k3 = jax.random.split(key, 3)
    params = _params(cell, k1)
    xs = jax.random.normal(k2, (13, B, D))
    c0 = _carry(cell, params, k3)
    seq, g_seq, par, g_par = _both_paths(cell, params, xs, c0, jnp.array([13, 6, 0]), True)
    tree_allclose(par, seq, atol=1e-5, rtol=1e-5)
    tree_allclose(g_par, g_seq, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(par[1][:, 2]), 0.0)  # the empty sequence outputs zeros


def test_mlstm_parallel_long_sequence_float32(key):
    """T = 2001 in float32: both paths stay finite and agree (values and gradients w.r.t. params)."""
    cell = rnnjax.mlstm(4, num_heads=2, stabilize=False)
    k1, k2 = jax.random.split(key)
    params = cell.init(k1, 3)  # the default init: forget gates σ(3..6), input gates exp(N(0, 0.1²))
    xs = jax.random.normal(k2, (2001, 2, 3))
    c0 = cell.initial_carry(params, (2,))
    seq, g_seq, par, g_par = _both_paths(cell, params, xs, c0, None, False, argnums=0)
    for leaf in jax.tree_util.tree_leaves((seq, g_seq, par, g_par)):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert float(jnp.abs(seq[0]).max()) > 1.0  # the memory accumulated over many steps
    _scaled_allclose(par, seq, 1e-5)
    _scaled_allclose(g_par, g_seq, 1e-3)  # float32 rounding over 2001 steps, summed differently


@pytest.mark.parametrize("stabilize", [False, True])
def test_mlstm_unit_gates_sum_outer_products(stabilize, key):
    """With ``f = i = 1`` (exp gates with zero pre-activations) ``C_T = Σ_t v_t k_tᵀ`` and
    ``n_T = Σ_t k_t``; ``h_T = o_T ⊙ C_T q_T / max(|n_Tᵀ q_T|, 1)`` (NumPy, float64)."""
    cell = rnnjax.mlstm(H, num_heads=NH, forget_gate="exp", stabilize=stabilize)
    k1, k2 = jax.random.split(key)
    params = _params(cell, k1)
    params["w_gates"] = jnp.zeros_like(params["w_gates"])
    params["b_gates"] = jnp.zeros_like(params["b_gates"])
    xs = jax.random.normal(k2, (T, B, D))
    carry, ys = rnnjax.unroll(cell, params, xs)

    x = np.asarray(xs, np.float64)
    w = np.asarray(params["w_x"], np.float64)
    b = np.asarray(params["b"], np.float64)
    d = H // NH
    wq, wk, wv, wo = np.split(w, 4, axis=1)
    bq, bk, bv, bo = np.split(b, 4)
    q = (x @ wq + bq).reshape(T, B, NH, d)
    k = (x @ wk / np.sqrt(d) + bk).reshape(T, B, NH, d)
    v = (x @ wv + bv).reshape(T, B, NH, d)
    o = 1.0 / (1.0 + np.exp(-(x @ wo + bo)))
    C = np.einsum("tbka,tbkc->bkac", v, k)
    n = k.sum(axis=0)
    state = mlstm_state(carry, H, NH)
    assert isinstance(state, MLSTMState)
    np.testing.assert_allclose(np.asarray(state.C), C, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state.n), n, rtol=1e-5, atol=1e-5)
    if stabilize:
        np.testing.assert_array_equal(np.asarray(state.m), 0.0)  # m_t = max(0 + m, 0) = 0
    else:
        assert state.m is None
    den = np.maximum(np.abs(np.einsum("bka,bka->bk", n, q[-1])), 1.0)
    h = o[-1] * (np.einsum("bkac,bkc->bka", C, q[-1]) / den[..., None]).reshape(B, H)
    np.testing.assert_allclose(np.asarray(ys[-1]), h, rtol=1e-5, atol=1e-5)


def test_mlstm_stabilised_equals_plain(key):
    """Stabilised and plain mLSTM give the same outputs, and ``C' exp(m) = C`` (float32, moderate gates)."""
    k1, k2 = jax.random.split(key)
    stab, plain = rnnjax.mlstm(H, num_heads=NH), rnnjax.mlstm(H, num_heads=NH, stabilize=False)
    params = _params(stab, k1)
    xs = jax.random.normal(k2, (T, B, D))
    c_s, ys_s = rnnjax.unroll(stab, params, xs)
    c_p, ys_p = rnnjax.unroll(plain, params, xs)
    np.testing.assert_allclose(np.asarray(ys_s), np.asarray(ys_p), rtol=1e-5, atol=1e-6)
    s, p = mlstm_state(c_s, H, NH), mlstm_state(c_p, H, NH)
    assert float(jnp.abs(s.m).max()) > 0.1  # the stabiliser did move
    np.testing.assert_allclose(np.asarray(s.C * jnp.exp(s.m)[..., None, None]), np.asarray(p.C),
                               rtol=1e-5, atol=1e-6)


def _slstm_pair(key, dtype):
    stab = rnnjax.slstm(H, num_heads=NH, recurrent_init=rnnjax.initializers.normal(0.4), dtype=dtype)
    plain = rnnjax.slstm(H, num_heads=NH, recurrent_init=rnnjax.initializers.normal(0.4),
                         stabilize=False, dtype=dtype)
    k1, k2 = jax.random.split(key)
    params = stab.init(k1, D)
    xs = jax.random.normal(k2, (T, B, D), dtype)
    return stab, plain, params, xs


def test_slstm_stabilised_equals_plain_float64_and_stays_finite(key):
    """sLSTM's stabilised and plain forms agree in float64 where nothing overflows
    (``c' exp(m) = c``, ``n' exp(m) = n``, same ``h``); with a huge input-gate bias the plain
    form overflows in float32 while the stabilised one stays finite and equals the float64 result."""
    with jax.enable_x64(True):
        stab, plain, params, xs = _slstm_pair(key, jnp.float64)
        assert xs.dtype == jnp.float64
        c_s, ys_s = loop_unroll(stab, params, xs)
        c_p, ys_p = loop_unroll(plain, params, xs)
        np.testing.assert_allclose(np.asarray(ys_s), np.asarray(ys_p), rtol=1e-12, atol=1e-13)
        scale = jnp.exp(c_s.m)
        np.testing.assert_allclose(np.asarray(c_s.c * scale), np.asarray(c_p.c), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(np.asarray(c_s.n * scale), np.asarray(c_p.n), rtol=1e-12)
        np.testing.assert_array_equal(np.asarray(c_p.m), 0.0)
        assert float(jnp.abs(c_s.m).max()) > 0.1

        big = dict(params, b=params["b"].at[:H].set(100.0))  # i = exp(≈100): e^100 > float32 max
        _, ys64 = loop_unroll(plain, big, xs)
        assert bool(jnp.all(jnp.isfinite(ys64)))
    stab32, plain32, _, _ = _slstm_pair(key, jnp.float32)
    big32 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), big)
    xs32 = jnp.asarray(xs, jnp.float32)
    _, ys_plain32 = rnnjax.unroll(plain32, big32, xs32)
    _, ys_stab32 = rnnjax.unroll(stab32, big32, xs32)
    assert not bool(jnp.all(jnp.isfinite(ys_plain32)))
    assert bool(jnp.all(jnp.isfinite(ys_stab32)))
    np.testing.assert_allclose(np.asarray(ys_stab32), np.asarray(ys64), rtol=1e-4, atol=1e-5)


def test_slstm_first_step_and_defaults(key):
    """From the zero carry, the first step gives ``m_1 = log i_1``, ``n_1 = 1``, ``h_1 = o z``
    even for an input gate far below float32's range; default init as in the reference code."""
    cell = rnnjax.slstm(8, num_heads=2)
    params = cell.init(key, 3)
    b_f = np.asarray(params["b"][8:16])
    np.testing.assert_allclose(b_f[:4], [5.0, 5 - 12 * (1 / 3) ** 0.3, 5 - 12 * (2 / 3) ** 0.3, -7.0],
                               rtol=1e-6)
    np.testing.assert_array_equal(b_f[4:], b_f[:4])
    np.testing.assert_array_equal(np.asarray(params["w_h"]), 0.0)
    assert params["w_h"].shape == (2, 4, 4, 4)
    np.testing.assert_array_equal(np.asarray(powerlaw_forget_bias(1, 3)), 5.0)
    params = dict(params, b=params["b"].at[:8].set(-200.0))  # i = exp(-200): 0 in float32
    x = jax.random.normal(key, (2, 3))
    carry, h = cell.apply(params, cell.initial_carry(params, (2,)), x)
    z = x @ params["w_x"] + params["b"][None]
    np.testing.assert_allclose(np.asarray(carry.m), np.asarray(z[:, :8]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(carry.n), 1.0)
    o, g = jax.nn.sigmoid(z[:, 24:]), jnp.tanh(z[:, 16:24])
    np.testing.assert_allclose(np.asarray(h), np.asarray(o * g), rtol=1e-5, atol=1e-7)


def test_mlstm_defaults_and_errors(key):
    cell = rnnjax.mlstm(8, num_heads=4)
    params = cell.init(key, 3)
    np.testing.assert_allclose(np.asarray(params["b_gates"][4:]), [3.0, 4.0, 5.0, 6.0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(params["w_gates"]), 0.0)
    assert float(jnp.abs(params["b_gates"][:4]).max()) < 0.5
    assert cell.initial_carry(params, (2,)).shape == (2, 4 * (4 + 2 + 1))
    assert cell.linear is None
    xs = jnp.ones((3, 2, 3))
    with pytest.raises(ValueError, match="parallel=True"):
        rnnjax.unroll(cell, params, xs, parallel=True)
    with pytest.raises(ValueError, match="carry has last dim"):
        cell.apply(params, jnp.zeros((2, 5)), xs[0])
    with pytest.raises(ValueError, match="num_heads must divide"):
        rnnjax.mlstm(6, num_heads=4)
    with pytest.raises(ValueError, match="num_heads must divide"):
        rnnjax.slstm(6)
    with pytest.raises(ValueError, match="forget_gate"):
        rnnjax.slstm(8, forget_gate="tanh")
    with pytest.raises(TypeError, match="stabilize"):
        rnnjax.mlstm(8, stabilize=1)
    with pytest.raises(TypeError, match="SLSTMState"):
        s = rnnjax.slstm(8)
        s.apply(s.init(key, 3), jnp.zeros((2, 8)), xs[0])
