"""unroll: lengths, reverse, layouts, remat, T=0, gradients, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rnnjax
from helpers import all_cells, loop_unroll, tree_allclose

CELLS = all_cells()


def _setup(cell, T=7, B=4, D=3, seed=0):
    params = cell.init(jax.random.key(seed), D)
    xs = jax.random.normal(jax.random.key(seed + 1), (T, B, D))
    return params, xs


@pytest.mark.parametrize("name,cell", CELLS, ids=[n for n, _ in CELLS])
def test_lengths_final_carry_and_zero_padding(name, cell):
    params, xs = _setup(cell)
    lengths = jnp.array([7, 3, 0, 5])
    carry, ys = rnnjax.unroll(cell, params, xs, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        c_ref, y_ref = loop_unroll(cell, params, xs[:n, b:b + 1]) if n else (
            cell.initial_carry(params, (1,)), jnp.zeros((0, 1, ys.shape[-1])))
        tree_allclose(jax.tree_util.tree_map(lambda a: a[b:b + 1], carry), c_ref)
        np.testing.assert_allclose(ys[:n, b:b + 1], y_ref, atol=1e-5)
        np.testing.assert_array_equal(ys[n:, b], 0.0)


@pytest.mark.parametrize("name,cell", CELLS, ids=[n for n, _ in CELLS])
def test_reverse_with_lengths_reverses_the_valid_part(name, cell):
    params, xs = _setup(cell)
    lengths = jnp.array([7, 3, 1, 5])
    carry, ys = rnnjax.unroll(cell, params, xs, lengths=lengths, reverse=True)
    for b, n in enumerate(lengths.tolist()):
        c_ref, y_ref = loop_unroll(cell, params, xs[:n, b:b + 1][::-1])
        tree_allclose(jax.tree_util.tree_map(lambda a: a[b:b + 1], carry), c_ref)
        np.testing.assert_allclose(ys[:n, b:b + 1], y_ref[::-1], atol=1e-5)  # ys[t] is the output for x_t
        np.testing.assert_array_equal(ys[n:, b], 0.0)


def test_reverse_without_lengths_equals_flipped_forward():
    cell = rnnjax.lstm(5)
    params, xs = _setup(cell)
    c_rev, ys_rev = rnnjax.unroll(cell, params, xs, reverse=True)
    c_fwd, ys_fwd = rnnjax.unroll(cell, params, xs[::-1])
    tree_allclose(c_rev, c_fwd)
    np.testing.assert_allclose(ys_rev, ys_fwd[::-1], atol=1e-6)


def test_batch_major_layout():
    cell = rnnjax.gru(5)
    params, xs = _setup(cell)
    c_t, ys_t = rnnjax.unroll(cell, params, xs)
    c_b, ys_b = rnnjax.unroll(cell, params, jnp.swapaxes(xs, 0, 1), time_major=False)
    tree_allclose(c_t, c_b)
    np.testing.assert_allclose(jnp.swapaxes(ys_b, 0, 1), ys_t, atol=1e-6)


@pytest.mark.parametrize("opts", [dict(remat=True), dict(unroll=4), dict(remat=True, unroll=2)])
def test_remat_and_unroll_change_nothing(opts):
    cell = rnnjax.lstm(5, peephole=True)
    params, xs = _setup(cell)
    lengths = jnp.array([7, 2, 4, 6])

    def loss(p, **kw):
        c, ys = rnnjax.unroll(cell, p, xs, lengths=lengths, **kw)
        return jnp.sum(ys ** 2) + jnp.sum(c.c)

    np.testing.assert_allclose(loss(params, **opts), loss(params), rtol=1e-6)
    tree_allclose(jax.grad(lambda p: loss(p, **opts))(params), jax.grad(loss)(params))


@pytest.mark.parametrize("name,cell", [c for c in CELLS if c[0] in ("elman_tanh", "lstm_peephole", "gru_after", "mgu", "jordan")])
def test_check_grads(name, cell):
    params, xs = _setup(cell, T=4, B=2)
    lengths = jnp.array([4, 2])

    def f(p, x):
        c, ys = rnnjax.unroll(cell, p, x, lengths=lengths)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(l) for l in jax.tree_util.tree_leaves(c))

    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
        check_grads(f, (p64, xs.astype(jnp.float64)), order=1, modes=("rev",), atol=1e-4, rtol=1e-4)


def test_padded_steps_receive_no_gradient():
    cell = rnnjax.elman(4)
    params, xs = _setup(cell)
    lengths = jnp.array([7, 3, 0, 5])
    g = jax.grad(lambda x: jnp.sum(rnnjax.unroll(cell, params, x, lengths=lengths)[1] ** 2))(xs)
    for b, n in enumerate(lengths.tolist()):
        np.testing.assert_array_equal(g[n:, b], 0.0)
        if n:
            assert float(jnp.abs(g[:n, b]).sum()) > 0


def test_empty_sequence_returns_carry_unchanged():
    cell = rnnjax.lstm(5)
    params = cell.init(jax.random.key(0), 3)
    carry0 = rnnjax.LSTMState(jnp.ones((2, 5)), 2 * jnp.ones((2, 5)))
    carry, ys = rnnjax.unroll(cell, params, jnp.zeros((0, 2, 3)), carry0)
    tree_allclose(carry, carry0)
    assert ys.shape == (0, 2, 5)
    carry, ys = rnnjax.unroll(cell, params, jnp.zeros((2, 0, 3)), carry0, time_major=False,
                              lengths=jnp.array([0, 0]))
    tree_allclose(carry, carry0)
    assert ys.shape == (2, 0, 5)


def test_return_type_does_not_depend_on_flags():
    cell = rnnjax.lstm(3)
    params, xs = _setup(cell, B=2)
    outs = [rnnjax.unroll(cell, params, xs, **kw) for kw in
            (dict(), dict(reverse=True), dict(lengths=jnp.array([3, 7])), dict(remat=True))]
    structs = {jax.tree_util.tree_structure(o) for o in outs}
    assert len(structs) == 1


def test_jit_with_traced_lengths():
    cell = rnnjax.gru(4)
    params, xs = _setup(cell)
    lengths = jnp.array([7, 3, 1, 5])
    f = jax.jit(lambda p, x, n: rnnjax.unroll(cell, p, x, lengths=n))
    tree_allclose(f(params, xs, lengths), rnnjax.unroll(cell, params, xs, lengths=lengths))


def test_errors_name_the_argument():
    cell = rnnjax.lstm(5)
    params, xs = _setup(cell)
    with pytest.raises(TypeError, match="xs must be"):
        rnnjax.unroll(cell, params, xs.tolist())
    with pytest.raises(ValueError, match="xs must have rank"):
        rnnjax.unroll(cell, params, jnp.zeros(3))
    with pytest.raises(ValueError, match="input size 3"):
        rnnjax.unroll(cell, params, jnp.zeros((7, 4, 2)))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=7\]"):
        rnnjax.unroll(cell, params, xs, lengths=jnp.array([8, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"lengths must lie in"):
        rnnjax.unroll(cell, params, xs, lengths=jnp.array([-1, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(4,\)"):
        rnnjax.unroll(cell, params, xs, lengths=jnp.array([1, 2]))
    with pytest.raises(TypeError, match="integer dtype"):
        rnnjax.unroll(cell, params, xs, lengths=jnp.array([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="carry has a leaf of shape"):
        rnnjax.unroll(cell, params, xs, cell.initial_carry(params, (3,)))
    with pytest.raises(TypeError, match="cell must be an rnnjax.Cell"):
        rnnjax.unroll(lambda *a: None, params, xs)
