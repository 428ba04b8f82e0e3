"""Core types: the cell contract shared by every recurrent cell in rnnjax.

A cell is a :class:`Cell`, a ``NamedTuple`` of three pure functions, in the style of
``optax.GradientTransformation``::

    params = cell.init(key, input_size)              # a dict of arrays
    carry = cell.initial_carry(params, batch_shape)  # zeros for a batch shape, e.g. (B,) or ()
    carry, y = cell.apply(params, carry, x)          # one time step; x is [D] or [..., D]

Nothing is hidden in objects: ``jax.grad``, ``jax.jit``, ``jax.vmap``, ``jax.checkpoint`` and
sharding compose with every piece.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree (usually a dict) of arrays
Carry = Any  # a pytree of arrays with leading batch dims


class InitFn(Protocol):
    def __call__(self, key: PRNGKey, input_size: int) -> Params: ...


class InitialCarryFn(Protocol):
    def __call__(self, params: Params, batch_shape: tuple[int, ...]) -> Carry: ...


class ApplyFn(Protocol):
    def __call__(self, params: Params, carry: Carry, x: Array) -> tuple[Carry, Array]: ...


class Cell(NamedTuple):
    """A recurrent cell as three pure functions.

    Attributes:
      init: ``init(key, input_size) -> params``; params are a dict of arrays with documented names.
      initial_carry: ``initial_carry(params, batch_shape) -> carry``; zeros with leading
        ``batch_shape`` (``()`` for a single sequence).
      apply: ``apply(params, carry, x) -> (carry, y)``; one step, carry first (the ``lax.scan``
        order). ``x`` has shape ``[D]`` or ``[..., D]`` whose leading dims match the carry's.
    """

    init: InitFn
    initial_carry: InitialCarryFn
    apply: ApplyFn


class LSTMState(NamedTuple):
    """Carry of an LSTM: hidden state ``h`` and cell state ``c``, each ``[..., H]``."""

    h: Array
    c: Array


class JordanState(NamedTuple):
    """Carry of a Jordan (output-feedback) cell: hidden ``h [..., H]`` and last output ``y [..., O]``."""

    h: Array
    y: Array


Initializer = Callable[[PRNGKey, tuple[int, ...], Any], Array]
