"""Cells, third wave: DeltaNet, Gated DeltaNet (chunkwise path), S6 (Mamba), and the
negative-eigenvalue option (Grazzi et al., ICLR 2025) of S6, minGRU, RG-LRU, mLSTM and DeltaNet."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loop_unroll, tree_allclose

import rnnjax
from rnnjax.cells.delta import DeltaState, delta_chunkwise, deltanet, gated_deltanet
from rnnjax.cells.minimal import g, mingru
from rnnjax.cells.rglru import rglru
from rnnjax.cells.s6 import s6
from rnnjax.cells.xlstm import mlstm

D, H, T, B = 4, 6, 7, 3
LENGTHS = [T, 3, 0]


def _perturbed(cell, key, d=D, scale=0.3):
    params = cell.init(key, d)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def _loss(c, ys):
    w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(w * ys) + sum(jnp.sum(leaf ** 2) for leaf in jax.tree_util.tree_leaves(c))


def _truncated_loops(cell, params, xs, c0, lengths, reverse):
    """Reference for lengths/reverse: a Python loop of unbatched ``apply`` per sequence."""
    carries, outs = [], []
    for b, n in enumerate(lengths):
        c = jax.tree_util.tree_map(lambda leaf: leaf[b], c0)
        ys = [None] * xs.shape[0]
        for t in (range(n - 1, -1, -1) if reverse else range(n)):
            c, ys[t] = cell.apply(params, c, xs[t, b])
        zero = jnp.zeros_like(cell.apply(params, c, xs[0, b])[1])
        outs.append(jnp.stack([zero if y is None else y for y in ys]))
        carries.append(c)
    return jax.tree_util.tree_map(lambda *l: jnp.stack(l), *carries), jnp.stack(outs, axis=1)


def _carry(cell, params, key):
    c0 = cell.initial_carry(params, (B,))
    leaves, tree = jax.tree_util.tree_flatten(c0)
    return jax.tree_util.tree_unflatten(
        tree, [leaf + 0.3 * jax.random.normal(key, leaf.shape, leaf.dtype) for leaf in leaves])


# (name, cell, fast path option): the loop reference, the sequential scan and the fast path
# (chunkwise sequence / associative scan), values and gradients, with lengths and reverse.
CASES = {
    "deltanet": lambda: (deltanet(H, num_heads=2, chunk_size=None), deltanet(H, num_heads=2, chunk_size=3)),
    "gated_deltanet_neg": lambda: (gated_deltanet(H, num_heads=2, negative_eigenvalues=True, chunk_size=None),
                                   gated_deltanet(H, num_heads=2, negative_eigenvalues=True, chunk_size=4)),
    "s6": lambda: (s6(5, 3), None),
    "s6_neg": lambda: (s6(5, 3, negative_eigenvalues=True), None),
    "mingru_neg": lambda: (mingru(H, negative_eigenvalues=True), None),
    "rglru_neg": lambda: (rglru(H, negative_eigenvalues=True), None),
    "mlstm_neg_plain": lambda: (mlstm(H, num_heads=2, stabilize=False, negative_eigenvalues=True), None),
}


@pytest.mark.parametrize("name,reverse", [("deltanet", True), ("gated_deltanet_neg", False), ("s6_neg", True)])
def test_unroll_and_fast_path_match_loop(name, reverse, key):
    """Loop over ``apply`` == ``unroll`` (scan) == the fast path (chunkwise / associative scan),
    with lengths and reverse; the two paths' gradients (w.r.t. params, inputs and the initial
    carry) agree (the scan's gradient is autodiff of the same ``apply`` the loop runs)."""
    cell, chunked = CASES[name]()
    fast = chunked if chunked is not None else cell
    k1, k2, k3 = jax.random.split(key, 3)
    params = _perturbed(cell, k1)
    xs = jax.random.normal(k2, (T, B, D))
    c0 = _carry(cell, params, k3)
    lengths = jnp.array(LENGTHS)

    def loss(params, xs, c0, path):
        if path == "scan":
            out = rnnjax.unroll(cell, params, xs, c0, lengths=lengths, reverse=reverse, parallel=False)
        else:  # the chunkwise sequence hook, or the associative scan
            out = rnnjax.unroll(fast, params, xs, c0, lengths=lengths, reverse=reverse,
                                parallel=chunked is None)
        return _loss(*out), out

    @jax.jit
    def run(params, xs, c0):  # the loop's values; both paths' values and gradients
        ref = _truncated_loops(cell, params, xs, c0, LENGTHS, reverse)
        return ref, [jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, c0, p)
                     for p in ("scan", "fast")]

    ref, (((_, seq), g_seq), ((_, out), g)) = run(params, xs, c0)
    assert float(jnp.abs(ref[1]).max()) > 1e-2
    tree_allclose(seq, ref, atol=2e-5, rtol=2e-5)
    tree_allclose(out, ref, atol=2e-5, rtol=2e-5)
    tree_allclose(g, g_seq, atol=2e-4, rtol=2e-4)
    assert all(float(jnp.abs(leaf).max()) > 0 for leaf in jax.tree_util.tree_leaves(g[0]))
    np.testing.assert_array_equal(np.asarray(ref[1][:, 2]), 0.0)  # the empty sequence


