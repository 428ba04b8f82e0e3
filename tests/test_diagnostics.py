"""Tests for rnnjax.diagnostics against closed forms and explicit autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax.diagnostics import (
    GATES,
    gate_saturation,
    gradient_flow,
    jacobian_norms,
    spectral_norm,
)
from rnnjax.types import Cell, LSTMState


def linear_cell(hidden, a):
    """h' = x W_x + a h, y = h (a test cell with a closed-form gradient flow)."""

    def init(key, input_size):
        return {"w_x": jax.random.normal(key, (input_size, hidden)), "a": jnp.asarray(a, jnp.float32)}

    def initial_carry(params, batch_shape):
        return jnp.zeros((*batch_shape, hidden))

    def apply(params, h, x):
        h = x @ params["w_x"] + h * params["a"]
        return h, h

    return Cell(init, initial_carry, apply)


def test_gradient_flow_linear_closed_form(key):
    T, B, D, H, a = 12, 3, 2, 4, 0.8
    cell = linear_cell(H, a)
    params = cell.init(key, D)
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    flow = gradient_flow(cell, params, xs, lambda ys: jnp.sum(ys[-1]))
    # dL/dh_{T-1} = ones through the output path; each step back multiplies by a
    np.testing.assert_allclose(flow.norms[-1], np.sqrt(B * H), rtol=1e-6)
    expected = a ** (T - 1 - np.arange(T)) * flow.norms[-1]
    np.testing.assert_allclose(flow.norms, expected, rtol=1e-5)
    np.testing.assert_allclose(flow.grads, a ** (T - 1 - np.arange(T))[:, None, None] * np.ones((T, B, H)),
                               rtol=1e-5)
    _, ys = rnnjax.unroll(cell, params, xs)
    np.testing.assert_allclose(flow.loss, jnp.sum(ys[-1]), rtol=1e-6)
    # readout=None: the perturbation is not seen by y_t, only by later steps
    flow0 = gradient_flow(cell, params, xs, lambda ys: jnp.sum(ys[-1]), readout=None)
    assert float(flow0.norms[-1]) == 0.0
    np.testing.assert_allclose(flow0.norms[:-1], expected[:-1], rtol=1e-5)
    # an explicit readout that equals the output gives the default
    flow1 = gradient_flow(cell, params, xs, lambda ys: jnp.sum(ys[-1]), readout=lambda h: h)
    np.testing.assert_allclose(flow1.norms, flow.norms, rtol=1e-6)


def test_gradient_flow_auto_readout_when_output_is_not_a_leaf(key):
    base = linear_cell(3, 0.5)
    cell = base._replace(apply=lambda p, h, x: (base.apply(p, h, x)[0], 2.0 * base.apply(p, h, x)[0]))
    params = cell.init(key, 2)
    xs = jnp.ones((4, 2))
    flow = gradient_flow(cell, params, xs, lambda ys: jnp.sum(ys[-1]))
    # y_t is not a carry leaf: the perturbation of carry_t reaches only later steps
    np.testing.assert_allclose(flow.norms, [2 * 0.5 ** 3 * np.sqrt(3), 2 * 0.5 ** 2 * np.sqrt(3),
                                            2 * 0.5 * np.sqrt(3), 0.0], rtol=1e-5)
    # a readout makes the output path explicit
    flow_r = gradient_flow(cell, params, xs, lambda ys: jnp.sum(ys[-1]), readout=lambda h: 2.0 * h)
    np.testing.assert_allclose(flow_r.norms, 2 * 0.5 ** (3 - np.arange(4)) * np.sqrt(3), rtol=1e-5)


def test_gradient_flow_linear_growth_single_sequence(key):
    T, a = 6, 1.5
    cell = linear_cell(3, a)
    params = cell.init(key, 1)
    xs = jnp.ones((T, 1))
    flow = gradient_flow(cell, params, xs, lambda ys: jnp.sum(ys[-1]))
    np.testing.assert_allclose(flow.norms, a ** (T - 1 - np.arange(T)) * np.sqrt(3), rtol=1e-5)


def _lstm_setup(key, T=9, B=2, D=3, H=5, peephole=True):
    cell = rnnjax.lstm(H, peephole=peephole, peephole_init=rnnjax.initializers.normal(0.5))
    params = cell.init(key, D)
    xs = jax.random.normal(jax.random.key(7), (T, B, D))
    targets = jax.random.normal(jax.random.key(8), (T, B, H))

    def loss_fn(ys):  # every output counts, with step-dependent weights
        w = jnp.arange(1, ys.shape[0] + 1, dtype=ys.dtype)[:, None, None]
        return jnp.sum(w * (ys - targets) ** 2) / ys.shape[0]

    return cell, params, xs, loss_fn


