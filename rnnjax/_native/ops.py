"""JAX side of the native kernels: the fused LSTM / GRU sequence as ``custom_vjp`` functions.

The forward kernel runs the recurrence with the input projection folded into each step (LSTM:
``z_t = b + [x_t, h] [W_x; W_h]``, one GEMM; GRU: ``b + x_t W_x`` then the ``h W_h`` GEMMs; the
packed AVX2 micro-kernel for small per-step GEMMs, OpenBLAS for large ones), so no ``[T, B, nH]``
buffer of ``G = X W_x + b`` is made: buffers above glibc's 32 MB mmap threshold are fresh pages on
every call, and their page faults cost more than the GEMM (measured in
``benchmarks/native_profile.py``). In the backward pass the kernel runs the per-step ``dz W_h^T``
GEMMs, emitting the gate pre-activation gradients ``dz [T, B, nH]`` of all steps. The weight
gradients are then single large GEMMs by XLA:
``dW_h = H_prev^T dZ``, ``dW_x = X^T dZ``, ``db = sum dZ``, ``dX = dZ W_x^T``.

The forward pass saves the activated gates (training) or keeps one step's worth of them
(inference: the primal function without a VJP). ``vmap`` (e.g. over stacked params, as sweeps do)
runs the kernel once per member (``vmap_method="sequential"``): each member has its own ``W_h``, so
the members share no GEMM, and a loop over them costs the same work as a batched kernel would.

Shapes as in `rnnjax.cells.fused`: ``xs [T, B, D]``, ``mask`` / ``resets`` ``[T, B]`` bool or
None, carries ``[B, H]``; ``T, B >= 1``, float32.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._native import available, reason

_VMAP = "sequential"


def _call(name, shapes, *args, **attrs):
    if not available():
        raise ValueError(f"the native kernels are not available: {reason()}")
    out = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    return jax.ffi.ffi_call(name, out, vmap_method=_VMAP)(*args, **{k: np.int32(v) for k, v in attrs.items()})


def _flags(mask, resets, T, B):
    m = jnp.ones((T, B), jnp.float32) if mask is None else mask.astype(jnp.float32)
    r = jnp.zeros((T, B), jnp.float32) if resets is None else resets.astype(jnp.float32)
    return m, r


def _tmm(a, b):
    """``sum_t a[t]^T b[t]``: one ``[K, T*B] x [T*B, N]`` GEMM."""
    T, B, K = a.shape
    return a.reshape(T * B, K).T @ b.reshape(T * B, b.shape[-1])


def _wgrads(xs, h_prev, dz):
    """``dW_x, dW_h, db`` in one ``[D+H+1, T*B] x [T*B, nH]`` GEMM: ``[x, h_prev, 1]^T dz`` (one
    pass over ``dz`` instead of three; measured faster on the 2-core EPYC)."""
    T, B, D = xs.shape
    H = h_prev.shape[-1]
    a = jnp.concatenate([xs, h_prev, jnp.ones((T, B, 1), xs.dtype)], axis=-1)
    w = _tmm(a, dz)
    return w[:D], w[D:D + H], w[D + H]


def _mm(a, w):
    T, B, K = a.shape
    return (a.reshape(T * B, K) @ w).reshape(T, B, w.shape[1])


def _prev(hs, h0, resets, hr, reverse):
    """The carry each step started from: the previous step's (``h0`` first), ``hr`` at resets."""
    if reverse:
        p = jnp.concatenate([hs[1:], h0[None]], axis=0)
    else:
        p = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    return p if resets is None else jnp.where(resets[..., None] > 0, hr[None], p)


def _last(a, reverse):
    return a[0] if reverse else a[-1]


def _ys(hs, m):
    return jnp.where(m[..., None] > 0, hs, jnp.zeros((), hs.dtype))


# ----------------------------------------------------------------------------------------- LSTM

def lstm(reverse, history, w_x, w_h, b, h0, c0, xs, mask, resets=None, hr=None, cr=None):
    """Fused LSTM (no peepholes) over ``xs [T, B, D]`` by the native kernel.

    Returns ``(h_T, c_T, ys [T, B, H])``, plus ``(hs, cs)`` (the carry after every step) when
    ``history``; the same function as `rnnjax.cells.fused.lstm_scan`.
    """
    T, B = xs.shape[:2]
    m, r = _flags(mask, resets, T, B)
    has_r = resets is not None
    hr = h0 if hr is None else hr
    cr = c0 if cr is None else cr
    return _lstm(bool(reverse), bool(history), has_r, w_x, w_h, b, h0, c0, xs, m, r, hr, cr)


def _lstm_run(reverse, history, w_x, w_h, b, h0, c0, xs, m, r, hr, cr, train):
    T, B = xs.shape[:2]
    H = h0.shape[-1]
    # the kernel does the input projection step by step (no [T, B, 4H] buffer of G)
    hs, cs, gates = _call("rnnjax_lstm_fwd", [(T, B, H), (T, B, H), (T if train else 1, B, 4 * H)],
                          xs, w_x, b, w_h, h0, c0, m, r, hr, cr, reverse=reverse)
    out = (_last(hs, reverse), _last(cs, reverse), _ys(hs, m))
    if history:
        out += (hs, cs)
    return out, (hs, cs, gates)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _lstm(reverse, history, has_r, w_x, w_h, b, h0, c0, xs, m, r, hr, cr):
    return _lstm_run(reverse, history, w_x, w_h, b, h0, c0, xs, m, r, hr, cr, train=False)[0]