def test_parallel_equals_sequential_other_cells(key):
    """The associative scan equals the sequential scan (lengths, reverse; values and gradients)
    for S6 and for the cells given negative eigenvalues (minGRU's log-space path switches to
    linear space; RG-LRU; mLSTM without stabiliser); all in one compiled program."""
    names = ["s6", "mingru_neg", "rglru_neg", "mlstm_neg_plain"]
    cells = [CASES[n]()[0] for n in names]
    keys = jax.random.split(key, 3 * len(names))
    params = [_perturbed(c, keys[3 * i]) for i, c in enumerate(cells)]
    xs = [jax.random.normal(keys[3 * i + 1], (T, B, D)) for i in range(len(names))]
    c0s = [_carry(c, p, keys[3 * i + 2]) for i, (c, p) in enumerate(zip(cells, params))]
    lengths = jnp.array(LENGTHS)

    @jax.jit
    def run(params, xs, c0s):
        out = []
        for cell, p, x, c0 in zip(cells, params, xs, c0s):
            def loss(p, x, c0, parallel, cell=cell):
                res = rnnjax.unroll(cell, p, x, c0, lengths=lengths, reverse=True, parallel=parallel)
                return _loss(*res), res
            out.append([jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(p, x, c0, par)
                        for par in (False, True)])
        return out

    for name, (((_, seq), g_seq), ((_, par), g_par)) in zip(names, run(params, xs, c0s)):
        assert float(jnp.abs(seq[1]).max()) > 1e-2, name
        tree_allclose(par, seq, atol=2e-5, rtol=2e-5)
        tree_allclose(g_par, g_seq, atol=2e-4, rtol=2e-4)


@pytest.mark.slow  # resets: the scan over apply, covered fast by tests/test_resets.py for every path
@pytest.mark.parametrize("name", ["gated_deltanet_neg", "s6"])
def test_resets_equal_separate_segments(name, key):
    """``resets`` (on the chunked cell: falls back to the scan; on S6: the associative scan)
    equal running each segment from the initial carry in a Python loop."""
    cell, chunked = CASES[name]()
    fast = chunked if chunked is not None else cell
    k1, k2, k3 = jax.random.split(key, 3)
    params = _perturbed(cell, k1)
    xs = jax.random.normal(k2, (T, B, D))
    c0 = _carry(cell, params, k3)
    resets = np.zeros((T, B), bool)
    resets[3, 0] = resets[1, 1] = resets[5, 1] = True
    for parallel in ((False, True) if chunked is None else (False,)):
        c, ys = rnnjax.unroll(fast, params, xs, c0, resets=jnp.array(resets), parallel=parallel)
        for b in range(B):
            starts = [0] + [t for t in range(1, T) if resets[t, b]] + [T]
            for s, e in zip(starts[:-1], starts[1:]):
                cb = jax.tree_util.tree_map(lambda leaf: leaf[b], c0)
                cb, yb = loop_unroll(cell, params, xs[s:e, b], cb)
                np.testing.assert_allclose(ys[s:e, b], yb, atol=2e-5, rtol=2e-5)
            tree_allclose(jax.tree_util.tree_map(lambda leaf: leaf[b], c), cb, atol=2e-5, rtol=2e-5)


