"""Every core cell: equations by hand, unroll against a step loop, shapes of x, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import initializers as inits
from helpers import all_cells, loop_unroll, tree_allclose

CELLS = all_cells()


@pytest.mark.parametrize("name,cell", CELLS, ids=[n for n, _ in CELLS])
def test_unroll_equals_step_loop(name, cell):
    key = jax.random.key(1)
    params = cell.init(key, 4)
    xs = jax.random.normal(jax.random.key(2), (9, 3, 4))
    carry0 = jax.tree_util.tree_map(lambda z: z + 0.1, cell.initial_carry(params, (3,)))
    c_ref, y_ref = loop_unroll(cell, params, xs, carry0)
    c, y = rnnjax.unroll(cell, params, xs, carry0)
    tree_allclose(c, c_ref)
    tree_allclose(y, y_ref)
    assert float(jnp.std(y)) > 1e-3  # the outputs are not trivially constant


@pytest.mark.parametrize("name,cell", CELLS, ids=[n for n, _ in CELLS])
def test_unbatched_and_nested_batch_agree(name, cell):
    params = cell.init(jax.random.key(3), 4)
    xs = jax.random.normal(jax.random.key(4), (5, 2, 3, 4))  # [T, B1, B2, D]
    _, ys = rnnjax.unroll(cell, params, xs)
    _, y0 = rnnjax.unroll(cell, params, xs[:, 1, 2])  # a single sequence [T, D]
    np.testing.assert_allclose(ys[:, 1, 2], y0, atol=1e-6)


def test_elman_equation():
    cell = rnnjax.elman(3)
    p = cell.init(jax.random.key(0), 2)
    assert set(p) == {"w_x", "w_h", "b"}
    assert p["w_x"].shape == (2, 3) and p["w_h"].shape == (3, 3) and p["b"].shape == (3,)
    h, x = jnp.array([0.1, -0.2, 0.3]), jnp.array([0.5, -1.0])
    h1, y = cell.apply(p, h, x)
    np.testing.assert_allclose(h1, np.tanh(x @ p["w_x"] + h @ p["w_h"] + p["b"]), atol=1e-6)
    np.testing.assert_array_equal(h1, y)


def test_irnn_init_is_identity():
    p = rnnjax.irnn(5).init(jax.random.key(0), 2)
    np.testing.assert_array_equal(p["w_h"], np.eye(5))
    np.testing.assert_array_equal(p["b"], 0)
    h, _ = rnnjax.irnn(5).apply(p, jnp.full((5,), -1.0), jnp.zeros(2))
    np.testing.assert_array_equal(h, 0)  # relu


def test_jordan_equation():
    cell = rnnjax.jordan(4, 2)
    p = cell.init(jax.random.key(0), 3)
    h, yprev = jnp.linspace(-0.5, 0.5, 4), jnp.array([0.3, -0.1])
    x = jnp.array([1.0, 2.0, -1.0])
    carry, y = cell.apply(p, rnnjax.JordanState(h, yprev), x)
    y_ref = x @ p["w_yx"] + yprev @ p["w_yy"] + h @ p["w_yh"] + p["b_y"]
    h_ref = jax.nn.sigmoid(x @ p["w_hx"] + y_ref @ p["w_hy"] + h @ p["w_hh"] + p["b_h"])
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    np.testing.assert_allclose(carry.h, h_ref, atol=1e-6)
    np.testing.assert_allclose(carry.y, y_ref, atol=1e-6)


@pytest.mark.parametrize("peephole", [False, True])
def test_lstm_equation_gate_by_gate(peephole):
    H, D = 3, 2
    cell = rnnjax.lstm(H, peephole=peephole, peephole_init=inits.normal(1.0), forget_bias=0.7)
    p = cell.init(jax.random.key(5), D)
    np.testing.assert_allclose(p["b"][H:2 * H], 0.7)
    x, h, c = jnp.array([0.3, -0.8]), jnp.array([0.2, -0.4, 0.6]), jnp.array([1.0, -2.0, 0.5])
    W = lambda k: (p["w_x"][:, k * H:(k + 1) * H], p["w_h"][:, k * H:(k + 1) * H], p["b"][k * H:(k + 1) * H])
    pre = lambda k: x @ W(k)[0] + h @ W(k)[1] + W(k)[2]
    sig = jax.nn.sigmoid
    pc = (lambda n: p[n]) if peephole else (lambda n: 0.0)
    i = sig(pre(0) + pc("w_ci") * c)
    f = sig(pre(1) + pc("w_cf") * c)
    g = np.tanh(pre(2))
    c1 = f * c + i * g
    o = sig(pre(3) + pc("w_co") * c1)
    h1 = o * np.tanh(c1)
    (hh, cc), y = cell.apply(p, rnnjax.LSTMState(h, c), x)
    np.testing.assert_allclose(cc, c1, atol=1e-6)
    np.testing.assert_allclose(hh, h1, atol=1e-6)
    np.testing.assert_array_equal(y, hh)


def test_lstm_chrono_bias():
    H, T = 64, 100
    p = rnnjax.lstm(H, chrono=T).init(jax.random.key(0), 3)
    b_i, b_f = p["b"][:H], p["b"][H:2 * H]
    np.testing.assert_allclose(b_i, -b_f)
    assert float(b_f.min()) >= 0.0 and float(b_f.max()) <= np.log(T - 1) + 1e-6
    assert float(b_f.max()) > np.log(T / 4)  # spread over the range, not collapsed


@pytest.mark.parametrize("reset", ["before", "after"])
def test_gru_equation(reset):
    H, D = 3, 2
    cell = rnnjax.gru(H, reset=reset, bias_init=inits.normal(0.5))
    p = cell.init(jax.random.key(7), D)
    x, h = jnp.array([0.3, -0.8]), jnp.array([0.2, -0.4, 0.6])
    wx = [p["w_x"][:, k * H:(k + 1) * H] for k in range(3)]
    wh = [p["w_h"][:, k * H:(k + 1) * H] for k in range(3)]
    b = [p["b"][k * H:(k + 1) * H] for k in range(3)]
    r = jax.nn.sigmoid(x @ wx[0] + h @ wh[0] + b[0])
    z = jax.nn.sigmoid(x @ wx[1] + h @ wh[1] + b[1])
    if reset == "before":
        n = np.tanh(x @ wx[2] + (r * h) @ wh[2] + b[2])
    else:
        n = np.tanh(x @ wx[2] + b[2] + r * (h @ wh[2] + p["b_hn"]))
    h_ref = (1 - z) * h + z * n
    h1, _ = cell.apply(p, h, x)
    np.testing.assert_allclose(h1, h_ref, atol=1e-6)
    # the two forms differ when the reset gate is not all ones
    other = rnnjax.gru(H, reset="after" if reset == "before" else "before")
    q = dict(p)
    q.pop("b_hn", None)
    if reset == "before":
        q["b_hn"] = jnp.zeros(H)
    assert float(jnp.abs(other.apply(q, h, x)[0] - h1).max()) > 1e-4


def test_gru_relu_candidate():
    cell = rnnjax.gru(3, candidate_activation=jax.nn.relu)
    p = cell.init(jax.random.key(0), 2)
    p = {**p, "b": p["b"].at[6:].set(-100.0)}  # candidate pre-activation very negative -> relu 0
    h = jnp.array([1.0, 2.0, 3.0])
    h1, _ = cell.apply(p, h, jnp.zeros(2))
    z = jax.nn.sigmoid(h @ p["w_h"][:, 3:6])
    np.testing.assert_allclose(h1, (1 - z) * h, atol=1e-6)


def test_mgu_equation():
    H = 3
    cell = rnnjax.mgu(H, bias_init=inits.normal(0.5))
    p = cell.init(jax.random.key(8), 2)
    x, h = jnp.array([0.3, -0.8]), jnp.array([0.2, -0.4, 0.6])
    f = jax.nn.sigmoid(x @ p["w_x"][:, :H] + h @ p["w_h"][:, :H] + p["b"][:H])
    n = np.tanh(x @ p["w_x"][:, H:] + (f * h) @ p["w_h"][:, H:] + p["b"][H:])
    np.testing.assert_allclose(cell.apply(p, h, x)[0], (1 - f) * h + f * n, atol=1e-6)


def test_recurrent_blocks_orthogonal():
    p = rnnjax.lstm(8).init(jax.random.key(0), 3)
    for k in range(4):
        blk = p["w_h"][:, 8 * k:8 * (k + 1)]
        np.testing.assert_allclose(blk.T @ blk, np.eye(8), atol=1e-5)


@pytest.mark.parametrize("name,cell", CELLS, ids=[n for n, _ in CELLS])
def test_bad_inputs_name_the_argument(name, cell):
    p = cell.init(jax.random.key(0), 4)
    carry = cell.initial_carry(p, (3,))
    with pytest.raises(ValueError, match="input size 4"):
        cell.apply(p, carry, jnp.zeros((3, 5)))
    with pytest.raises(TypeError, match="x must be"):
        cell.apply(p, carry, [[0.0] * 4] * 3)
    with pytest.raises(ValueError, match="batch shape"):
        cell.apply(p, carry, jnp.zeros((2, 4)))
    with pytest.raises(TypeError, match="floating"):
        cell.apply(p, carry, jnp.zeros((3, 4), jnp.int32))


@pytest.mark.parametrize("factory", [rnnjax.elman, rnnjax.lstm, rnnjax.gru, rnnjax.mgu, rnnjax.irnn])
def test_non_positive_sizes(factory):
    with pytest.raises(ValueError, match="hidden_size"):
        factory(0)
    with pytest.raises(TypeError, match="hidden_size"):
        factory(2.5)
    with pytest.raises(ValueError, match="input_size"):
        factory(3).init(jax.random.key(0), -1)
    with pytest.raises(ValueError, match="output_size"):
        rnnjax.jordan(3, 0)
    with pytest.raises(ValueError, match="reset"):
        rnnjax.gru(3, reset="middle")


def test_params_are_jit_vmap_grad_safe():
    cell = rnnjax.lstm(4)
    keys = jax.random.split(jax.random.key(0), 3)
    ps = jax.vmap(lambda k: cell.init(k, 2))(keys)  # a stack of 3 param sets
    xs = jnp.ones((5, 2, 2))

    @jax.jit
    def loss(p):
        return jnp.sum(rnnjax.unroll(cell, p, xs)[1] ** 2)

    losses = jax.vmap(loss)(ps)
    np.testing.assert_allclose(losses[1], loss(jax.tree_util.tree_map(lambda a: a[1], ps)), rtol=1e-5)
    g = jax.grad(loss)(jax.tree_util.tree_map(lambda a: a[0], ps))
    assert set(g) == {"w_x", "w_h", "b"} and float(jnp.abs(g["w_h"]).sum()) > 0