def _lstm_fwd(reverse, history, has_r, w_x, w_h, b, h0, c0, xs, m, r, hr, cr):
    out, (hs, cs, gates) = _lstm_run(reverse, history, w_x, w_h, b, h0, c0, xs, m, r, hr, cr, train=True)
    return out, (w_x, w_h, h0, c0, xs, m, r, hr, cr, hs, cs, gates)


def _lstm_bwd(reverse, history, has_r, res, g):
    w_x, w_h, h0, c0, xs, m, r, hr, cr, hs, cs, gates = res
    dhT, dcT, dys = g[:3]
    dH = _ys(dys, m)
    dC = jnp.zeros_like(dH)
    if history:
        dH, dC = dH + g[3], g[4]
    dz, dh0, dc0, dhr, dcr = _call(
        "rnnjax_lstm_bwd", [gates.shape, h0.shape, h0.shape, h0.shape, h0.shape],
        w_h, h0, c0, m, r, hr, cr, gates, cs, dH, dC, dhT, dcT, reverse=reverse)
    h_prev = _prev(hs, h0, r if has_r else None, hr, reverse)
    zeros = jnp.zeros_like
    dw_x, dw_h, db = _wgrads(xs, h_prev, dz)
    return (dw_x, dw_h, db, dh0, dc0, _mm(dz, w_x.T), zeros(m),
            zeros(r), dhr if has_r else zeros(hr), dcr if has_r else zeros(cr))


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


# ------------------------------------------------------------------------------------------ GRU

def gru(reverse, reset_after, history, w_x, w_h, b, b_hn, h0, xs, mask, resets=None, hr=None):
    """Fused tanh GRU over ``xs [T, B, D]`` by the native kernel (``reset_after``: the cuDNN form).

    Returns ``(h_T, ys [T, B, H])``, plus ``hs`` (the carry after every step) when ``history``; the
    same function as `rnnjax.cells.fused.gru_scan` (``b_hn`` is used only when
    ``reset_after``).
    """
    T, B = xs.shape[:2]
    m, r = _flags(mask, resets, T, B)
    has_r = resets is not None
    hr = h0 if hr is None else hr
    return _gru(bool(reverse), bool(reset_after), bool(history), has_r, w_x, w_h, b, b_hn, h0, xs, m, r, hr)


def _gru_run(reverse, after, history, w_x, w_h, b, b_hn, h0, xs, m, r, hr, train):
    T, B = xs.shape[:2]
    H = h0.shape[-1]
    # the kernel does the input projection step by step (no [T, B, 3H] buffer of G)
    hs, gates, aux = _call("rnnjax_gru_fwd", [(T, B, H), (T if train else 1, B, 3 * H),
                                              (T if (train and after) else 1, B, H)],
                           xs, w_x, b, w_h, b_hn, h0, m, r, hr, reverse=reverse, after=after)
    out = (_last(hs, reverse), _ys(hs, m))
    if history:
        out += (hs,)
    return out, (hs, gates, aux)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _gru(reverse, after, history, has_r, w_x, w_h, b, b_hn, h0, xs, m, r, hr):
    return _gru_run(reverse, after, history, w_x, w_h, b, b_hn, h0, xs, m, r, hr, train=False)[0]


def _gru_fwd(reverse, after, history, has_r, w_x, w_h, b, b_hn, h0, xs, m, r, hr):
    out, (hs, gates, aux) = _gru_run(reverse, after, history, w_x, w_h, b, b_hn, h0, xs, m, r, hr, train=True)
    return out, (w_x, w_h, b_hn, h0, xs, m, r, hr, hs, gates, aux)


def _gru_bwd(reverse, after, history, has_r, res, g):
    w_x, w_h, b_hn, h0, xs, m, r, hr, hs, gates, aux = res
    T, B = xs.shape[:2]
    H = h0.shape[-1]
    dhT, dys = g[:2]
    dH = _ys(dys, m)
    if history:
        dH = dH + g[2]
    dG, dq, dh0, dhr = _call(
        "rnnjax_gru_bwd", [gates.shape, (T if after else 1, B, H), h0.shape, h0.shape],
        w_h, h0, m, r, hr, gates, aux, hs, dH, dhT, reverse=reverse, after=after)
    h_prev = _prev(hs, h0, r if has_r else None, hr, reverse)
    if after:
        dw_h = _tmm(h_prev, jnp.concatenate([dG[..., :2 * H], dq], axis=-1))
        db_hn = dq.sum(axis=(0, 1))
    else:  # W_hn's input is r ⊙ h
        dw_h = jnp.concatenate([_tmm(h_prev, dG[..., :2 * H]),
                                _tmm(gates[..., :H] * h_prev, dG[..., 2 * H:])], axis=1)
        db_hn = jnp.zeros_like(b_hn)
    zeros = jnp.zeros_like
    D = xs.shape[-1]
    wb = _tmm(jnp.concatenate([xs, jnp.ones((T, B, 1), xs.dtype)], axis=-1), dG)  # [dW_x; db]
    return (wb[:D], dw_h, wb[D], db_hn, dh0, _mm(dG, w_x.T), zeros(m), zeros(r),
            dhr if has_r else zeros(hr))


_gru.defvjp(_gru_fwd, _gru_bwd)
