"""``unroll``: run a cell over a sequence with ``jax.lax.scan``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.types import Array, Carry, Cell, Params


def _check_xs(xs: Any, time_major: bool) -> tuple[int, tuple[int, ...]]:
    if not isinstance(xs, (jax.Array, np.ndarray)):
        raise TypeError(f"xs must be a jax or numpy array of shape [T, ..., D] (time-major) or "
                        f"[..., T, D], got {type(xs).__name__}")
    if xs.ndim < 2:
        raise ValueError(f"xs must have rank >= 2 ([T, D] or [T, B, D] time-major, [B, T, D] "
                         f"batch-major), got shape {xs.shape}")
    if time_major:
        return xs.shape[0], tuple(xs.shape[1:-1])
    return xs.shape[-2], tuple(xs.shape[:-2])


def _check_lengths(lengths: Any, T: int, batch_shape: tuple[int, ...]) -> Array:
    if not isinstance(lengths, (jax.Array, np.ndarray, list, tuple)):
        raise TypeError(f"lengths must be an int array of shape {batch_shape}, got "
                        f"{type(lengths).__name__}")
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must have an integer dtype, got {lengths.dtype}")
    if lengths.shape != batch_shape:
        raise ValueError(f"lengths must have shape {batch_shape} (one length per sequence), got "
                         f"{lengths.shape}")
    if not isinstance(lengths, jax.core.Tracer):
        lo, hi = (int(np.min(lengths)), int(np.max(lengths))) if lengths.size else (0, 0)
        if lo < 0 or hi > T:
            raise ValueError(f"lengths must lie in [0, T={T}], got values in [{lo}, {hi}]")
    return lengths


def _check_carry(carry: Carry, batch_shape: tuple[int, ...]) -> None:
    for leaf in jax.tree_util.tree_leaves(carry):
        if not hasattr(leaf, "shape"):
            raise TypeError(f"carry leaves must be arrays, got {type(leaf).__name__}")
        if tuple(leaf.shape[: len(batch_shape)]) != batch_shape or leaf.ndim <= len(batch_shape):
            raise ValueError(f"carry has a leaf of shape {leaf.shape} but xs has batch shape "
                             f"{batch_shape}; make it with cell.initial_carry(params, {batch_shape})")


def _select(mask: Array, new: Carry, old: Carry) -> Carry:
    """``new`` where ``mask`` (shape = batch shape), else ``old``, leaf by leaf."""

    def pick(n, o):
        m = mask.reshape(mask.shape + (1,) * (n.ndim - mask.ndim))
        return jnp.where(m, n, o)

    return jax.tree_util.tree_map(pick, new, old)


def unroll(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Carry | None = None,
    *,
    time_major: bool = True,
    reverse: bool = False,
    lengths: Array | None = None,
    unroll: int | bool = 1,
    remat: bool = False,
) -> tuple[Carry, Array]:
    """Run ``cell`` over the time axis of ``xs`` with ``jax.lax.scan``.

    ``carry_t, y_t = cell.apply(params, carry_{t-1}, x_t)`` for every step; ``ys[t]`` is the output
    produced on consuming ``xs[t]`` (also with ``reverse=True``).

    Args:
      cell: a :class:`rnnjax.Cell`.
      params: the cell's params.
      xs: inputs ``[T, ..., D]`` when ``time_major`` (e.g. ``[T, B, D]`` or ``[T, D]``), else
        ``[..., T, D]`` (e.g. ``[B, T, D]``).
      carry: initial carry with leading batch shape ``...``; ``cell.initial_carry`` (zeros) if None.
      time_major: layout of ``xs`` and of the returned ``ys``.
      reverse: run from the last step to the first. With ``lengths``, each sequence is reversed
        within its valid part: the cell consumes ``x[len-1], ..., x[0]``.
      lengths: int array of the batch shape, each in ``[0, T]``. Steps ``t >= lengths`` leave the
        carry unchanged and output zeros, so the final carry is each sequence's carry at its last
        valid step.
      unroll: passed to ``lax.scan`` (steps unrolled per loop iteration).
      remat: wrap the step in ``jax.checkpoint`` (recompute activations in the backward pass).

    Returns:
      ``(final_carry, ys)`` with ``ys`` of shape ``[T, ..., O]`` (time-major) or ``[..., T, O]``.
      For ``T = 0`` the carry is returned unchanged with an empty ``ys``.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be an rnnjax.Cell, got {type(cell).__name__}")
    T, batch_shape = _check_xs(xs, time_major)
    if not time_major:
        xs = jnp.moveaxis(xs, -2, 0)
    if carry is None:
        carry = cell.initial_carry(params, batch_shape)
    else:
        _check_carry(carry, batch_shape)
    if lengths is not None:
        lengths = _check_lengths(lengths, T, batch_shape)

    def step(c, inp):
        if lengths is None:
            return cell.apply(params, c, inp)
        t, x = inp
        new_c, y = cell.apply(params, c, x)
        valid = t < lengths
        y = jnp.where(valid.reshape(valid.shape + (1,) * (y.ndim - valid.ndim)), y, jnp.zeros_like(y))
        return _select(valid, new_c, c), y

    if remat:
        step = jax.checkpoint(step)
    scan_xs = xs if lengths is None else (jnp.arange(T), xs)
    carry, ys = jax.lax.scan(step, carry, scan_xs, reverse=reverse, unroll=unroll)
    if not time_major:
        ys = jnp.moveaxis(ys, 0, -2)
    return carry, ys
