"""The fused LSTM/GRU sequence paths (custom VJP) against the plain scan over ``apply``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rnnjax
from rnnjax import initializers as inits
from helpers import tree_allclose

# every arrangement of the input projection (rnnjax.cells.fused.PROJECTIONS) of every fused cell
FUSED = [
    (f"{name}-{projection}", factory(projection))
    for projection in ("step", "hoisted")
    for name, factory in [
        ("lstm", lambda pr: rnnjax.lstm(5, bias_init=inits.normal(0.5), projection=pr)),
        ("gru_before", lambda pr: rnnjax.gru(5, bias_init=inits.normal(0.5), projection=pr)),
        ("gru_after", lambda pr: rnnjax.gru(5, reset="after", bias_init=inits.normal(0.5),
                                            projection=pr)),
    ]
]


def plain(cell):
    return rnnjax.Cell(cell.init, cell.initial_carry, cell.apply)  # no fused path


def test_default_cells_have_the_fused_path_and_variants_do_not():
    assert rnnjax.lstm(3).sequence is not None and rnnjax.gru(3).sequence is not None
    assert rnnjax.lstm(3, peephole=True).sequence is None
    assert rnnjax.gru(3, candidate_activation=jax.nn.relu).sequence is None


@pytest.mark.parametrize("name,cell", FUSED, ids=[n for n, _ in FUSED])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_fused_equals_plain_scan(name, cell, reverse, use_lengths):
    T, B, D = 9, 4, 3
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    carry0 = jax.tree_util.tree_map(lambda a: a + 0.3, cell.initial_carry(params, (B,)))
    lengths = jnp.array([9, 4, 0, 6]) if use_lengths else None

    def loss(c, p, x, c0):
        carry, ys = rnnjax.unroll(c, p, x, c0, reverse=reverse, lengths=lengths)
        return jnp.sum(jnp.sin(ys) * jnp.arange(ys.size).reshape(ys.shape) / ys.size) + sum(
            jnp.sum(jnp.cos(l)) for l in jax.tree_util.tree_leaves(carry))

    out_f = rnnjax.unroll(cell, params, xs, carry0, reverse=reverse, lengths=lengths)
    out_p = rnnjax.unroll(plain(cell), params, xs, carry0, reverse=reverse, lengths=lengths)
    tree_allclose(out_f, out_p, atol=1e-6)
    g_f = jax.grad(loss, argnums=(1, 2, 3))(cell, params, xs, carry0)
    g_p = jax.grad(loss, argnums=(1, 2, 3))(plain(cell), params, xs, carry0)
    tree_allclose(g_f, g_p, atol=2e-6)


@pytest.mark.parametrize("name,cell", FUSED, ids=[n for n, _ in FUSED])
def test_fused_check_grads(name, cell):
    params = cell.init(jax.random.key(2), 3)
    xs = jax.random.normal(jax.random.key(3), (4, 2, 3))
    lengths = jnp.array([4, 2])

    def f(p, x):
        carry, ys = rnnjax.unroll(cell, p, x, lengths=lengths, reverse=True)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(l) for l in jax.tree_util.tree_leaves(carry))

    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
        check_grads(f, (p64, xs.astype(jnp.float64)), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,cell", FUSED, ids=[n for n, _ in FUSED])
def test_fused_nested_and_no_batch(name, cell):
    params = cell.init(jax.random.key(4), 3)
    xs = jax.random.normal(jax.random.key(5), (6, 2, 3, 3))
    c, ys = rnnjax.unroll(cell, params, xs)
    c1, y1 = rnnjax.unroll(plain(cell), params, xs[:, 1, 2])
    np.testing.assert_allclose(ys[:, 1, 2], y1, atol=1e-6)
    tree_allclose(jax.tree_util.tree_map(lambda a: a[1, 2], c), c1, atol=1e-6)
    c2, y2 = rnnjax.unroll(cell, params, xs[:, 1, 2])  # fused path on an unbatched [T, D] sequence
    np.testing.assert_allclose(y2, y1, atol=1e-6)


# remat wraps whichever sequence path the cell has: the default arrangement of each cell suffices
REMAT = [(n, c) for n, c in FUSED if n.endswith("-step")] + [("elman", rnnjax.elman(5))]


@pytest.mark.parametrize("name,cell", REMAT, ids=[n for n, _ in REMAT])
@pytest.mark.parametrize("chunk", [1, 3, 4, "sqrt"])
def test_remat_chunk_changes_nothing(name, cell, chunk):
    T, B, D = 10, 3, 2
    params = cell.init(jax.random.key(6), D)
    xs = jax.random.normal(jax.random.key(7), (T, B, D))
    lengths = jnp.array([10, 3, 7])

    def loss(p, **kw):
        carry, ys = rnnjax.unroll(cell, p, xs, lengths=lengths, reverse=True, **kw)
        return jnp.sum(ys ** 2) + sum(jnp.sum(l) for l in jax.tree_util.tree_leaves(carry))

    np.testing.assert_allclose(loss(params, remat_chunk=chunk), loss(params), rtol=1e-6)
    tree_allclose(jax.grad(lambda p: loss(p, remat_chunk=chunk))(params), jax.grad(loss)(params), atol=1e-6)
    with pytest.raises(ValueError, match="remat_chunk"):
        rnnjax.unroll(cell, params, xs, remat_chunk=0)


def test_remat_chunk_with_parallel_is_an_error():
    cell = rnnjax.mingru(4)
    params = cell.init(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="sequential path only"):
        rnnjax.unroll(cell, params, jnp.zeros((5, 2)), parallel=True, remat_chunk=2)


def test_projection_argument():
    from rnnjax.cells import fused

    assert fused.resolve_projection("auto", 32, 256) == "step"
    assert fused.resolve_projection("auto", 64, 16) == "step"
    assert fused.resolve_projection("auto", 512, 128) == "hoisted"
    assert fused.resolve_projection("hoisted", 3, 256) == "hoisted"
    for factory in (rnnjax.lstm, rnnjax.gru):
        with pytest.raises(ValueError, match="projection must be one of"):
            factory(4, projection="fused")
    # the two arrangements of one cell compute the same function (bitwise is not promised)
    xs = jax.random.normal(jax.random.key(8), (6, 2, 3))
    for factory in (rnnjax.lstm, rnnjax.gru):
        params = factory(4).init(jax.random.key(9), 3)
        a = rnnjax.unroll(factory(4, projection="step"), params, xs)
        b = rnnjax.unroll(factory(4, projection="hoisted"), params, xs)
        tree_allclose(a, b, atol=1e-6)


def test_fused_errors_name_the_argument():
    cell = rnnjax.lstm(4)
    params = cell.init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match="input size 3"):
        rnnjax.unroll(cell, params, jnp.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match="carry"):
        rnnjax.unroll(cell, params, jnp.zeros((5, 2, 3)), cell.initial_carry(params, (3,)))
