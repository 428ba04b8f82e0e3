"""Cell factories; each returns a [`rnnjax.Cell`][rnnjax.flax.Cell]."""

from rnnjax.cells.elman import elman, irnn, jordan
from rnnjax.cells.gru import gru, mgu
from rnnjax.cells.indrnn import indrnn, indrnn_constrain, indrnn_max_abs, indrnn_projection
from rnnjax.cells.lru import lru, lru_eigenvalues
from rnnjax.cells.convlstm import convlstm
from rnnjax.cells.delta import DeltaState, delta_chunkwise, deltanet, gated_deltanet
from rnnjax.cells.s6 import s6
from rnnjax.cells.lstm import lstm
from rnnjax.cells.minimal import mingru, minlstm
from rnnjax.cells.orthogonal import orthogonal, orthogonality_error
from rnnjax.cells.oscillatory import OscillatorState, cornn, lem, linoss, linoss_transition
from rnnjax.cells.rglru import rglru, rglru_base_decay
from rnnjax.cells.ode import antisymmetric, antisymmetric_matrix, lipschitz, lipschitz_matrix
from rnnjax.cells.xlstm import MLSTMState, SLSTMState, mlstm, mlstm_state, slstm

__all__ = ["elman", "irnn", "jordan", "lstm", "gru", "mgu", "indrnn", "indrnn_constrain",
           "indrnn_max_abs", "indrnn_projection", "lru", "lru_eigenvalues", "mingru", "minlstm",
           "orthogonal", "orthogonality_error", "OscillatorState", "cornn", "lem", "linoss",
           "linoss_transition", "rglru", "rglru_base_decay", "antisymmetric", "antisymmetric_matrix",
           "lipschitz", "lipschitz_matrix",
           "MLSTMState", "SLSTMState", "mlstm", "mlstm_state", "slstm", "convlstm", "DeltaState",
           "delta_chunkwise", "deltanet", "gated_deltanet", "s6"]
