"""rnnjax.flax: nnx and linen wrappers of rnnjax cells agree with rnnjax.unroll."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rnnjax
import rnnjax.flax as rflax


@pytest.mark.parametrize("make", [lambda: rnnjax.lstm(5), lambda: rnnjax.gru(5),
                                  lambda: rnnjax.stack(rnnjax.elman(4), rnnjax.mgu(5))])
def test_nnx_matches_unroll(make):
    cell = make()
    rnn = rflax.RNN(cell, 3, rngs=nnx.Rngs(0))
    xs = jax.random.normal(jax.random.key(1), (7, 2, 3))
    lengths = jnp.array([7, 4])
    params = rnn.cell_params()
    # the params are the cell's own init with the key nnx handed out, under the rnnjax names
    assert jax.tree.structure(params) == jax.tree.structure(cell.init(jax.random.key(0), 3))
    for kw in ({}, {"lengths": lengths}, {"reverse": True}):
        carry, ys = rnn(xs, **kw)
        carry_ref, ys_ref = rnnjax.unroll(cell, params, xs, **kw)
        np.testing.assert_array_equal(np.asarray(ys), np.asarray(ys_ref))
        for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(carry_ref)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(ys).sum()) > 0


def test_nnx_params_are_nnx_params_and_train():
    cell = rnnjax.gru(4)
    rnn = rflax.RNN(cell, 2, rngs=nnx.Rngs(0))
    state = nnx.state(rnn, nnx.Param)
    n = sum(np.size(x) for x in jax.tree.leaves(state))
    assert n == 3 * (2 * 4 + 4 * 4 + 4)
    assert isinstance(rnn.params["w_h"], nnx.Param)
    xs = jnp.ones((5, 3, 2))

    def loss(model):
        return jnp.mean(model(xs)[1] ** 2)

    grads = nnx.grad(loss)(rnn)
    g_ref = jax.grad(lambda p: jnp.mean(rnnjax.unroll(cell, p, xs)[1] ** 2))(rnn.cell_params())
    np.testing.assert_allclose(np.asarray(grads.params["w_h"][...]), np.asarray(g_ref["w_h"]),
                               rtol=1e-6, atol=1e-7)
    # wrapping given params (e.g. converted weights)
    p = cell.init(jax.random.key(3), 2)
    wrapped = rflax.RNN(cell, 2, params=p)
    np.testing.assert_array_equal(np.asarray(wrapped(xs)[1]), np.asarray(rnnjax.unroll(cell, p, xs)[1]))
    # jit through nnx
    y_jit = nnx.jit(lambda m, x: m(x)[1])(rnn, xs)
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(rnn(xs)[1]), rtol=1e-6, atol=1e-7)


def test_linen_matches_unroll():
    cell = rnnjax.lstm(6)
    module = rflax.LinenRNN(cell)
    xs = jax.random.normal(jax.random.key(2), (5, 3, 4))
    variables = module.init(jax.random.key(0), xs)
    params = variables["params"]["cell"]
    assert set(params) == set(cell.init(jax.random.key(0), 4))
    carry, ys = module.apply(variables, xs)
    carry_ref, ys_ref = rnnjax.unroll(cell, params, xs)
    np.testing.assert_array_equal(np.asarray(ys), np.asarray(ys_ref))
    np.testing.assert_array_equal(np.asarray(carry.c), np.asarray(carry_ref.c))


def test_rejects_non_cells():
    with pytest.raises(TypeError, match="rnnjax.Cell"):
        rflax.RNN(object(), 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rngs"):
        rflax.RNN(rnnjax.gru(3), 3)
