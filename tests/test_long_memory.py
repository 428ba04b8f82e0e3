"""Long-memory cells: indrnn, lru, mingru, minlstm, orthogonal (expRNN)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax
from rnnjax.cells.indrnn import indrnn, indrnn_constrain, indrnn_max_abs, indrnn_projection
from rnnjax.cells.lru import lru, lru_eigenvalues
from rnnjax.cells.minimal import g, log_g, mingru, minlstm
from rnnjax.cells.orthogonal import orthogonal, orthogonal_matrix, orthogonality_error
from rnnjax.types import LinearForm, LinearRecurrence

D, H, T, B = 3, 4, 6, 2


def _np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64) if not jnp.iscomplexobj(a)
                                  else np.asarray(a, np.complex128), tree)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _g_np(z):
    return np.where(z >= 0, z + 0.5, _sigmoid(z))


# Independent float64 NumPy references of one step, written from the papers' equations.
def _ref_indrnn(p, h, x):
    return np.maximum(x @ p["w_x"] + p["u"] * h + p["b"], 0.0)


def _ref_lru(p, s, u):
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    s = lam * s + np.exp(p["gamma_log"]) * (u @ (p["B_re"] + 1j * p["B_im"]))
    d = p["d"]
    skip = d * u if d.ndim == 1 else u @ d
    return s, (s @ (p["C_re"] + 1j * p["C_im"])).real + skip


def _ref_mingru(p, h, x, log_space=True):
    k, c = np.split(x @ p["w_x"] + p["b"], 2, axis=-1)
    z = _sigmoid(k)
    return (1 - z) * h + z * (_g_np(c) if log_space else c)


def _ref_minlstm(p, h, x, log_space=True):
    kf, ki, c = np.split(x @ p["w_x"] + p["b"], 3, axis=-1)
    f, i = _sigmoid(kf), _sigmoid(ki)
    return f / (f + i) * h + i / (f + i) * (_g_np(c) if log_space else c)


def _ref_orthogonal(p, h, x, modrelu=True):
    import scipy.linalg

    w = scipy.linalg.expm(p["a"] - p["a"].T)
    z = x @ p["w_x"] + h @ w
    if modrelu:
        return np.sign(z) * np.maximum(np.abs(z) + p["b"], 0.0)
    return np.tanh(z + p["b"])


def _ref_step(ref):
    def step(p, c, x):
        out = ref(p, c, x)
        return out if isinstance(out, tuple) else (out, out)

    return step


CELLS = {
    "indrnn": (lambda: indrnn(H, max_timescale=20), _ref_step(_ref_indrnn)),
    "lru": (lambda: lru(H, 5, r_min=0.4, r_max=0.95), _ref_step(_ref_lru)),
    "lru_square": (lambda: lru(D, 5), _ref_step(_ref_lru)),
    "mingru": (lambda: mingru(H), _ref_step(_ref_mingru)),
    "mingru_plain": (lambda: mingru(H, log_space=False), _ref_step(lambda p, h, x: _ref_mingru(p, h, x, False))),
    "minlstm": (lambda: minlstm(H, forget_bias=1.0), _ref_step(_ref_minlstm)),
    "minlstm_plain": (lambda: minlstm(H, log_space=False),
                      _ref_step(lambda p, h, x: _ref_minlstm(p, h, x, False))),
    "orthogonal": (lambda: orthogonal(H), _ref_step(_ref_orthogonal)),
    "orthogonal_tanh": (lambda: orthogonal(H, activation=jnp.tanh),
                        _ref_step(lambda p, h, x: _ref_orthogonal(p, h, x, False))),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_matches_loop_and_reference(name, key):
    """unroll == a Python loop over apply == a float64 NumPy reference of the paper's equations."""
    make, ref = CELLS[name]
    cell = make()
    k1, k2, k3 = jax.random.split(key, 3)
    params = cell.init(k1, D)
    if "b" in params:  # non-zero biases so that they are tested too
        params["b"] = 0.1 * jax.random.normal(k3, params["b"].shape)
    xs = jax.random.normal(k2, (T, B, D))
    carry, ys = jax.jit(lambda p, x: rnnjax.unroll(cell, p, x, parallel=False))(params, xs)
    step = jax.jit(cell.apply)
    c = cell.initial_carry(params, (B,))
    p64, c64 = _np(params), _np(c)
    for t in range(T):
        c, y = step(params, c, xs[t])
        c64, y64 = ref(p64, c64, np.asarray(xs[t], np.float64))
        np.testing.assert_allclose(np.asarray(ys[t]), np.asarray(y), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(y), y64, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(np.asarray(carry), np.asarray(c), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(carry), c64, rtol=2e-4, atol=2e-5)
    assert float(np.max(np.abs(y64))) > 0.05
    # an unbatched input [D] with carry [N]: the same function
    c1, y1 = step(params, cell.initial_carry(params, ()), xs[0, 0])
    c2, y2 = step(params, cell.initial_carry(params, (B,)), xs[0])
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y2[0]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["indrnn", "lru", "mingru", "minlstm", "orthogonal"])
def test_cell_checks_inputs(name, key):
    cell = CELLS[name][0]()
    params = cell.init(key, D)
    carry = cell.initial_carry(params, (B,))
    with pytest.raises(ValueError, match="last dim"):
        cell.apply(params, carry, jnp.ones((B, D + 1)))
    with pytest.raises(ValueError, match="batch shape"):
        cell.apply(params, carry, jnp.ones((B + 1, D)))
    with pytest.raises(TypeError, match="floating"):
        cell.apply(params, carry, jnp.ones((B, D), jnp.int32))


