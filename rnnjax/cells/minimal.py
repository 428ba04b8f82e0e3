"""minGRU and minLSTM (Feng et al. 2024): gates that depend on the input only, so that the carry
update is linear in the carry and the whole sequence runs as a parallel (associative) scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax import initializers as inits
from rnnjax.cells._common import (
    check_batch_shape,
    check_bool,
    check_carry_batch,
    check_input,
    check_size,
    rows,
    split_keys,
)
from rnnjax.types import Array, Cell, Initializer, LinearForm, LinearRecurrence, LogLinearRecurrence


def g(x: Array) -> Array:
    """The paper's positive candidate map: ``g(x) = x + 0.5`` for ``x >= 0``, ``σ(x)`` otherwise."""
    return jnp.where(x >= 0, jnp.maximum(x, 0.0) + 0.5, jax.nn.sigmoid(x))


def log_g(x: Array) -> Array:
    """``log g(x)``, computed stably: ``log(x + 0.5)`` for ``x >= 0``, ``-softplus(-x)`` otherwise."""
    return jnp.where(x >= 0, jnp.log(jnp.maximum(x, 0.0) + 0.5), -jax.nn.softplus(-x))


def _dense(x: Array, w: Array, b: Array) -> Array:
    z = x @ w
    return z + rows(b, z)


def _init_dense(n_blocks, input_init, bias_init, dtype, H):
    def init(key, input_size):
        D = check_size("input_size", input_size)
        kx, kb = split_keys(key, 2)
        return {
            "w_x": inits.blockwise(input_init, n_blocks)(kx, (D, n_blocks * H), dtype),
            "b": bias_init(kb, (n_blocks * H,), dtype),
        }

    return init


def _initial_carry(H):
    def initial_carry(params, batch_shape):
        return jnp.zeros((*check_batch_shape(batch_shape), H), params["w_x"].dtype)

    return initial_carry


def _readout(params, carries, xs):
    del params, xs
    return carries


def mingru(
    hidden_size: int,
    *,
    log_space: bool = True,
    negative_eigenvalues: bool = False,
    input_init: Initializer = inits.glorot_uniform,
    bias_init: Initializer = inits.zeros,
    dtype=jnp.float32,
) -> Cell:
    """Minimal GRU, minGRU (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs All We Needed?").

    ``z_t = σ(x_t W_z + b_z)``, ``h̃_t = g(x_t W_h + b_h)``, ``h_t = (1 - z_t)⊙h_{t-1} + z_t⊙h̃_t``;
    output ``h_t``. The gates see only ``x_t``, so ``h_t`` is linear in ``h_{t-1}`` and
    ``unroll(..., parallel=True)`` runs it as an associative scan.

    With ``log_space=True`` (the paper's stable form) ``g`` is the positive map
    ``g(x) = x + 0.5`` (``x >= 0``), ``σ(x)`` (``x < 0``), and the parallel scan runs on
    ``log(1 - z) = -softplus(k_z)`` and ``log z + log g(h̃)`` with ``logaddexp``. With
    ``log_space=False`` ``g`` is the identity (the paper's plain minGRU) and the scan runs on
    ``a = 1 - z``, ``b = z⊙h̃``. ``apply`` computes the same function in linear space, step by step.

    ``negative_eigenvalues=True`` (Grazzi, Siems, Franke, Zela, Hutter & Pontil, "Unlocking
    State-Tracking in Linear RNNs Through Negative Eigenvalues", ICLR 2025) maps the decay's range
    ``[0, 1]`` to ``[-1, 1]``: ``h_t = (1 - 2 z_t)⊙h_{t-1} + z_t⊙h̃_t`` (``1 - 2σ(k) = -tanh(k/2)``),
    so ``h`` can flip sign at a step (parity). A negative factor has no logarithm: the parallel
    scan then runs in linear space (``a = 1 - 2z``, ``b = z⊙h̃``, ``h̃`` still ``g`` of the
    candidate with ``log_space=True``).

    Params: ``w_x [D, 2H]``, ``b [2H]`` fused in the order ``(z, h)``. Carry: ``h [..., H]``.

    Args:
      hidden_size: H.
      log_space: the paper's log-space variant (positive candidates, log-space parallel scan).
      negative_eigenvalues: the decay ``1 - 2z ∈ [-1, 1]`` in place of ``1 - z ∈ [0, 1]``.
      input_init, bias_init: initialisers for ``w_x`` (per block) and ``b``.
      dtype: parameter dtype.
    """
    H = check_size("hidden_size", hidden_size)
    if not isinstance(log_space, bool):
        raise TypeError(f"log_space must be a bool, got {log_space!r}")
    negative_eigenvalues = check_bool("negative_eigenvalues", negative_eigenvalues)

    def gates(params, x):
        k, c = jnp.split(_dense(x, params["w_x"], params["b"]), 2, axis=-1)
        return k, c

    def apply(params, h, x):
        x = check_input(x, params["w_x"].shape[0])
        check_carry_batch(h, x)
        k, c = gates(params, x)
        z = jax.nn.sigmoid(k)
        cand = g(c) if log_space else c
        if negative_eigenvalues:
            h = -jnp.tanh(0.5 * k) * h + z * cand
        else:
            h = (1.0 - z) * h + z * cand
        return h, h

    def coefficients(params, xs):
        xs = check_input(xs, params["w_x"].shape[0], "xs")
        k, c = gates(params, xs)
        if negative_eigenvalues:  # a = 1 - 2z may be negative: linear space
            return LinearRecurrence(-jnp.tanh(0.5 * k), jax.nn.sigmoid(k) * (g(c) if log_space else c))
        if log_space:
            return LogLinearRecurrence(-jax.nn.softplus(k), -jax.nn.softplus(-k) + log_g(c))
        z = jax.nn.sigmoid(k)
        return LinearRecurrence(1.0 - z, z * c)

    return Cell(_init_dense(2, input_init, bias_init, dtype, H), _initial_carry(H), apply,
                linear=LinearForm(coefficients, _readout))