def test_delta_chunkwise_equals_recurrence_for_any_chunk(key):
    """``delta_chunkwise`` (any chunk size, T not a multiple) == the recurrence in float64 NumPy;
    its autodiff gradients == those of a ``lax.scan`` of the recurrence."""
    Tn, NH, dk, dv = 7, 2, 3, 2
    ks = jax.random.split(key, 6)
    q = jax.random.normal(ks[0], (Tn, NH, dk))
    k = jax.random.normal(ks[1], (Tn, NH, dk))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(ks[2], (Tn, NH, dv))
    beta = 2.0 * jax.nn.sigmoid(jax.random.normal(ks[3], (Tn, NH)))
    log_alpha = -jax.nn.softplus(jax.random.normal(ks[4], (Tn, NH)))
    S0 = jax.random.normal(ks[5], (NH, dv, dk))
    S = np.asarray(S0, np.float64)
    outs = []
    for t in range(Tn):
        for h in range(NH):
            kt = np.asarray(k[t, h], np.float64)
            a, bt = np.exp(float(log_alpha[t, h])), float(beta[t, h])
            S[h] = a * S[h] @ (np.eye(dk) - bt * np.outer(kt, kt)) + bt * np.outer(v[t, h], kt)
        outs.append(np.einsum("hvk,hk->hv", S, np.asarray(q[t], np.float64)))

    def scan_ref(q, k, v, beta, log_alpha, S0):
        def body(S, inp):
            qt, kt, vt, bt, lat = inp
            a = jnp.exp(lat)[:, None, None]
            Sk = jnp.einsum("hvk,hk->hv", S, kt)
            S = a * S + (bt[:, None] * (vt - jnp.exp(lat)[:, None] * Sk))[:, :, None] * kt[:, None, :]
            return S, jnp.einsum("hvk,hk->hv", S, qt)
        return jax.lax.scan(body, S0, (q, k, v, beta, log_alpha))

    def total(fn):
        return lambda *a: _loss(*fn(*a))

    @jax.jit
    def run(*args):
        values = [delta_chunkwise(*args, chunk_size=C) for C in (1, 3)]
        g_ref = jax.grad(total(scan_ref), argnums=tuple(range(6)))(*args)
        g = jax.grad(total(lambda *a: delta_chunkwise(*a, chunk_size=16)), argnums=tuple(range(6)))(*args)
        return values, g, g_ref

    values, g, g_ref = run(q, k, v, beta, log_alpha, S0)
    for S_T, o in values:
        np.testing.assert_allclose(o, np.stack(outs), atol=2e-5, rtol=2e-5)
        np.testing.assert_allclose(S_T, S, atol=2e-5, rtol=2e-5)
    tree_allclose(g, g_ref, atol=1e-4, rtol=1e-4)


def _delta_params(d, b_beta):
    """Params for inputs ``x = [key (d) | value (d) | bit]``: ``q = k = key``, ``v = value``,
    ``β = σ(40 bit + b_beta)`` (times 2 with negative eigenvalues)."""
    Dx = 2 * d + 1
    w = np.zeros((Dx, 3 * d), np.float32)
    w[:d, :d] = w[:d, d:2 * d] = np.eye(d)
    w[d:2 * d, 2 * d:] = np.eye(d)
    w_beta = np.zeros((Dx, 1), np.float32)
    w_beta[-1, 0] = 40.0
    return {"w_x": jnp.array(w), "w_beta": jnp.array(w_beta), "b_beta": jnp.array([b_beta], jnp.float32)}


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_deltanet_stores_and_overwrites_exactly(chunk_size, key):
    """β = 1, orthonormal keys: writing ``k_i -> v_i`` (i < d) and querying ``k_j`` returns ``v_j``;
    writing ``k_0 -> v'`` again replaces ``v_0`` (a linear-attention sum would give ``v_0 + v'``)."""
    d = 4
    cell = deltanet(d, chunk_size=chunk_size)
    params = _delta_params(d, 40.0)  # σ(40) == 1 in float32
    K = jnp.linalg.qr(jax.random.normal(key, (d, d)))[0]  # orthonormal rows
    V = jax.random.normal(jax.random.fold_in(key, 1), (d + 1, d))
    keys = jnp.concatenate([K, K[:1]])
    xs = jnp.concatenate([keys, V, jnp.zeros((d + 1, 1))], axis=-1)[:, None]  # [d + 1, 1, 2d + 1]
    carry, ys = rnnjax.unroll(cell, params, xs, parallel=False)
    S = carry.S[0, 0]
    np.testing.assert_allclose(S @ K[1:].T, V[1:d].T, atol=1e-5)
    np.testing.assert_allclose(S @ K[0], V[d], atol=1e-5)
    np.testing.assert_allclose(ys[d, 0], V[d], atol=1e-5)  # the output at the overwrite reads v'


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_deltanet_negative_eigenvalues_track_parity(chunk_size):
    """With ``negative_eigenvalues`` a bit 1 makes β = 2 and v = 0: ``I - 2 k kᵀ`` reflects the
    memory, so ``S_T k = (-1)^parity S_0 k`` exactly; with β ∈ [0, 1] the sign never flips."""
    d = 2
    bits = np.array([[1, 0, 1, 1, 0, 1, 0], [0, 1, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0]], np.float32).T
    key_vec = np.array([1.0, 0.0], np.float32)
    xs = np.zeros((7, 3, 2 * d + 1), np.float32)
    xs[..., :d] = key_vec
    xs[..., -1] = bits
    S0 = DeltaState(jnp.broadcast_to(jnp.array([[[1.0, 0.5], [0.2, -1.0]]]), (3, 1, d, d)))
    params = _delta_params(d, -20.0)  # bit 0: β = 2σ(-20) ≈ 4e-9; bit 1: β = 2σ(20) = 2
    for neg in (True, False):
        cell = deltanet(d, negative_eigenvalues=neg, chunk_size=chunk_size)
        carry, _ = rnnjax.unroll(cell, params, jnp.array(xs), S0, parallel=False)
        read = carry.S[:, 0] @ key_vec  # [3, d]
        start = S0.S[:, 0] @ key_vec
        if neg:
            sign = (-1.0) ** bits.sum(0)
            np.testing.assert_allclose(read, sign[:, None] * start, atol=1e-6)
        else:  # β = 1 for a bit 1 (and v = 0) erases the key's value: never the flipped sign
            assert np.all(np.asarray(read * start) >= -1e-7)


