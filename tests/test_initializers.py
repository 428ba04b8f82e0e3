import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import initializers as inits

KEY = jax.random.key(0)


@pytest.mark.parametrize("shape", [(16, 16), (8, 24), (24, 8)])
def test_orthogonal(shape):
    w = np.asarray(inits.orthogonal(2.0)(KEY, shape))
    small = min(shape)
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-4)


_VMAPPED_INIT = """
import jax, numpy as np, rnnjax
cell = rnnjax.lstm(64)
keys = jax.random.split(jax.random.key(0), 16)
batched = jax.jit(jax.vmap(lambda k: cell.init(k, 2)))
for _ in range(10):
    out = jax.block_until_ready(batched(keys))
one = cell.init(keys[5], 2)
for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(one)):
    np.testing.assert_allclose(np.asarray(a)[5], np.asarray(b), rtol=1e-5, atol=1e-6)
print("ok")
"""


def test_orthogonal_under_vmap_does_not_hang():
    """Several batched LAPACK QRs at once used to deadlock XLA's CPU thread pool on 2 cores.

    Regression test (in a subprocess, so a hang fails the test instead of the suite): the
    vmapped init of an LSTM (4 orthogonal recurrent blocks) over 16 keys finishes and equals the
    unbatched init.
    """
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run([sys.executable, "-c", _VMAPPED_INIT], capture_output=True,
                              text=True, timeout=180, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        pytest.fail("jax.jit(jax.vmap(cell.init)) did not finish in 180 s (thread-pool deadlock)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


def test_identity_and_constant():
    np.testing.assert_array_equal(inits.identity(0.5)(KEY, (3, 3)), 0.5 * np.eye(3))
    np.testing.assert_array_equal(inits.constant(1.5)(KEY, (4,)), np.full(4, 1.5))


@pytest.mark.parametrize("fn,var", [
    (inits.glorot_uniform, 2.0 / (300 + 200)), (inits.glorot_normal, 2.0 / (300 + 200)),
    (inits.lecun_uniform, 1.0 / 300), (inits.lecun_normal, 1.0 / 300),
])
def test_variance_scaling(fn, var):
    w = np.asarray(fn(KEY, (300, 200)))
    assert abs(w.var() / var - 1) < 0.03
    assert abs(w.mean()) < 0.01 * np.sqrt(var) * 10


def test_glorot_uniform_bound():
    w = np.asarray(inits.glorot_uniform(KEY, (300, 200)))
    assert np.abs(w).max() <= np.sqrt(6 / 500)


def test_pytorch_uniform():
    w = np.asarray(inits.pytorch_uniform(64)(KEY, (200, 256)))
    assert np.abs(w).max() <= 1 / 8 and np.abs(w).max() > 0.99 / 8
    assert abs(w.var() - (1 / 8) ** 2 / 3) < 1e-4


def test_chrono_range():
    b = np.asarray(inits.chrono(100.0)(KEY, (10000,)))
    assert b.min() >= 0.0 and b.max() <= np.log(99) + 1e-6
    # log U[1, 99]: E[b] = (99 log 99 - 99 - (0 - 1)) / 98
    np.testing.assert_allclose(b.mean(), (99 * np.log(99) - 98) / 98, rtol=0.02)


@pytest.mark.parametrize("radius", [0.9, 1.0, 1.1])
def test_spectral_radius(radius):
    w = np.asarray(inits.spectral_radius(radius)(KEY, (32, 32)))
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(w)).max(), radius, rtol=1e-5)
    w2 = np.asarray(inits.spectral_radius(radius, inits.orthogonal())(KEY, (32, 32)))
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(w2)), radius, rtol=1e-4)  # all on the circle


def test_blockwise():
    w = np.asarray(inits.blockwise(inits.identity(), 3)(KEY, (4, 12)))
    np.testing.assert_array_equal(w, np.concatenate([np.eye(4)] * 3, axis=1))


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        inits.orthogonal(-1.0)
    with pytest.raises(ValueError, match="radius"):
        inits.spectral_radius(0.0)
    with pytest.raises(ValueError, match="square"):
        inits.spectral_radius(1.0)(KEY, (3, 4))
    with pytest.raises(ValueError, match="max_timescale"):
        inits.chrono(1.0)
    with pytest.raises(ValueError, match="hidden_size"):
        inits.pytorch_uniform(0)
    with pytest.raises(ValueError, match="column blocks"):
        inits.blockwise(inits.identity(), 3)(KEY, (4, 10))


def test_expm_of_the_orthogonal_cell_runs_unbatched_under_vmap():
    """expRNN's ``expm`` (an LU solve inside) vmapped over a sweep's stacked params: every LAPACK
    call of the compiled training step is unbatched (a batched one can deadlock a 2-core CPU, see
    rnnjax._lapack), and values and gradients equal jax.scipy's batched expm."""
    import re

    from jax.scipy.linalg import expm

    from rnnjax.cells.orthogonal import orthogonal_matrix

    A = jax.random.normal(KEY, (3, 6, 6))

    def grads(f):
        return jax.jit(jax.vmap(jax.value_and_grad(lambda a: jnp.sum(f(a) ** 3))))

    safe, plain = grads(orthogonal_matrix), grads(lambda a: expm(a - a.T))
    for x, y in zip(jax.tree_util.tree_leaves(safe(A)), jax.tree_util.tree_leaves(plain(A))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)

    def lapack_operands(f):
        hlo = f.lower(A).compile().as_text()
        return [line for line in hlo.splitlines() if 'custom_call_target="lapack' in line]

    assert lapack_operands(plain) and all("f32[3,6,6]" in line for line in lapack_operands(plain))
    calls = lapack_operands(safe)
    assert calls and not [line for line in calls if re.search(r"f32\[3,6,6\]", line)]
