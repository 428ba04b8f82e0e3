"""The native C++ LSTM / GRU sequence kernels (rnnjax/_native, XLA FFI) against the plain scan.

References: `loop_unroll` (a Python loop over ``cell.apply``) and ``unroll`` of the same cell with
its fused path removed (``cell._replace(sequence=None)``: a ``lax.scan`` over ``apply`` with the
lengths / reverse / resets / return_carries rules), in values and gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loop_unroll, tree_allclose

import rnnjax
from rnnjax import _native

T, B, D, H = 7, 3, 4, 5

CELLS = {
    "lstm": lambda: rnnjax.lstm(H, bias_init=rnnjax.initializers.normal(0.3)),
    "gru_before": lambda: rnnjax.gru(H, bias_init=rnnjax.initializers.normal(0.3)),
    "gru_after": lambda: rnnjax.gru(H, reset="after", bias_init=rnnjax.initializers.normal(0.3)),
}


def _data(cell, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = cell.init(k[0], D)
    xs = jax.random.normal(k[1], (T, B, D))
    c0 = jax.tree_util.tree_map(lambda a: 0.5 * jax.random.normal(k[2], a.shape),
                                cell.initial_carry(params, (B,)))
    return params, xs, c0


def _loss(cell, backend, **kw):
    """Scalar loss of the outputs and the (final or every) carry, by ``unroll``."""

    def f(params, xs, c0):
        carry, ys = rnnjax.unroll(cell, params, xs, c0, backend=backend, **kw)
        w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype).reshape(ys.shape))
        return jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree_util.tree_leaves(carry))

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))


def test_native_kernel_is_built_here():
    # a broken build (no compiler, headers, BLAS) must show in CI, not only fall back silently
    assert _native.available(), _native.reason()
    assert _native.num_threads() >= 1


@pytest.mark.parametrize("name", list(CELLS))
def test_native_equals_loop(name):
    """Outputs, final carry and the gradients of params, inputs and initial carry."""
    cell = CELLS[name]()
    params, xs, c0 = _data(cell)
    xs = xs[:4]  # a short loop: the reference is unrolled in Python

    def scalar(run):
        def f(p, x, c):
            carry, ys = run(p, x, c)
            loss = jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c ** 2) for c in jax.tree_util.tree_leaves(carry))
            return loss, (carry, ys)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

    got = scalar(lambda p, x, c: rnnjax.unroll(cell, p, x, c, backend="native"))(params, xs, c0)
    want = scalar(lambda p, x, c: loop_unroll(cell, p, x, c))(params, xs, c0)
    tree_allclose(got, want)


@pytest.mark.parametrize("name, reverse", [("lstm", True), ("gru_before", False), ("gru_after", True)])
def test_native_options_equal_scan(name, reverse):
    """lengths + resets + return_carries (+ reverse): values and grads of params, xs, carry."""
    cell = CELLS[name]()
    params, xs, c0 = _data(cell, seed=1)
    lengths = jnp.array([T, 4, 1])
    resets = jnp.zeros((T, B), bool).at[2, 0].set(True).at[5, 0].set(True).at[2, 1].set(True)
    kw = dict(lengths=lengths, resets=resets, reverse=reverse, return_carries=True)
    f = _loss(cell, "native", **kw)
    v_nat, g_nat = f(params, xs, c0)
    v_ref, g_ref = _loss(cell._replace(sequence=None), "auto", **kw)(params, xs, c0)
    tree_allclose((v_nat, g_nat), (v_ref, g_ref))
    # the backward kernel's weight gradients a chunk of steps at a time: 2 steps per chunk (4 rows
    # of B = 3), so 4 chunks, the last one short (the first one with reverse)
    mod = _native._load()["module"]
    try:
        assert mod.set_chunk_rows(4) == 4
        tree_allclose(f(params, xs, c0), (v_ref, g_ref))
    finally:
        mod.set_chunk_rows(0)
    # the padded inputs get no gradient
    assert np.all(np.asarray(g_nat[1])[4:, 1] == 0) and np.all(np.asarray(g_nat[1])[1:, 2] == 0)


@pytest.mark.parametrize("name", list(CELLS))
def test_native_code_paths_equal_scan(name):
    """Each code path of the kernels equals the scan (lengths + resets, values and grads): the
    scalar gate math with OpenBLAS (the fallback for CPUs without AVX2 + FMA), the AVX2 gate math
    with the packed micro-kernel GEMMs and with OpenBLAS, each with the backward's weight
    gradients in one chunk and a chunk per step (on a second thread or inline: bitwise equal).
    H = 5: every row is a masked tail of 5 of the 8 lanes."""
    mod = _native._load()["module"]
    cell = CELLS[name]()
    params, xs, c0 = _data(cell, seed=2)
    resets = jnp.zeros((T, B), bool).at[3, 2].set(True)
    kw = dict(lengths=jnp.array([T, 5, 6]), resets=resets)
    want = _loss(cell._replace(sequence=None), "auto", **kw)(params, xs, c0)
    f = _loss(cell, "native", **kw)
    avx2 = mod.isa() == "avx2+fma"
    try:
        for isa, gemm in [("scalar", "blas"), ("avx2+fma", "micro"), ("avx2+fma", "blas")]:
            assert mod.set_isa(isa) == (isa if avx2 else "scalar")
            mod.set_gemm(gemm)
            for rows in (0, 1):  # the weight gradients in one chunk; one step per chunk
                mod.set_chunk_rows(rows)
                tree_allclose(f(params, xs, c0), want)
        # the chunk GEMMs overlapped with the recurrence on a second thread (with two threads):
        # bitwise the same as inline
        mod.set_isa("avx2+fma")
        mod.set_gemm("auto")
        mod.set_num_threads(2)
        runs = []
        for pipe in (True, False):
            assert mod.set_pipe(pipe) == pipe
            runs.append(jax.tree_util.tree_leaves(f(params, xs, c0)))
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(*runs))
        tree_allclose(runs[0], jax.tree_util.tree_leaves(want))
    finally:
        mod.set_isa("avx2+fma")
        mod.set_gemm("auto")
        mod.set_chunk_rows(0)
        mod.set_pipe(True)
        mod.set_num_threads(_native.num_threads())
    with pytest.raises(ValueError, match="gemm must be"):
        mod.set_gemm("fast")


def test_native_vmap_over_params_and_auto_selection():
    """vmap over stacked params (as sweeps do): each member equals its own run (the unbatched
    kernel, itself checked against the loop above)."""
    cell = CELLS["lstm"]()
    params, xs, c0 = _data(cell)
    stacked = jax.vmap(lambda k: cell.init(k, D))(jax.random.split(jax.random.PRNGKey(3), 2))
    f_nat = _loss(cell, "native", reverse=True)
    got = jax.jit(jax.vmap(f_nat, in_axes=(0, None, None)))(stacked, xs, c0)
    for i in range(2):
        member = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
        tree_allclose(jax.tree_util.tree_map(lambda a, i=i: a[i], got), f_nat(member, xs, c0))
    assert not np.allclose(np.asarray(got[0][0]), np.asarray(got[0][1]))  # the members differ
    # "native" and "auto" (float32 on the CPU) run the kernel; "xla", "auto" with float64
    # params, and "auto" under remat=True (a scan of apply) do not
    def runs_kernel(p, backend, c=c0, x=xs, **kw):
        jaxpr = str(jax.make_jaxpr(lambda q: rnnjax.unroll(cell, q, x, c, backend=backend, **kw)[1])(p))
        return "rnnjax_lstm_fwd" in jaxpr

    assert runs_kernel(params, "native") and runs_kernel(params, "auto")
    assert not runs_kernel(params, "xla")
    assert not runs_kernel(params, "auto", remat=True)
    with jax.enable_x64(True):
        p64, c64, x64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), (params, c0, xs))
        assert not runs_kernel(p64, "auto", c64, x64)


def test_native_bitwise_deterministic():
    """Two runs give bitwise identical values and gradients, at a size whose per-step GEMM
    (32 x 256 x 1024) runs on all the cores."""
    cell = rnnjax.lstm(256)
    k = jax.random.split(jax.random.PRNGKey(4), 2)
    params = cell.init(k[0], 4)
    xs = jax.random.normal(k[1], (3, 32, 4))
    f = jax.jit(jax.value_and_grad(
        lambda p: jnp.sum(jnp.tanh(rnnjax.unroll(cell, p, xs, backend="native")[1]))))
    a, b = f(params), f(params)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_native_unroll_reduce_with_chunks():
    cell = CELLS["gru_before"]()
    params, xs, c0 = _data(cell)
    xs = xs[:5]

    def run(backend):
        def f(p):
            c, acc = rnnjax.unroll_reduce(cell, p, xs, lambda a, t, y: a + jnp.sum(jnp.sin(y)) * (t + 1),
                                          jnp.zeros(()), carry=c0, remat_chunk=2, backend=backend)
            return acc + jnp.sum(c)
        return jax.jit(jax.value_and_grad(f))(params)

    tree_allclose(run("native"), run("xla"))


def test_backend_errors():
    cell = CELLS["lstm"]()
    params, xs, c0 = _data(cell)
    for bad in ("cpu", "Native", None):
        with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'xla', 'native'\)"):
            rnnjax.unroll(cell, params, xs, backend=bad)
    with pytest.raises(ValueError, match="backend must be one of"):
        rnnjax.unroll_reduce(cell, params, xs, lambda a, t, y: a, 0.0, backend="gpu")
    # "native" where it cannot run names the reason
    with pytest.raises(ValueError, match="float32"):
        bf = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
        rnnjax.unroll(cell, bf, xs, backend="native")
    peep = rnnjax.lstm(H, peephole=True)
    with pytest.raises(ValueError, match="without peepholes"):
        rnnjax.unroll(peep, peep.init(jax.random.PRNGKey(0), D), xs, backend="native")
    relu = rnnjax.gru(H, candidate_activation=jax.nn.relu)
    with pytest.raises(ValueError, match="tanh candidate"):
        rnnjax.unroll(relu, relu.init(jax.random.PRNGKey(0), D), xs, backend="native")
    with pytest.raises(ValueError, match="remat=False"):
        rnnjax.unroll(cell, params, xs, remat=True, backend="native")
    with pytest.raises(ValueError, match="remat_chunk"):
        rnnjax.unroll_reduce(cell, params, xs, lambda a, t, y: a, 0.0, backend="native")
    # "auto" with bfloat16 params keeps the XLA path
    bf = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
    assert "rnnjax_lstm" not in str(jax.make_jaxpr(lambda p: rnnjax.unroll(cell, p, xs)[1])(bf))
