"""Oscillator cells: coRNN, LEM, LinOSS (IM and IMEX), and the block-diagonal parallel scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loop_unroll, tree_allclose

import rnnjax
from rnnjax._block_scan import block_carries
from rnnjax.cells.oscillatory import OscillatorState, linoss_transition
from rnnjax.types import BlockLinearRecurrence

D, H, N, T, B = 3, 5, 3, 5, 3
CELLS = {
    "cornn": lambda: rnnjax.cornn(H, dt=0.3, gamma=1.5, epsilon=0.7),
    "cornn_implicit": lambda: rnnjax.cornn(H, dt=0.3, gamma=1.5, epsilon=0.7, implicit_damping=True),
    "lem": lambda: rnnjax.lem(H, dt=0.5),
    "linoss_im": lambda: rnnjax.linoss(H, N),
    "linoss_imex": lambda: rnnjax.linoss(H, N, discretization="imex"),
}


def _setup(name, key, batch=(B,), steps=T):
    cell = CELLS[name]()
    k1, k2, k3 = jax.random.split(key, 3)
    params = cell.init(k1, D)
    xs = jax.random.normal(k2, (steps, *batch, D))
    c0 = cell.initial_carry(params, batch)
    leaves, tree = jax.tree_util.tree_flatten(c0)
    keys = jax.random.split(k3, len(leaves))
    noisy = [c + (0.5 * jax.random.normal(k, c.shape)).astype(c.dtype) for c, k in zip(leaves, keys)]
    return cell, params, xs, jax.tree_util.tree_unflatten(tree, noisy)


def _loss(c, ys):
    w = jnp.cos(jnp.arange(ys.size, dtype=jnp.float32)).reshape(ys.shape)
    return jnp.sum(w * ys) + sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree_util.tree_leaves(c))


def truncated_loops(cell, params, xs, c0, lengths, reverse):
    """Reference for ``lengths``/``reverse``: a Python loop over each sequence's valid part."""
    carries, outs = [], []
    for b, n in enumerate(lengths):
        c = jax.tree_util.tree_map(lambda leaf: leaf[b], c0)
        order = range(n - 1, -1, -1) if reverse else range(n)
        ys = [None] * xs.shape[0]
        for t in order:
            c, ys[t] = cell.apply(params, c, xs[t, b])
        zero = jnp.zeros_like(cell.apply(params, c, xs[0, b])[1])
        outs.append(jnp.stack([zero if y is None else y for y in ys]))
        carries.append(c)
    return jax.tree_util.tree_map(lambda *l: jnp.stack(l), *carries), jnp.stack(outs, axis=1)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_unroll_matches_loops(name, key):
    """``unroll`` = a Python loop over ``apply``: plain (batched loop), with ``lengths`` (per
    sequence truncated loops; one full, one short, one empty sequence), and with ``lengths`` and
    ``reverse`` (values and gradients w.r.t. params)."""
    cell, params, xs, c0 = _setup(name, key)
    c, ys = rnnjax.unroll(cell, params, xs, c0, parallel=False)
    assert ys.shape == (T, B, H)
    assert float(jnp.abs(ys).max()) > 1e-3  # something happens
    tree_allclose((c, ys), loop_unroll(cell, params, xs, c0), atol=1e-5, rtol=1e-5)

    lengths = [T, 2, 0]
    out = rnnjax.unroll(cell, params, xs, c0, lengths=jnp.array(lengths), parallel=False)
    tree_allclose(out, truncated_loops(cell, params, xs, c0, lengths, False), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out[1][2:, 1]), 0.0)

    def loss(params, ref):
        if ref:
            return _loss(*truncated_loops(cell, params, xs, c0, lengths, True))
        return _loss(*rnnjax.unroll(cell, params, xs, c0, lengths=jnp.array(lengths), reverse=True,
                                    parallel=False))

    v, g = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, False)
    v_ref, g_ref = jax.value_and_grad(loss)(params, True)  # eager: the loop as written
    np.testing.assert_allclose(float(v), float(v_ref), rtol=1e-5)
    tree_allclose(g, g_ref, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- coRNN


@pytest.mark.parametrize("implicit", [False, True])
def test_cornn_zero_weights_is_damped_oscillator(implicit, key):
    """Zero weights: each unit is the damped oscillator's IMEX recurrence, input-independent."""
    dt, gamma, eps = 0.06, 66.0, 15.0  # the factory's defaults (adding task)
    cell = rnnjax.cornn(H, implicit_damping=implicit)
    params = jax.tree_util.tree_map(jnp.zeros_like, cell.init(key, D))
    y0, z0 = np.random.default_rng(0).normal(size=(2, 2, H))
    xs = jax.random.normal(key, (20, 2, D))
    (y, z), ys = rnnjax.unroll(cell, params, xs, OscillatorState(jnp.asarray(y0, jnp.float32),
                                                                  jnp.asarray(z0, jnp.float32)))
    ry, rz, ref = y0.copy(), z0.copy(), []
    for _ in range(20):
        if implicit:
            rz = (rz - dt * gamma * ry) / (1 + dt * eps)
        else:
            rz = rz + dt * (-gamma * ry - eps * rz)
        ry = ry + dt * rz
        ref.append(ry)
    np.testing.assert_allclose(np.asarray(ys), np.stack(ref), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(z), rz, rtol=1e-4, atol=1e-6)
    assert np.abs(ry).max() < np.abs(y0).max()  # damped


def test_cornn_init_and_checks(key):
    params = rnnjax.cornn(H).init(key, D)
    assert {k: v.shape for k, v in params.items()} == {"w_x": (D, H), "w_y": (H, H), "w_z": (H, H),
                                                        "b": (H,)}
    bound = 1 / np.sqrt(D + 2 * H)
    for v in params.values():
        assert float(jnp.abs(v).max()) <= bound and float(jnp.abs(v).max()) > bound / 2
    with pytest.raises(ValueError, match="dt"):
        rnnjax.cornn(H, dt=0.0)
    with pytest.raises(TypeError, match="gamma"):
        rnnjax.cornn(H, gamma="1")
    cell = rnnjax.cornn(H)
    with pytest.raises(TypeError, match="OscillatorState"):
        cell.apply(params, jnp.zeros(H), jnp.zeros(D))
    with pytest.raises(ValueError, match="input size"):
        cell.apply(params, cell.initial_carry(params, ()), jnp.zeros(D + 1))


# ----------------------------------------------------------------------------- LEM


def test_lem_zero_weights_closed_form(key):
    """Weights 0, biases b: Δt_n = Δt σ(b_1), Δt̄_n = Δt σ(b_2) constant, and each of z, y relaxes
    geometrically to its target: ``z_n = tanh(b_z) + (1 − Δt_n)^n (z_0 − tanh(b_z))``,
    ``y_n = tanh(b_y) + (1 − Δt̄_n)^n (y_0 − tanh(b_y))``."""
    dt = 0.7
    cell = rnnjax.lem(H, dt=dt)
    params = jax.tree_util.tree_map(jnp.zeros_like, cell.init(key, D))
    rng = np.random.default_rng(1)
    b = rng.normal(size=4 * H)
    params["b"] = jnp.asarray(b, jnp.float32)
    b1, b2, bz, by = np.split(b, 4)
    y0, z0 = rng.normal(size=(2, H))
    xs = jax.random.normal(key, (15, D))
    (y, z), ys = rnnjax.unroll(cell, params, xs, OscillatorState(jnp.asarray(y0, jnp.float32),
                                                                  jnp.asarray(z0, jnp.float32)))
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    n = np.arange(1, 16)[:, None]
    ref_z = np.tanh(bz) + (1 - dt * sig(b1)) ** n * (z0 - np.tanh(bz))
    ref_y = np.tanh(by) + (1 - dt * sig(b2)) ** n * (y0 - np.tanh(by))
    np.testing.assert_allclose(np.asarray(ys), ref_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(z), ref_z[-1], rtol=1e-5, atol=1e-6)


def test_lem_bounded_and_checks(key):
    """For Δt <= 1 every update is a convex combination: |y|, |z| <= max(1, |y_0|, |z_0|)."""
    cell = rnnjax.lem(H, dt=1.0)
    params = jax.tree_util.tree_map(lambda v: 5 * v, cell.init(key, D))
    xs = 10 * jax.random.normal(key, (20, 2, D))
    (y, z), ys = rnnjax.unroll(cell, params, xs)
    assert float(jnp.abs(ys).max()) <= 1.0 and float(jnp.abs(z).max()) <= 1.0
    assert float(jnp.abs(ys).max()) > 0.1
    assert {k: v.shape for k, v in params.items()} == {"w_x": (D, 4 * H), "w_y": (H, 3 * H),
                                                        "w_z": (H, H), "b": (4 * H,)}
    with pytest.raises(ValueError, match="dt"):
        rnnjax.lem(H, dt=-1.0)


# ----------------------------------------------------------------------------- LinOSS


def _transition_from_apply(cell, params):
    """``M [n, 2, 2]`` read off ``apply`` with zero input: its columns are the images of (1, 0)
    and (0, 1) per oscillator (independent of ``linoss_transition``)."""
    u = jnp.zeros((params["B_re"].shape[0],), params["B_re"].dtype)
    n = params["a_hat"].shape[0]
    cols = []
    for j in range(2):
        x = jnp.zeros((n, 2), jnp.complex128).at[:, j].set(1.0)
        cols.append(np.asarray(cell.apply(params, x, u)[0]).real)
    return np.stack(cols, axis=-1)  # [N, 2 (row), 2 (column)]


@pytest.mark.parametrize("discretization", ["im", "imex"])
def test_linoss_transition_spectrum(discretization):
    """Rusch & Rus 2025: LinOSS-IM's transition has eigenvalues of modulus √S <= 1,
    S = 1/(1 + Δt² A) (dissipative); LinOSS-IMEX's has determinant 1 (symplectic) and eigenvalues
    on the unit circle while Δt² A <= 4. Random A >= 0 over 12 decades (and A = 0), Δt in (0, 1)
    (the parametrisation Δt = σ(dt_hat)); float64."""
    rng = np.random.default_rng(2)
    n = 400
    with jax.enable_x64(True):
        cell = rnnjax.linoss(2, n, discretization=discretization, dtype=jnp.float64)
        params = cell.init(jax.random.key(0), 1)
        A = 10.0 ** rng.uniform(-6, 6, n) * (rng.random(n) > 0.1)
        dt_hat = rng.uniform(-6, 8, n)
        params = dict(params, a_hat=jnp.asarray(A), dt_hat=jnp.asarray(dt_hat))
        m = _transition_from_apply(cell, params)
        np.testing.assert_allclose(np.asarray(linoss_transition(params, discretization)), m,
                                   rtol=1e-12, atol=1e-12)
        step = 1 / (1 + np.exp(-dt_hat))
        det, modulus = np.linalg.det(m), np.abs(np.linalg.eigvals(m))
        if discretization == "im":
            s = 1 / (1 + step**2 * A)
            assert modulus.max() <= 1 + 1e-12
            np.testing.assert_allclose(det, s, rtol=1e-9)
            oscillating = step**2 * A > 1e-6  # complex pair: both eigenvalues have modulus √S
            np.testing.assert_allclose(modulus[oscillating], np.sqrt(s)[oscillating, None]
                                       * np.ones((1, 2)), rtol=1e-6)
        else:
            assert np.all(np.abs(det - 1.0) <= 1e-9 * (1 + step**2 * A)), det
            rotating = step**2 * A < 4
            np.testing.assert_allclose(modulus[rotating], 1.0, atol=1e-5)


def test_linoss_init_and_checks(key):
    cell = rnnjax.linoss(H, N)
    params = cell.init(key, D)
    assert {k: v.shape for k, v in params.items()} == {
        "a_hat": (N,), "dt_hat": (N,), "B_re": (D, N), "B_im": (D, N), "C_re": (N, H),
        "C_im": (N, H), "d": (D, H)}
    assert rnnjax.linoss(D, N).init(key, D)["d"].shape == (D,)  # elementwise skip when D == H
    assert 0 <= float(params["a_hat"].min()) and float(params["a_hat"].max()) <= 1
    assert cell.initial_carry(params, (B,)).shape == (B, N, 2)
    assert cell.initial_carry(params, (B,)).dtype == jnp.complex64
    with pytest.raises(ValueError, match="discretization"):
        rnnjax.linoss(H, N, discretization="euler")
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 2\]"):
        cell.apply(params, jnp.zeros((N,), jnp.complex64), jnp.zeros(D))


