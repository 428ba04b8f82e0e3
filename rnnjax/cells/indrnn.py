"""Independently recurrent neural network, IndRNN (Li et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rnnjax import initializers as inits
from rnnjax.cells._common import (
    check_activation,
    check_batch_shape,
    check_carry_batch,
    check_float_dtype,
    check_initializer,
    check_input,
    check_number,
    check_size,
    rows,
    split_keys,
)
from rnnjax.types import Array, Cell, Initializer, Params


def indrnn_max_abs(max_timescale: float) -> float:
    """The paper's bound on the recurrent weights of a ReLU IndRNN for a horizon T: ``2^(1/T)``.

    With ``|u| <= 2^(1/T)`` a unit's state can grow by at most a factor of 2 over T steps
    (``|u|^T <= 2``), so neither the state nor the gradient explodes over the horizon.
    """
    return 2.0 ** (1.0 / check_number("max_timescale", max_timescale, lo=1.0))


def indrnn_constrain(params: Params, max_abs: float, min_abs: float = 0.0) -> Params:
    """Project IndRNN params onto ``min_abs <= |u| <= max_abs`` (sign kept), as in Li et al. 2018.

    Call it on the cell's params after every optimizer step (projected gradient descent: the
    paper clips the recurrent weights after each update). ``max_abs = indrnn_max_abs(T)`` is the
    paper's ``2^(1/T)`` for a ReLU IndRNN over T steps. Returns a new dict; only ``u`` changes.
    """
    if not (isinstance(params, dict) and "u" in params):
        raise TypeError("params must be an IndRNN params dict with a 'u' entry")
    if not 0.0 <= min_abs <= max_abs:
        raise ValueError(f"need 0 <= min_abs <= max_abs, got min_abs={min_abs}, max_abs={max_abs}")
    u = params["u"]
    mag = jnp.clip(jnp.abs(u), min_abs, max_abs)
    sign = jnp.where(u < 0, -1.0, 1.0).astype(u.dtype)
    return {**params, "u": sign * mag}


_INDRNN_KEYS = frozenset({"w_x", "u", "b"})


def _is_indrnn_params(node) -> bool:
    return isinstance(node, dict) and set(node) == _INDRNN_KEYS


def indrnn_projection(max_timescale: float, min_abs: float = 0.0) -> Callable[[Params], Params]:
    """The paper's projection for a whole model: ``project(params) -> params``.

    ``project`` applies [`indrnn_constrain`][rnnjax.indrnn_constrain] with ``max_abs =
    indrnn_max_abs(max_timescale)`` to every IndRNN params dict (keys ``w_x``, ``u``, ``b``) in ``params``,
    whatever the layout (a single cell, a [`rnnjax.layers.stack`][rnnjax.layers.stack] tuple, a dict of a cell
    and a readout), and returns every other leaf unchanged. Pass it as ``project=`` to
    [`rnnjax.train_step`][rnnjax.sweep.train_step] (or [`rnnjax.sweep.sweep_step`][rnnjax.sweep.sweep_step])
    to keep Li et al.'s ``|u| <= 2^(1/T)`` after every update.

    Raises:
      ValueError: ``max_timescale < 1``, or ``min_abs`` outside ``[0, 2^(1/T)]``; or, when
        ``project`` is called, if ``params`` holds no IndRNN params dict (a projection that
        silently does nothing would hide a wrong model).
    """
    max_abs = indrnn_max_abs(max_timescale)
    if not 0.0 <= min_abs <= max_abs:
        raise ValueError(f"min_abs must be in [0, 2^(1/max_timescale)] = [0, {max_abs}], got {min_abs}")

    def project(params: Params) -> Params:
        found = [node for node in jax.tree.leaves(params, is_leaf=_is_indrnn_params)
                 if _is_indrnn_params(node)]
        if not found:
            raise ValueError("indrnn_projection: params hold no IndRNN params dict (a dict with "
                             "keys 'w_x', 'u', 'b'); nothing to project")
        return jax.tree.map(lambda q: indrnn_constrain(q, max_abs, min_abs) if _is_indrnn_params(q) else q,
                            params, is_leaf=_is_indrnn_params)

    return project


def indrnn(
    hidden_size: int,
    *,
    activation: Callable[[Array], Array] = jax.nn.relu,
    max_timescale: float | None = None,
    input_init: Initializer = inits.glorot_uniform,
    recurrent_init: Initializer | None = None,
    bias_init: Initializer = inits.zeros,
    dtype=jnp.float32,
) -> Cell:
    """Independently recurrent neural network, IndRNN (Li, Li, Cook, Zhu & Gao 2018).

    ``h_t = f(x_t W + u⊙h_{t-1} + b)``; output ``h_t``. Each unit has one recurrent weight
    ``u_n``, so ``∂h_T/∂h_t`` is a product of scalars ``u_n^(T-t)`` times activation derivatives,
    and bounding ``|u_n|`` bounds the gradient over a horizon.

    Constraint: the paper keeps ``|u| ∈ [0, 2^(1/T)]`` for a ReLU IndRNN over T steps. This cell
    does *not* clip inside ``apply`` (a clip there has zero gradient outside the range and
    halves it at the bound); it initialises ``u ~ U[0, 2^(1/T)]`` when ``max_timescale=T`` is
    given (else ``U[0, 1]``), and [`indrnn_constrain`][rnnjax.indrnn_constrain] projects ``u`` back into the
    range after each optimizer step: ``params = indrnn_constrain(params, indrnn_max_abs(T))``.

    Params: ``w_x [D, H]``, ``u [H]``, ``b [H]``. Carry: ``h [..., H]``.

    Args:
      hidden_size: H.
      activation: f (``jax.nn.relu``, the paper's choice).
      max_timescale: T, the horizon that sets the initial range of ``u`` (``[0, 2^(1/T)]``).
      input_init, bias_init: initialisers for ``w_x`` and ``b``.
      recurrent_init: for ``u`` (shape ``(H,)``); overrides the range set by ``max_timescale``.
      dtype: parameter dtype.
    """
    H = check_size("hidden_size", hidden_size)
    check_activation("activation", activation)
    check_initializer("input_init", input_init)
    check_initializer("recurrent_init", recurrent_init, allow_none=True)
    check_initializer("bias_init", bias_init)
    dtype = check_float_dtype(dtype)
    if recurrent_init is None:
        hi = 1.0 if max_timescale is None else indrnn_max_abs(max_timescale)

        def recurrent_init(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, 0.0, hi)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        kx, ku, kb = split_keys(key, 3)
        return {
            "w_x": input_init(kx, (D, H), dtype),
            "u": recurrent_init(ku, (H,), dtype),
            "b": bias_init(kb, (H,), dtype),
        }

    def initial_carry(params, batch_shape):
        return jnp.zeros((*check_batch_shape(batch_shape), H), params["u"].dtype)

    def apply(params, h, x):
        x = check_input(x, params["w_x"].shape[0])
        check_carry_batch(h, x, size=H)
        z = x @ params["w_x"]
        h = activation(z + rows(params["u"], h) * h + rows(params["b"], z))
        return h, h

    return Cell(init, initial_carry, apply)
