"""rnnjax: a JAX research kit for recurrent neural networks.

Cells are pure functions over parameter pytrees (:class:`Cell`), run over sequences by
:func:`unroll` (``jax.lax.scan``), trained with Optax chains (:func:`optimizer`, :func:`train_step`,
:func:`fit`), and diagnosed with :func:`gradient_flow`.
"""

from rnnjax import checkpoint, initializers, interop, layers, losses, tasks
from rnnjax.cells import (
    elman,
    gru,
    indrnn,
    indrnn_constrain,
    indrnn_max_abs,
    irnn,
    jordan,
    lru,
    lru_eigenvalues,
    lstm,
    mgu,
    mingru,
    minlstm,
    orthogonal,
    orthogonality_error,
)
from rnnjax.diagnostics import (
    GateSaturation,
    GradientFlow,
    JacobianNorms,
    gate_saturation,
    gradient_flow,
    jacobian_norms,
    spectral_norm,
)
from rnnjax.interop import from_flax, from_torch, to_flax, to_torch
from rnnjax.layers import bidirectional, dense, dropout, recurrent_dropout, stack, variational_dropout
from rnnjax.losses import (
    accuracy,
    binary_accuracy,
    binary_cross_entropy,
    categorical_cross_entropy,
    categorical_cross_entropy_probs,
    l1_penalty,
    l2_penalty,
    mse,
    sequence_cross_entropy,
)
from rnnjax.train import (NonFiniteError, TrainState, WorkdirError, current_learning_rate, evaluate, fit,
                          optimizer, train_step)
from rnnjax.types import Cell, JordanState, LinearForm, LinearRecurrence, LogLinearRecurrence, LSTMState
from rnnjax.unroll import unroll

__version__ = "0.1.0"
