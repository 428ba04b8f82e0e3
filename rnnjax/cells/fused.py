"""Fused sequence paths for the LSTM and GRU (the cuDNN arrangement), used by ``unroll``.

``unroll`` over ``rnnjax.lstm`` / ``rnnjax.gru`` calls these instead of scanning ``apply`` when the
cell allows it (no peepholes; tanh candidate). They compute the same function with less work:

- the input projection of all steps is one ``[T*B, D] x [D, nH]`` matmul before the scan;
- the sigmoid gates are evaluated through tanh, ``σ(z) = (1 + tanh(z/2)) / 2``, with the ``1/2``
  folded into the weights once per sequence, so one ``tanh`` covers all gates of a step;
- a custom VJP: the backward scan carries only ``dh`` (and ``dc``) and emits the pre-activation
  gradients ``dz_t``; the weight gradients are then single large matmuls over all steps
  (``dW_h = H_prev^T dZ``, ``dW_x = X^T dZ``) instead of a ``[H, nH]`` accumulation per step.

Inputs are time-major with one flattened batch axis: ``xs [T, B, D]``, ``mask [T, B]`` (bool or None;
``False`` steps keep the carry and output zeros), ``resets [T, B]`` (bool or None; ``True``: the
carry entering that step, in scan order, is the reset carry ``hr``/``cr``, whose gradient is the
sum of the gradients of the carries entering the reset steps), ``reverse`` scans from the last step.
A reset step must be a valid step (the ``sequence`` hooks below AND it with the mask).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from rnnjax.cells._common import check_input, rows
from rnnjax.types import LSTMState


def _prev(seq: jax.Array, first: jax.Array, reverse: bool) -> jax.Array:
    """The carry entering each step: ``[first, seq[0], ..., seq[T-2]]`` (mirrored for reverse)."""
    if reverse:
        return jnp.concatenate([seq[1:], first[None]], axis=0)
    return jnp.concatenate([first[None], seq[:-1]], axis=0)


def _where(m, a, b):
    """``a`` at valid steps (``m`` true), ``b`` elsewhere; ``m = None`` means all steps valid."""
    return a if m is None else jnp.where(m[..., None], a, b)


def _reset(r, carry0, h):
    """``carry0`` where ``r`` (the carry entering a reset step), else ``h``; ``r = None``: ``h``."""
    return h if r is None else jnp.where(r[..., None], carry0, h)


def _take_reset(r, acc, d):
    """Backward of :func:`_reset`: add ``d`` at reset rows to ``acc``, pass zero there to ``h``."""
    if r is None:
        return acc, d
    return acc + jnp.where(r[..., None], d, jnp.zeros_like(d)), jnp.where(r[..., None], jnp.zeros_like(d), d)


def _zeros_or_none(x):
    return None if x is None else jnp.zeros_like(x)


def _flat_matmul(a: jax.Array, w: jax.Array) -> jax.Array:
    """``[T, B, K] @ [K, N]`` as one 2-D matmul."""
    T, B, K = a.shape
    return (a.reshape(T * B, K) @ w).reshape(T, B, w.shape[1])


def _flat_tmatmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``sum_t a[t]^T b[t]`` for ``a [T, B, K]``, ``b [T, B, N]``: one ``[K, T*B] x [T*B, N]`` matmul."""
    T, B, K = a.shape
    return a.reshape(T * B, K).T @ b.reshape(T * B, b.shape[-1])


# ----------------------------------------------------------------------------------------- LSTM

def _lstm_scale(H: int, dtype) -> jax.Array:
    half = jnp.full((H,), 0.5, dtype)
    return jnp.concatenate([half, half, jnp.ones((H,), dtype), half])  # gates (i, f, g, o)