def test_s6_lti_impulse_response_closed_form(key):
    """Constant Δ, B, C (zero weights, biases set): S6 is an LTI filter, ``y_t = Σ_s K_{t-s} u_s``
    with the impulse response ``K_0 = C B̄ + D``, ``K_t = C Ā^t B̄`` (``Ā = exp(ΔA)``, ``B̄ = Δ B``;
    with negative eigenvalues ``Ā = 2 exp(ΔA) - 1``, whose sign alternates per step)."""
    Hc, N, Tn = 2, 3, 9
    for neg in (False, True):
        cell = s6(Hc, N, input_projection=False, negative_eigenvalues=neg)
        params = cell.init(key, Hc)
        params = dict(params, w_dt_proj=jnp.zeros_like(params["w_dt_proj"]), w_bc=jnp.zeros_like(params["w_bc"]),
                      b_dt=jnp.array([0.3, 1.5]), b_bc=jnp.array([1.0, -0.5, 0.7, 0.4, 1.2, -0.8]),
                      a_log=jnp.log(jnp.array([[1.0, 2.0, 3.0], [0.1, 0.5, 1.0]])), d=jnp.array([0.5, -1.0]))
        delta = np.log1p(np.exp(np.array([0.3, 1.5])))
        A = -np.exp(np.asarray(params["a_log"], np.float64))
        a_bar = np.exp(delta[:, None] * A)
        if neg:
            a_bar = 2 * a_bar - 1
        Bv, Cv = np.array([1.0, -0.5, 0.7]), np.array([0.4, 1.2, -0.8])
        K = np.stack([(a_bar ** t * delta[:, None] * Bv) @ Cv for t in range(Tn)])  # [Tn, Hc]
        K[0] += np.array([0.5, -1.0])
        impulse = jnp.zeros((Tn, Hc)).at[0].set(1.0)
        for parallel in (False, True):
            _, ys = rnnjax.unroll(cell, params, impulse, parallel=parallel)
            np.testing.assert_allclose(ys, K, atol=1e-5, rtol=1e-5)
        if neg:  # some Ā < 0: those modes flip sign every step
            assert (a_bar < 0).any()
        u = jax.random.normal(key, (Tn, Hc))
        _, ys = rnnjax.unroll(cell, params, u, parallel=True)
        conv = np.stack([sum(K[t - s] * np.asarray(u[s]) for s in range(t + 1)) for t in range(Tn)])
        np.testing.assert_allclose(ys, conv, atol=1e-5, rtol=1e-5)


def test_s6_default_init(key):
    """S4D-real ``A = -(1..N)`` per channel, ``D = 1``, ``Δ`` (at zero input) in ``[dt_min, dt_max]``."""
    cell = s6(32, 4, dt_min=0.01, dt_max=0.05)
    params = cell.init(key, 3)
    np.testing.assert_allclose(-np.exp(params["a_log"]), -np.broadcast_to(np.arange(1, 5), (32, 4)), rtol=1e-6)
    assert params["w_dt"].shape == (32, 2) and params["w_in"].shape == (3, 32)
    delta = jax.nn.softplus(params["b_dt"])
    assert 0.01 * (1 - 1e-5) <= float(delta.min()) and float(delta.max()) <= 0.05 * (1 + 1e-5)
    np.testing.assert_array_equal(params["d"], 1.0)


