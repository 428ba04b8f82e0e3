"""Argument checks shared by the whole package (one definition of each; private module).

Each check raises ``TypeError`` for a value of the wrong type and ``ValueError`` for one out of
range, with a message that names the argument and what was expected.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, Literal, overload

import jax
import numpy as np


@overload
def check_int(name: str, value: Any, *, minimum: int = 1, allow_none: Literal[False] = False) -> int: ...
@overload
def check_int(name: str, value: Any, *, minimum: int = 1, allow_none: bool) -> int | None: ...
def check_int(name: str, value: Any, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    """A Python/NumPy int ``>= minimum`` (as an int), or None when ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        expected = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_number(name: str, value: Any, *, positive: bool = False, lo: float | None = None,
                 hi: float | None = None) -> float:
    """A finite real number (Python or NumPy scalar, not a bool) as a float, within the bounds given
    (``positive``: ``> 0``; ``lo``/``hi``: inclusive)."""
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


def check_key(key: Any, name: str = "key") -> jax.Array:
    """A JAX PRNG key (typed ``jax.random.key`` or raw ``PRNGKey``)."""
    if not isinstance(key, jax.Array):
        raise TypeError(f"{name} must be a jax PRNG key (jax.random.key or PRNGKey), got "
                        f"{type(key).__name__}")
    return key


@overload
def check_callable(name: str, value: Any, signature: str, *,
                   allow_none: Literal[False] = False) -> Callable: ...
@overload
def check_callable(name: str, value: Any, signature: str, *, allow_none: bool) -> Callable | None: ...
def check_callable(name: str, value: Any, signature: str, *, allow_none: bool = False) -> Callable | None:
    """A callable (or None when ``allow_none``); ``signature`` describes the expected call."""
    if value is None and allow_none:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be a callable {signature}, got {type(value).__name__}")
    return value


def require(module: str, extra: str, feature: str) -> Any:
    """Import ``module`` (a package of an optional extra), or raise an ``ImportError`` that names
    ``feature`` and the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{feature} needs the package {module.split('.')[0]!r}: "
                          f"pip install 'rnnjax[{extra}]'") from e