def _lstm_forward(reverse, unroll, w_x, w_h, b, h0, c0, xs, mask, resets, hr, cr, save=True):
    H = h0.shape[-1]
    s = _lstm_scale(H, w_h.dtype)
    gx = _flat_matmul(xs, w_x * s[None, :])
    gx = gx + (b * s).reshape(1, 1, -1)
    w_hs = w_h * s[None, :]

    def step(carry, inp):
        h, c = carry
        g_t, m, rs = inp
        h_in, c_in = _reset(rs, hr, h), _reset(rs, cr, c)
        t = jnp.tanh(g_t + h_in @ w_hs)
        ti, tf, tg, to = jnp.split(t, 4, axis=-1)
        c_new = (0.5 + 0.5 * tf) * c_in + (0.5 + 0.5 * ti) * tg
        h_new = (0.5 + 0.5 * to) * jnp.tanh(c_new)
        h_new, c_new = _where(m, h_new, h), _where(m, c_new, c)
        if not save:  # inference: emit the outputs only
            return (h_new, c_new), _where(m, h_new, jnp.zeros_like(h_new))
        return (h_new, c_new), (h_new, c_new, t)

    (hT, cT), out = jax.lax.scan(step, (h0, c0), (gx, mask, resets), reverse=reverse, unroll=unroll)
    if not save:
        return (hT, cT, out), None
    hs, cs, ts = out
    ys = _where(mask, hs, jnp.zeros_like(hs))
    return (hT, cT, ys), (hs, cs, ts)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def lstm_scan(reverse, unroll, w_x, w_h, b, h0, c0, xs, mask, resets=None, hr=None, cr=None):
    """Fused LSTM over ``xs [T, B, D]``: returns ``(h_T, c_T, ys [T, B, H])``.

    ``resets [T, B]`` (or None) with the reset carry ``hr, cr [B, H]`` (see the module docstring).
    """
    return _lstm_forward(reverse, unroll, w_x, w_h, b, h0, c0, xs, mask, resets, hr, cr,
                         save=False)[0]


def _lstm_fwd(reverse, unroll, w_x, w_h, b, h0, c0, xs, mask, resets=None, hr=None, cr=None):
    out, (hs, cs, ts) = _lstm_forward(reverse, unroll, w_x, w_h, b, h0, c0, xs, mask, resets, hr, cr)
    return out, (w_x, w_h, h0, c0, xs, mask, resets, hr, cr, hs, cs, ts)


def _lstm_bwd(reverse, unroll, res, g):
    w_x, w_h, h0, c0, xs, mask, resets, hr, cr, hs, cs, ts = res
    dhT, dcT, dys = g
    H = h0.shape[-1]
    c_prev = _prev(cs, c0, reverse)
    if resets is not None:  # the carry each step actually started from
        c_prev = jnp.where(resets[..., None], cr[None], c_prev)
    # σ(z) = (1 + t)/2 with t = tanh(z/2), so σ'(z) = (1 - t²)/4; tanh'(z) = 1 - t²
    dscale = _lstm_scale(H, w_h.dtype) ** 2
    w_hT = w_h.T

    def step(carry, inp):
        (dh, dc), (ghr, gcr) = carry
        dy, t, c, cp, m, rs = inp
        dh_in = dh + dy
        ti, tf, tg, to = jnp.split(t, 4, axis=-1)
        i, f, o = 0.5 + 0.5 * ti, 0.5 + 0.5 * tf, 0.5 + 0.5 * to
        tc = jnp.tanh(c)
        dct = dc + dh_in * o * (1.0 - tc * tc)
        upstream = jnp.concatenate([dct * tg, dct * cp, dct * i, dh_in * tc], axis=-1)
        dz = upstream * (1.0 - t * t) * dscale[None, :]
        dz = _where(m, dz, jnp.zeros_like(dz))
        dh_prev = _where(m, dz @ w_hT, dh)
        dc_prev = _where(m, dct * f, dc)
        ghr, dh_prev = _take_reset(rs, ghr, dh_prev)
        gcr, dc_prev = _take_reset(rs, gcr, dc_prev)
        return ((dh_prev, dc_prev), (ghr, gcr)), dz

    dys = _where(mask, dys, jnp.zeros_like(dys))
    acc = (_zeros_or_none(hr), _zeros_or_none(cr))
    ((dh0, dc0), (ghr, gcr)), dz = jax.lax.scan(
        step, ((dhT, dcT), acc), (dys, ts, cs, c_prev, mask, resets), reverse=not reverse,
        unroll=unroll)
    h_prev = _prev(hs, h0, reverse)
    if resets is not None:
        h_prev = jnp.where(resets[..., None], hr[None], h_prev)
    return (_flat_tmatmul(xs, dz), _flat_tmatmul(h_prev, dz), dz.sum(axis=(0, 1)), dh0, dc0,
            _flat_matmul(dz, w_x.T), None, None, ghr, gcr)


lstm_scan.defvjp(_lstm_fwd, _lstm_bwd)


# ------------------------------------------------------------------------------------------ GRU

