"""Truncated backpropagation through time: the carry runs on across windows, gradients stop at
each window's start, and the carry is checkpointed so a stateful fit resumes bitwise."""

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax

H, D, B, K = 4, 3, 2, 5  # window length K


def _setup(lr):
    cell, readout = rnnjax.lstm(H), rnnjax.dense(D)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"cell": cell.init(k1, D), "out": readout.init(k2, H)}
    stream = jax.random.normal(jax.random.key(1), (4 * K + 1, B, D))  # a stream of 4 windows

    def window(step):
        xs = jax.lax.dynamic_slice_in_dim(stream, step * K, K)
        ys = jax.lax.dynamic_slice_in_dim(stream, step * K + 1, K)
        return xs, ys

    def loss_fn(p, batch, key, carry):
        xs, ys = batch
        carry, hs = rnnjax.unroll(cell, p["cell"], xs, carry)
        return rnnjax.mse(readout.apply(p["out"], hs), ys), carry

    tx = rnnjax.optimizer("sgd", lr, clip_norm=None)
    state = rnnjax.TrainState.create(params, tx, key=jax.random.key(2),
                                     carry=cell.initial_carry(params["cell"], (B,)))
    return cell, stream, window, loss_fn, tx, state


def test_the_carry_runs_on_across_windows():
    cell, stream, window, loss_fn, tx, state = _setup(0.0)  # no updates: params fixed
    step = jax.jit(rnnjax.tbptt_step(loss_fn, tx))
    losses = []
    for t in range(3):
        state, m = step(state, window(t))
        losses.append(float(m["loss"]))
    carry, _ = rnnjax.unroll(cell, state.params["cell"], stream[:3 * K])  # the whole prefix at once
    for a, b in zip(jax.tree_util.tree_leaves(state.carry), jax.tree_util.tree_leaves(carry)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    c2, _ = rnnjax.unroll(cell, state.params["cell"], stream[:2 * K])
    want, _ = loss_fn(state.params, window(2), None, c2)
    np.testing.assert_allclose(losses[2], float(want), rtol=1e-5)


def test_gradients_stop_at_the_window_start():
    cell, stream, window, loss_fn, tx, state = _setup(0.1)
    p0, c0 = state.params, state.carry
    step = jax.jit(rnnjax.tbptt_step(loss_fn, tx))
    state, _ = step(state, window(0))
    state, _ = step(state, window(1))
    loss = lambda p, b, c: loss_fn(p, b, None, c)[0]  # noqa: E731
    g1 = jax.grad(loss)(p0, window(0), c0)
    p1 = jax.tree.map(lambda p, g: p - 0.1 * g, p0, g1)
    c1 = loss_fn(p0, window(0), None, c0)[1]  # the carry made with the params of its step
    g2 = jax.grad(loss)(p1, window(1), c1)  # no gradient through c1
    p2 = jax.tree.map(lambda p, g: p - 0.1 * g, p1, g2)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_stateful_fit_resumes_bitwise(tmp_path):
    *_, window, loss_fn, tx, state = _setup(0.1)
    step = rnnjax.tbptt_step(loss_fn, tx)
    full = rnnjax.fit(state, step, window, steps=4, progress=False)
    rnnjax.fit(state, step, window, steps=2, workdir=tmp_path, progress=False)
    resumed = rnnjax.fit(state, step, window, steps=4, workdir=tmp_path, progress=False)
    assert resumed.resumed_from_step == 2
    for a, b in zip(jax.tree_util.tree_leaves((full.state.params, full.state.carry)),
                    jax.tree_util.tree_leaves((resumed.state.params, resumed.state.carry))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not jnp.allclose(resumed.state.carry.h, 0.0)
