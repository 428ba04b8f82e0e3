"""Argument checks shared by the task generators (private)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def check_key(key: Any, name: str = "key") -> jax.Array:
    if not isinstance(key, jax.Array):
        raise TypeError(f"{name} must be a jax PRNG key (jax.random.key or PRNGKey), got "
                        f"{type(key).__name__}")
    return key


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """A Python/NumPy int ``>= minimum``, else a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)
