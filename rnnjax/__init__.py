"""rnnjax: a JAX research kit for recurrent neural networks.

Cells are pure functions over parameter pytrees ([`Cell`][rnnjax.flax.Cell]), run over sequences by
[`unroll`][rnnjax.flax.unroll] (``jax.lax.scan``), trained with Optax chains
([`optimizer`][rnnjax.optim.optimizer], [`train_step`][rnnjax.sweep.train_step], [`fit`][rnnjax.engine.fit]),
and diagnosed with [`gradient_flow`][rnnjax.diagnostics.gradient_flow].
"""

from rnnjax import checkpoint, engine, initializers, interop, layers, losses, optim, registry, sweep, tasks
from rnnjax.cells import (
    convlstm,
    elman,
    gru,
    indrnn,
    indrnn_constrain,
    indrnn_max_abs,
    indrnn_projection,
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
from rnnjax.cells.oscillatory import OscillatorState, cornn, lem, linoss, linoss_transition
from rnnjax.cells.rglru import rglru, rglru_base_decay
from rnnjax.cells.ode import antisymmetric, antisymmetric_matrix, lipschitz, lipschitz_matrix
from rnnjax.cells.delta import DeltaState, delta_chunkwise, deltanet, gated_deltanet
from rnnjax.cells.s6 import s6
from rnnjax.cells.xlstm import MLSTMState, SLSTMState, mlstm, mlstm_state, slstm
from rnnjax.types import BlockLinearRecurrence
from rnnjax.diagnostics import (
    GateSaturation,
    GradientFlow,
    JacobianNorms,
    gate_saturation,
    gradient_flow,
    jacobian_norms,
    log10_decay_rate,
    spectral_norm,
)
from rnnjax.interop import from_flax, from_torch, to_flax, to_torch
from rnnjax.layers import (bidirectional, dense, dropout, learned_initial_carry, recurrent_dropout, stack,
                           variational_dropout)
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
from rnnjax.train import NonFiniteError, TrainState, evaluate, tbptt_step, train_step
from rnnjax.optim import current_learning_rate, optimizer
from rnnjax.engine import FitResult, fit
from rnnjax._workdir import WorkdirError, machine
from rnnjax.types import Cell, JordanState, LinearForm, LinearRecurrence, LogLinearRecurrence, LSTMState
from rnnjax.unroll import unroll, unroll_reduce
from rnnjax import attention, pruning
from rnnjax.attention import Attention, additive_attention, dot_product_attention
from rnnjax.pruning import prune, pruned

__version__ = "0.1.0"


# ``rnnjax.flax`` (flax nnx / linen wrappers) is imported on first access: ``flax.nnx`` adds about
# 0.3 s to ``import rnnjax`` that users who never touch it need not pay. ``rnnjax.bench`` (the
# long-memory benchmark and its reference rows) likewise.
_LAZY_SUBMODULES = ("bench", "flax")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"rnnjax.{name}")
    raise AttributeError(f"module 'rnnjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
