"""stack, bidirectional, dense, dropout: checked by value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import layers
from helpers import loop_unroll, tree_allclose


def test_stack_equals_layer_by_layer():
    c1, c2, c3 = rnnjax.lstm(5), rnnjax.gru(4), rnnjax.jordan(3, 2)
    deep = layers.stack(c1, c2, c3)
    params = deep.init(jax.random.key(0), 3)
    assert params[1]["w_x"].shape == (5, 12) and params[2]["w_hx"].shape == (4, 3)
    xs = jax.random.normal(jax.random.key(1), (6, 2, 3))
    carry, ys = rnnjax.unroll(deep, params, xs)
    k1, y1 = loop_unroll(c1, params[0], xs)
    k2, y2 = loop_unroll(c2, params[1], y1)
    k3, y3 = loop_unroll(c3, params[2], y2)
    tree_allclose(carry, (k1, k2, k3))
    np.testing.assert_allclose(ys, y3, atol=1e-5)


def test_stack_with_lengths():
    deep = layers.stack(rnnjax.elman(4), rnnjax.elman(4))
    params = deep.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (6, 2, 2))
    carry, ys = rnnjax.unroll(deep, params, xs, lengths=jnp.array([6, 2]))
    ref_c, ref_y = rnnjax.unroll(deep, params, xs[:2, 1:])
    tree_allclose(jax.tree_util.tree_map(lambda a: a[1:], carry), ref_c)
    np.testing.assert_allclose(ys[:2, 1:], ref_y, atol=1e-6)


@pytest.mark.parametrize("merge", ["concat", "sum", "mean"])
def test_bidirectional(merge):
    f, b = rnnjax.lstm(3), rnnjax.gru(3)
    bi = layers.bidirectional(f, b, merge=merge)
    params = bi.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (5, 3, 2))
    lengths = jnp.array([5, 2, 4])
    (cf, cb), ys = bi.apply(params, xs, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        kf, yf = loop_unroll(f, params["fwd"], xs[:n, i:i + 1])
        kb, yb = loop_unroll(b, params["bwd"], xs[:n, i:i + 1][::-1])
        yb = yb[::-1]
        want = {"concat": jnp.concatenate([yf, yb], -1), "sum": yf + yb, "mean": (yf + yb) / 2}[merge]
        np.testing.assert_allclose(ys[:n, i:i + 1], want, atol=1e-5)
        np.testing.assert_array_equal(ys[n:, i], 0)
        tree_allclose(jax.tree_util.tree_map(lambda a: a[i:i + 1], cf), kf)
        tree_allclose(cb[i:i + 1], kb)


def test_bidirectional_bad_merge():
    with pytest.raises(ValueError, match="merge"):
        layers.bidirectional(rnnjax.lstm(2), rnnjax.lstm(2), merge="max")
    with pytest.raises(TypeError, match="bwd"):
        layers.bidirectional(rnnjax.lstm(2), "gru")


def test_dense():
    d = layers.dense(3)
    p = d.init(jax.random.key(0), 4)
    x = jax.random.normal(jax.random.key(1), (5, 2, 4))
    np.testing.assert_allclose(d.apply(p, x), np.asarray(x) @ np.asarray(p["w"]) + np.asarray(p["b"]), atol=1e-5)
    with pytest.raises(ValueError, match="input size 4"):
        d.apply(p, jnp.zeros((2, 5)))


def test_dropout_statistics_and_scaling():
    x = jnp.ones((200, 500))
    y = layers.dropout(x, 0.3, key=jax.random.key(0))
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.7) < 0.005
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(layers.dropout(x, 0.0, key=jax.random.key(0)), x)
    # a swept (traced) rate
    ys = jax.vmap(lambda r: layers.dropout(x, r, key=jax.random.key(1)))(jnp.array([0.0, 0.5]))
    np.testing.assert_array_equal(ys[0], x)
    assert abs(float((ys[1] != 0).mean()) - 0.5) < 0.01
    with pytest.raises(ValueError, match="rate"):
        layers.dropout(x, 1.0, key=jax.random.key(0))


def test_variational_dropout_shares_mask_over_time():
    xs = jnp.ones((10, 4, 50))
    ys = layers.variational_dropout(xs, 0.5, key=jax.random.key(0))
    mask = np.asarray(ys) != 0
    assert (mask == mask[:1]).all()  # the same elements at every step
    assert 0.35 < mask[0].mean() < 0.65
    ys_b = layers.variational_dropout(jnp.swapaxes(xs, 0, 1), 0.5, key=jax.random.key(0), time_axis=1)
    m = np.asarray(ys_b) != 0
    assert (m == m[:, :1]).all()


def test_recurrent_dropout():
    cell = rnnjax.lstm(8)
    params = cell.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (5, 3, 2))
    k = jax.random.key(2)
    dcell = layers.recurrent_dropout(cell, 0.5, key=k)
    _, ys = rnnjax.unroll(dcell, params, xs)
    mask = jax.random.bernoulli(k, 0.5, (3, 8))
    # manual: the same mask on h before every step, c untouched
    carry = cell.initial_carry(params, (3,))
    for t in range(5):
        carry = carry._replace(h=jnp.where(mask, carry.h / 0.5, 0.0))
        carry, y = cell.apply(params, carry, xs[t])
        np.testing.assert_allclose(ys[t], y, atol=1e-6)
    _, ys0 = rnnjax.unroll(cell, params, xs)
    assert float(jnp.abs(ys - ys0).max()) > 1e-3


def test_map_output():
    cell = rnnjax.elman(3)
    p = cell.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (4, 2))
    c1, y1 = rnnjax.unroll(layers.map_output(cell, jnp.square), p, xs)
    c0, y0 = rnnjax.unroll(cell, p, xs)
    np.testing.assert_allclose(c1, c0, atol=1e-6)
    np.testing.assert_allclose(y1, y0 ** 2, atol=1e-6)


def test_output_size():
    assert layers.output_size(rnnjax.jordan(5, 3), rnnjax.jordan(5, 3).init(jax.random.key(0), 2), 2) == 3
    deep = layers.stack(rnnjax.lstm(4), rnnjax.gru(7))
    assert layers.output_size(deep, deep.init(jax.random.key(0), 2), 2) == 7


def test_stack_sequence_path_equals_step_by_step():
    deep = layers.stack(rnnjax.lstm(5), rnnjax.orthogonal(4), rnnjax.gru(3))
    params = deep.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (7, 3, 2))
    lengths = jnp.array([7, 2, 5])
    stepwise = rnnjax.Cell(deep.init, deep.initial_carry, deep.apply)  # no sequence/prepare hooks
    for rev in (False, True):
        c1, y1 = rnnjax.unroll(deep, params, xs, lengths=lengths, reverse=rev)
        c2, y2 = rnnjax.unroll(stepwise, params, xs, lengths=lengths, reverse=rev)
        tree_allclose(c1, c2, atol=1e-5)
        np.testing.assert_allclose(y1, y2, atol=1e-5)
    g1 = jax.grad(lambda p: jnp.sum(rnnjax.unroll(deep, p, xs, lengths=lengths)[1] ** 2))(params)
    g2 = jax.grad(lambda p: jnp.sum(rnnjax.unroll(stepwise, p, xs, lengths=lengths)[1] ** 2))(params)
    tree_allclose(g1, g2, atol=1e-5)
