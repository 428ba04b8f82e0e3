"""unroll_reduce: the recurrence with the outputs folded inside the scan (and inputs streamed from a
function of t) equals unroll followed by the same fold, in values and gradients, for every option."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from helpers import tree_allclose
from rnnjax.types import Cell

unroll_reduce = importlib.import_module("rnnjax.unroll").unroll_reduce

T, B, D, H = 7, 2, 3, 4
LENGTHS = np.array([7, 4])
RESETS = np.zeros((T, B), bool)
RESETS[[2, 5], 0] = True
RESETS[[1, 6], 1] = True  # 6 lies in seq 1's padding (ignored)


def _plain(cell):
    return Cell(cell.init, cell.initial_carry, cell.apply)


def _fold(W, reverse):
    """reduce_fn: a weighted per-step loss, a count of calls, and the output of the last call."""

    def reduce_fn(acc, t, y):
        return {"loss": acc["loss"] + jnp.sum(W[t] * y) + 0.1 * jnp.sum(y ** 2),
                "n": acc["n"] + 1, "last": y}

    def on_ys(ys):  # the same fold over unroll's stacked outputs
        return {"loss": jnp.sum(W * ys) + 0.1 * jnp.sum(ys ** 2), "n": jnp.asarray(ys.shape[0]),
                "last": ys[0] if reverse else ys[-1]}

    init = {"loss": jnp.zeros(()), "n": jnp.asarray(0), "last": jnp.zeros((B, H))}
    return reduce_fn, on_ys, init


def _scalar(carry, acc):
    return acc["loss"] + jnp.sum(jnp.cos(acc["last"])) + sum(
        jnp.sum(jnp.sin(c)) for c in jax.tree_util.tree_leaves(carry))


# (id, cell factory, streamed inputs, options)
CASES = [
    ("lstm-fused-array", lambda: rnnjax.lstm(H), False, {}),
    ("lstm-stream-chunk4-rev-len-resets", lambda: rnnjax.lstm(H), True,
     dict(remat_chunk=4, reverse=True, lengths=True, resets=True)),
    ("gru-stream-sqrt-len", lambda: rnnjax.gru(H, reset="after"), True,
     dict(remat_chunk="sqrt", lengths=True)),
    ("elman-array-remat-rev-resets", lambda: rnnjax.elman(H), False,
     dict(remat=True, reverse=True, resets=True)),
    ("lstm-scan-stream-len-rev", lambda: _plain(rnnjax.lstm(H)), True, dict(lengths=True, reverse=True)),
    ("gru-array-chunk3-resets-remat", lambda: rnnjax.gru(H), False,
     dict(remat_chunk=3, resets=True, remat=True)),
]


SLOW_CASES = ['elman-array-remat-rev-resets', 'gru-array-chunk3-resets-remat', 'gru-stream-sqrt-len']  # the same paths at other options: in `make test-slow` (suite time)


def _marked(cases):
    return [pytest.param(*c, marks=pytest.mark.slow) if c[0] in SLOW_CASES else c for c in cases]


@pytest.mark.parametrize("name,make,stream,opts", _marked(CASES), ids=[c[0] for c in CASES])
def test_equals_unroll_then_fold(name, make, stream, opts):
    cell = make()
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    W = jax.random.normal(jax.random.key(2), (T, B, H))
    c0 = jax.tree_util.tree_map(lambda a: a + 0.3, cell.initial_carry(params, (B,)))
    reverse = opts.get("reverse", False)
    kw = dict(reverse=reverse, lengths=jnp.asarray(LENGTHS) if opts.get("lengths") else None,
              resets=jnp.asarray(RESETS) if opts.get("resets") else None,
              remat=opts.get("remat", False), remat_chunk=opts.get("remat_chunk"))
    reduce_fn, on_ys, init = _fold(W, reverse)

    def reduced(p, x, c):
        inputs = (lambda t: 2.0 * x[t]) if stream else 2.0 * x
        carry, acc = unroll_reduce(cell, p, inputs, reduce_fn, init, length=T if stream else None,
                                   carry=c, **kw)
        return _scalar(carry, acc), (carry, acc)

    def reference(p, x, c):
        carry, ys = rnnjax.unroll(cell, p, 2.0 * x, c, **kw)
        acc = on_ys(ys)
        return _scalar(carry, acc), (carry, acc)

    @jax.jit
    def both(p, x, c):
        return [jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(p, x, c)
                for f in (reduced, reference)]

    ((_, out), g), ((_, ref), g_ref) = both(params, xs, c0)
    assert int(out[1]["n"]) == T  # reduce_fn called once per step, never on padding of a chunk
    tree_allclose(out, ref, atol=2e-5, rtol=2e-5)
    tree_allclose(g, g_ref, atol=5e-5, rtol=5e-5)
    assert float(jnp.abs(g[1]).sum()) > 0  # the gradient reaches the streamed inputs


def test_ten_thousand_steps_streamed_sqrt_chunks():
    """T = 10,000 (B=2, H=4 LSTM, inputs a function of t, remat_chunk="sqrt"): equal to unroll and
    the fold over its stacked outputs to 1e-5, in the loss and its gradient."""
    Tl, Dl = 10_000, 3
    cell = rnnjax.lstm(H)
    params = cell.init(jax.random.key(0), Dl)
    freq = jnp.linspace(0.001, 0.05, B * Dl).reshape(B, Dl)

    def x_at(t):
        return jnp.sin(freq * t.astype(jnp.float32) + 1.0)

    def target(t):
        return jnp.cos(0.01 * t.astype(jnp.float32)) * jnp.ones((B, H))

    def streamed(p):
        def fold(acc, t, y):
            return acc + jnp.sum((y - target(t)) ** 2)
        c, acc = unroll_reduce(cell, p, x_at, fold, jnp.zeros(()), length=Tl, remat_chunk="sqrt")
        return acc / Tl + jnp.sum(c.h)

    def materialised(p):
        ts = jnp.arange(Tl, dtype=jnp.int32)
        c, ys = rnnjax.unroll(cell, p, jax.vmap(x_at)(ts), remat_chunk="sqrt")
        return jnp.sum((ys - jax.vmap(target)(ts)) ** 2) / Tl + jnp.sum(c.h)

    (l1, g1), (l2, g2) = jax.jit(lambda p: (jax.value_and_grad(streamed)(p),
                                            jax.value_and_grad(materialised)(p)))(params)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
    tree_allclose(g1, g2, atol=1e-5, rtol=1e-5)


def test_traced_lengths_out_of_range_make_that_sequence_nan():
    cell = rnnjax.lstm(H)
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (T, B, D))

    def per_seq(acc, t, y):
        return acc + jnp.sum(y, axis=-1)

    f = jax.jit(lambda n: unroll_reduce(cell, params, xs, per_seq, jnp.zeros((B,)), lengths=n,
                                        remat_chunk=3))
    carry, acc = f(jnp.array([9, 4]))
    assert bool(jnp.isnan(acc[0])) and bool(jnp.isnan(carry.h[0]).all())
    c_ref, ys = rnnjax.unroll(cell, params, xs, lengths=jnp.array([7, 4]))
    np.testing.assert_allclose(float(acc[1]), float(jnp.sum(ys[:, 1])), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(carry.h[1]), np.asarray(c_ref.h[1]), rtol=1e-5)


def test_errors_name_the_argument():
    cell = rnnjax.lstm(H)
    params = cell.init(jax.random.key(0), D)
    xs = jnp.zeros((T, B, D))
    add = lambda acc, t, y: acc + jnp.sum(y)  # noqa: E731
    with pytest.raises(TypeError, match="length must be the number of steps"):
        unroll_reduce(cell, params, lambda t: xs[t], add, 0.0)
    with pytest.raises(ValueError, match="length=5 but inputs has 7 steps"):
        unroll_reduce(cell, params, xs, add, 0.0, length=5)
    with pytest.raises(TypeError, match="inputs must be an array"):
        unroll_reduce(cell, params, xs.tolist(), add, 0.0)
    with pytest.raises(TypeError, match="reduce_fn must be a function"):
        unroll_reduce(cell, params, xs, None, 0.0)
    with pytest.raises(ValueError, match=r"carry\.h has shape \(2, 5\)"):
        unroll_reduce(cell, params, xs, add, 0.0, carry=rnnjax.lstm(5).initial_carry(params, (B,)))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=7\]"):
        unroll_reduce(cell, params, lambda t: xs[t], add, 0.0, length=T, lengths=jnp.array([8, 1]))
    with pytest.raises(ValueError, match="input size 3"):
        unroll_reduce(cell, params, lambda t: jnp.zeros((B, 2)), add, 0.0, length=T)