def test_factory_argument_checks():
    for bad in (0, -1, 2.5, True):
        with pytest.raises((TypeError, ValueError)):
            mingru(bad)
    with pytest.raises(ValueError, match="r_min"):
        lru(4, 4, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="r_min"):
        lru(4, 4, r_max=1.5)
    with pytest.raises(ValueError, match="max_phase"):
        lru(4, 4, max_phase=0.0)
    with pytest.raises(ValueError, match="max_timescale"):
        indrnn(4, max_timescale=0.5)
    with pytest.raises(ValueError, match="activation"):
        orthogonal(4, activation="swish")
    with pytest.raises(TypeError, match="log_space"):
        minlstm(4, log_space="yes")


# --- IndRNN -------------------------------------------------------------------------------------

def test_indrnn_recurrent_range_and_constraint(key):
    Tmax = 50
    bound = 2.0 ** (1.0 / Tmax)
    assert indrnn_max_abs(Tmax) == pytest.approx(bound)
    params = indrnn(256, max_timescale=Tmax).init(key, D)
    u = np.asarray(params["u"])
    assert u.min() >= 0.0 and u.max() <= bound
    assert u.max() > 0.9 * bound and u.min() < 0.1 * bound  # spread over [0, 2^(1/T)]
    assert np.asarray(indrnn(64).init(key, D)["u"]).max() <= 1.0  # no horizon: U[0, 1]
    # the projection clips |u| into [min_abs, max_abs] and keeps the sign; nothing else changes
    p = {**params, "u": jnp.array([-3.0, -0.5, 0.0, 0.001, 0.7, 2.0])}
    q = indrnn_constrain(p, max_abs=bound, min_abs=0.01)
    np.testing.assert_allclose(np.asarray(q["u"]), [-bound, -0.5, 0.01, 0.01, 0.7, bound], rtol=1e-6)
    assert q["w_x"] is p["w_x"] and p["u"][0] == -3.0
    with pytest.raises(ValueError, match="min_abs"):
        indrnn_constrain(p, max_abs=0.5, min_abs=1.0)


def test_indrnn_projection_finds_every_indrnn_layer_and_nothing_else():
    bound = indrnn_max_abs(100)
    ind = {"w_x": jnp.ones((1, 3)), "u": jnp.array([-3.0, 0.5, 7.0]), "b": jnp.zeros(3)}
    other = {"w": jnp.full((3, 1), 9.0), "b": jnp.zeros(1)}
    params = {"cell": (ind, {"fwd": ind, "bwd": ind}), "readout": other}
    out = indrnn_projection(100)(params)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    for q in (out["cell"][0], out["cell"][1]["fwd"], out["cell"][1]["bwd"]):
        np.testing.assert_allclose(q["u"], [-bound, 0.5, bound], rtol=1e-7)
        np.testing.assert_array_equal(q["w_x"], ind["w_x"])
    np.testing.assert_array_equal(out["readout"]["w"], other["w"])
    # a single cell's params, and min_abs as in indrnn_constrain
    single = indrnn_projection(100, min_abs=0.6)(ind)
    np.testing.assert_array_equal(single["u"], indrnn_constrain(ind, bound, 0.6)["u"])
    with pytest.raises(ValueError, match="no IndRNN"):
        indrnn_projection(100)(other)  # a projection that does nothing would hide a wrong model
    with pytest.raises(ValueError, match="max_timescale"):
        indrnn_projection(0.5)
    with pytest.raises(ValueError, match="min_abs"):
        indrnn_projection(100, min_abs=2.0)


