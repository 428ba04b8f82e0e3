"""Flax wrappers: any [`rnnjax.Cell`][rnnjax.flax.Cell] as a ``flax.nnx`` or ``flax.linen`` module.

For flax users who want rnnjax cells inside their models::

    from flax import nnx
    import rnnjax, rnnjax.flax

    rnn = rnnjax.flax.RNN(rnnjax.lstm(64), input_size=8, rngs=nnx.Rngs(0))
    carry, ys = rnn(xs)                         # xs [T, B, 8] -> ys [T, B, 64]
    rnn.params["w_h"]                          # an nnx.Param holding the cell's w_h

    linen = rnnjax.flax.LinenRNN(rnnjax.gru(32))
    variables = linen.init(jax.random.key(0), xs)   # {"params": {"cell": <the cell's params>}}
    carry, ys = linen.apply(variables, xs)

Both call [`rnnjax.unroll`][rnnjax.flax.unroll] with the cell's own params pytree, so they compute exactly
what ``rnnjax.unroll(cell, params, xs, ...)`` computes; the params keep their documented rnnjax names
(``w_x``, ``w_h``, ``b`` ...), each leaf an ``nnx.Param`` (nnx) or a leaf of the ``params``
collection (linen). This module is named ``rnnjax.flax``; inside it, ``import flax`` is the flax
package (absolute imports).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from rnnjax.types import Array, Carry, Cell, Params
from rnnjax.unroll import unroll

__all__ = ["RNN", "LinenRNN"]


def _is_param(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _check_cell(cell: Any) -> Cell:
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be an rnnjax.Cell (e.g. rnnjax.lstm(64)), got {type(cell).__name__}")
    return cell


class RNN(nnx.Module):
    """An nnx module running an rnnjax cell over a sequence with [`rnnjax.unroll`][rnnjax.flax.unroll].

    ``carry, ys = rnn(xs, carry=None, lengths=None, *, time_major=True, reverse=False, ...)``
    equals ``rnnjax.unroll(cell, rnn.cell_params(), xs, carry, ...)``.

    Args:
      cell: any rnnjax cell (a factory's result, ``rnnjax.stack(...)`` included).
      input_size: D, the size of the inputs.
      rngs: ``nnx.Rngs``; the cell's params are ``cell.init(rngs.params(), input_size)``.
      params: optional existing rnnjax params to wrap instead of initialising (e.g. converted
        weights); ``rngs`` is then unused.

    Attributes:
      cell: the rnnjax cell (static).
      params: the cell's params pytree with every array leaf an ``nnx.Param``.
    """

    def __init__(self, cell: Cell, input_size: int, *, rngs: nnx.Rngs | None = None,
                 params: Params | None = None):
        self.cell = nnx.static(_check_cell(cell))
        if params is None:
            if rngs is None:
                raise ValueError("pass rngs=nnx.Rngs(seed) (or existing params=...)")
            params = cell.init(rngs.params(), input_size)
        self.params = nnx.data(jax.tree.map(nnx.Param, params))

    def cell_params(self) -> Params:
        """The cell's params as a plain rnnjax pytree of arrays (the values of the nnx.Params)."""
        return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_param)

    def initial_carry(self, batch_shape: tuple[int, ...]) -> Carry:
        return self.cell.initial_carry(self.cell_params(), batch_shape)

    def __call__(self, xs: Array, carry: Carry | None = None, lengths: Array | None = None, *,
                 time_major: bool = True, reverse: bool = False, unroll_steps: int = 1,
                 remat: bool = False, parallel: bool | None = None) -> tuple[Carry, Array]:
        """``(final_carry, ys)`` of [`rnnjax.unroll`][rnnjax.flax.unroll] (``unroll_steps`` is its
        ``unroll``)."""
        return unroll(self.cell, self.cell_params(), xs, carry, time_major=time_major,
                      reverse=reverse, lengths=lengths, unroll=unroll_steps, remat=remat,
                      parallel=parallel)


class LinenRNN(nn.Module):
    """A linen module running an rnnjax cell with [`rnnjax.unroll`][rnnjax.flax.unroll].

    The cell's params pytree is one entry ``"cell"`` of the ``params`` collection, initialised by
    ``cell.init`` with the module's ``params`` RNG and the input size ``xs.shape[-1]``.

    Attributes:
      cell: any rnnjax cell.
      time_major, reverse, unroll_steps, remat, parallel: as in [`rnnjax.unroll`][rnnjax.flax.unroll].
    """

    cell: Cell
    time_major: bool = True
    reverse: bool = False
    unroll_steps: int = 1
    remat: bool = False
    parallel: bool | None = None

    @nn.compact
    def __call__(self, xs: Array, carry: Carry | None = None,
                 lengths: Array | None = None) -> tuple[Carry, Array]:
        cell = _check_cell(self.cell)
        params = self.param("cell", lambda key: cell.init(key, xs.shape[-1]))
        return unroll(cell, params, xs, carry, time_major=self.time_major, reverse=self.reverse,
                      lengths=lengths, unroll=self.unroll_steps, remat=self.remat,
                      parallel=self.parallel)
