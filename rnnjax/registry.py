"""The cell registry: every sequence cell of rnnjax by name, built in its paper's default setup.

``CELLS`` maps a name (``"lstm"``, ``"indrnn"``, ...) to a ``CellSpec``:
``spec.make(hidden_size, T) -> Cell`` builds the cell with ``hidden_size`` units (outputs
``[T, B, hidden_size]`` under ``rnnjax.unroll``) for sequences of ``T`` steps (only the cells
whose setup depends on the horizon use ``T``: IndRNN's initial range of ``u``), and
``spec.projection(T)``, where the paper constrains the params, is the projection to pass as
``project=`` to ``rnnjax.train_step`` (IndRNN: ``rnnjax.indrnn_projection``). A spec is
also a factory in the form ``rnnjax.bench`` takes: ``spec(hidden_size, T)`` returns the cell, or
``(cell, project)`` for a cell with a projection.

Every experiment script and benchmark takes its cells from here, so each accepts every cell::

    cell = rnnjax.registry.cell("indrnn", 64, T=200)
    project = rnnjax.registry.projection("indrnn", T=200)   # None for cells without one
    [n for n in rnnjax.registry.names() if rnnjax.registry.CELLS[n].parallel]

``convlstm`` is not here: its inputs are images ``[..., height, width, channels]``, not vectors.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jax.numpy as jnp

from rnnjax.cells import (
    elman,
    gru,
    indrnn,
    indrnn_projection,
    irnn,
    jordan,
    lru,
    lstm,
    mgu,
    mingru,
    minlstm,
    orthogonal,
)
from rnnjax.cells.delta import deltanet, gated_deltanet
from rnnjax.cells.ode import antisymmetric, lipschitz
from rnnjax.cells.oscillatory import cornn, lem, linoss
from rnnjax.cells.rglru import rglru
from rnnjax.cells.s6 import s6
from rnnjax.cells.xlstm import mlstm, slstm
from rnnjax.types import Cell, Params

__all__ = ["CELLS", "CellSpec", "cell", "names", "projection", "spec"]


@dataclass(frozen=True)
class CellSpec:
    """One registered cell: how to build it in its paper's default setup, and what it needs.

    Attributes:
      name: the registry name (``"lstm"``).
      make: ``make(hidden_size, T) -> Cell``; ``T`` (the sequence length, ``None`` when unknown)
        is used only by cells whose setup depends on the horizon (``needs_T``).
      projection: ``projection(T) -> (params -> params)``, the constraint the paper applies to the
        params after every optimizer step (pass it as ``project=`` to ``rnnjax.train_step``),
        or ``None``.
      parallel: the cell has a linear form (``cell.linear``), so ``rnnjax.unroll(...,
        parallel=True)`` runs it with ``jax.lax.associative_scan``.
      needs_T: ``make`` and ``projection`` need the horizon ``T``.
      setup: what ``make`` builds, in words (initialisation and constants).
      paper: the paper (authors, title, venue, year).
    """

    name: str
    make: Callable[[int, int | None], Cell]
    setup: str
    paper: str
    projection: Callable[[int], Callable[[Params], Params]] | None = None
    parallel: bool = False
    needs_T: bool = False

    def __call__(self, hidden_size: int, T: int | None = None) -> Cell | tuple[Cell, Callable]:
        """The cell, or ``(cell, project)`` for a cell with a projection (``rnnjax.bench``'s form)."""
        T = _check_T(self, T)
        built = self.make(hidden_size, T)
        if self.projection is None:
            return built
        return built, self.projection(T)  # type: ignore[arg-type]  # needs_T: not None here


def _check_T(spec: CellSpec, T: Any) -> int | None:
    if T is None:
        if spec.needs_T:
            raise ValueError(
                f"the {spec.name!r} cell needs T, the sequence length ({spec.setup}); got T=None"
            )
        return None
    try:
        steps = operator.index(T)
    except TypeError:
        steps = 0
    if isinstance(T, bool) or steps < 1:
        raise ValueError(f"T must be a positive int (the sequence length) or None, got {T!r}")
    return steps


def _indrnn(H: int, T: int | None) -> Cell:
    return indrnn(H, max_timescale=T)


_SPECS = (
    CellSpec(
        "elman",
        lambda H, T: elman(H),
        "tanh; orthogonal recurrent weights",
        "Elman, Finding structure in time, Cognitive Science, 1990",
    ),
    CellSpec(
        "irnn",
        lambda H, T: irnn(H),
        "ReLU; identity recurrent weights, input weights N(0, 0.001^2)",
        "Le, Jaitly & Hinton, A simple way to initialize recurrent networks of rectified linear "
        "units, arXiv:1504.00941, 2015",
    ),
    CellSpec(
        "jordan",
        lambda H, T: jordan(H, H, activation=jnp.tanh),
        "output size H; tanh units (Jordan's are logistic; tanh is zero-centred like the other "
        "tanh RNNs here, and is what the committed vanishing study trained)",
        "Jordan, Serial order: a parallel distributed processing approach, ICS Report 8604, 1986",
    ),
    CellSpec(
        "lstm",
        lambda H, T: lstm(H, forget_bias=1.0),
        "forget-gate bias 1",
        "Hochreiter & Schmidhuber, Long short-term memory, Neural Computation, 1997; Gers, "
        "Schmidhuber & Cummins, Learning to forget, Neural Computation, 2000",
    ),
    CellSpec(
        "gru",
        lambda H, T: gru(H),
        "reset gate applied before the recurrent matmul (Cho et al.'s form)",
        "Cho et al., Learning phrase representations using RNN encoder-decoder for statistical "
        "machine translation, EMNLP, 2014",
    ),
    CellSpec(
        "mgu",
        lambda H, T: mgu(H),
        "one forget gate; orthogonal recurrent weights",
        "Zhou, Wu, Zhang & Zhou, Minimal gated unit for recurrent neural networks, International "
        "Journal of Automation and Computing, 2016",
    ),
    CellSpec(
        "indrnn",
        _indrnn,
        "ReLU; u ~ U[0, 2^(1/T)], |u| projected to 2^(1/T) after every update",
        "Li, Li, Cook, Zhu & Gao, Independently recurrent neural network (IndRNN): building a "
        "longer and deeper RNN, CVPR, 2018",
        projection=indrnn_projection,
        needs_T=True,
    ),
    CellSpec(
        "lru",
        lambda H, T: lru(H, H, r_min=0.9, r_max=0.999),
        "state size H; eigenvalue radii r in [0.9, 0.999]",
        "Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De, Resurrecting recurrent neural "
        "networks for long sequences, ICML, 2023",
        parallel=True,
    ),
    CellSpec(
        "mingru",
        lambda H, T: mingru(H),
        "log-space parallel form",
        "Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, Were RNNs all we needed?, arXiv:2410.01201, 2024",
        parallel=True,
    ),
    CellSpec(
        "minlstm",
        lambda H, T: minlstm(H),
        "log-space parallel form",
        "Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, Were RNNs all we needed?, arXiv:2410.01201, 2024",
        parallel=True,
    ),
    CellSpec(
        "orthogonal",
        lambda H, T: orthogonal(H),
        "expRNN: W = expm(A - A^T), Henaff initialisation, modReLU",
        "Lezcano-Casado & Martinez-Rubio, Cheap orthogonal constraints in neural networks: a "
        "simple parametrization of the orthogonal and unitary group, ICML, 2019",
    ),
    CellSpec(
        "cornn",
        lambda H, T: cornn(H),
        "dt 0.06, gamma 66, epsilon 15 (the paper's adding-task constants)",
        "Rusch & Mishra, Coupled oscillatory recurrent neural network (coRNN), ICLR, 2021",
    ),
    CellSpec(
        "lem",
        lambda H, T: lem(H),
        "dt 0.0242",
        "Rusch, Mishra, Erichson & Mahoney, Long expressive memory for sequence modeling, ICLR, 2022",
    ),
    CellSpec(
        "linoss",
        lambda H, T: linoss(H, state_size=H),
        "H oscillators; implicit (IM) discretisation",
        "Rusch & Rus, Oscillatory state-space models, ICLR, 2025",
        parallel=True,
    ),
    CellSpec(
        "rglru",
        lambda H, T: rglru(H),
        "c 8; a in [0.9, 0.999]; input projection",
        "De, Smith, Fernando et al., Griffin: mixing gated linear recurrences with local attention "
        "for efficient language models, arXiv:2402.19427, 2024",
        parallel=True,
    ),
    CellSpec(
        "slstm",
        lambda H, T: slstm(H),
        "4 heads (H a multiple of 4); sigmoid forget gate; stabilised exponential input gate",
        "Beck et al., xLSTM: extended long short-term memory, NeurIPS, 2024",
    ),
    CellSpec(
        "mlstm",
        lambda H, T: mlstm(H),
        "4 heads (H a multiple of 4); sigmoid forget gate; matrix memory",
        "Beck et al., xLSTM: extended long short-term memory, NeurIPS, 2024",
    ),
    CellSpec(
        "antisymmetric",
        lambda H, T: antisymmetric(H),
        "epsilon 0.01, gamma 0.01",
        "Chang, Chen, Haber & Chi, AntisymmetricRNN: a dynamical system view on recurrent neural "
        "networks, ICLR, 2019",
    ),
    CellSpec(
        "lipschitz",
        lambda H, T: lipschitz(H),
        "beta 0.75, gamma_A 0.001, gamma_W 0.001, epsilon 0.03; Euler steps",
        "Erichson, Azencot, Queiruga, Hodgkinson & Mahoney, Lipschitz recurrent neural networks, ICLR, 2021",
    ),
    CellSpec(
        "deltanet",
        lambda H, T: deltanet(H),
        "one head; delta-rule writes with beta in (0, 1); chunkwise form, 16 steps per chunk",
        "Schlag, Irie & Schmidhuber, Linear transformers are secretly fast weight programmers, "
        "ICML, 2021; Yang, Wang, Zhang, Shen & Kim, Parallelizing linear transformers with the "
        "delta rule over sequence length, NeurIPS, 2024",
    ),
    CellSpec(
        "gated_deltanet",
        lambda H, T: gated_deltanet(H),
        "one head; decay time steps in [0.001, 0.1]; chunkwise form, 16 steps per chunk",
        "Yang, Kautz & Hatamizadeh, Gated delta networks: improving Mamba2 with delta rule, ICLR, 2025",
    ),
    CellSpec(
        "s6",
        lambda H, T: s6(H),
        "state size 16 per channel; dt in [0.001, 0.1]; input projection",
        "Gu & Dao, Mamba: linear-time sequence modeling with selective state spaces, arXiv:2312.00752, 2023",
        parallel=True,
    ),
)

CELLS: Mapping[str, CellSpec] = MappingProxyType({s.name: s for s in _SPECS})
"""Every registered cell: name -> ``CellSpec`` (read-only)."""


def names() -> tuple[str, ...]:
    """The registered cell names, in the registry's order."""
    return tuple(CELLS)


def spec(name: str) -> CellSpec:
    """The ``CellSpec`` of ``name``; a ``ValueError`` naming the known cells otherwise."""
    if not isinstance(name, str) or name not in CELLS:
        raise ValueError(
            f"unknown cell {name!r}; the registered cells are {', '.join(CELLS)} (rnnjax.registry.names())"
        )
    return CELLS[name]


def cell(name: str, hidden_size: int, T: int | None = None) -> Cell:
    """The cell ``name`` with ``hidden_size`` units in its paper's default setup.

    Args:
      name: a registered name (``names``).
      hidden_size: H; the cell's outputs are ``[T, B, H]`` under ``rnnjax.unroll``.
      T: the sequence length, required by the cells whose setup depends on it (IndRNN).

    Returns:
      ``CELLS[name].make(hidden_size, T)``. Apply ``projection`` after every optimizer step.
    """
    s = spec(name)
    return s.make(hidden_size, _check_T(s, T))


def projection(name: str, T: int | None = None) -> Callable[[Params], Params] | None:
    """The params projection of ``name``'s paper for horizon ``T`` (``project=`` of
    ``rnnjax.train_step``), or ``None`` for a cell without one.

    IndRNN (Li et al., CVPR 2018) keeps ``|u| <= 2^(1/T)``: ``rnnjax.indrnn_projection``, which
    finds every IndRNN layer in the params it is given, a whole model's included.
    """
    s = spec(name)
    if s.projection is None:
        return None
    T = _check_T(s, T)
    return s.projection(T)  # type: ignore[arg-type]  # needs_T: not None here