def test_train_step_with_indrnn_projection_equals_step_then_constrain(key):
    """One Adam step at a large rate: with ``project=`` the step's params are those of the plain
    step projected by indrnn_constrain (bitwise), and |u| ends at the bound."""
    T, H = 20, 6
    cell = indrnn(H, max_timescale=T)
    params = {"cell": cell.init(key, D), "out": rnnjax.dense(1).init(jax.random.fold_in(key, 1), H)}
    xs = jax.random.normal(jax.random.fold_in(key, 2), (T, 4, D))

    params["cell"]["u"] = jnp.full((H,), 0.9 * indrnn_max_abs(T))

    def loss_fn(p, batch, k):  # -|h_T|^2 (plus the readout's output): a ReLU unit's state grows with u
        _, hs = rnnjax.unroll(cell, p["cell"], batch)
        return -jnp.mean(hs[-1] ** 2) + jnp.mean(rnnjax.dense(1).apply(p["out"], hs[-1]))

    tx = rnnjax.optimizer("adam", 0.5)
    state = rnnjax.TrainState.create(params, tx, key=key)
    plain, _ = jax.jit(rnnjax.train_step(loss_fn, tx))(state, xs)
    projected, m = jax.jit(rnnjax.train_step(loss_fn, tx, project=indrnn_projection(T)))(state, xs)
    want = indrnn_constrain(plain.params["cell"], indrnn_max_abs(T))
    np.testing.assert_array_equal(projected.params["cell"]["u"], want["u"])
    np.testing.assert_array_equal(projected.params["out"]["w"], plain.params["out"]["w"])
    np.testing.assert_array_equal(projected.params["cell"]["w_x"], plain.params["cell"]["w_x"])
    assert float(jnp.max(jnp.abs(plain.params["cell"]["u"]))) > indrnn_max_abs(T)  # it was needed
    assert int(m["nonfinite"]) == 0


def test_indrnn_state_bounded_over_horizon(key):
    """With |u| <= 2^(1/T) and no input drive, a ReLU unit grows at most 2x over T steps."""
    Tmax = 40
    cell = indrnn(8, max_timescale=Tmax)
    params = cell.init(key, 1)
    params = {**params, "u": jnp.full((8,), indrnn_max_abs(Tmax)), "w_x": jnp.zeros((1, 8))}
    h0 = jnp.ones((8,))
    h, _ = jax.jit(lambda p: rnnjax.unroll(cell, p, jnp.zeros((Tmax, 1)), h0))(params)
    np.testing.assert_allclose(np.asarray(h), 2.0, rtol=1e-4)


# --- LRU ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("r_min,r_max,max_phase", [(0.0, 1.0, 2 * math.pi), (0.9, 0.999, math.pi / 10)])
def test_lru_ring_init(r_min, r_max, max_phase, key):
    params = lru(8, 512, r_min=r_min, r_max=r_max, max_phase=max_phase).init(key, 8)
    lam = np.asarray(lru_eigenvalues(params))
    mag, phase = np.abs(lam), np.angle(lam) % (2 * math.pi)
    assert mag.min() >= r_min - 1e-6 and mag.max() <= r_max + 1e-6
    # ring init: |λ|² is uniform on [r_min², r_max²] (so the mean of |λ|² is the midpoint)
    assert np.mean(mag**2) == pytest.approx((r_min**2 + r_max**2) / 2, abs=0.03 * (r_max**2 - r_min**2) + 1e-3)
    theta = np.exp(np.asarray(params["theta_log"]))
    assert theta.min() >= 0 and theta.max() <= max_phase * (1 + 1e-6)
    # γ normalisation: γ = sqrt(1 - |λ|²)
    np.testing.assert_allclose(np.exp(np.asarray(params["gamma_log"])), np.sqrt(1 - mag**2), rtol=1e-3, atol=1e-6)
    assert np.isfinite(np.asarray(params["nu_log"])).all()
    carry = lru(8, 512).initial_carry(params, (2,))
    assert carry.dtype == jnp.complex64 and carry.shape == (2, 512)


def test_lru_skip_shapes(key):
    assert lru(4, 6).init(key, 4)["d"].shape == (4,)  # the paper's D⊙u
    p = lru(4, 6).init(key, 3)
    assert p["d"].shape == (3, 4) and p["B_re"].shape == (3, 6) and p["C_im"].shape == (6, 4)


# --- minGRU / minLSTM ---------------------------------------------------------------------------

