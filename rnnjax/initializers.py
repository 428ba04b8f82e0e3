"""Weight initialisers for recurrent cells.

Every initialiser follows the ``jax.nn.initializers`` signature ``init(key, shape, dtype) -> Array``
so that cells take them as arguments and users can pass any ``jax.nn.initializers`` function too.
Shapes are ``[fan_in, fan_out]`` (rnnjax multiplies ``x @ W``).

- [`orthogonal`][rnnjax.initializers.orthogonal] (Saxe et al. 2014),
  [`identity`][rnnjax.initializers.identity] (Le et al. 2015),
- [`glorot_uniform`][rnnjax.initializers.glorot_uniform] /
  [`glorot_normal`][rnnjax.initializers.glorot_normal] (Glorot & Bengio 2010),
- [`lecun_uniform`][rnnjax.initializers.lecun_uniform] / [`lecun_normal`][rnnjax.initializers.lecun_normal]
  (LeCun et al. 1998),
- [`uniform`][rnnjax.initializers.uniform] and [`pytorch_uniform`][rnnjax.initializers.pytorch_uniform]
  (``U(-1/sqrt(H), 1/sqrt(H))``, PyTorch's RNN default),
- [`chrono`][rnnjax.initializers.chrono] bias (Tallec & Ollivier 2018),
- [`spectral_radius`][rnnjax.initializers.spectral_radius] rescales any square initialiser to a given spectral
  radius.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._checks import check_callable, check_int, check_number
from rnnjax._lapack import one_matrix_at_a_time
from rnnjax.types import Array, Initializer, PRNGKey


def _check_positive(name: str, value: Any) -> float:
    """A finite number ``> 0`` (Python or NumPy scalar) as a float, else an error naming ``name``."""
    return check_number(name, value, positive=True)


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)``; at least 1 each (an empty array has no entries to scale)."""
    if len(shape) < 2:
        raise ValueError(f"shape must have at least 2 dims [fan_in, fan_out], got {shape}")
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return max(shape[-2] * receptive, 1), max(shape[-1] * receptive, 1)