def _eigenvalues(cell, params, xs):
    return cell.linear.coefficients(params, xs).a


def test_negative_eigenvalues_range_and_parity(key):
    """The measured transition range is [-1, 1] with the option ([0, 1] without) for minGRU,
    RG-LRU, S6 and the mLSTM's forget gate; and a 1-unit minGRU tracks parity with it: from
    ``h_0 = 1``, ``sign(h_T) = (-1)^(number of ones)``, which [0, 1] factors cannot do."""
    xs = jnp.array([[-1.0], [1.0]]) * 60.0
    for neg in (False, True):
        lo, hi = (-1.0, 1.0) if neg else (0.0, 1.0)
        cells = [(mingru(1, log_space=False, negative_eigenvalues=neg), {"w_x": jnp.array([[1.0, 0.0]]), "b": jnp.zeros(2)}),
                 (rglru(1, input_projection=False, negative_eigenvalues=neg, c=1.0),
                  {"w_a": jnp.ones((1, 1)), "b_a": jnp.zeros(1), "w_x": jnp.zeros((1, 1)),
                   "b_x": jnp.zeros(1), "lam": jnp.array([-60.0])}),
                 (mlstm(2, num_heads=1, stabilize=False, negative_eigenvalues=neg), None)]
        for cell, params in cells:
            if params is None:
                params = cell.init(key, 1)
                params["w_gates"] = jnp.array([[0.0, 1.0]])
                params["b_gates"] = jnp.zeros(2)
            a = np.asarray(_eigenvalues(cell, params, xs))
            np.testing.assert_allclose([a.min(), a.max()], [lo, hi], atol=1e-6)
        s = s6(1, 1, input_projection=False, negative_eigenvalues=neg)
        p = dict(s.init(key, 1), w_dt=jnp.ones((1, 1)), w_dt_proj=jnp.ones((1, 1)), b_dt=jnp.zeros(1))
        a = np.asarray(_eigenvalues(s, p, jnp.array([[-60.0], [60.0]])))  # Δ -> 0 and Δ -> 60
        np.testing.assert_allclose([a.min(), a.max()], [lo, hi], atol=1e-6)

    bits = np.array([[1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], np.float32).T[..., None]
    params = {"w_x": jnp.array([[40.0, 0.0]]), "b": jnp.array([-20.0, 0.0])}  # z ≈ bit, h̃ = 0
    for neg in (True, False):
        cell = mingru(1, log_space=False, negative_eigenvalues=neg)
        for parallel in (False, True):
            h, _ = rnnjax.unroll(cell, params, jnp.array(bits), jnp.ones((3, 1)), parallel=parallel)
            if neg:
                np.testing.assert_allclose(h[:, 0], (-1.0) ** bits.sum((0, 2)), atol=1e-5)
            else:
                assert np.all(np.asarray(h) >= 0)


def test_mlstm_negative_stabilised_equals_plain_and_parallel(key):
    """mLSTM with negative forget gates: the stabilised cell (log |f|) gives the plain cell's
    outputs; the plain cell's associative scan equals its sequential scan (values, gradients)."""
    stab = mlstm(H, num_heads=2, negative_eigenvalues=True)
    plain = mlstm(H, num_heads=2, stabilize=False, negative_eigenvalues=True)
    params = _perturbed(stab, key)
    params["b_gates"] = params["b_gates"].at[2:].set(jnp.array([-2.0, 1.0]))  # f of both signs
    xs = jax.random.normal(jax.random.fold_in(key, 2), (T, B, D))
    _, ys_s = rnnjax.unroll(stab, params, xs)
    _, ys_p = rnnjax.unroll(plain, params, xs, parallel=False)
    np.testing.assert_allclose(ys_s, ys_p, atol=1e-5, rtol=1e-5)
    f = np.tanh(0.5 * (np.asarray(xs) @ np.asarray(params["w_gates"][:, 2:]) + np.asarray(params["b_gates"][2:])))
    assert f.min() < -0.1 and f.max() > 0.1


def test_defaults_unchanged_bitwise(key):
    """``negative_eigenvalues=False`` (the default) computes the formulas from before the option,
    bit for bit: minGRU's and RG-LRU's step and coefficients, mLSTM's linear coefficients."""
    xs = jax.random.normal(key, (3, 2, H))
    cell = mingru(H)
    p = _perturbed(cell, key, H)
    k0, c0 = jnp.split(xs[0] @ p["w_x"] + p["b"].reshape(1, -1), 2, axis=-1)
    z0 = jax.nn.sigmoid(k0)
    h0 = jnp.ones((2, H))
    np.testing.assert_array_equal(cell.apply(p, h0, xs[0])[0], (1.0 - z0) * h0 + z0 * g(c0))
    k, _ = jnp.split(xs @ p["w_x"] + p["b"].reshape(1, 1, -1), 2, axis=-1)
    rec = cell.linear.coefficients(p, xs)
    np.testing.assert_array_equal(rec.log_a, -jax.nn.softplus(k))
    cell = rglru(H, input_projection=False)
    p = _perturbed(cell, key, H)
    r = jax.nn.sigmoid(xs @ p["w_a"] + p["b_a"].reshape(1, 1, -1))
    log_a = -8.0 * r * jax.nn.softplus(-p["lam"]).reshape(1, 1, -1)
    np.testing.assert_array_equal(cell.linear.coefficients(p, xs).a, jnp.exp(log_a))
    cell = mlstm(H, num_heads=2, stabilize=False)
    p = _perturbed(cell, key, H)
    ft = (xs @ p["w_gates"] + p["b_gates"].reshape(1, 1, -1))[..., 2:]
    a = cell.linear.coefficients(p, xs).a
    np.testing.assert_array_equal(a[..., :9], jnp.repeat(jnp.exp(jax.nn.log_sigmoid(ft[..., :1])), 9, axis=-1))


def test_bad_arguments():
    with pytest.raises(TypeError, match="negative_eigenvalues"):
        s6(4, negative_eigenvalues="yes")
    with pytest.raises(TypeError, match="negative_eigenvalues"):
        mingru(4, negative_eigenvalues=1)
    with pytest.raises(ValueError, match="forget_gate='sigmoid'"):
        mlstm(4, num_heads=2, forget_gate="exp", negative_eigenvalues=True)
    with pytest.raises(ValueError, match="chunk_size"):
        deltanet(4, chunk_size=0)
    with pytest.raises(ValueError, match="num_heads must divide"):
        gated_deltanet(6, num_heads=4)
    with pytest.raises(ValueError, match="dt_min <= dt_max"):
        s6(4, dt_min=0.1, dt_max=0.01)
    with pytest.raises(ValueError, match="input_size == hidden_size"):
        s6(4, input_projection=False).init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match="beta must have shape"):
        delta_chunkwise(jnp.zeros((3, 2)), jnp.zeros((3, 2)), jnp.zeros((3, 2)), jnp.zeros((2,)))