def test_g_and_log_g():
    x = jnp.linspace(-30.0, 30.0, 601)
    np.testing.assert_allclose(np.asarray(g(x)), _g_np(np.asarray(x, np.float64)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(log_g(x)), np.log(_g_np(np.asarray(x, np.float64))), rtol=1e-5, atol=1e-6)
    assert np.isfinite(np.asarray(jax.vmap(jax.grad(lambda v: log_g(v)))(x))).all()
    assert float(g(jnp.array(0.0))) == 0.5  # continuous at 0: σ(0) = 0 + 0.5


@pytest.mark.parametrize("make", [mingru, minlstm])
def test_log_space_form_equals_plain_form(make, key):
    """exp of the log-space coefficients are the plain a_t, b_t, and the log-space scan gives the
    same carries as the plain (a, b) associative scan and as the step-by-step apply."""
    cell = make(H)
    params = cell.init(key, D)
    params["b"] = 0.5 * jax.random.normal(jax.random.key(3), params["b"].shape)
    xs = jax.random.normal(jax.random.key(4), (11, B, D))
    rec = cell.linear.coefficients(params, xs)
    kx = np.asarray(xs, np.float64) @ np.asarray(params["w_x"], np.float64) + np.asarray(params["b"], np.float64)
    if make is mingru:
        k, c = np.split(kx, 2, axis=-1)
        a_ref, b_ref = 1 - _sigmoid(k), _sigmoid(k) * _g_np(c)
    else:
        kf, ki, c = np.split(kx, 3, axis=-1)
        f, i = _sigmoid(kf), _sigmoid(ki)
        a_ref, b_ref = f / (f + i), i / (f + i) * _g_np(c)
    np.testing.assert_allclose(np.exp(np.asarray(rec.log_a)), a_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.exp(np.asarray(rec.log_b)), b_ref, rtol=1e-5, atol=1e-7)
    plain = cell._replace(linear=LinearForm(
        lambda p, x: LinearRecurrence(*map(jnp.exp, cell.linear.coefficients(p, x))), cell.linear.readout))
    c0 = jnp.full((B, H), -0.7)  # any sign: the log-space path handles a non-positive carry
    run = jax.jit(lambda p: [rnnjax.unroll(c, p, xs, c0, parallel=par)
                             for c, par in ((cell, True), (plain, True), (cell, False))])
    (c_log, y_log), (c_plain, y_plain), (c_seq, y_seq) = run(params)
    np.testing.assert_allclose(np.asarray(y_log), np.asarray(y_plain), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(y_log), np.asarray(y_seq), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(c_log), np.asarray(c_seq), rtol=2e-5, atol=2e-6)


# --- orthogonal (expRNN) ------------------------------------------------------------------------

def test_orthogonal_stays_orthogonal_under_adam(key):
    cell = orthogonal(8)
    params = cell.init(key, D)
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    target = jax.random.normal(jax.random.key(2), (T, B, 8))
    opt = optax.adam(0.05)
    state = opt.init(params)

    def loss(p):
        return jnp.mean((rnnjax.unroll(cell, p, xs)[1] - target) ** 2)

    @jax.jit
    def train_step(p, s):
        l, grads = jax.value_and_grad(loss)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, l

    a0 = params["a"]
    losses = []
    for _ in range(5):
        params, state, l = train_step(params, state)
        losses.append(float(l))
    assert losses[-1] < losses[0]
    assert float(jnp.max(jnp.abs(params["a"] - a0))) > 0.1  # A (and so W) really moved
    w = np.asarray(orthogonal_matrix(params["a"]), np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(8), atol=1e-5)
    assert float(orthogonality_error(params)) < 1e-5
    np.testing.assert_allclose(np.asarray(cell.prepare(params)["w_h"]), w, rtol=1e-6, atol=1e-6)


def test_orthogonal_prepare_hook_same_values_and_gradients(key):
    """unroll calls prepare once; that gives the same values and gradients as expm per step."""
    cell = orthogonal(H, activation=jnp.tanh)
    params = cell.init(key, D)
    xs = jax.random.normal(jax.random.key(1), (T, B, D))

    def loop_loss(p):  # apply on the raw params: expm inside every step
        h = cell.initial_carry(p, (B,))
        total = 0.0
        for t in range(T):
            h, y = cell.apply(p, h, xs[t])
            total = total + jnp.sum(jnp.sin(y))
        return total

    def unroll_loss(p):
        return jnp.sum(jnp.sin(rnnjax.unroll(cell, p, xs)[1]))

    (l1, g1), (l2, g2) = jax.jit(lambda p: (jax.value_and_grad(loop_loss)(p),
                                            jax.value_and_grad(unroll_loss)(p)))(params)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
    for k in ("w_x", "a", "b"):
        np.testing.assert_allclose(np.asarray(g1[k]), np.asarray(g2[k]), rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(g2["a"]))) > 0
    # only A - Aᵀ matters: the gradient w.r.t. A is antisymmetric
    np.testing.assert_allclose(np.asarray(g2["a"]), -np.asarray(g2["a"]).T, atol=1e-6)
    assert "w_h" not in params and "w_h" in cell.prepare(params)


def test_orthogonal_henaff_init_is_rotation(key):
    params = orthogonal(6).init(key, D)
    s = np.asarray(params["a"] - params["a"].T)
    np.testing.assert_allclose(s, -s.T)
    w = np.asarray(orthogonal_matrix(params["a"]))
    assert np.linalg.det(w) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(w)), 1.0, atol=1e-5)
