"""Gated recurrent unit (both reset placements) and the minimal gated unit."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rnnjax import initializers as inits
from rnnjax.cells import fused
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
from rnnjax.types import Array, Cell, Initializer

_RESETS = ("before", "after")


def gru(
    hidden_size: int,
    *,
    candidate_activation: Callable[[Array], Array] = jnp.tanh,
    reset: str = "before",
    input_init: Initializer = inits.glorot_uniform,
    recurrent_init: Initializer = inits.orthogonal(),
    bias_init: Initializer = inits.zeros,
    dtype=jnp.float32,
    projection: str = "auto",
) -> Cell:
    """Gated recurrent unit (Cho et al. 2014).

    ``r = σ(x W_xr + h W_hr + b_r)``, ``z = σ(x W_xz + h W_hz + b_z)``,
    ``reset="before"`` (Cho et al. 2014): ``h̃ = φ(x W_xn + (r⊙h) W_hn + b_n)``;
    ``reset="after"`` (cuDNN, PyTorch, flax): ``h̃ = φ(x W_xn + b_n + r⊙(h W_hn + b_hn))``;
    ``h_t = (1 - z)⊙h_{t-1} + z⊙h̃``; output ``h_t``.

    Note the update convention: ``z`` weights the *candidate* (as in Cho et al. 2014);
    PyTorch and flax weight the old state, so their ``z`` is ``1 - z`` here (``rnnjax.interop``
    converts).

    Params: ``w_x [D, 3H]``, ``w_h [H, 3H]``, ``b [3H]`` fused in the order ``(r, z, n)``; with
    ``reset="after"`` also ``b_hn [H]``. Carry: ``h [..., H]``.

    Args:
      hidden_size: H.
      candidate_activation: φ (``jnp.tanh``; ``jax.nn.relu`` gives a ReLU candidate, as in
        Ravanelli et al. 2018).
      reset: ``"before"`` or ``"after"`` (where the reset gate is applied).
      projection: where ``unroll``'s fused path (tanh candidate) computes the input projection:
        ``"step"``, ``"hoisted"`` or ``"auto"`` (as for [`rnnjax.lstm`][rnnjax.lstm]; the same function
        either way, only the speed differs).
    """
    H = check_size("hidden_size", hidden_size)
    check_activation("candidate_activation", candidate_activation)
    for name, fn in (("input_init", input_init), ("recurrent_init", recurrent_init),
                     ("bias_init", bias_init)):
        check_initializer(name, fn)
    dtype = check_float_dtype(dtype)
    fused.check_projection(projection)
    if reset not in _RESETS:
        raise ValueError(f"reset must be one of {_RESETS}, got {reset!r}")

    def init(key, input_size):
        D = check_size("input_size", input_size)
        kx, kh, kb, kn = split_keys(key, 4)
        params = {
            "w_x": inits.blockwise(input_init, 3)(kx, (D, 3 * H), dtype),
            "w_h": inits.blockwise(recurrent_init, 3)(kh, (H, 3 * H), dtype),
            "b": bias_init(kb, (3 * H,), dtype),
        }
        if reset == "after":
            params["b_hn"] = bias_init(kn, (H,), dtype)
        return params

    def initial_carry(params, batch_shape):
        return jnp.zeros((*check_batch_shape(batch_shape), H), params["w_h"].dtype)

    def apply(params, h, x):
        x = check_input(x, params["w_x"].shape[0])
        check_carry_batch(h, x, size=H)
        w_h = params["w_h"]
        gx = x @ params["w_x"]
        gx = gx + rows(params["b"], gx)
        xr, xz, xn = jnp.split(gx, 3, axis=-1)
        if reset == "after":
            hr, hz, hn = jnp.split(h @ w_h, 3, axis=-1)
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            n = candidate_activation(xn + r * (hn + rows(params["b_hn"], hn)))
        else:
            hrz = h @ w_h[:, : 2 * H]
            hr, hz = jnp.split(hrz, 2, axis=-1)
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            n = candidate_activation(xn + (r * h) @ w_h[:, 2 * H:])
        h = h + z * (n - h)
        return h, h

    # the fused path (cells/fused.py) knows the tanh candidate's derivative; other activations scan
    sequence = fused.gru_sequence(reset == "after", projection) if candidate_activation is jnp.tanh else None
    return Cell(init, initial_carry, apply, sequence=sequence)


def mgu(
    hidden_size: int,
    *,
    input_init: Initializer = inits.glorot_uniform,
    recurrent_init: Initializer = inits.orthogonal(),
    bias_init: Initializer = inits.zeros,
    forget_bias: float = 0.0,
    dtype=jnp.float32,
) -> Cell:
    """Minimal gated unit (Zhou, Wu, Zhang & Zhou 2016).

    ``f = σ(x W_xf + h W_hf + b_f)``, ``h̃ = tanh(x W_xn + (f⊙h) W_hn + b_n)``,
    ``h_t = (1 - f)⊙h_{t-1} + f⊙h̃``; output ``h_t``.

    Params: ``w_x [D, 2H]``, ``w_h [H, 2H]``, ``b [2H]`` fused in the order ``(f, n)``.
    Carry: ``h [..., H]``.
    """
    H = check_size("hidden_size", hidden_size)
    forget_bias = check_number("forget_bias", forget_bias)
    for name, fn in (("input_init", input_init), ("recurrent_init", recurrent_init),
                     ("bias_init", bias_init)):
        check_initializer(name, fn)
    dtype = check_float_dtype(dtype)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        kx, kh, kb = split_keys(key, 3)
        return {
            "w_x": inits.blockwise(input_init, 2)(kx, (D, 2 * H), dtype),
            "w_h": inits.blockwise(recurrent_init, 2)(kh, (H, 2 * H), dtype),
            "b": bias_init(kb, (2 * H,), dtype).at[:H].add(forget_bias),
        }

    def initial_carry(params, batch_shape):
        return jnp.zeros((*check_batch_shape(batch_shape), H), params["w_h"].dtype)

    def apply(params, h, x):
        x = check_input(x, params["w_x"].shape[0])
        check_carry_batch(h, x, size=H)
        w_h = params["w_h"]
        gx = x @ params["w_x"]
        xf, xn = jnp.split(gx + rows(params["b"], gx), 2, axis=-1)
        f = jax.nn.sigmoid(xf + h @ w_h[:, :H])
        n = jnp.tanh(xn + (f * h) @ w_h[:, H:])
        h = h + f * (n - h)
        return h, h

    return Cell(init, initial_carry, apply)
