"""RG-LRU (Griffin): loops, the parallel path, the gate's range and a float64 closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loop_unroll, tree_allclose

import rnnjax

D, H, T, B = 3, 5, 5, 3
CELLS = {
    "projected": (lambda: rnnjax.rglru(H), D),
    "bare": (lambda: rnnjax.rglru(H, input_projection=False, c=4.0), H),
}


def _setup(name, key, steps=T, batch=(B,)):
    make, d = CELLS[name]
    cell = make()
    k1, k2, k3 = jax.random.split(key, 3)
    params = cell.init(k1, d)
    xs = jax.random.normal(k2, (steps, *batch, d))
    c0 = 0.5 * jax.random.normal(k3, (*batch, H))
    return cell, params, xs, c0


def _loss(c, ys):
    w = jnp.cos(jnp.arange(ys.size, dtype=jnp.float32)).reshape(ys.shape)
    return jnp.sum(w * ys) + jnp.sum(c**2)


def truncated_loops(cell, params, xs, c0, lengths, reverse):
    """Reference for ``lengths``/``reverse``: a Python loop over each sequence's valid part."""
    carries, outs = [], []
    for b, n in enumerate(lengths):
        c = c0[b]
        ys = [jnp.zeros((H,))] * xs.shape[0]
        for t in (range(n - 1, -1, -1) if reverse else range(n)):
            c, ys[t] = cell.apply(params, c, xs[t, b])
        outs.append(jnp.stack(ys))
        carries.append(c)
    return jnp.stack(carries), jnp.stack(outs, axis=1)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_unroll_matches_loops(name, key):
    """Plain (batched loop), ``lengths`` (per-sequence truncated loops), and ``lengths`` with
    ``reverse`` (values and gradients w.r.t. params)."""
    cell, params, xs, c0 = _setup(name, key)
    c, ys = rnnjax.unroll(cell, params, xs, c0, parallel=False)
    assert ys.shape == (T, B, H) and float(jnp.abs(ys).max()) > 1e-2
    tree_allclose((c, ys), loop_unroll(cell, params, xs, c0), atol=1e-5, rtol=1e-5)

    lengths = [T, 2, 0]
    out = rnnjax.unroll(cell, params, xs, c0, lengths=jnp.array(lengths), parallel=False)
    tree_allclose(out, truncated_loops(cell, params, xs, c0, lengths, False), atol=1e-5, rtol=1e-5)

    def loss(params, ref):
        if ref:
            return _loss(*truncated_loops(cell, params, xs, c0, lengths, True))
        return _loss(*rnnjax.unroll(cell, params, xs, c0, lengths=jnp.array(lengths), reverse=True,
                                    parallel=False))

    v, g = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, False)
    v_ref, g_ref = jax.value_and_grad(loss)(params, True)  # eager: the loop as written
    np.testing.assert_allclose(float(v), float(v_ref), rtol=1e-5)
    tree_allclose(g, g_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,steps,reverse,use_lengths", [("projected", 7, True, True),
                                                            ("bare", 13, False, False)])
def test_parallel_matches_sequential(name, steps, reverse, use_lengths, key):
    """Values and gradients (params, inputs, initial carry), odd T, with ``lengths``, ``reverse``
    and ``resets`` (segments restarting from the initial carry)."""
    cell, params, xs, c0 = _setup(name, key, steps=steps)
    lengths = jnp.array([steps, 4, 0]) if use_lengths else None
    resets = jnp.zeros((steps, B), bool).at[3, 0].set(True).at[5, 1].set(True)

    @jax.jit
    def run(params, xs, c0):
        def loss(params, xs, c0, parallel):
            out = rnnjax.unroll(cell, params, xs, c0, lengths=lengths, reverse=reverse,
                                resets=resets, parallel=parallel)
            return _loss(*out), out

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
        return [grad(params, xs, c0, parallel) for parallel in (False, True)]

    ((_, seq), g_seq), ((_, par), g_par) = run(params, xs, c0)
    tree_allclose(par, seq, atol=1e-5, rtol=1e-5)
    tree_allclose(g_par, g_seq, atol=1e-4, rtol=1e-4)


