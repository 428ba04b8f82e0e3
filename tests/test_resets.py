"""unroll(..., resets=...): equal to running each segment separately, on every path; and the
learned initial carry (rnnjax.learned_initial_carry)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rnnjax
from helpers import tree_allclose
from rnnjax.cells import fused
from rnnjax.types import Cell

T, B, D = 7, 3, 2
# segment starts: seq 0 at 3; seq 1 at 1, 2 (a one-step segment) and 5; seq 2 at 0 (a no-op) and
# at 6, which lies in its padding when lengths are used (ignored there)
RESETS = np.zeros((T, B), bool)
RESETS[3, 0] = True
RESETS[[1, 2, 5], 1] = True
RESETS[[0, 6], 2] = True
LENGTHS = np.array([7, 4, 5])


def _plain(cell):
    """The same cell without its fused/parallel hooks: ``unroll`` scans ``apply``."""
    return Cell(cell.init, cell.initial_carry, cell.apply)


def _segments(b, n):
    starts = [0] + [t for t in range(1, n) if RESETS[t, b]]
    return list(zip(starts, starts[1:] + [n]))


def _separate_runs(cell, params, xs, c0, reverse, use_lengths):
    """Reference: each segment of each sequence run on its own from ``c0`` (Python loop over apply)."""
    ys_all, finals = [], []
    for b in range(B):
        n = int(LENGTHS[b]) if use_lengths else T
        c0b = jax.tree_util.tree_map(lambda a: a[b:b + 1], c0)
        ys_b, seg_finals = [], []
        for s, e in _segments(b, n):
            seg = xs[s:e, b:b + 1]
            seg = seg[::-1] if reverse else seg
            c, ys = c0b, []
            for t in range(e - s):
                c, y = cell.apply(params, c, seg[t])
                ys.append(y)
            ys = jnp.stack(ys)
            ys_b.append(ys[::-1] if reverse else ys)
            seg_finals.append(c)
        y = jnp.concatenate(ys_b)
        ys_all.append(jnp.concatenate([y, jnp.zeros((T - n,) + y.shape[1:], y.dtype)]))
        finals.append(seg_finals[0] if reverse else seg_finals[-1])  # the carry after the last step run
    carry = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *finals)
    return carry, jnp.concatenate(ys_all, axis=1)


def _loss(out):
    carry, ys = out
    w = jnp.cos(jnp.arange(ys.size, dtype=jnp.float32)).reshape(ys.shape)
    return jnp.sum(w * ys) + sum(jnp.sum(jnp.abs(c) ** 2) for c in jax.tree_util.tree_leaves(carry))


def _setup(cell, seed=0):
    params = cell.init(jax.random.key(seed), D)
    xs = jax.random.normal(jax.random.key(seed + 1), (T, B, D))
    c0 = cell.initial_carry(params, (B,))
    # a non-zero initial carry, so that a reset is visible
    c0 = jax.tree_util.tree_map(
        lambda a: a + (0.5 * jax.random.normal(jax.random.key(seed + 2), a.shape)).astype(a.dtype), c0)
    return params, xs, c0


# (id, cell factory, unroll options, reverse, lengths): every path of unroll, forwards and
# backwards, with and without lengths.
CASES = [
    ("lstm-fused", lambda: rnnjax.lstm(3), {}, False, False),
    ("lstm-fused-rev-len", lambda: rnnjax.lstm(3), {}, True, True),
    ("lstm-scan-rev", lambda: _plain(rnnjax.lstm(3)), {}, True, False),
    ("lstm-chunk-len", lambda: rnnjax.lstm(3), dict(remat_chunk=3), False, True),
    ("gru-fused-len", lambda: rnnjax.gru(3), {}, False, True),
    ("gru-after-fused-rev", lambda: rnnjax.gru(3, reset="after"), {}, True, False),
    ("elman-remat-rev-len", lambda: rnnjax.elman(3), dict(remat=True), True, True),
    ("elman-chunk-rev", lambda: rnnjax.elman(3), dict(remat_chunk=2), True, False),
    ("lru-parallel-len", lambda: rnnjax.lru(3, 2), dict(parallel=True), False, True),
    ("lru-parallel-rev-len", lambda: rnnjax.lru(3, 2), dict(parallel=True, remat=True), True, True),
    ("mingru-logspace-parallel-rev-len", lambda: rnnjax.mingru(3), dict(parallel=True), True, True),
    ("minlstm-logspace-parallel", lambda: rnnjax.minlstm(3), dict(parallel=True), False, False),
    ("stack-len", lambda: rnnjax.stack(rnnjax.lstm(3), rnnjax.elman(2)), {}, False, True),
]


@pytest.mark.parametrize("name,make,opts,reverse,use_lengths", CASES, ids=[c[0] for c in CASES])
def test_resets_equal_separate_runs(name, make, opts, reverse, use_lengths):
    cell = make()
    params, xs, c0 = _setup(cell)
    lengths = jnp.asarray(LENGTHS) if use_lengths else None

    def run(p, x, c):
        return rnnjax.unroll(cell, p, x, c, resets=jnp.asarray(RESETS), lengths=lengths,
                             reverse=reverse, **opts)

    def ref(p, x, c):
        return _separate_runs(cell, p, x, c, reverse, use_lengths)

    # one compiled program for the path under test; the reference runs eagerly (op by op: no
    # compilation of its long unrolled graph)
    out, grads = jax.jit(jax.value_and_grad(lambda *a: (_loss(run(*a)), run(*a)), argnums=(0, 1, 2),
                                            has_aux=True))(params, xs, c0)
    expected, expected_grads = jax.value_and_grad(lambda *a: (_loss(ref(*a)), ref(*a)),
                                                  argnums=(0, 1, 2), has_aux=True)(params, xs, c0)
    tree_allclose(out[1], expected[1], atol=2e-5, rtol=2e-5)
    tree_allclose(grads, expected_grads, atol=5e-5, rtol=5e-5)


def test_reset_restores_the_initial_carry_exactly():
    """A segment that starts at step t gives the same outputs as a fresh run on xs[t:]."""
    cell = rnnjax.gru(4)
    params, xs, c0 = _setup(cell)
    resets = jnp.zeros((T, B), bool).at[4].set(True)
    _, ys = rnnjax.unroll(cell, params, xs, c0, resets=resets)
    _, ys_tail = rnnjax.unroll(cell, params, xs[4:], c0)
    np.testing.assert_allclose(ys[4:], ys_tail, atol=1e-6)


def test_resets_batch_major_and_default_carry():
    cell = rnnjax.lstm(3)
    params, xs, _ = _setup(cell)
    c_t, ys_t = rnnjax.unroll(cell, params, xs, resets=jnp.asarray(RESETS))
    c_b, ys_b = rnnjax.unroll(cell, params, jnp.swapaxes(xs, 0, 1), resets=jnp.asarray(RESETS.T),
                              time_major=False)
    tree_allclose(c_t, c_b, atol=1e-6)
    np.testing.assert_allclose(jnp.swapaxes(ys_b, 0, 1), ys_t, atol=1e-6)
    zeros = cell.initial_carry(params, (B,))
    tree_allclose(rnnjax.unroll(cell, params, xs, zeros, resets=jnp.asarray(RESETS)), (c_t, ys_t))


def test_resets_errors_name_the_argument():
    cell = rnnjax.elman(3)
    params, xs, _ = _setup(cell)
    with pytest.raises(ValueError, match=r"resets must have shape \(7, 3\)"):
        rnnjax.unroll(cell, params, xs, resets=jnp.zeros((T, 2), bool))
    with pytest.raises(ValueError, match=r"resets must have shape \(3, 7\)"):
        rnnjax.unroll(cell, params, jnp.swapaxes(xs, 0, 1), resets=jnp.zeros((T, B), bool),
                      time_major=False)
    with pytest.raises(TypeError, match="resets must have dtype bool"):
        rnnjax.unroll(cell, params, xs, resets=jnp.zeros((T, B), jnp.int32))
    with pytest.raises(TypeError, match="resets must be a bool array"):
        rnnjax.unroll(cell, params, xs, resets=RESETS.tolist())


def test_fused_scans_with_resets_check_grads():
    """The custom VJPs with resets against numerical derivatives (float64)."""
    H, Tn, Bn = 3, 5, 2
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(0), 6)
        f64 = jnp.float64
        w_x = jax.random.normal(k[0], (D, 4 * H), f64) * 0.5
        w_h = jax.random.normal(k[1], (H, 4 * H), f64) * 0.5
        b = jax.random.normal(k[2], (4 * H,), f64) * 0.5
        h0, c0 = jax.random.normal(k[3], (2, Bn, H), f64)
        xs = jax.random.normal(k[4], (Tn, Bn, D), f64)
        hr, cr = jax.random.normal(k[5], (2, Bn, H), f64)
        mask = jnp.array([[1, 1], [1, 1], [1, 1], [1, 0], [1, 0]], bool)
        resets = jnp.array([[0, 0], [0, 1], [1, 0], [0, 0], [1, 0]], bool)

        for reverse, project in itertools.product((False, True), fused.PROJECTIONS[1:]):
            def lstm(w_x, w_h, b, h0, c0, xs, hr, cr):
                hT, cT, ys = fused.lstm_scan(reverse, 1, project, w_x, w_h, b, h0, c0, xs, mask,
                                             resets, hr, cr)
                return jnp.sum(jnp.sin(ys)) + jnp.sum(hT * cT)

            check_grads(jax.jit(lstm), (w_x, w_h, b, h0, c0, xs, hr, cr), order=1, modes=("rev",),
                        atol=1e-5, rtol=1e-5)

            for reset_after in (False, True):
                def gru(w_x, w_h, b, h0, xs, hr):
                    hT, ys = fused.gru_scan(reverse, reset_after, 1, project, w_x, w_h[:, :3 * H],
                                            b[:3 * H], b[3 * H:], h0, xs, mask, resets, hr)
                    return jnp.sum(jnp.sin(ys)) + jnp.sum(hT ** 2)

                check_grads(jax.jit(gru), (w_x[:, :3 * H], w_h, b, h0, xs, hr), order=1,
                            modes=("rev",), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------- learned initial carry

def _learned(cell, seed=3):
    lcell = rnnjax.learned_initial_carry(cell)
    params = lcell.init(jax.random.key(0), D)
    # a trained (non-zero) carry0
    params["carry0"] = jax.tree_util.tree_map(
        lambda a: a + (0.7 * jax.random.normal(jax.random.key(seed), a.shape)).astype(a.dtype),
        params["carry0"])
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    return lcell, params, xs


def _broadcast(carry0):
    return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (B,) + a.shape), carry0)


def test_learned_initial_carry_equals_feeding_it_and_gets_gradients():
    cell = rnnjax.lstm(3)
    lcell, params, xs = _learned(cell)
    assert set(params) == {"cell", "carry0"}
    assert isinstance(params["carry0"], rnnjax.LSTMState) and params["carry0"].h.shape == (3,)
    assert lcell.sequence is not None  # the fused path is kept

    def loss(p):
        return _loss(rnnjax.unroll(lcell, p, xs, lengths=jnp.asarray(LENGTHS)))

    def loss_explicit(p_cell, c0):
        return _loss(rnnjax.unroll(cell, p_cell, xs, c0, lengths=jnp.asarray(LENGTHS)))

    tree_allclose(rnnjax.unroll(lcell, params, xs),
                  rnnjax.unroll(cell, params["cell"], xs, _broadcast(params["carry0"])), atol=1e-6)
    g = jax.grad(loss)(params)
    g_cell, g_c0 = jax.grad(loss_explicit, argnums=(0, 1))(params["cell"], _broadcast(params["carry0"]))
    tree_allclose(g["cell"], g_cell, atol=1e-5)
    # carry0 is shared by the batch: its gradient is the sum over the sequences'
    tree_allclose(g["carry0"], jax.tree_util.tree_map(lambda a: a.sum(0), g_c0), atol=1e-5)
    assert all(float(jnp.abs(leaf).sum()) > 1e-3 for leaf in jax.tree_util.tree_leaves(g["carry0"]))


def test_learned_initial_carry_keeps_parallel_and_prepare_and_resets_restore_it():
    lcell, params, xs = _learned(rnnjax.mingru(3))
    assert lcell.linear is not None
    c0 = _broadcast(params["carry0"])
    seq = rnnjax.unroll(lcell, params, xs, resets=jnp.asarray(RESETS), parallel=False)
    par = rnnjax.unroll(lcell, params, xs, resets=jnp.asarray(RESETS), parallel=True)
    tree_allclose(par, seq, atol=2e-5)
    tree_allclose(seq, _separate_runs(rnnjax.mingru(3), params["cell"], xs, c0, False, False),
                  atol=2e-5)

    ocell, oparams, oxs = _learned(rnnjax.orthogonal(4))
    assert ocell.prepare is not None
    tree_allclose(rnnjax.unroll(ocell, oparams, oxs),
                  rnnjax.unroll(rnnjax.orthogonal(4), oparams["cell"], oxs,
                                _broadcast(oparams["carry0"])), atol=1e-5)


def test_learned_initial_carry_rejects_a_non_cell():
    with pytest.raises(TypeError, match="cell must be an rnnjax.Cell"):
        rnnjax.learned_initial_carry(lambda *a: None)