def zeros(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """All zeros (biases)."""
    del key
    return jnp.zeros(shape, dtype)


def constant(value: float) -> Initializer:
    """An initialiser that fills with ``value`` (e.g. a forget-gate bias); ``value`` a finite number."""
    value = check_number("value", value)

    def init(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        del key
        return jnp.full(shape, value, dtype)

    return init


def uniform(scale: float) -> Initializer:
    """``U(-scale, scale)``."""
    scale = _check_positive("scale", scale)

    def init(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def pytorch_uniform(hidden_size: int) -> Initializer:
    """PyTorch's RNN/LSTM/GRU default: every weight and bias ``U(-1/sqrt(H), 1/sqrt(H))``."""
    hidden_size = check_int("hidden_size", hidden_size, minimum=1)
    return uniform(1.0 / math.sqrt(hidden_size))


def glorot_uniform(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """Glorot/Xavier uniform: ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``."""
    fan_in, fan_out = _fans(shape)
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -a, a)


def glorot_normal(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """Glorot/Xavier normal: ``N(0, 2 / (fan_in + fan_out))``."""
    fan_in, fan_out = _fans(shape)
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / (fan_in + fan_out))


def lecun_uniform(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """LeCun uniform: ``U(-a, a)``, ``a = sqrt(3 / fan_in)`` (variance ``1/fan_in``)."""
    fan_in, _ = _fans(shape)
    a = math.sqrt(3.0 / fan_in)
    return jax.random.uniform(key, shape, dtype, -a, a)


def lecun_normal(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """LeCun normal: ``N(0, 1/fan_in)``."""
    fan_in, _ = _fans(shape)
    return jax.random.normal(key, shape, dtype) * math.sqrt(1.0 / fan_in)


# ``jnp.linalg.qr`` one matrix at a time under ``vmap``: batched LAPACK QRs running at once (the
# independent initialisers of a vmapped ``init``, e.g. ``jax.jit(jax.vmap(cell.init))`` over 16
# keys) hang a 2-core CPU (see rnnjax._lapack); the init is cheap, so nothing measurable is lost
_qr = one_matrix_at_a_time(lambda a: tuple(jnp.linalg.qr(a)))


def orthogonal(scale: float = 1.0) -> Initializer:
    """A (semi-)orthogonal matrix times ``scale`` (Saxe et al. 2014), via QR with sign fix."""
    scale = _check_positive("scale", scale)

    def init(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        if len(shape) != 2:
            raise ValueError(f"orthogonal needs a 2-D shape, got {shape}")
        n_rows, n_cols = shape
        big, small = max(n_rows, n_cols), min(n_rows, n_cols)
        a = jax.random.normal(key, (big, small), jnp.float32)
        q, r = _qr(a)
        q = q * jnp.sign(jnp.diagonal(r))[None, :]  # uniform (Haar) distribution
        if n_rows < n_cols:
            q = q.T
        return (scale * q).astype(dtype)

    return init


def identity(scale: float = 1.0) -> Initializer:
    """``scale * I`` (IRNN, Le et al. 2015). Non-square shapes get ones on the main diagonal."""
    scale = _check_positive("scale", scale)

    def init(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        del key
        if len(shape) != 2:
            raise ValueError(f"identity needs a 2-D shape, got {shape}")
        return scale * jnp.eye(shape[0], shape[1], dtype=dtype)

    return init


def normal(stddev: float) -> Initializer:
    """``N(0, stddev^2)``."""
    stddev = _check_positive("stddev", stddev)

    def init(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return stddev * jax.random.normal(key, shape, dtype)

    return init


def chrono(max_timescale: float) -> Initializer:
    """Chrono bias for the forget gate (Tallec & Ollivier 2018).

    ``b_f ~ log(U[1, T_max - 1])``; the input-gate bias is then ``-b_f`` (the LSTM factory does
    that when given ``chrono=T``). Characteristic forgetting times span ``[1, T_max]``.
    """
    max_timescale = check_number("max_timescale", max_timescale)
    if max_timescale <= 2:
        raise ValueError(f"max_timescale must be a number > 2, got {max_timescale!r}")

    def init(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        u = jax.random.uniform(key, shape, jnp.float32, 1.0, max_timescale - 1.0)
        return jnp.log(u).astype(dtype)

    return init


def spectral_radius(radius: float, base: Initializer | None = None) -> Initializer:
    """Rescale a square matrix from ``base`` (default Glorot normal) to spectral radius ``radius``.

    The spectral radius is the largest eigenvalue magnitude; ``radius < 1`` makes a linear
    recurrence contract, ``> 1`` expand (Jaeger 2001; Pascanu et al. 2013).
    """
    radius = _check_positive("radius", radius)
    check_callable("base", base, "(key, shape, dtype) -> Array or None", allow_none=True)
    base_init: Initializer = glorot_normal if base is None else base

    def init(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"spectral_radius needs a square 2-D shape, got {shape}")
        w = base_init(key, shape, jnp.float32)
        return rescale_spectral_radius(w, radius).astype(dtype)

    return init


def rescale_spectral_radius(w: Array, radius: float) -> Array:
    """Return ``w`` scaled so that its largest eigenvalue magnitude equals ``radius``.

    Computed on the host with NumPy (eigenvalues of a non-symmetric matrix have no jittable
    gradient-friendly kernel on every backend); use it at initialisation time.
    """
    w_np = np.asarray(w, dtype=np.float64)
    if w_np.ndim != 2 or w_np.shape[0] != w_np.shape[1]:
        raise ValueError(f"w must be a square matrix, got shape {w_np.shape}")
    if not np.all(np.isfinite(w_np)):
        raise ValueError("w must be finite (it holds NaN or inf); its spectral radius is undefined")
    radius = _check_positive("radius", radius)
    rho = float(np.max(np.abs(np.linalg.eigvals(w_np))))
    if rho == 0.0:
        raise ValueError("w has spectral radius 0 and cannot be rescaled")
    return jnp.asarray(w_np * (radius / rho), dtype=jnp.asarray(w).dtype)


def blockwise(init: Initializer, n_blocks: int) -> Initializer:
    """Apply ``init`` to each of ``n_blocks`` column blocks of a fused ``[fan_in, n*H]`` matrix.

    Fused gate matrices (``[H, 4H]`` for an LSTM) are initialised gate by gate, so that e.g. an
    orthogonal recurrent init makes each gate's ``[H, H]`` block orthogonal.
    """
    check_callable("init", init, "(key, shape, dtype) -> Array")
    n_blocks = check_int("n_blocks", n_blocks, minimum=1)

    def fused(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        if len(shape) != 2 or shape[1] % n_blocks:
            raise ValueError(f"shape {shape} does not split into {n_blocks} column blocks")
        width = shape[1] // n_blocks
        keys = jax.random.split(key, n_blocks)
        return jnp.concatenate([init(k, (shape[0], width), dtype) for k in keys], axis=1)

    return fused