def _paths(cell, params, xs, c0, lengths, reverse, grads, resets=None):
    def loss(params, xs, c0, parallel):
        out = rnnjax.unroll(cell, params, xs, c0, lengths=lengths, reverse=reverse, resets=resets,
                            parallel=parallel)
        return _loss(*out), out

    @jax.jit
    def run(params, xs, c0):
        res = {}
        for parallel in (False, True):
            if grads:
                (_, out), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
                    params, xs, c0, parallel)
            else:
                out, g = loss(params, xs, c0, parallel)[1], None
            res[parallel] = (out, g)
        return res

    return run(params, xs, c0)


@pytest.mark.parametrize("name,reverse,use_lengths,use_resets", [("linoss_im", True, True, True),
                                                                 ("linoss_imex", False, True, False),
                                                                 ("linoss_imex", True, False, True)])
def test_linoss_parallel_matches_sequential(name, reverse, use_lengths, use_resets, key):
    """Values and gradients (params, inputs, initial carry), odd T = 7, with ``lengths``,
    ``reverse`` and ``resets`` (segments restarting from the initial carry)."""
    cell, params, xs, c0 = _setup(name, key, steps=7)
    lengths = jnp.array([7, 4, 0]) if use_lengths else None
    resets = jnp.zeros((7, B), bool).at[3, 0].set(True).at[5, 1].set(True) if use_resets else None
    res = _paths(cell, params, xs, c0, lengths, reverse, grads=True, resets=resets)
    tree_allclose(res[True][0], res[False][0], atol=1e-5, rtol=1e-5)
    tree_allclose(res[True][1], res[False][1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("discretization", ["im", "imex"])
def test_linoss_parallel_long_sequence_float32(discretization, key):
    """T = 3001 in float32: finite and equal to the sequential scan (no overflow in the products
    of 2x2 blocks: IM contracts, IMEX preserves area)."""
    cell = rnnjax.linoss(H, N, discretization=discretization)
    params = cell.init(key, D)
    xs = jax.random.normal(jax.random.key(5), (3001, 2, D))
    run = jax.jit(lambda p, x, par: rnnjax.unroll(cell, p, x, parallel=par), static_argnums=2)
    (c_seq, ys_seq), (c_par, ys_par) = run(params, xs, False), run(params, xs, True)
    assert bool(jnp.all(jnp.isfinite(ys_par))) and bool(jnp.all(jnp.isfinite(c_par)))
    scale = float(jnp.abs(ys_seq).max())
    np.testing.assert_allclose(np.asarray(ys_par), np.asarray(ys_seq), atol=2e-4 * scale)
    np.testing.assert_allclose(np.asarray(c_par), np.asarray(c_seq),
                               atol=2e-4 * float(jnp.abs(c_seq).max()))


def test_block_scan_with_resets_matches_loop():
    """``block_carries`` against a NumPy loop, with padded steps (inert) and resets (restart from
    the initial carry), for k = 3 blocks with a time-varying ``a``."""
    rng = np.random.default_rng(3)
    steps, batch, n, k = 9, 2, 2, 3
    a = rng.normal(size=(steps, batch, n, k, k)) * 0.6
    b = rng.normal(size=(steps, batch, n, k)) + 1j * rng.normal(size=(steps, batch, n, k))
    c0 = rng.normal(size=(batch, n, k)) + 0j
    valid = np.arange(steps)[:, None] < np.array([steps, 5])[None]
    reset = rng.random((steps, batch)) < 0.3
    got = jax.jit(lambda *args: block_carries(BlockLinearRecurrence(*args[:2]), *args[2:]))(
        jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.complex64), jnp.asarray(c0, jnp.complex64),
        jnp.asarray(valid), jnp.asarray(reset))
    ref, c = [], c0.copy()
    for t in range(steps):
        start = np.where(reset[t][:, None, None], c0, c)
        new = np.einsum("bnij,bnj->bni", a[t], start) + b[t]
        c = np.where(valid[t][:, None, None], new, c)
        ref.append(c)
    np.testing.assert_allclose(np.asarray(got), np.stack(ref), rtol=1e-4, atol=1e-5)
