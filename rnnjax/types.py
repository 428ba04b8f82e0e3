"""Core types: the cell contract shared by every recurrent cell in rnnjax.

A cell is a [`Cell`][rnnjax.types.Cell], a ``NamedTuple`` of three pure functions, in the style of
``optax.GradientTransformation``::

    params = cell.init(key, input_size)              # a dict of arrays
    carry = cell.initial_carry(params, batch_shape)  # zeros for a batch shape, e.g. (B,) or ()
    carry, y = cell.apply(params, carry, x)          # one time step; x is [D] or [..., D]

and three optional hooks that ``unroll`` uses when present: ``cell.linear`` (a
[`LinearForm`][rnnjax.types.LinearForm] for the associative-scan path), ``cell.prepare`` (per-sequence work on
params) and ``cell.sequence`` (a fused whole-sequence path, e.g. the LSTM's and GRU's).

Nothing is hidden in objects: ``jax.grad``, ``jax.jit``, ``jax.vmap``, ``jax.checkpoint`` and
sharding compose with every piece.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

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
    def __call__(self, params: Params, carry: Carry, x: Array, /) -> tuple[Carry, Array]: ...


class LinearRecurrence(NamedTuple):
    """Coefficients of ``carry_t = a_t ⊙ carry_{t-1} + b_t`` (elementwise) over a sequence.

    ``b`` has the carry's shape with a leading time axis, ``[T, ..., N]`` (real or complex); ``a``
    broadcasts to it (e.g. ``[N]`` for a time-invariant diagonal, as in the LRU).
    """

    a: Array
    b: Array


class LogLinearRecurrence(NamedTuple):
    """The same recurrence in log space: ``log_a = log a_t`` and ``log_b = log b_t`` (``a, b > 0``).

    ``unroll`` then scans ``log`` values with ``logaddexp`` (minGRU/minLSTM, Feng et al. 2024):
    no product of many ``a_t`` is formed, so nothing under- or overflows. The carry itself may
    have any sign (``carry_t = exp(Σ log a) ⊙ carry_0 + exp(scan)``). Shapes as in
    [`LinearRecurrence`][rnnjax.types.LinearRecurrence].
    """

    log_a: Array
    log_b: Array


class LinearForm(NamedTuple):
    """The parallel form of a cell whose carry update is linear in the carry.

    Attributes:
      coefficients: ``coefficients(params, xs) -> LinearRecurrence | LogLinearRecurrence`` for
        time-major inputs ``xs [T, ..., D]``; ``a_t``, ``b_t`` may depend on ``x_t`` and params
        only (``unroll`` reorders time steps for ``reverse`` with ``lengths``). The carry must be
        a single array ``[..., N]`` (``[..., N, k]`` for a
        [`BlockLinearRecurrence`][rnnjax.types.BlockLinearRecurrence]).
      readout: ``readout(params, carries, xs) -> ys``: the outputs ``[T, ..., O]`` from the
        carries after each step ``[T, ..., N]`` and the inputs ``[T, ..., D]``.
    """

    coefficients: Callable[[Params, Array], LinearRecurrence | LogLinearRecurrence]
    readout: Callable[[Params, Array, Array], Array]


class Cell(NamedTuple):
    """A recurrent cell as three pure functions.

    Attributes:
      init: ``init(key, input_size) -> params``; params are a dict of arrays with documented names.
      initial_carry: ``initial_carry(params, batch_shape) -> carry``; zeros with leading
        ``batch_shape`` (``()`` for a single sequence).
      apply: ``apply(params, carry, x) -> (carry, y)``; one step, carry first (the ``lax.scan``
        order). ``x`` has shape ``[D]`` or ``[..., D]`` whose leading dims match the carry's.
      linear: optional [`LinearForm`][rnnjax.types.LinearForm], only for cells whose carry update is linear in
        the carry (``carry_t = a_t ⊙ carry_{t-1} + b_t``, e.g. LRU, minGRU, minLSTM); it lets
        ``unroll(..., parallel=True)`` run the sequence with ``jax.lax.associative_scan``. It must
        compute the same function as ``apply``. ``None`` (the default) for every other cell.
      prepare: optional ``prepare(params) -> params``, work that depends on params only (e.g. a
        matrix exponential), done once per sequence by ``unroll`` instead of once per step.
        ``apply`` (and ``linear``) accept ``params`` or ``prepare(params)`` and give the same
        results; gradients reach the raw params through ``prepare``. ``None`` by default.

      sequence: optional fused sequence path
        ``sequence(params, carry, xs, *, mask, reverse, unroll) -> (carry, ys)`` over time-major
        ``xs [T, ..., D]`` with ``mask [T, ...]`` (bool, ``False`` = padded step: carry kept,
        output zero) or ``None``. It must compute exactly what a ``lax.scan`` over ``apply`` does
        (values and gradients), only faster; ``unroll`` uses it unless ``remat=True``. A hook
        that also takes ``resets=None, reset_carry=None`` keeps the fast path under
        ``unroll(..., resets=...)``: ``resets [T, ...]`` (bool, in the order the scan runs, only
        at valid steps) marks steps whose entering carry is ``reset_carry`` (``carry`` when
        None); ``unroll`` falls back to a scan over ``apply`` for a hook without them.

    A wrapper that builds a new cell from an old one's ``apply`` (``Cell(init, initial_carry,
    apply)``) drops ``linear``, ``prepare`` and ``sequence``, which is always correct (only
    slower).
    """

    init: InitFn
    initial_carry: InitialCarryFn
    apply: ApplyFn
    linear: LinearForm | None = None
    prepare: Callable[[Params], Params] | None = None
    sequence: Callable[..., tuple[Carry, Array]] | None = None


class LSTMState(NamedTuple):
    """Carry of an LSTM: hidden state ``h`` and cell state ``c``, each ``[..., H]``."""

    h: Array
    c: Array


class JordanState(NamedTuple):
    """Carry of a Jordan (output-feedback) cell: hidden ``h [..., H]`` and last output ``y [..., O]``."""

    h: Array
    y: Array


Initializer = Callable[[PRNGKey, tuple[int, ...], Any], Array]


class BlockLinearRecurrence(NamedTuple):
    """Coefficients of ``carry_t = a_t @ carry_{t-1} + b_t`` with ``N`` independent ``k x k`` blocks.

    ``b`` has the carry's shape with a leading time axis, ``[T, ..., N, k]`` (real or complex);
    ``a`` broadcasts to ``[T, ..., N, k, k]`` (e.g. ``[N, k, k]`` when time-invariant, as in
    LinOSS, Rusch & Rus 2025, whose ``k = 2`` blocks couple an oscillator's velocity and
    position). ``unroll(..., parallel=True)`` runs it as an associative scan of ``(a, b)`` pairs.
    """

    a: Array
    b: Array