def _run(cell, params, xs, carry):
    """A plain Python loop over ``cell.apply`` (independent of ``unroll`` and ``lax.scan``)."""
    ys = []
    for x in xs:
        carry, y = cell.apply(params, carry, x)
        ys.append(y)
    return carry, ys


def _explicit_grad(cell, params, xs, loss_fn, t, include_output):
    """dL/d carry_t by running the prefix, then differentiating the suffix alone."""
    carry0 = cell.initial_carry(params, xs.shape[1:-1])
    carry_t, ys_prefix = _run(cell, params, xs[: t + 1], carry0)

    def loss_from(c):
        _, ys_suffix = _run(cell, params, xs[t + 1:], c)
        y_t = [c.h] if include_output else ys_prefix[t:]
        return loss_fn(jnp.stack(ys_prefix[:t] + y_t + ys_suffix))

    return jax.grad(loss_from)(carry_t)


def test_gradient_flow_lstm_matches_explicit_grad(key):
    cell, params, xs, loss_fn = _lstm_setup(key)
    flow = gradient_flow(cell, params, xs, loss_fn)
    flow0 = gradient_flow(cell, params, xs, loss_fn, readout=None)
    assert isinstance(flow.leaf_norms, LSTMState) and flow.leaf_norms.h.shape == (xs.shape[0],)
    for t in (0, 4, 8):
        for f, include in ((flow, True), (flow0, False)):
            g = _explicit_grad(cell, params, xs, loss_fn, t, include)
            np.testing.assert_allclose(f.grads.h[t], g.h, rtol=2e-5, atol=1e-6)
            np.testing.assert_allclose(f.grads.c[t], g.c, rtol=2e-5, atol=1e-6)
            np.testing.assert_allclose(f.leaf_norms.h[t], jnp.linalg.norm(g.h), rtol=2e-5)
            np.testing.assert_allclose(f.leaf_norms.c[t], jnp.linalg.norm(g.c), rtol=2e-5)
            total = jnp.sqrt(jnp.sum(g.h ** 2) + jnp.sum(g.c ** 2))
            np.testing.assert_allclose(f.norms[t], total, rtol=2e-5)
        # the output path matters: with y_t = h_t the two definitions differ
        assert not np.allclose(flow.grads.h[t], flow0.grads.h[t])
    np.testing.assert_allclose(flow0.norms[-1], 0.0)


