"""ODE-derived cells: AntisymmetricRNN (Chang et al., ICLR 2019) and Lipschitz RNN (Erichson et al., ICLR 2021)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tree_allclose

import rnnjax
from rnnjax.cells.ode import antisymmetric_matrix, lipschitz_matrix

D, H, T, B = 5, 7, 5, 3
CELLS = {
    "antisymmetric": lambda: rnnjax.antisymmetric(H, epsilon=0.3, gamma=0.1, sigma_w=2.0),
    "antisymmetric_gated": lambda: rnnjax.antisymmetric(H, epsilon=0.3, gamma=0.1, gated=True, sigma_w=2.0),
    "lipschitz_euler": lambda: rnnjax.lipschitz(H, epsilon=0.2, init_std=6.0),
    "lipschitz_rk2": lambda: rnnjax.lipschitz(H, epsilon=0.2, init_std=6.0, method="rk2"),
}


def _setup(name, key):
    cell = CELLS[name]()
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = cell.init(k1, D)
    params["b"] = 0.3 * jax.random.normal(k4, params["b"].shape)
    xs = jax.random.normal(k2, (T, B, D))
    c0 = 0.5 * jax.random.normal(k3, (B, H))
    return cell, params, xs, c0


def _loss(c, ys):
    w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(w * ys) + jnp.sum(c ** 2)


def truncated_loops(cell, params, xs, c0, lengths, reverse):
    """Reference for ``lengths``/``reverse``: a Python loop of unbatched ``apply`` per sequence."""
    carries, outs = [], []
    for b, n in enumerate(lengths):
        c = c0[b]
        ys = [jnp.zeros((H,), xs.dtype)] * xs.shape[0]
        for t in (range(n - 1, -1, -1) if reverse else range(n)):
            c, ys[t] = cell.apply(params, c, xs[t, b])
        outs.append(jnp.stack(ys))
        carries.append(c)
    return jnp.stack(carries), jnp.stack(outs, axis=1)


@pytest.mark.parametrize("name,reverse", [("antisymmetric", True), ("antisymmetric_gated", False),
                                          ("lipschitz_euler", False), ("lipschitz_rk2", True)])
def test_unroll_matches_loop(name, reverse, key):
    """``unroll`` (with lengths and reverse) equals a loop of ``apply``: values and gradients."""
    cell, params, xs, c0 = _setup(name, key)
    lengths = [T, 2, 0]

    def loss(params, xs, ref):
        if ref:
            out = truncated_loops(cell, params, xs, c0, lengths, reverse)
        else:
            out = rnnjax.unroll(cell, params, xs, c0, lengths=jnp.array(lengths), reverse=reverse)
        return _loss(*out), out

    @jax.jit
    def run(params, xs):
        return [jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs, ref)
                for ref in (False, True)]

    ((_, (c, ys)), g), ((_, (c_ref, ys_ref)), g_ref) = run(params, xs)
    assert ys.shape == (T, B, H)
    assert float(jnp.abs(ys - c0[None]).max()) > 1e-2  # the state moved
    tree_allclose((c, ys), (c_ref, ys_ref), atol=1e-5, rtol=1e-5)
    tree_allclose(g, g_ref, atol=1e-4, rtol=1e-4)
    assert all(float(jnp.abs(leaf).max()) > 0 for leaf in jax.tree_util.tree_leaves(g[0]))


def _eigs(m):
    return np.linalg.eigvals(np.asarray(m, np.float64))


def test_antisymmetric_spectrum(key):
    """``W − Wᵀ − γI`` has eigenvalues ``−γ + iω``: real parts all ``−γ``, imaginary parts in ± pairs."""
    w = jax.random.normal(key, (9, 9), jnp.float32)
    for gamma in (0.0, 0.01, 0.5):
        ev = _eigs(antisymmetric_matrix(w, gamma))
        np.testing.assert_allclose(ev.real, -gamma, atol=1e-5)
        np.testing.assert_allclose(np.sort(ev.imag), -np.sort(ev.imag)[::-1], atol=1e-5)
        assert np.abs(ev.imag).max() > 1.0  # a genuinely rotating, not a diagonal, matrix


@pytest.mark.parametrize("gated", [False, True])
def test_antisymmetric_step_matches_numpy(gated, key):
    """One step equals the paper's equation written in NumPy (float64)."""
    eps, gamma = 0.3, 0.1
    cell = rnnjax.antisymmetric(H, epsilon=eps, gamma=gamma, gated=gated, sigma_w=2.0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = cell.init(k1, D)
    params["b"] = 0.3 * jax.random.normal(k4, params["b"].shape)
    h0, x = jax.random.normal(k2, (B, H)), jax.random.normal(k3, (B, D))
    h1, y = cell.apply(params, h0, x)
    np.testing.assert_array_equal(np.asarray(h1), np.asarray(y))
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h, xx = np.asarray(h0, np.float64), np.asarray(x, np.float64)
    m = p["w_h"] - p["w_h"].T - gamma * np.eye(H)
    if gated:
        vh, vz = p["w_x"][:, :H], p["w_x"][:, H:]
        bh, bz = p["b"][:H], p["b"][H:]
        z = 1.0 / (1.0 + np.exp(-(h @ m + xx @ vz + bz)))
        ref = h + eps * z * np.tanh(h @ m + xx @ vh + bh)
    else:
        ref = h + eps * np.tanh(h @ m + xx @ p["w_x"] + p["b"])
    np.testing.assert_allclose(np.asarray(h1), ref, rtol=1e-5, atol=1e-6)


def test_lipschitz_matrix_spectrum(key):
    """``A_{β,γ}``: with ``β = 1`` skew-symmetric minus ``γI`` (real parts ``−γ``); with ``β = 0``
    symmetric (real spectrum); for any ``β`` the real parts are at most ``(1−β) λ_max(M+Mᵀ) − γ``."""
    m = jax.random.normal(key, (9, 9), jnp.float32)
    gamma = 0.05
    ev = _eigs(lipschitz_matrix(m, 1.0, gamma))
    np.testing.assert_allclose(ev.real, -gamma, atol=1e-5)
    assert np.abs(ev.imag).max() > 1.0
    np.testing.assert_allclose(_eigs(lipschitz_matrix(m, 0.0, gamma)).imag, 0.0, atol=1e-5)
    lam_sym = np.linalg.eigvalsh(np.asarray(m + m.T, np.float64)).max()
    for beta in (0.25, 0.75):
        a = np.asarray(lipschitz_matrix(m, beta, gamma), np.float64)
        sym = 0.5 * (a + a.T)
        np.testing.assert_allclose(sym, (1 - beta) * np.asarray(m + m.T, np.float64) - gamma * np.eye(9),
                                   atol=1e-5)
        assert _eigs(a).real.max() <= (1 - beta) * lam_sym - gamma + 1e-5


@pytest.mark.parametrize("method", ["euler", "rk2"])
def test_lipschitz_step_matches_numpy(method, key):
    """One step equals a hand-written NumPy Euler / Heun (RK2) step of ``ḣ = hA + tanh(hW + xU + b)``."""
    beta, ga, gw, eps = 0.7, 0.02, 0.03, 0.4
    cell = rnnjax.lipschitz(H, beta=beta, gamma_a=ga, gamma_w=gw, epsilon=eps, method=method, init_std=8.0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = cell.init(k1, D)
    params["b"] = 0.3 * jax.random.normal(k4, (H,))
    h0, x = jax.random.normal(k2, (B, H)), jax.random.normal(k3, (B, D))
    h1, _ = cell.apply(params, h0, x)

    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    eye = np.eye(H)

    def mat(mm, g):
        return (1 - beta) * (mm + mm.T) + beta * (mm - mm.T) - g * eye

    a, w = mat(p["m_a"], ga), mat(p["m_w"], gw)
    h, xx = np.asarray(h0, np.float64), np.asarray(x, np.float64)
    u = xx @ p["w_x"] + p["b"]

    def f(hh):
        return hh @ a + np.tanh(hh @ w + u)

    if method == "euler":
        ref = h + eps * f(h)
    else:
        k1_ = f(h)
        k2_ = f(h + eps * k1_)
        ref = h + eps / 2 * (k1_ + k2_)
    np.testing.assert_allclose(np.asarray(h1), ref, rtol=1e-5, atol=1e-6)
    other = h + eps * f(h) if method == "rk2" else h + eps / 2 * (f(h) + f(h + eps * f(h)))
    assert np.abs(ref - other).max() > 1e-3  # the two methods differ measurably here


def test_defaults_and_errors(key):
    cell = rnnjax.lipschitz(64)
    params = cell.init(key, 3)
    assert set(params) == {"w_x", "m_a", "m_w", "b"}
    prepared = cell.prepare(params)
    np.testing.assert_array_equal(np.asarray(prepared["a"]),
                                  np.asarray(lipschitz_matrix(params["m_a"], 0.75, 0.001)))
    np.testing.assert_allclose(float(jnp.std(params["m_a"])), 6.0 / 64, rtol=0.1)  # N(0, (σ/H)²)
    a = rnnjax.antisymmetric(64).init(key, 3)
    assert set(a) == {"w_x", "w_h", "b"}
    np.testing.assert_allclose(float(jnp.std(a["w_h"])), 1.0 / 8, rtol=0.1)  # N(0, σ_w²/H)
    np.testing.assert_allclose(float(jnp.std(a["w_x"])), 1.0 / np.sqrt(3), rtol=0.3)  # N(0, 1/D)
    with pytest.raises(ValueError, match="method"):
        rnnjax.lipschitz(4, method="rk4")
    with pytest.raises(ValueError, match="beta"):
        rnnjax.lipschitz(4, beta=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        rnnjax.antisymmetric(4, epsilon=0.0)
    with pytest.raises(ValueError, match="gamma"):
        rnnjax.antisymmetric(4, gamma=-1.0)
    with pytest.raises(TypeError, match="gated"):
        rnnjax.antisymmetric(4, gated="yes")
    with pytest.raises(ValueError, match="input size"):
        c = rnnjax.antisymmetric(4)
        c.apply(c.init(key, 3), jnp.zeros((2, 4)), jnp.zeros((2, 5)))
