"""Convolutional LSTM (Shi et al. 2015): the LSTM with convolutions in place of matrix products."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import initializers as inits
from rnnjax.cells._common import (
    check_batch_shape,
    check_bool,
    check_carry_batch,
    check_float_dtype,
    check_initializer,
    check_input,
    check_number,
    check_size,
    check_tuple_carry,
    split_keys,
)
from rnnjax.types import Array, Cell, Initializer, LSTMState


def _check_shape_arg(name: str, value: Any, *, odd: bool, ndim: int | None = None) -> tuple[int, ...]:
    """A non-empty tuple/list of positive ints (odd ones when ``odd``), of length ``ndim`` if given."""
    what = "odd positive ints" if odd else "positive ints"
    example = "(3, 3) for images, (3,) for 1-D signals" if odd else "(H, W) for images"
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a tuple of {what}, one per spatial dim (e.g. {example}), "
                        f"got the int {value!r}")
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f"{name} must be a non-empty tuple of {what}, one per spatial dim (e.g. "
                        f"{example}), got {value!r}")
    for v in value:
        if (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v <= 0
                or (odd and v % 2 == 0)):
            reason = " (an odd size keeps 'SAME' padding symmetric)" if odd else ""
            raise ValueError(f"{name} must be a tuple of {what}{reason}, got {tuple(value)!r}")
    if ndim is not None and len(value) != ndim:
        raise ValueError(f"{name} must have one entry per spatial dim of kernel_size ({ndim}), got "
                         f"{tuple(value)!r}")
    return tuple(int(v) for v in value)


def _per_gate(init: Initializer, n: int) -> Initializer:
    """Apply ``init`` to each of ``n`` gate blocks along the last axis of a fused kernel."""

    def fused(key, shape, dtype):
        keys = jax.random.split(key, n)
        block = (*shape[:-1], shape[-1] // n)
        return jnp.concatenate([init(k, block, dtype) for k in keys], axis=-1)

    return fused


def _conv_dims(n: int) -> jax.lax.ConvDimensionNumbers:
    """Channels-last dimension numbers for ``n`` spatial dims: inputs/outputs ``[N, *S, C]``,
    kernels ``[*K, C_in, C_out]`` (NHWC / HWIO for ``n = 2``)."""
    spatial = tuple(range(1, n + 1))
    return jax.lax.ConvDimensionNumbers(lhs_spec=(0, n + 1, *spatial), rhs_spec=(n + 1, n, *range(n)),
                                        out_spec=(0, n + 1, *spatial))


def convlstm(
    hidden_channels: int,
    kernel_size: Sequence[int] = (3, 3),
    *,
    spatial_shape: Sequence[int] | None = None,
    forget_bias: float = 1.0,
    peephole: bool = False,
    input_init: Initializer = inits.glorot_uniform,
    recurrent_init: Initializer = inits.glorot_uniform,
    bias_init: Initializer = inits.zeros,
    peephole_init: Initializer = inits.zeros,
    dtype=jnp.float32,
) -> Cell:
    """Convolutional LSTM (Shi et al. 2015): an LSTM whose input and recurrent products are convolutions.

    ``i = σ(W_xi * x + W_hi * h + w_ci⊙c_{t-1} + b_i)``, ``f = σ(W_xf * x + W_hf * h + w_cf⊙c_{t-1} + b_f)``,
    ``g = tanh(W_xg * x + W_hg * h + b_g)``, ``c_t = f⊙c_{t-1} + i⊙g``,
    ``o = σ(W_xo * x + W_ho * h + w_co⊙c_t + b_o)``, ``h_t = o⊙tanh(c_t)``; output ``h_t``.
    ``*`` is a stride-1 'SAME' (zero-padded) convolution, computed as a cross-correlation (no
    kernel flip, as in flax, haiku and PyTorch); the peephole terms are present only with
    ``peephole=True``. Any number of spatial dims: ``len(kernel_size)`` (1-D, 2-D, 3-D ...).

    Shapes (2-D): inputs ``x [..., H, W, C]``, carry and output ``[..., H, W, C_h]``. The carry's
    batch shape *includes the spatial dims*: ``initial_carry(params, (B, H, W))`` for inputs
    ``[B, H, W, C]``, which is what ``unroll`` asks for with time-major ``xs [T, B, H, W, C]``
    (its batch shape is ``xs.shape[1:-1] = (B, H, W)``; ``lengths`` then has shape ``[B, H, W]``
    and ``resets`` ``[T, B, H, W]``, constant over each image).

    Params: ``w_x [*kernel_size, C, 4 C_h]``, ``w_h [*kernel_size, C_h, 4 C_h]`` (channels-last
    kernels, HWIO), ``b [4 C_h]``, the gates fused along the last axis in the order
    ``(i, f, g, o)`` (as ``rnnjax.lstm``; flax's ``ConvLSTMCell`` uses ``(i, g, f, o)``). With
    peepholes also ``w_ci``, ``w_cf``, ``w_co``: ``[C_h]`` (one weight per channel, shared over
    positions) or, when ``spatial_shape`` is given, ``[*spatial_shape, C_h]`` (one per position
    and channel, the paper's Hadamard product). Carry: ``LSTMState(h, c)``, each
    ``[..., *spatial, C_h]``.

    Args:
      hidden_channels: ``C_h``, the channels of ``h`` and ``c``.
      kernel_size: a tuple of odd positive ints, one per spatial dim, for both convolutions.
      spatial_shape: optional ``(H, W)`` of the inputs; if given, inputs and carries are checked
        against it and peephole weights are per position. ``None``: any spatial size.
      forget_bias: added to ``b_f`` at initialisation (1.0: Gers et al. 2000; Jozefowicz et al. 2015).
      peephole: add the peephole connections ``w_c⊙c`` (Shi et al.'s equation 3).
      input_init, recurrent_init: called per gate with the kernel shape
        ``[*kernel_size, C_in, C_h]`` (Glorot uniform by default, fans including the receptive
        field); any ``jax.nn.initializers`` function works.
      bias_init, peephole_init: for ``b`` (before ``forget_bias``) and the peephole weights.
      dtype: the params' dtype.

    Returns:
      a `rnnjax.Cell`; ``init(key, C)`` takes the number of input channels.

    Reference: X. Shi, Z. Chen, H. Wang, D.-Y. Yeung, W.-K. Wong, W.-C. Woo, *Convolutional LSTM
    network: a machine learning approach for precipitation nowcasting*, NeurIPS 2015.
    """
    Ch = check_size("hidden_channels", hidden_channels)
    kernel = _check_shape_arg("kernel_size", kernel_size, odd=True)
    n = len(kernel)
    spatial = None if spatial_shape is None else _check_shape_arg("spatial_shape", spatial_shape, odd=False,
                                                                  ndim=n)
    forget_bias = check_number("forget_bias", forget_bias)
    peephole = check_bool("peephole", peephole)
    for name, fn in (("input_init", input_init), ("recurrent_init", recurrent_init), ("bias_init", bias_init),
                     ("peephole_init", peephole_init)):
        check_initializer(name, fn)
    dtype = check_float_dtype(dtype)
    dims = _conv_dims(n)
    padding = tuple(((k - 1) // 2, (k - 1) // 2) for k in kernel)
    peep_shape = (Ch,) if spatial is None else (*spatial, Ch)

    def init(key, input_size):
        C = check_size("input_size", input_size)
        kx, kh, kb, kp = split_keys(key, 4)
        b = bias_init(kb, (4 * Ch,), dtype).at[Ch:2 * Ch].add(forget_bias)
        params = {
            "w_x": _per_gate(input_init, 4)(kx, (*kernel, C, 4 * Ch), dtype),
            "w_h": _per_gate(recurrent_init, 4)(kh, (*kernel, Ch, 4 * Ch), dtype),
            "b": b,
        }
        if peephole:
            kpi, kpf, kpo = split_keys(kp, 3)
            params.update(w_ci=peephole_init(kpi, peep_shape, dtype),
                          w_cf=peephole_init(kpf, peep_shape, dtype),
                          w_co=peephole_init(kpo, peep_shape, dtype))
        return params

    def check_spatial(shape: tuple[int, ...], name: str, what: str) -> None:
        if len(shape) < n:
            raise ValueError(f"{name} must end with the {n} spatial dim(s) of kernel_size {kernel} "
                             f"({what}), got {shape}")
        if spatial is not None and shape[len(shape) - n:] != spatial:
            raise ValueError(f"{name} has spatial dims {shape[len(shape) - n:]} but the cell was made "
                             f"with spatial_shape={spatial} ({what}), got {shape}")

    def initial_carry(params, batch_shape):
        shape = check_batch_shape(batch_shape)
        check_spatial(shape, "batch_shape", "e.g. (B, H, W) for inputs [B, H, W, C]")
        dt = params["w_h"].dtype
        return LSTMState(jnp.zeros((*shape, Ch), dt), jnp.zeros((*shape, Ch), dt))

    def conv(z: Array, w: Array) -> Array:
        """``z [..., *S, C_in] * w [*K, C_in, C_out] -> [..., *S, C_out]`` (leading dims flattened)."""
        lead, tail = z.shape[:z.ndim - n - 1], z.shape[z.ndim - n - 1:]
        out = jax.lax.conv_general_dilated(z.reshape((math.prod(lead), *tail)), w, window_strides=(1,) * n,
                                           padding=padding, dimension_numbers=dims)
        return out.reshape((*lead, *tail[:-1], w.shape[-1]))

    def peep(w: Array, c: Array) -> Array:
        return w.reshape((1,) * (c.ndim - w.ndim) + w.shape) * c

    def apply(params, carry, x):
        x = check_input(x, params["w_x"].shape[-2])
        check_spatial(x.shape[:-1], "x's leading dims", f"x is [..., *spatial, C] with {n} spatial dim(s)")
        h, c = check_tuple_carry(carry, ("h", "c"), "an LSTMState")
        check_carry_batch(h, x, "carry.h", size=Ch)
        check_carry_batch(c, x, "carry.c", size=Ch)
        dt = jnp.result_type(x.dtype, h.dtype, params["w_x"].dtype)
        # one convolution of [x, h] with the stacked kernel [w_x; w_h] along the input channels
        w = jnp.concatenate([params["w_x"], params["w_h"]], axis=-2).astype(dt)
        z = conv(jnp.concatenate([x.astype(dt), h.astype(dt)], axis=-1), w)
        z = z + params["b"].reshape((1,) * (z.ndim - 1) + (4 * Ch,))
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        if peephole:
            zi = zi + peep(params["w_ci"], c)
            zf = zf + peep(params["w_cf"], c)
        c = jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zg)
        if peephole:
            zo = zo + peep(params["w_co"], c)
        h = jax.nn.sigmoid(zo) * jnp.tanh(c)
        return LSTMState(h, c), h

    return Cell(init, initial_carry, apply)