def test_chunkwise_delta_rule_calls_no_lapack():
    """The chunkwise path solves its triangular systems in plain XLA ops: a batched LAPACK solve
    deadlocks XLA's two-thread CPU pool when two run at once (a vmapped sweep hung so). Checked on
    the compiled training step of a vmapped Gated DeltaNet, values against the plain scan."""
    from rnnjax.cells.delta import _unit_lower_solve

    cell = gated_deltanet(8, num_heads=2, negative_eigenvalues=True)  # the default chunkwise path
    xs = jax.random.normal(jax.random.key(1), (20, 3, 4))
    params = jax.vmap(lambda k: cell.init(k, 4))(jax.random.split(jax.random.key(0), 2))
    step = jax.jit(jax.vmap(jax.grad(lambda p: jnp.sum(rnnjax.unroll(cell, p, xs)[1] ** 2))))
    hlo = step.lower(params).compile().as_text()
    targets = re.findall(r'custom_call_target="([^"]*)"', hlo)
    assert not [t for t in targets if "lapack" in t or "trsm" in t], targets
    # the solve itself: (I + L) U = rhs with L strictly lower, against numpy
    L = np.tril(np.asarray(jax.random.normal(jax.random.key(2), (3, 6, 6))), -1)
    rhs = np.asarray(jax.random.normal(jax.random.key(3), (3, 6, 5)))
    want = np.linalg.solve(np.eye(6) + L, rhs)
    upper = L + np.triu(np.ones((6, 6)))  # the diagonal and upper triangle are not read
    np.testing.assert_allclose(_unit_lower_solve(jnp.asarray(upper), jnp.asarray(rhs)), want, rtol=1e-4, atol=1e-5)
