"""Shared checks and helpers for cell factories (private)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.types import Array


def check_size(name: str, value: Any) -> int:
    """A positive Python int, or a ValueError/TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_number(name: str, value: Any, *, positive: bool = False, lo: float | None = None,
                 hi: float | None = None) -> float:
    """A finite real number (Python or NumPy scalar, not a bool) as a float, within the bounds given.

    A TypeError names ``name`` when it is not a finite number, a ValueError when it is out of
    range (``positive``: ``> 0``; ``lo``/``hi``: inclusive bounds).
    """
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not math.isfinite(value)):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")
    return value


def check_batch_shape(batch_shape: Any) -> tuple[int, ...]:
    if isinstance(batch_shape, (int, np.integer)):
        batch_shape = (int(batch_shape),)
    try:
        shape = tuple(int(d) for d in batch_shape)
    except TypeError:
        raise TypeError(f"batch_shape must be a tuple of ints, got {batch_shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"batch_shape must have non-negative dims, got {shape}")
    return shape


def check_input(x: Any, input_size: int, name: str = "x") -> Array:
    """``x`` must be an array of shape ``[D]`` or ``[..., D]`` with ``D == input_size``."""
    if not isinstance(x, (jax.Array, np.ndarray)):
        raise TypeError(f"{name} must be a jax or numpy array of shape [..., {input_size}], "
                        f"got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have shape [..., {input_size}], got a scalar")
    if x.shape[-1] != input_size:
        raise ValueError(f"{name} has last dim {x.shape[-1]} but the params expect input size "
                         f"{input_size} (shape {x.shape})")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    return x


def check_carry_batch(carry_leaf: Array, x: Array, name: str = "carry") -> None:
    """The carry's leading dims must equal the input's leading dims (no silent broadcast)."""
    if carry_leaf.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"{name} has batch shape {carry_leaf.shape[:-1]} but x has batch shape "
                         f"{x.shape[:-1]}; make the carry with initial_carry(params, "
                         f"{x.shape[:-1]})")


def split_keys(key: Any, n: int) -> list[Array]:
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax PRNG key (jax.random.key or PRNGKey), got "
                        f"{type(key).__name__}")
    return list(jax.random.split(key, n))


def rows(v: Array, like: Array) -> Array:
    """Reshape a vector ``[H]`` to broadcast against ``like [..., H]`` without rank promotion."""
    return v.reshape((1,) * (like.ndim - 1) + v.shape)