def _gru_forward(reverse, reset_after, unroll, w_x, w_h, b, b_hn, h0, xs, mask, resets, hr,
                 save=True):
    H = h0.shape[-1]
    s = jnp.concatenate([jnp.full((2 * H,), 0.5, w_h.dtype), jnp.ones((H,), w_h.dtype)])  # (r, z, n)
    gx = _flat_matmul(xs, w_x * s[None, :])
    gx = gx + (b * s).reshape(1, 1, -1)
    w_rz = w_h[:, :2 * H] * 0.5
    w_n = w_h[:, 2 * H:]

    def step(h_kept, inp):
        g_t, m, rs = inp
        h = _reset(rs, hr, h_kept)
        gr, gz, gn = jnp.split(g_t, 3, axis=-1)
        if reset_after:
            a = h @ jnp.concatenate([w_rz, w_n], axis=1)
            t = jnp.tanh(jnp.concatenate([gr, gz], -1) + a[:, :2 * H])
            hn = a[:, 2 * H:] + rows(b_hn, h)
            r = 0.5 + 0.5 * t[:, :H]
            n = jnp.tanh(gn + r * hn)
            aux = hn
        else:
            t = jnp.tanh(jnp.concatenate([gr, gz], -1) + h @ w_rz)
            r = 0.5 + 0.5 * t[:, :H]
            n = jnp.tanh(gn + (r * h) @ w_n)
            aux = None  # the backward pass of this form needs no extra residual
        z = 0.5 + 0.5 * t[:, H:]
        h_new = _where(m, h + z * (n - h), h_kept)
        if not save:  # inference: emit the outputs only
            return h_new, _where(m, h_new, jnp.zeros_like(h_new))
        return h_new, (h_new, t, n, aux)

    hT, out = jax.lax.scan(step, h0, (gx, mask, resets), reverse=reverse, unroll=unroll)
    if not save:
        return (hT, out), None
    hs, ts, ns, auxs = out  # auxs: h W_hn + b_hn per step (reset after), else None
    ys = _where(mask, hs, jnp.zeros_like(hs))
    return (hT, ys), (hs, ts, ns, auxs)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def gru_scan(reverse, reset_after, unroll, w_x, w_h, b, b_hn, h0, xs, mask, resets=None, hr=None):
    """Fused tanh GRU over ``xs [T, B, D]``: returns ``(h_T, ys [T, B, H])``.

    ``b_hn [H]`` is used only when ``reset_after`` (pass zeros otherwise). ``resets [T, B]`` (or
    None) with the reset carry ``hr [B, H]`` (see the module docstring).
    """
    return _gru_forward(reverse, reset_after, unroll, w_x, w_h, b, b_hn, h0, xs, mask, resets, hr,
                        save=False)[0]


def _gru_fwd(reverse, reset_after, unroll, w_x, w_h, b, b_hn, h0, xs, mask, resets=None, hr=None):
    out, (hs, ts, ns, auxs) = _gru_forward(reverse, reset_after, unroll, w_x, w_h, b, b_hn, h0, xs,
                                           mask, resets, hr)
    return out, (w_x, w_h, b_hn, h0, xs, mask, resets, hr, hs, ts, ns, auxs)


def _gru_bwd(reverse, reset_after, unroll, res, g):
    w_x, w_h, b_hn, h0, xs, mask, resets, hr, hs, ts, ns, auxs = res
    H = h0.shape[-1]
    dhT, dys = g
    h_prev = _prev(hs, h0, reverse)
    if resets is not None:  # the carry each step actually started from
        h_prev = jnp.where(resets[..., None], hr[None], h_prev)
    w_n = w_h[:, 2 * H:]

    def step(carry, inp):
        dh, ghr = carry
        dy, t, n, aux, hp, m, rs = inp
        dh_in = dh + dy
        tr, tz = t[:, :H], t[:, H:]
        r, z = 0.5 + 0.5 * tr, 0.5 + 0.5 * tz
        dn_pre = dh_in * z * (1.0 - n * n)
        dz_pre = dh_in * (n - hp) * 0.5 * (1.0 - tz) * z
        if reset_after:
            dhn = dn_pre * r
            dr_pre = dn_pre * aux * 0.5 * (1.0 - tr) * r
            da = jnp.concatenate([dr_pre, dz_pre, dhn], axis=-1)  # d(h @ w_h) (+ b_hn for dhn)
            dh_prev = da @ w_h.T + dh_in * (1.0 - z)
            emit = (jnp.concatenate([dr_pre, dz_pre, dn_pre], -1), dhn)
        else:
            drh = dn_pre @ w_n.T  # d(r⊙h)
            dr_pre = drh * hp * 0.5 * (1.0 - tr) * r
            drz = jnp.concatenate([dr_pre, dz_pre], axis=-1)
            dh_prev = drz @ w_h[:, :2 * H].T + drh * r + dh_in * (1.0 - z)
            emit = (jnp.concatenate([dr_pre, dz_pre, dn_pre], -1), r * hp)
        emit = jax.tree_util.tree_map(lambda e: _where(m, e, jnp.zeros_like(e)), emit)
        ghr, dh_prev = _take_reset(rs, ghr, _where(m, dh_prev, dh))
        return (dh_prev, ghr), emit

    dys = _where(mask, dys, jnp.zeros_like(dys))
    (dh0, ghr), (dzs, extra) = jax.lax.scan(
        step, (dhT, _zeros_or_none(hr)), (dys, ts, ns, auxs, h_prev, mask, resets),
        reverse=not reverse, unroll=unroll)
    dw_x = _flat_tmatmul(xs, dzs)
    db = dzs.sum(axis=(0, 1))
    if reset_after:
        # extra = d(h W_hn + b_hn); gate rows r, z use dzs directly
        dw_h = _flat_tmatmul(h_prev, jnp.concatenate([dzs[..., :2 * H], extra], -1))
        db_hn = extra.sum(axis=(0, 1))
    else:
        # extra = r ⊙ h_prev, the input of W_hn
        dw_h = jnp.concatenate([_flat_tmatmul(h_prev, dzs[..., :2 * H]),
                                _flat_tmatmul(extra, dzs[..., 2 * H:])], axis=1)
        db_hn = jnp.zeros_like(b_hn)
    return dw_x, dw_h, db, db_hn, dh0, _flat_matmul(dzs, w_x.T), None, None, ghr


