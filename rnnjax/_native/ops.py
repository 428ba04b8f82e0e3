"""JAX side of the native kernels: the fused LSTM / GRU sequence as ``custom_vjp`` functions.

The forward kernel runs the recurrence with the input projection folded into each step (LSTM:
``z_t = b + [x_t, h] [W_x; W_h]``, one GEMM; GRU: ``b + x_t W_x`` then the ``h W_h`` GEMMs; the
packed AVX2 micro-kernel for small per-step GEMMs, OpenBLAS for large ones), so no ``[T, B, nH]``
buffer of ``G = X W_x + b`` is made: buffers above glibc's 32 MB mmap threshold are fresh pages on
every call, and their page faults cost more than the GEMM (measured in
``benchmarks/native_profile.py``). The backward kernel runs the per-step ``dz W_h^T`` GEMMs and
also the weight and input gradients, so the gate pre-activation gradients ``dz`` never leave it:
it keeps ``dz`` of a fixed number of steps (about 256 rows of ``[B, nH]``) in a scratch buffer and
per chunk adds ``[x, h_prev, 1]^T dz`` to ``[dW_x; dW_h; db]`` (one GEMM) and writes
``dxs = dz W_x^T`` (the GRU: ``[x, 1]^T dG``, ``h_prev^T dG_rz`` and ``[h_prev, 1]^T dq`` or
``(r h_prev)^T dG_n``), where ``h_prev`` is the carry each step started from (``hr`` at resets),
on a second thread overlapped with the recurrence where there is a core for it. The chunks are
fixed runs of steps (set by ``B`` and ``T`` only), added in a fixed order, so the result is the
same on every run. The kernel also masks ``dys`` itself, and a missing history cotangent is passed
as a ``[1, B, H]`` zero: XLA makes no ``[T, B, *]`` buffer in the backward pass but ``dxs``.

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
    none = jnp.zeros((1,) + h0.shape, h0.dtype)  # no history cotangent: zero
    dHs, dCs = (g[3], g[4]) if history else (none, none)
    # the kernel masks dys, and returns the weight gradients and dxs (dz stays inside)
    dw_x, dw_h, db, dxs, dh0, dc0, dhr, dcr = _call(
        "rnnjax_lstm_bwd", [w_x.shape, w_h.shape, (w_h.shape[1],), xs.shape] + [h0.shape] * 4,
        xs, w_x, w_h, h0, c0, m, r, hr, cr, gates, hs, cs, dys, dHs, dCs, dhT, dcT, reverse=reverse)
    zeros = jnp.zeros_like
    return (dw_x, dw_h, db, dh0, dc0, dxs, zeros(m),
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
    dhT, dys = g[:2]
    dHs = g[2] if history else jnp.zeros((1,) + h0.shape, h0.dtype)  # no history cotangent: zero
    # the kernel masks dys, and returns the weight gradients and dxs (dG, dq stay inside)
    dw_x, dw_h, db, db_hn, dxs, dh0, dhr = _call(
        "rnnjax_gru_bwd", [w_x.shape, w_h.shape, (w_h.shape[1],), b_hn.shape, xs.shape, h0.shape, h0.shape],
        xs, w_x, w_h, h0, m, r, hr, gates, aux, hs, dys, dHs, dhT, reverse=reverse, after=after)
    zeros = jnp.zeros_like
    return (dw_x, dw_h, db, db_hn, dh0, dxs, zeros(m), zeros(r), dhr if has_r else zeros(hr))


_gru.defvjp(_gru_fwd, _gru_bwd)
