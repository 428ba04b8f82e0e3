"""Elman RNN, IRNN and the Jordan output-feedback RNN."""

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
    check_tuple_carry,
    rows,
    split_keys,
)
from rnnjax.types import Array, Cell, Initializer, JordanState


def elman(
    hidden_size: int,
    *,
    activation: Callable[[Array], Array] = jnp.tanh,
    input_init: Initializer = inits.glorot_uniform,
    recurrent_init: Initializer = inits.orthogonal(),
    bias_init: Initializer = inits.zeros,
    dtype=jnp.float32,
) -> Cell:
    """Elman (simple) RNN (Elman 1990).

    ``h_t = f(x_t W_x + h_{t-1} W_h + b)``, output ``y_t = h_t``.

    Params: ``w_x [D, H]``, ``w_h [H, H]``, ``b [H]``. Carry: ``h [..., H]``.

    Args:
      hidden_size: H.
      activation: f (``jnp.tanh`` by default; ``jax.nn.relu`` for a ReLU RNN).
      input_init, recurrent_init, bias_init: initialisers for ``w_x``, ``w_h``, ``b``.
      dtype: parameter dtype.
    """
    H = check_size("hidden_size", hidden_size)
    check_activation("activation", activation)
    for name, fn in (("input_init", input_init), ("recurrent_init", recurrent_init),
                     ("bias_init", bias_init)):
        check_initializer(name, fn)
    dtype = check_float_dtype(dtype)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        kx, kh, kb = split_keys(key, 3)
        return {
            "w_x": input_init(kx, (D, H), dtype),
            "w_h": recurrent_init(kh, (H, H), dtype),
            "b": bias_init(kb, (H,), dtype),
        }

    def initial_carry(params, batch_shape):
        return jnp.zeros((*check_batch_shape(batch_shape), H), params["w_h"].dtype)

    def apply(params, h, x):
        x = check_input(x, params["w_x"].shape[0])
        check_carry_batch(h, x, size=H)
        z = x @ params["w_x"] + h @ params["w_h"]
        h = activation(z + rows(params["b"], z))
        return h, h

    return Cell(init, initial_carry, apply)


def irnn(hidden_size: int, *, scale: float = 1.0, input_stddev: float = 0.001, dtype=jnp.float32) -> Cell:
    """IRNN: ReLU Elman RNN with identity recurrent weights (Le, Jaitly & Hinton 2015).

    ``h_t = relu(x_t W_x + h_{t-1} W_h + b)`` with ``W_h = scale * I``, ``b = 0`` and
    ``W_x ~ N(0, input_stddev^2)`` at initialisation, as in the paper.
    Params: ``w_x [D, H]``, ``w_h [H, H]``, ``b [H]``.
    """
    scale = check_number("scale", scale, positive=True)
    input_stddev = check_number("input_stddev", input_stddev, positive=True)
    return elman(
        hidden_size,
        activation=jax.nn.relu,
        input_init=inits.normal(input_stddev),
        recurrent_init=inits.identity(scale),
        dtype=dtype,
    )


def jordan(
    hidden_size: int,
    output_size: int,
    *,
    activation: Callable[[Array], Array] = jax.nn.sigmoid,
    input_init: Initializer = inits.glorot_uniform,
    recurrent_init: Initializer = inits.orthogonal(),
    feedback_init: Initializer = inits.glorot_uniform,
    bias_init: Initializer = inits.zeros,
    dtype=jnp.float32,
) -> Cell:
    """Jordan-style output-feedback RNN (Jordan 1986).

    ``y_t = x_t W_yx + y_{t-1} W_yy + h_{t-1} W_yh + b_y``,
    ``h_t = σ(x_t W_hx + y_t W_hy + h_{t-1} W_hh + b_h)``; output ``y_t``.

    The input enters both updates, through ``W_yx`` and ``W_hx``, so that ``y_t`` already depends
    on ``x_t`` (in Jordan's network the input "plan" units feed the state and the output).

    Params: ``w_yx [D, O]``, ``w_yy [O, O]``, ``w_yh [H, O]``, ``b_y [O]``, ``w_hx [D, H]``,
    ``w_hy [O, H]``, ``w_hh [H, H]``, ``b_h [H]``. Carry: ``JordanState(h [..., H], y [..., O])``.

    Args:
      hidden_size: H.  output_size: O.
      activation: σ (the logistic sigmoid, as in Jordan 1986).
      recurrent_init: for ``w_hh`` and ``w_yy``; feedback_init for ``w_yh``, ``w_hy``.
    """
    H = check_size("hidden_size", hidden_size)
    Y = check_size("output_size", output_size)  # O, the output size
    check_activation("activation", activation)
    for name, fn in (("input_init", input_init), ("recurrent_init", recurrent_init),
                     ("feedback_init", feedback_init), ("bias_init", bias_init)):
        check_initializer(name, fn)
    dtype = check_float_dtype(dtype)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        k = split_keys(key, 8)
        return {
            "w_yx": input_init(k[0], (D, Y), dtype),
            "w_yy": recurrent_init(k[1], (Y, Y), dtype),
            "w_yh": feedback_init(k[2], (H, Y), dtype),
            "b_y": bias_init(k[3], (Y,), dtype),
            "w_hx": input_init(k[4], (D, H), dtype),
            "w_hy": feedback_init(k[5], (Y, H), dtype),
            "w_hh": recurrent_init(k[6], (H, H), dtype),
            "b_h": bias_init(k[7], (H,), dtype),
        }

    def initial_carry(params, batch_shape):
        batch_shape = check_batch_shape(batch_shape)
        dt = params["w_hh"].dtype
        return JordanState(jnp.zeros((*batch_shape, H), dt), jnp.zeros((*batch_shape, Y), dt))

    def apply(params, carry, x):
        x = check_input(x, params["w_hx"].shape[0])
        h, y = check_tuple_carry(carry, ("h", "y"), "a JordanState")
        check_carry_batch(h, x, "carry.h", size=H)
        check_carry_batch(y, x, "carry.y", size=Y)
        y = x @ params["w_yx"] + y @ params["w_yy"] + h @ params["w_yh"]
        y = y + rows(params["b_y"], y)
        z = x @ params["w_hx"] + y @ params["w_hy"] + h @ params["w_hh"]
        h = activation(z + rows(params["b_h"], z))
        return JordanState(h, y), y

    return Cell(init, initial_carry, apply)
