"""rnnjax: a JAX research kit for recurrent neural networks."""

from rnnjax import initializers
from rnnjax.cells import elman, gru, irnn, jordan, lstm, mgu
from rnnjax.types import Cell, JordanState, LSTMState
from rnnjax.unroll import unroll

__version__ = "0.1.0"
