"""Associative scan of a block-diagonal linear recurrence (private; used by ``unroll``).

``carry_t = a_t @ carry_{t-1} + b_t`` with ``a_t [..., N, k, k]`` and ``b_t, carry_t [..., N, k]``:
``N`` independent ``k x k`` blocks (LinOSS: ``k = 2``, one oscillator per block). The pairs
``(a_t, b_t)`` compose associatively, ``(a_1, b_1) • (a_2, b_2) = (a_2 a_1, a_2 b_1 + b_2)``, so
``jax.lax.associative_scan`` runs the sequence in ``O(log T)`` depth (Blelloch 1990; the same
composition as the scans of S5, Smith, Warrington & Linderman 2023, and LinOSS, Rusch & Rus 2025).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax.types import Array, BlockLinearRecurrence


def _matmul(a: Array, b: Array) -> Array:
    """``a @ b`` over the last two axes, written elementwise (small ``k``: fuses, no dot calls)."""
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _matvec(a: Array, v: Array) -> Array:
    """``a @ v`` over the last axis of ``v``."""
    return jnp.sum(a * v[..., None, :], axis=-1)


def _combine(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return _matmul(a2, a1), _matvec(a2, b1) + b2


def block_carries(rec: BlockLinearRecurrence, carry: Array, valid: Array | None = None,
                  reset: Array | None = None) -> Array:
    """The carries after every step of a [`BlockLinearRecurrence`][rnnjax.types.BlockLinearRecurrence], ``[T,
    ..., N, k]``.

    Args:
      rec: ``a`` broadcastable to ``[T, ..., N, k, k]`` (e.g. ``[N, k, k]`` time-invariant) and
        ``b [T, ..., N, k]`` (real or complex).
      carry: the initial carry ``[..., N, k]``.
      valid: optional bool ``[T, ...]``; a step where it is False is inert (``a = I``, ``b = 0``:
        the carry passes through unchanged).
      reset: optional bool ``[T, ...]``; a step where it is True starts from ``carry`` instead of
        the previous carry (``a = 0``, ``b += a_t @ carry``).

    Returns:
      ``carries [T, ..., N, k]`` in the dtype of ``b`` combined with ``a`` and ``carry``.
    """
    b = rec.b
    if b.ndim < 3:
        raise ValueError(f"BlockLinearRecurrence.b must have shape [T, ..., N, k], got {b.shape}")
    k = b.shape[-1]
    a = jnp.broadcast_to(rec.a, b.shape + (k,))
    if carry.shape != b.shape[1:]:
        raise ValueError(f"the carry has shape {carry.shape} but the recurrence's b has per-step "
                         f"shape {b.shape[1:]} ([..., N, k])")
    dtype = jnp.result_type(b.dtype, carry.dtype)
    b = b.astype(dtype)

    def per_step(m: Array, like: Array) -> Array:  # [T, ...] -> broadcastable to like
        return m.reshape(m.shape + (1,) * (like.ndim - m.ndim))

    if reset is not None:
        r = per_step(reset, b)
        b = jnp.where(r, b + _matvec(a, carry[None].astype(dtype)), b)
        a = jnp.where(per_step(reset, a), jnp.zeros_like(a), a)
    if valid is not None:
        eye = jnp.broadcast_to(jnp.eye(k, dtype=a.dtype), a.shape)
        a = jnp.where(per_step(valid, a), a, eye)
        b = jnp.where(per_step(valid, b), b, jnp.zeros_like(b))
    b = b.at[0].add(_matvec(a[0], carry.astype(dtype)))  # fold the initial carry into step 0
    _, carries = jax.lax.associative_scan(_combine, (a, b), axis=0)
    return carries