gru_scan.defvjp(_gru_fwd, _gru_bwd)


# ------------------------------------------------------------------- the cells' ``sequence`` hooks

def _flatten(xs, mask, carry_leaf, D):
    """``[T, *batch, D]`` -> ``[T, B, D]`` (and the mask, the carry) for the fused scans."""
    check_input(xs, D, "xs")
    if carry_leaf.shape[:-1] != xs.shape[1:-1]:
        raise ValueError(f"carry has batch shape {carry_leaf.shape[:-1]} but xs has batch shape "
                         f"{xs.shape[1:-1]}")
    T, batch = xs.shape[0], xs.shape[1:-1]
    B = math.prod(batch)
    m = None if mask is None else mask.reshape(T, B)
    return xs.reshape(T, B, D), m, batch, B


def _flat_resets(resets, m, T, B):
    """``resets [T, ...]`` -> ``[T, B]``, and only at valid steps (a padded step never resets)."""
    if resets is None:
        return None
    r = resets.reshape(T, B)
    return r if m is None else r & m


def lstm_sequence(params, carry, xs, *, mask, reverse, unroll, resets=None, reset_carry=None):
    """``Cell.sequence`` of ``rnnjax.lstm`` without peepholes (see :func:`lstm_scan`)."""
    D = params["w_x"].shape[0]
    x2, m, batch, B = _flatten(xs, mask, carry.h, D)
    H = carry.h.shape[-1]
    r = _flat_resets(resets, m, xs.shape[0], B)
    hr = cr = None
    if r is not None:
        rc = carry if reset_carry is None else reset_carry
        hr, cr = rc.h.reshape(B, H), rc.c.reshape(B, H)
    h, c, ys = lstm_scan(reverse, unroll, params["w_x"], params["w_h"], params["b"],
                         carry.h.reshape(B, H), carry.c.reshape(B, H), x2, m, r, hr, cr)
    return LSTMState(h.reshape(*batch, H), c.reshape(*batch, H)), ys.reshape(xs.shape[0], *batch, H)


def gru_sequence(reset_after: bool):
    """``Cell.sequence`` of ``rnnjax.gru`` with the tanh candidate (see :func:`gru_scan`)."""

    def sequence(params, carry, xs, *, mask, reverse, unroll, resets=None, reset_carry=None):
        D = params["w_x"].shape[0]
        x2, m, batch, B = _flatten(xs, mask, carry, D)
        H = carry.shape[-1]
        b_hn = params["b_hn"] if reset_after else jnp.zeros((H,), params["b"].dtype)
        r = _flat_resets(resets, m, xs.shape[0], B)
        hr = None
        if r is not None:
            hr = (carry if reset_carry is None else reset_carry).reshape(B, H)
        h, ys = gru_scan(reverse, reset_after, unroll, params["w_x"], params["w_h"], params["b"], b_hn,
                         carry.reshape(B, H), x2, m, r, hr)
        return h.reshape(*batch, H), ys.reshape(xs.shape[0], *batch, H)

    return sequence