def test_parallel_long_sequence_float32(key):
    """T = 3001, float32: the products of thousands of a_t in (0, 1) underflow, never overflow;
    the values stay finite and equal to the sequential scan's."""
    cell, params, xs, c0 = _setup("projected", key, steps=3001, batch=(2,))
    run = jax.jit(lambda p, x, par: rnnjax.unroll(cell, p, x, c0, parallel=par), static_argnums=2)
    (c_seq, ys_seq), (c_par, ys_par) = run(params, xs, False), run(params, xs, True)
    assert bool(jnp.all(jnp.isfinite(ys_par)))
    np.testing.assert_allclose(np.asarray(ys_par), np.asarray(ys_seq), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(c_par), np.asarray(c_seq), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_parallel_long_sequence_gradients_float32(key):
    """T = 3001, float32: gradients of both paths are finite and agree (slow: compiles the
    associative scan's gradient over 3001 steps)."""
    cell, params, xs, c0 = _setup("projected", key, steps=3001, batch=(2,))

    @jax.jit
    def run(params, xs):
        def loss(params, parallel):
            c, ys = rnnjax.unroll(cell, params, xs, c0, parallel=parallel)
            return jnp.sum(ys[-50:] ** 2) + jnp.sum(ys[:50] ** 2), ys

        return [jax.value_and_grad(loss, has_aux=True)(params, p) for p in (False, True)]

    ((_, ys_seq), g_seq), ((_, ys_par), g_par) = run(params, xs)
    assert bool(jnp.all(jnp.isfinite(ys_par)))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(g_par))
    np.testing.assert_allclose(np.asarray(ys_par), np.asarray(ys_seq), atol=1e-4, rtol=1e-4)
    tree_allclose(g_par, g_seq, atol=1e-3, rtol=1e-3)


def test_init_decay_range_and_gate_range(key):
    """σ(Λ) starts in [0.9, 0.999], uniform in σ(Λ)² (the ring's area); every a_t lies in
    (σ(Λ)^c, 1) for any input."""
    n = 300
    params = rnnjax.rglru(n).init(key, 2)
    base = np.asarray(rnnjax.rglru_base_decay(params), np.float64)
    assert 0.9 - 1e-6 <= base.min() and base.max() <= 0.999 + 1e-6
    assert base.min() < 0.91 and base.max() > 0.995  # spans the range
    np.testing.assert_allclose(np.mean(base**2), (0.81 + 0.998001) / 2, atol=0.02)
    assert {k: v.shape for k, v in params.items()} == {
        "w_in": (2, n), "w_a": (n, n), "b_a": (n,), "w_x": (n, n), "b_x": (n,), "lam": (n,)}

    cell = rnnjax.rglru(H, input_projection=False)
    params = cell.init(key, H)
    params["b_a"] = jnp.linspace(-4.0, 4.0, H)
    xs = 3.0 * jax.random.normal(key, (50, H))
    # a_t read off apply: h_t(h_{t-1} = 1) - h_t(h_{t-1} = 0)
    a = np.asarray(jax.jit(lambda p, x: cell.apply(p, jnp.ones((50, H)), x)[1]
                           - cell.apply(p, jnp.zeros((50, H)), x)[1])(params, xs))
    lower = np.asarray(rnnjax.rglru_base_decay(params), np.float64) ** 8.0
    assert np.all(a > 0) and np.all(a < 1)
    assert np.all(a >= lower - 1e-6)
    assert a.min() < 0.5 and a.max() > 0.999  # the gate spans its range


def test_open_gates_equal_float64_closed_form(key):
    """With r_t = i_t = 1 (biases 40 saturate both sigmoids):
    ``h_t = a^c h_{t-1} + √(1 − a^{2c}) x_t``,
    ``a = σ(Λ)``, against a NumPy float64 loop."""
    c = 8.0
    cell = rnnjax.rglru(H, input_projection=False, c=c)
    params = cell.init(key, H)
    params["b_a"] = jnp.full((H,), 40.0)
    params["b_x"] = jnp.full((H,), 40.0)
    params["lam"] = jnp.asarray([-1.0, 0.5, 2.0, 4.0, 7.0])  # σ(Λ) from 0.27 to 0.999
    xs = jax.random.normal(key, (20, 2, H))
    _, ys = rnnjax.unroll(cell, params, xs)
    a = 1 / (1 + np.exp(-np.asarray(params["lam"], np.float64)))
    h, ref = np.zeros((2, H)), []
    for x in np.asarray(xs, np.float64):
        h = a**c * h + np.sqrt(1 - a ** (2 * c)) * x
        ref.append(h)
    np.testing.assert_allclose(np.asarray(ys), np.stack(ref), rtol=1e-5, atol=1e-6)


def test_closed_gate_gradients_finite(key):
    """r_t underflowing to 0 makes a_t = 1 and 1 − a_t² = 0: the √ is clamped, so gradients stay
    finite."""
    cell = rnnjax.rglru(H, input_projection=False)
    params = cell.init(key, H)
    params["b_a"] = jnp.full((H,), -200.0)
    xs = jax.random.normal(key, (5, H))
    g = jax.grad(lambda p: jnp.sum(rnnjax.unroll(cell, p, xs)[1]))(params)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(g))


def test_argument_checks(key):
    with pytest.raises(ValueError, match="input_size == hidden_size"):
        rnnjax.rglru(H, input_projection=False).init(key, D)
    with pytest.raises(ValueError, match="a_min"):
        rnnjax.rglru(H, a_min=0.99, a_max=0.9)
    with pytest.raises(ValueError, match="c must be"):
        rnnjax.rglru(H, c=0.0)
    cell = rnnjax.rglru(H)
    params = cell.init(key, D)
    with pytest.raises(ValueError, match="input size"):
        cell.apply(params, jnp.zeros(H), jnp.zeros(H + 1))
