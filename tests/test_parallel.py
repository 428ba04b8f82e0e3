"""unroll(..., parallel=True): the associative-scan path agrees with the sequential scan."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax.cells.indrnn import indrnn
from rnnjax.cells.lru import lru
from rnnjax.cells.minimal import mingru, minlstm
from rnnjax.cells.orthogonal import orthogonal
from rnnjax.types import Cell, LinearForm, LinearRecurrence

unroll_mod = importlib.import_module("rnnjax.unroll")  # the module (rnnjax.unroll is the function)

D, H = 3, 4
LINEAR = {
    "lru": lambda: lru(H, 5, r_min=0.5, r_max=0.99),
    "lru_square": lambda: lru(D, 5),  # input size == hidden size: elementwise skip
    "mingru": lambda: mingru(H),
    "minlstm": lambda: minlstm(H, forget_bias=1.0),
    "mingru_plain": lambda: mingru(H, log_space=False),
    "minlstm_plain": lambda: minlstm(H, log_space=False),
}


def _setup(name, T, key, batch=(3,)):
    cell = LINEAR[name]()
    k1, k2, k3 = jax.random.split(key, 3)
    params = cell.init(k1, D)
    xs = jax.random.normal(k2, (T, *batch, D))
    c0 = cell.initial_carry(params, batch)
    noise = jax.random.normal(k3, c0.shape)
    c0 = c0 + (0.5 * noise).astype(c0.dtype)  # a non-zero carry of any sign (also for log space)
    return cell, params, xs, c0


def _both(cell, reverse, lengths, grads):
    """Values (and gradients w.r.t. params, xs and the initial carry) of both paths, jitted."""

    def loss(params, xs, c0, parallel):
        c, ys = rnnjax.unroll(cell, params, xs, c0, reverse=reverse, lengths=lengths, parallel=parallel)
        w = jnp.cos(jnp.arange(ys.size, dtype=jnp.float32)).reshape(ys.shape)
        return jnp.sum(w * ys) + jnp.sum(jnp.abs(c) ** 2), (c, ys)

    @jax.jit
    def run(params, xs, c0):
        out = {}
        for parallel in (False, True):
            if grads:
                (_, aux), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
                    params, xs, c0, parallel)
            else:
                aux, g = loss(params, xs, c0, parallel)[1], None
            out[parallel] = (aux, g)
        return out

    return run


def _assert_close(a, b, tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


# (cell, T, reverse, lengths, check gradients). Every cell runs reverse + lengths (the hardest
# path: each sequence reversed within its valid part); gradients are checked on each code path
# (plain and log-space coefficients; forward, flipped, masked and gathered) at odd T = 7, 13.
# (Few gradient cases: compiling the associative scan's gradient takes seconds on a busy CPU.)
CASES = [
    ("lru", 7, True, True, True),
    ("mingru", 7, True, True, True),
    ("minlstm", 13, False, True, True),
    ("mingru", 13, True, False, True),
    ("lru", 13, False, False, True),
    ("minlstm", 7, True, True, False),
    ("lru_square", 7, True, True, False),
    ("mingru_plain", 7, True, True, False),
    ("minlstm_plain", 13, True, True, True),
    ("mingru_plain", 13, False, False, False),
]


@pytest.mark.parametrize("name,T,reverse,use_lengths,grads", CASES)
def test_parallel_equals_sequential(name, T, reverse, use_lengths, grads, key):
    cell, params, xs, c0 = _setup(name, T, key)
    lengths = jnp.array([T, 2, 0]) if use_lengths else None
    out = _both(cell, reverse, lengths, grads)(params, xs, c0)
    ((cs, ys), gs), ((cp, yp), gp) = out[False], out[True]
    assert float(jnp.max(jnp.abs(ys))) > 0.05  # the outputs are not trivially zero
    _assert_close(yp, ys, 2e-5)
    _assert_close(cp, cs, 2e-5)
    if grads:
        assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree_util.tree_leaves(gs))
        _assert_close(gp, gs, 5e-5)
    if use_lengths:
        # padded steps output zeros; a length-0 sequence keeps its initial carry
        np.testing.assert_array_equal(np.asarray(yp[2:, 1]), 0.0)
        np.testing.assert_array_equal(np.asarray(yp[:, 2]), 0.0)
        np.testing.assert_allclose(np.asarray(cp[2]), np.asarray(c0[2]), rtol=1e-6)


def test_parallel_matches_python_loop_reverse_lengths(key):
    """Reverse with lengths consumes x[len-1], ..., x[0] of each sequence (a loop over apply)."""
    T = 7
    cell, params, xs, c0 = _setup("minlstm", T, key)
    lengths = np.array([7, 4, 1])
    c, ys = jax.jit(lambda p, x, c: rnnjax.unroll(cell, p, x, c, reverse=True, lengths=jnp.asarray(lengths),
                                                  parallel=True))(params, xs, c0)
    step = jax.jit(cell.apply)
    for b, n in enumerate(lengths):
        h = c0[b]
        for t in reversed(range(n)):
            h, y = step(params, h, xs[t, b])
            np.testing.assert_allclose(np.asarray(ys[t, b]), np.asarray(y), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(c[b]), np.asarray(h), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(ys[n:, b]), 0.0)


def _pair(cell, **kw):
    """The sequential and the parallel unroll, jitted together."""
    return jax.jit(lambda p, x, c: [rnnjax.unroll(cell, p, x, c, parallel=par, **kw) for par in (False, True)])


def test_batch_major_and_unbatched(key):
    cell, params, xs, c0 = _setup("lru", 9, key, batch=(2, 2))
    xb = jnp.moveaxis(xs, 0, -2)  # [B1, B2, T, D]
    (cs, ys), (cp, yp) = _pair(cell, time_major=False)(params, xb, c0)
    assert yp.shape == (2, 2, 9, H)
    _assert_close((cp, yp), (cs, ys), 2e-5)
    # a single sequence [T, D] with a scalar length
    (cs, ys), (cp, yp) = _pair(cell, lengths=jnp.array(5), reverse=True)(params, xs[:, 0, 0], c0[0, 0])
    _assert_close((cp, yp), (cs, ys), 2e-5)
    np.testing.assert_array_equal(np.asarray(yp[5:]), 0.0)


def test_remat_jit_vmap_and_empty(key):
    cell, params, xs, c0 = _setup("mingru", 6, key)

    def loss(p, parallel, remat):
        return jnp.sum(jnp.sin(rnnjax.unroll(cell, p, xs, c0, parallel=parallel, remat=remat)[1]))

    g = jax.jit(lambda p: [jax.value_and_grad(loss)(p, par, rem) for par, rem in ((False, False), (True, True))])
    (l_ref, g_ref), (l_par, g_par) = g(params)
    _assert_close((l_par, g_par), (l_ref, g_ref), 5e-5)
    # vmap over a stack of params (a sweep): member 1 has params scaled by 2
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a]), params)
    f = lambda p, par: rnnjax.unroll(cell, p, xs, c0, parallel=par)[1]  # noqa: E731
    vm, ref = jax.jit(lambda s: (jax.vmap(lambda p: f(p, True))(s),
                                 f(jax.tree_util.tree_map(lambda a: a[1], s), False)))(stacked)
    _assert_close(vm[1], ref, 2e-5)
    # T = 0: the carry comes back unchanged, ys is empty
    c, ys = rnnjax.unroll(cell, params, xs[:0], c0, parallel=True)
    assert ys.shape == (0, 3, H)
    np.testing.assert_array_equal(np.asarray(c), np.asarray(c0))


def test_log_space_scan_long_sequence(key):
    """The log-space scan stays accurate over many steps (no cumulative product underflows)."""
    cell = minlstm(2)
    params = cell.init(key, 1)
    xs = jax.random.normal(jax.random.key(1), (600, 1))
    (cs, ys), (cp, yp) = _pair(cell)(params, xs, jnp.array([-0.3, 2.0]))
    _assert_close((cp, yp), (cs, ys), 1e-4)


def test_parallel_true_on_nonlinear_cell_raises(key):
    xs = jnp.ones((5, 2, D))
    for cell in (rnnjax.gru(H), indrnn(H), orthogonal(H)):
        params = cell.init(key, D)
        with pytest.raises(ValueError, match="'(gru|indrnn|orthogonal)' cell"):
            rnnjax.unroll(cell, params, xs, parallel=True)
    with pytest.raises(TypeError, match="parallel"):
        rnnjax.unroll(rnnjax.gru(H), rnnjax.gru(H).init(key, D), xs, parallel="yes")


def test_parallel_none_rule(monkeypatch):
    lin, seq = mingru(H), rnnjax.gru(H)
    assert jax.default_backend() != "cpu" or not unroll_mod._auto_parallel(lin, 10_000)
    monkeypatch.setattr(unroll_mod.jax, "default_backend", lambda: "gpu")
    threshold = unroll_mod.PARALLEL_MIN_STEPS["gpu"]
    assert unroll_mod._auto_parallel(lin, threshold)
    assert not unroll_mod._auto_parallel(lin, threshold - 1)
    assert not unroll_mod._auto_parallel(seq, 10 * threshold)
    monkeypatch.setattr(unroll_mod.jax, "default_backend", lambda: "cpu")
    assert not unroll_mod._auto_parallel(lin, 10 * threshold)


def test_custom_linear_form_and_bad_coefficients(key):
    """Any cell can declare a linear form; a wrong return type is a clear TypeError."""

    def apply(p, c, x):
        c = p["a"] * c + x
        return c, 2.0 * c

    good = LinearForm(lambda p, xs: LinearRecurrence(p["a"], xs), lambda p, cs, xs: 2.0 * cs)
    cell = Cell(lambda k, d: {"a": jnp.full((d,), 0.9)}, lambda p, b: jnp.zeros((*b, 2)), apply,
                linear=good)
    params = cell.init(key, 2)
    xs = jax.random.normal(key, (11, 2))
    seq, par = _pair(cell)(params, xs, cell.initial_carry(params, ()))
    _assert_close(par, seq, 1e-5)
    bad = cell._replace(linear=LinearForm(lambda p, xs: (p["a"], xs), good.readout))
    with pytest.raises(TypeError, match="LinearRecurrence"):
        rnnjax.unroll(bad, params, xs, parallel=True)