def minlstm(
    hidden_size: int,
    *,
    log_space: bool = True,
    forget_bias: float = 0.0,
    input_init: Initializer = inits.glorot_uniform,
    bias_init: Initializer = inits.zeros,
    dtype=jnp.float32,
) -> Cell:
    """Minimal LSTM, minLSTM (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs All We Needed?").

    ``f_t = σ(x_t W_f + b_f)``, ``i_t = σ(x_t W_i + b_i)``, ``h̃_t = g(x_t W_h + b_h)``,
    normalised ``f'_t = f_t / (f_t + i_t)``, ``i'_t = i_t / (f_t + i_t)``,
    ``h_t = f'_t⊙h_{t-1} + i'_t⊙h̃_t``; output ``h_t`` (time-independent scale: no output gate,
    no separate cell state).

    With ``log_space=True`` (default, the paper's stable form) ``g`` is the positive map of
    `g` and the parallel scan runs on ``log f' = -softplus(softplus(-k_f) - softplus(-k_i))``
    and ``log i' + log g(h̃)`` (``log i' = -softplus(softplus(-k_i) - softplus(-k_f))``) with
    ``logaddexp``; with ``log_space=False`` ``g`` is the identity and the scan runs on
    ``a = f'``, ``b = i'⊙h̃``. ``apply`` computes the same function in linear space.

    Params: ``w_x [D, 3H]``, ``b [3H]`` fused in the order ``(f, i, h)``. Carry: ``h [..., H]``.

    Args:
      hidden_size: H.
      log_space: the paper's log-space variant (positive candidates, log-space parallel scan).
      forget_bias: added to ``b_f`` at initialisation.
      input_init, bias_init: initialisers for ``w_x`` (per block) and ``b``.
      dtype: parameter dtype.
    """
    H = check_size("hidden_size", hidden_size)
    if not isinstance(log_space, bool):
        raise TypeError(f"log_space must be a bool, got {log_space!r}")
    base_init = _init_dense(3, input_init, bias_init, dtype, H)

    def init(key, input_size):
        params = base_init(key, input_size)
        params["b"] = params["b"].at[:H].add(forget_bias)
        return params

    def gates(params, x):
        return jnp.split(_dense(x, params["w_x"], params["b"]), 3, axis=-1)

    def apply(params, h, x):
        x = check_input(x, params["w_x"].shape[0])
        check_carry_batch(h, x)
        kf, ki, c = gates(params, x)
        f, i = jax.nn.sigmoid(kf), jax.nn.sigmoid(ki)
        cand = g(c) if log_space else c
        h = (f * h + i * cand) / (f + i)
        return h, h

    def coefficients(params, xs):
        xs = check_input(xs, params["w_x"].shape[0], "xs")
        kf, ki, c = gates(params, xs)
        if log_space:
            diff = jax.nn.softplus(-kf) - jax.nn.softplus(-ki)  # log i - log f
            return LogLinearRecurrence(-jax.nn.softplus(diff), -jax.nn.softplus(-diff) + log_g(c))
        f, i = jax.nn.sigmoid(kf), jax.nn.sigmoid(ki)
        return LinearRecurrence(f / (f + i), i / (f + i) * c)

    return Cell(init, _initial_carry(H), apply, linear=LinearForm(coefficients, _readout))
