"""Cell factories; each returns a :class:`rnnjax.Cell`."""

from rnnjax.cells.elman import elman, irnn, jordan
from rnnjax.cells.gru import gru, mgu
from rnnjax.cells.lstm import lstm

__all__ = ["elman", "irnn", "jordan", "lstm", "gru", "mgu"]
