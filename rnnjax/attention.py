"""Attention pooling over a recurrent network's outputs: additive and scaled dot-product.

A readout that looks at every step instead of only the last one: the outputs ``ys [T, ..., H]``
of any cell (``rnnjax.unroll``) are scored step by step, the scores are normalised over time with
a softmax, and the pooled vector is the weighted sum of the outputs::

    e_t     = score(h_t)                                  # [T, ...]
    alpha_t = exp(e_t) / sum_{s < len} exp(e_s)           # 0 for padded steps t >= len
    pooled  = sum_t alpha_t h_t                           # [..., H]

The pooled vector has a path of length one to every ``h_t``, so the gradient of a loss on it
reaches early steps without passing through the whole recurrence (Bahdanau, Cho & Bengio 2015;
Raffel & Ellis 2016, "feed-forward networks with attention").

Two scores, each a factory returning an [`Attention`][rnnjax.attention.Attention] ``(init, apply)`` like
[`rnnjax.dense`][rnnjax.layers.dense]:

* [`additive_attention`][rnnjax.attention.additive_attention]: ``e_t = v . tanh(h_t W + b)`` (Bahdanau et al.
  2015, with a learned query in place of the decoder state, as in Raffel & Ellis 2016).
* [`dot_product_attention`][rnnjax.attention.dot_product_attention]: ``e_t = q . k_t / sqrt(d_k)`` with ``k_t
  = h_t W_k`` (or ``k_t = h_t``) and a learned query vector ``q`` (Vaswani et al. 2017).

``apply(params, ys, *, lengths=None) -> (pooled [..., H], weights [T, ...])``. With ``lengths``
(an int array of the batch shape ``ys.shape[1:-1]``) the steps ``t >= lengths`` get weight
exactly 0 and contribute nothing to the pooled vector or to any gradient, even when ``ys`` holds
NaN or inf there. A sequence of length 0 pools to the zero vector with all weights 0 (no NaN).
Lengths must lie in ``[0, T]``: concrete ones outside are refused with a ``ValueError``; traced
ones (under ``jit``/``vmap``, which cannot be checked) make that sequence's pooled vector and
weights NaN instead of being silently clamped. ``ys`` must have ``T >= 1`` steps.

Example (a classifier over padded sequences ``xs [T, B, D]``)::

    cell, att, out = rnnjax.lstm(64), rnnjax.additive_attention(32), rnnjax.dense(10)
    params = {"cell": cell.init(k1, D), "att": att.init(k2, 64), "out": out.init(k3, 64)}
    _, hs = rnnjax.unroll(cell, params["cell"], xs, lengths=lengths)      # [T, B, 64]
    pooled, weights = att.apply(params["att"], hs, lengths=lengths)       # [B, 64], [T, B]
    logits = out.apply(params["out"], pooled)

Several learned queries (e.g. one per output position) are the same layer vmapped over stacked
params: ``jax.vmap(att.init, in_axes=(0, None))(keys, 64)`` and
``jax.vmap(lambda p: att.apply(p, hs)[0])(stacked)`` give ``[Q, B, 64]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import initializers as inits
from rnnjax.cells._common import check_float_dtype, check_initializer, check_size, rows, split_keys
from rnnjax.types import Array, Initializer, Params, PRNGKey
from rnnjax.unroll import check_lengths

__all__ = [
    "Attention",
    "additive_attention",
    "dot_product_attention",
    "masked_softmax",
]


class Attention(NamedTuple):
    """An attention pooling layer: ``init(key, input_size) -> params`` and
    ``apply(params, ys, *, lengths=None) -> (pooled [..., H], weights [T, ...])``."""

    init: Callable[[PRNGKey, int], Params]
    apply: Callable[..., tuple[Array, Array]]


def _check_ys(ys: Any, H: int) -> tuple[int, tuple[int, ...]]:
    if not isinstance(ys, (jax.Array, np.ndarray)):
        raise TypeError(f"ys must be a jax or numpy array of shape [T, ..., {H}] (time-major "
                        f"outputs of a cell), got {type(ys).__name__}")
    if ys.ndim < 2:
        raise ValueError(f"ys must have shape [T, ..., {H}] (rank >= 2, time first), got shape "
                         f"{ys.shape}")
    if ys.shape[-1] != H:
        raise ValueError(f"ys must have a last axis of size {H} (the input_size the params were "
                         f"made for), got shape {ys.shape}")
    if not jnp.issubdtype(ys.dtype, jnp.floating):
        raise TypeError(f"ys must have a floating dtype, got {ys.dtype}")
    if ys.shape[0] == 0:
        raise ValueError(f"ys has T=0 steps (shape {ys.shape}); attention pools over the time axis "
                         f"(the first) and needs T >= 1")
    return ys.shape[0], tuple(ys.shape[1:-1])


def _valid(T: int, batch_shape: tuple[int, ...], lengths: Any) -> tuple[Array | None, Array | None]:
    """``([T, ...batch] bool: step ``t`` is within its sequence, [...batch] bool: the length is
    outside [0, T])``; ``(None, None)`` without lengths. Concrete lengths outside ``[0, T]`` are
    refused here; traced ones (under ``jit``) cannot be, and are flagged instead."""
    if lengths is None:
        return None, None
    lengths = check_lengths(lengths, T, batch_shape)
    t = jnp.arange(T).reshape((T,) + (1,) * len(batch_shape))
    return t < lengths[None], (lengths < 0) | (lengths > T)


def masked_softmax(scores: Array, valid: Array | None = None) -> Array:
    """Softmax over the leading (time) axis, restricted to the ``valid`` steps.

    ``alpha_t = valid_t exp(e_t - m) / sum_s valid_s exp(e_s - m)`` with ``m`` the largest valid
    score (held constant in the gradient: the softmax does not depend on it). Invalid steps get
    exactly 0, whatever their score (NaN and inf included); a column with no valid step gets all
    zeros instead of NaN.

    Args:
      scores: ``[T, ...]`` scores ``e_t``.
      valid: optional ``[T, ...]`` bool mask (None: all steps valid).

    Returns:
      ``[T, ...]`` weights, summing to 1 over time where any step is valid, to 0 elsewhere.
    """
    if not isinstance(scores, (jax.Array, np.ndarray)) or not jnp.issubdtype(scores.dtype, jnp.floating):
        raise TypeError(f"scores must be a floating-point array [T, ...], got "
                        f"{getattr(scores, 'dtype', type(scores).__name__)}")
    if valid is None:
        valid = jnp.ones(scores.shape, bool)
    if not isinstance(valid, (jax.Array, np.ndarray)) or valid.dtype != jnp.bool_:
        raise TypeError(f"valid must be a bool array of the shape of scores {scores.shape}, got "
                        f"{getattr(valid, 'dtype', type(valid).__name__)}")
    if valid.shape != scores.shape:
        raise ValueError(f"valid must have the shape of scores {scores.shape}, got {valid.shape}")
    scores = jnp.where(valid, scores, jnp.zeros_like(scores))
    m = jnp.max(jnp.where(valid, scores, -jnp.inf), axis=0, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m)))
    e = jnp.where(valid, jnp.exp(scores - m), jnp.zeros_like(scores))
    denom = jnp.sum(e, axis=0, keepdims=True)
    return e / jnp.where(denom > 0, denom, jnp.ones_like(denom))


def _pool(score: Callable[[Array], Array], ys: Array, lengths: Any) -> tuple[Array, Array]:
    """Score the (masked) outputs, normalise over time, and pool them."""
    T, batch_shape = ys.shape[0], tuple(ys.shape[1:-1])
    valid, bad = _valid(T, batch_shape, lengths)
    if valid is not None:  # padded outputs never enter the arithmetic (NaN/inf safe, also in grads)
        ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
    weights = masked_softmax(score(ys), valid)
    pooled = jnp.sum(weights[..., None] * ys, axis=0)
    if bad is not None:  # a traced length outside [0, T]: NaN for that sequence, never a silent clamp
        pooled = jnp.where(bad[..., None], jnp.full_like(pooled, jnp.nan), pooled)
        weights = jnp.where(bad[None], jnp.full_like(weights, jnp.nan), weights)
    return pooled, weights


def additive_attention(attention_size: int | None = None, *,
                       kernel_init: Initializer = inits.glorot_uniform,
                       bias_init: Initializer = inits.zeros,
                       query_init: Initializer | None = None,
                       dtype: Any = jnp.float32) -> Attention:
    """Additive (Bahdanau) attention pooling over the time axis of a cell's outputs.

    ``e_t = v . tanh(h_t W + b)``, ``alpha = softmax_t(e)`` over the valid steps,
    ``pooled = sum_t alpha_t h_t`` (Bahdanau, Cho & Bengio 2015, "Neural machine translation by
    jointly learning to align and translate"; the learned query ``v`` in place of the decoder
    state is the feed-forward attention of Raffel & Ellis 2016).

    Params: ``w [H, A]``, ``b [A]``, ``v [A]``.

    Args:
      attention_size: ``A``, the width of the scoring layer (default: ``H``, the input size).
      kernel_init, bias_init: initializers of ``w`` and ``b``.
      query_init: initializer of ``v`` (default: normal with standard deviation ``1/sqrt(A)``).
      dtype: params dtype.

    Returns:
      An [`Attention`][rnnjax.attention.Attention]; ``apply(params, ys [T, ..., H], *, lengths=None)`` returns
      ``(pooled [..., H], weights [T, ...])``. Steps ``t >= lengths`` get weight exactly 0; a
      sequence of length 0 gives a zero pooled vector and zero weights.
    """
    A = None if attention_size is None else check_size("attention_size", attention_size)
    check_initializer("kernel_init", kernel_init)
    check_initializer("bias_init", bias_init)
    check_initializer("query_init", query_init, allow_none=True)
    dtype = check_float_dtype(dtype)

    def init(key, input_size):
        H = check_size("input_size", input_size)
        a = H if A is None else A
        kw, kb, kv = split_keys(key, 3)
        v_init = inits.normal(1.0 / math.sqrt(a)) if query_init is None else query_init
        return {"w": kernel_init(kw, (H, a), dtype), "b": bias_init(kb, (a,), dtype),
                "v": v_init(kv, (a,), dtype)}

    def apply(params, ys, *, lengths=None):
        _check_ys(ys, params["w"].shape[0])

        def score(h):
            z = h @ params["w"]
            return jnp.tanh(z + rows(params["b"], z)) @ params["v"]

        return _pool(score, ys, lengths)

    return Attention(init, apply)


def dot_product_attention(key_size: int | None = None, *,
                          kernel_init: Initializer = inits.glorot_uniform,
                          query_init: Initializer | None = None,
                          dtype: Any = jnp.float32) -> Attention:
    """Scaled dot-product attention pooling with a learned query vector.

    ``k_t = h_t W_k`` (or ``k_t = h_t`` when ``key_size`` is None), ``e_t = q . k_t / sqrt(d_k)``,
    ``alpha = softmax_t(e)`` over the valid steps, ``pooled = sum_t alpha_t h_t`` (Vaswani et al.
    2017, "Attention is all you need", with one learned query and the outputs as values).

    Params: ``q [d_k]``, and ``w_k [H, d_k]`` when ``key_size`` is given (``d_k = H`` otherwise).

    Args:
      key_size: ``d_k`` of a learned key projection; None: the outputs are the keys.
      kernel_init: initializer of ``w_k``.
      query_init: initializer of ``q`` (default: zeros, so training starts from mean pooling).
      dtype: params dtype.

    Returns:
      An [`Attention`][rnnjax.attention.Attention]; ``apply(params, ys [T, ..., H], *, lengths=None)`` returns
      ``(pooled [..., H], weights [T, ...])``. Steps ``t >= lengths`` get weight exactly 0; a
      sequence of length 0 gives a zero pooled vector and zero weights.
    """
    K = None if key_size is None else check_size("key_size", key_size)
    check_initializer("kernel_init", kernel_init)
    check_initializer("query_init", query_init, allow_none=True)
    dtype = check_float_dtype(dtype)
    q_init = inits.zeros if query_init is None else query_init

    def init(key, input_size):
        H = check_size("input_size", input_size)
        kk, kq = split_keys(key, 2)
        if K is None:
            return {"q": q_init(kq, (H,), dtype)}
        return {"w_k": kernel_init(kk, (H, K), dtype), "q": q_init(kq, (K,), dtype)}

    def apply(params, ys, *, lengths=None):
        H = params["w_k"].shape[0] if "w_k" in params else params["q"].shape[0]
        _check_ys(ys, H)
        d_k = params["q"].shape[0]

        def score(h):
            k = h @ params["w_k"] if "w_k" in params else h
            return (k @ params["q"]) / jnp.sqrt(jnp.asarray(d_k, k.dtype))

        return _pool(score, ys, lengths)

    return Attention(init, apply)
