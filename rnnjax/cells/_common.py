"""Shared checks and helpers for cell factories (private)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# the package's one definition of these checks (re-exported here for the cell modules)
from rnnjax._checks import check_callable, check_number
from rnnjax.types import Array

__all__ = ["check_activation", "check_batch_shape", "check_bool", "check_callable", "check_carry_batch",
           "check_float_dtype", "check_initializer", "check_input", "check_number", "check_size",
           "check_tuple_carry", "rows", "split_keys"]


def check_size(name: str, value: Any) -> int:
    """A positive Python/NumPy int (not a bool), or a TypeError/ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """A Python/NumPy bool, or a TypeError naming ``name`` (``peephole="yes"`` is not a bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_float_dtype(dtype: Any, name: str = "dtype") -> np.dtype:
    """A real floating dtype (float16, bfloat16, float32, float64) for parameters.

    Integer, bool and complex dtypes are refused (rnnjax params are real floats: complex cells
    such as ``lru`` keep real and imaginary parts in separate real arrays).
    """
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be a real floating dtype (e.g. jnp.float32, jnp.bfloat16), "
                        f"got {dtype!r}") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{name} must be a real floating dtype (e.g. jnp.float32, jnp.bfloat16), "
                        f"got {dt}")
    return dt


_HINT_STR = ("; pass the function itself (e.g. jnp.tanh or jax.nn.relu), not its name as a "
             "string")


def check_activation(name: str, value: Any) -> Callable:
    """A callable ``Array -> Array`` (an activation), or a TypeError naming ``name``."""
    if isinstance(value, str) and not callable(value):
        raise TypeError(f"{name} must be a callable Array -> Array, got the string {value!r}"
                        f"{_HINT_STR}")
    return check_callable(name, value, "Array -> Array (e.g. jnp.tanh, jax.nn.relu)")


def check_initializer(name: str, value: Any, *, allow_none: bool = False) -> Callable | None:
    """A callable ``(key, shape, dtype) -> Array`` (an initialiser), or a TypeError naming ``name``."""
    if isinstance(value, str):
        raise TypeError(f"{name} must be an initialiser (key, shape, dtype) -> Array such as "
                        f"rnnjax.initializers.glorot_uniform, got the string {value!r}")
    return check_callable(name, value, "(key, shape, dtype) -> Array (e.g. "
                          "rnnjax.initializers.glorot_uniform)", allow_none=allow_none)


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


def check_input(x: Any, input_size: int, name: str = "x") -> Array | np.ndarray:
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


def check_carry_batch(carry_leaf: Array, x: Array, name: str = "carry", *, size: int | None = None) -> None:
    """The carry's leading dims must equal the input's leading dims (no silent broadcast), and
    its last dim must be ``size`` (the cell's hidden size) when given."""
    if not hasattr(carry_leaf, "shape") or not hasattr(carry_leaf, "ndim"):
        raise TypeError(f"{name} must be an array [..., {size if size is not None else 'H'}], got "
                        f"{type(carry_leaf).__name__}; make it with initial_carry(params, batch_shape)")
    if size is not None and (carry_leaf.ndim < 1 or carry_leaf.shape[-1] != size):
        raise ValueError(f"{name} must have shape [..., {size}] (the cell's hidden size {size}), got "
                         f"shape {carry_leaf.shape}; make it with initial_carry(params, "
                         f"{x.shape[:-1]})")
    if carry_leaf.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"{name} has batch shape {carry_leaf.shape[:-1]} but x has batch shape "
                         f"{x.shape[:-1]}; make the carry with initial_carry(params, "
                         f"{x.shape[:-1]})")


def check_tuple_carry(carry: Any, fields: tuple[str, ...], what: str) -> tuple:
    """A carry that must be a tuple (NamedTuple) of ``len(fields)`` arrays, e.g. ``LSTMState(h, c)``."""
    if not isinstance(carry, tuple) or len(carry) != len(fields):
        raise TypeError(f"carry must be {what}({', '.join(fields)}) of {len(fields)} arrays, got "
                        f"{type(carry).__name__}; make it with initial_carry(params, batch_shape)")
    return carry


def split_keys(key: Any, n: int) -> list[Array]:
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax PRNG key (jax.random.key or PRNGKey), got "
                        f"{type(key).__name__}")
    return list(jax.random.split(key, n))


def rows(v: Array, like: Array) -> Array:
    """Reshape a vector ``[H]`` to broadcast against ``like [..., H]`` without rank promotion."""
    return v.reshape((1,) * (like.ndim - 1) + v.shape)