def test_gradient_flow_lengths(key):
    cell, params, xs, loss_fn = _lstm_setup(key, peephole=False)
    lengths = jnp.array([9, 5])
    flow = gradient_flow(cell, params, xs, loss_fn, lengths=lengths)
    _, ys = rnnjax.unroll(cell, params, xs, lengths=lengths)
    np.testing.assert_allclose(flow.loss, loss_fn(ys), rtol=1e-6)
    # sequence 1 at step 2 (valid) equals the gradient of sequence 1 run alone for 5 steps, with
    # zeros as its later outputs and sequence 0's outputs held fixed (loss_fn sums over the batch)
    def alone_loss(y1):
        y1 = jnp.concatenate([y1, jnp.zeros((4, *y1.shape[1:]))])
        return loss_fn(jnp.concatenate([jax.lax.stop_gradient(ys[:, :1]), y1], axis=1))

    flow_alone = gradient_flow(cell, params, xs[:5, 1:2], alone_loss)
    np.testing.assert_allclose(flow_alone.loss, flow.loss, rtol=1e-6)
    np.testing.assert_allclose(flow.grads.h[:5, 1], flow_alone.grads.h[:, 0], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(flow.grads.c[:5, 1], flow_alone.grads.c[:, 0], rtol=2e-5, atol=1e-6)
    # padded steps pass the carry on unchanged: their carries have the final carry's gradient,
    # which (no output afterwards but zeros) is zero
    np.testing.assert_allclose(flow.grads.h[5:, 1], 0.0, atol=1e-7)


def test_gradient_flow_jit_and_bad_inputs(key):
    cell, params, xs, loss_fn = _lstm_setup(key, peephole=False)
    f = jax.jit(lambda p, x: gradient_flow(cell, p, x, loss_fn).norms)
    np.testing.assert_allclose(f(params, xs), gradient_flow(cell, params, xs, loss_fn).norms, rtol=1e-5)
    with pytest.raises(ValueError, match="scalar"):
        gradient_flow(cell, params, xs, lambda ys: ys)
    with pytest.raises(TypeError, match="loss_fn"):
        gradient_flow(cell, params, xs, 3.0)
    with pytest.raises(TypeError, match="cell"):
        gradient_flow(params, params, xs, loss_fn)
    with pytest.raises(ValueError, match="readout"):
        gradient_flow(cell, params, xs, loss_fn, readout="h")
    with pytest.raises(TypeError, match="xs"):
        gradient_flow(cell, params, [[1.0]], loss_fn)


# ------------------------------------------------------------------------------ Jacobians


def test_spectral_norm_power_iteration(key):
    A = jax.random.normal(jax.random.key(3), (7, 6))
    sigma = spectral_norm(lambda v: A @ v, jnp.ones(6), key=key, iters=200)
    np.testing.assert_allclose(sigma, jnp.linalg.norm(A, 2), rtol=1e-4)
    # pytree input and output
    f = lambda p: {"out": A @ jnp.concatenate([p[0], p[1]])}  # noqa: E731
    sigma2 = spectral_norm(f, (jnp.ones(2), jnp.ones(4)), key=key, iters=200)
    np.testing.assert_allclose(sigma2, jnp.linalg.norm(A, 2), rtol=1e-4)
    assert float(spectral_norm(lambda v: 0.0 * v, jnp.ones(3), key=key)) == 0.0
    with pytest.raises(ValueError, match="iters"):
        spectral_norm(lambda v: v, jnp.ones(3), key=key, iters=0)


def test_jacobian_norms_against_explicit_jacobians(key):
    T, B, D, H = 8, 2, 3, 4
    cell = rnnjax.lstm(H)
    params = cell.init(key, D)
    xs = jax.random.normal(jax.random.key(5), (T, B, D))
    steps = (-1, 2, 6)
    out = jacobian_norms(cell, params, xs, steps=steps, key=jax.random.key(9), iters=300)
    assert out.spectral_norms.shape == (3, B) and out.singular_values.shape == (3, B, 2 * H)
    np.testing.assert_array_equal(out.steps, steps)
    c0 = cell.initial_carry(params, (B,))
    for k, s in enumerate(steps):
        c_s = c0 if s == -1 else _run(cell, params, xs[: s + 1], c0)[0]

        def suffix(c, s=s):
            return _run(cell, params, xs[s + 1:], c)[0]

        def one(c, s=s):
            return cell.apply(params, c, xs[s + 1])[0]

        for fn, check in ((suffix, "norm"), (one, "svd")):
            J = jax.jacfwd(fn)(c_s)  # LSTMState of LSTMState: [B, H, B, H] blocks
            J = np.block([[np.asarray(J[i][j]).reshape(B * H, B * H) for j in range(2)] for i in range(2)])
            for b in range(B):
                # rows/cols of sequence b: (h_b, c_b) in the flattened (h, c) layout [2*B*H]
                idx = np.concatenate([np.arange(b * H, (b + 1) * H), B * H + np.arange(b * H, (b + 1) * H)])
                Jb = J[np.ix_(idx, idx)].astype(np.float64)
                if check == "norm":
                    np.testing.assert_allclose(out.spectral_norms[k, b], np.linalg.norm(Jb, 2), rtol=1e-3)
                else:
                    np.testing.assert_allclose(out.singular_values[k, b], np.linalg.svd(Jb, compute_uv=False),
                                               rtol=1e-4, atol=1e-6)


def test_jacobian_norms_linear_cell_and_bad_inputs(key):
    a, T = 0.7, 6
    cell = linear_cell(3, a)
    params = cell.init(key, 2)
    xs = jnp.ones((T, 2))
    out = jacobian_norms(cell, params, xs, steps=(0, 4), key=key, iters=5)
    np.testing.assert_allclose(out.spectral_norms, [a ** 5, a ** 1], rtol=1e-5)
    np.testing.assert_allclose(out.singular_values, np.full((2, 3), a), rtol=1e-6)
    default = jacobian_norms(cell, params, xs, key=key, iters=5)
    assert default.steps[0] == -1 and default.steps[-1] == T - 2
    with pytest.raises(ValueError, match="steps"):
        jacobian_norms(cell, params, xs, steps=(T - 1,), key=key)
    with pytest.raises(TypeError, match="steps"):
        jacobian_norms(cell, params, xs, steps=2, key=key)
    with pytest.raises(TypeError, match="key"):
        jacobian_norms(cell, params, xs, key=0)
    with pytest.raises(ValueError, match="T >= 2"):
        jacobian_norms(cell, params, xs[:1], key=key)


# ------------------------------------------------------------------------------ gate saturation


def _manual_gates(kind, params, xs, carries, carry0):
    """Step-by-step gates in NumPy with explicit per-gate slices."""
    W, U, b = (np.asarray(params[k], np.float64) for k in ("w_x", "w_h", "b"))
    H = U.shape[0]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    out = {g: [] for g in GATES[kind]}
    for t in range(xs.shape[0]):
        x = np.asarray(xs[t], np.float64)
        if kind == "lstm":
            h = np.asarray(carry0.h if t == 0 else carries.h[t - 1], np.float64)
            c = np.asarray(carry0.c if t == 0 else carries.c[t - 1], np.float64)
            c_new = np.asarray(carries.c[t], np.float64)
            pre = lambda j: x @ W[:, j * H:(j + 1) * H] + h @ U[:, j * H:(j + 1) * H] + b[j * H:(j + 1) * H]  # noqa: E731
            pc = {k: np.asarray(params.get(k, np.zeros(H)), np.float64) for k in ("w_ci", "w_cf", "w_co")}
            out["i"].append(sig(pre(0) + pc["w_ci"] * c))
            out["f"].append(sig(pre(1) + pc["w_cf"] * c))
            out["o"].append(sig(pre(3) + pc["w_co"] * c_new))
        else:
            h = np.asarray(carry0 if t == 0 else carries[t - 1], np.float64)
            pre = lambda j: x @ W[:, j * H:(j + 1) * H] + h @ U[:, j * H:(j + 1) * H] + b[j * H:(j + 1) * H]  # noqa: E731
            for j, g in enumerate(GATES[kind]):
                out[g].append(sig(pre(j)))
    return {g: np.stack(v) for g, v in out.items()}


@pytest.mark.parametrize("kind,cell_fn", [
    ("lstm", lambda: rnnjax.lstm(6, peephole=True, peephole_init=rnnjax.initializers.normal(1.0))),
    ("lstm", lambda: rnnjax.lstm(6)),
    ("gru", lambda: rnnjax.gru(6)),
    ("gru", lambda: rnnjax.gru(6, reset="after")),
    ("mgu", lambda: rnnjax.mgu(6)),
])
def test_gate_saturation_matches_manual(key, kind, cell_fn):
    cell = cell_fn()
    params = cell.init(key, 3)
    # scale weights up so that a good share of gates saturate (with both signs)
    params = {k: v * 4.0 for k, v in params.items()}
    T, B = 7, 16
    xs = jax.random.normal(jax.random.key(11), (T, B, 3))
    carry0 = cell.initial_carry(params, (B,))
    sat = gate_saturation(cell, params, xs, kind=kind)
    # the cell's own carries, step by step
    carries, c = [], carry0
    for t in range(T):
        c, _ = cell.apply(params, c, xs[t])
        carries.append(c)
    carries = jax.tree_util.tree_map(lambda *l: jnp.stack(l), *carries)
    gates = _manual_gates(kind, params, xs, carries, carry0)
    assert set(sat.high) == set(sat.low) == set(GATES[kind])
    any_sat = 0.0
    for g, a in gates.items():
        np.testing.assert_allclose(sat.high[g], (a > 0.99).mean(axis=(1, 2)), atol=1e-6)
        np.testing.assert_allclose(sat.low[g], (a < 0.01).mean(axis=(1, 2)), atol=1e-6)
        any_sat += float(sat.high[g].sum() + sat.low[g].sum())
    assert any_sat > 0  # the test exercises saturation, not only zeros
    # the MGU forget gate also drives the update: check it against the cell's own step
    if kind == "mgu":
        f = gates["f"][0]
        h1 = np.asarray(carries[0], np.float64)
        n = np.tanh(np.asarray(xs[0], np.float64) @ np.asarray(params["w_x"])[:, 6:] + np.asarray(params["b"])[6:])
        np.testing.assert_allclose(h1, f * n, rtol=1e-4, atol=1e-5)


def test_gate_saturation_bad_inputs(key):
    cell = rnnjax.gru(4)
    params = cell.init(key, 2)
    xs = jnp.ones((3, 2, 2))
    with pytest.raises(ValueError, match="kind"):
        gate_saturation(cell, params, xs, kind="lstm")  # GRU params, LSTM layout
    with pytest.raises(ValueError, match="kind"):
        gate_saturation(cell, params, xs, kind="elman")
    with pytest.raises(TypeError, match="kind"):
        gate_saturation(cell, params, xs, kind=3)
    with pytest.raises(ValueError, match="lower"):
        gate_saturation(cell, params, xs, kind="gru", lower=0.5, upper=0.4)
    with pytest.raises(TypeError, match="upper"):
        gate_saturation(cell, params, xs, kind="gru", upper="0.9")
    with pytest.raises(TypeError, match="cell"):
        gate_saturation(None, params, xs, kind="gru")
