"""Fused sequence paths for the LSTM and GRU, used by ``unroll``.

``unroll`` over ``rnnjax.lstm`` / ``rnnjax.gru`` calls these instead of scanning ``apply`` when the
cell allows it (no peepholes; tanh candidate). They compute the same function with less work:

- the input projection ``x_t W_x`` either inside each step, in one ``[B, D+H] x [D+H, nH]`` matmul
  with the recurrent one (``project="step"``), or for all steps at once before the scan, one
  ``[T*B, D] x [D, nH]`` matmul (``"hoisted"``, the cuDNN arrangement); see `PROJECTIONS`;
- the sigmoid gates are evaluated through tanh, ``σ(z) = (1 + tanh(z/2)) / 2``, with the ``1/2``
  folded into the weights once per sequence, so one ``tanh`` covers all gates of a step;
- a custom VJP: every factor of the backward pass that does not depend on the incoming gradient
  (the gate derivatives, ``tanh(c)``) is computed for all steps at once before the reverse scan,
  whose body is then a few multiply-adds and the matmul with ``W_h^T``; it carries only ``dh``
  (and ``dc``), and the weight gradients are single large matmuls over all steps after it
  (``dW_h = H_prev^T dZ``, ``dW_x = X^T dZ``) instead of a ``[H, nH]`` accumulation per step.

Inputs are time-major with one flattened batch axis: ``xs [T, B, D]``, ``mask [T, B]`` (bool or None;
``False`` steps keep the carry and output zeros), ``resets [T, B]`` (bool or None; ``True``: the
carry entering that step, in scan order, is the reset carry ``hr``/``cr``, whose gradient is the
sum of the gradients of the carries entering the reset steps), ``reverse`` scans from the last step.
A reset step must be a valid step (the ``sequence`` hooks below AND it with the mask).
``history=True`` (``sequence(..., return_carries=True)``) also returns the carry after every step,
an output like the others (its cotangent joins the carry's gradient at that step in the backward).
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
    """Backward of `_reset`: add ``d`` at reset rows to ``acc``, pass zero there to ``h``."""
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


def _lstm_forward(reverse, unroll, project, history, w_x, w_h, b, h0, c0, xs, mask, resets, hr,
                  cr, save=True):
    H = h0.shape[-1]
    s = _lstm_scale(H, w_h.dtype)
    if project == "step":  # one [B, D+H] x [D+H, 4H] matmul per step; no [T, B, 4H] buffer
        w_s = jnp.concatenate([w_x, w_h], axis=0) * s[None, :]
        b_s = (b * s)[None, :]
        seq = xs

        def pre(x_t, h_in):
            return jnp.concatenate([x_t, h_in], axis=-1) @ w_s + b_s
    else:  # hoisted: the input projection of all steps as one matmul before the scan
        seq = _flat_matmul(xs, w_x * s[None, :]) + (b * s).reshape(1, 1, -1)
        w_hs = w_h * s[None, :]

        def pre(g_t, h_in):
            return g_t + h_in @ w_hs

    def step(carry, inp):
        h, c = carry
        u_t, m, rs = inp
        h_in, c_in = _reset(rs, hr, h), _reset(rs, cr, c)
        t = jnp.tanh(pre(u_t, h_in))
        ti, tf, tg, to = jnp.split(t, 4, axis=-1)
        c_new = (0.5 + 0.5 * tf) * c_in + (0.5 + 0.5 * ti) * tg
        h_new = (0.5 + 0.5 * to) * jnp.tanh(c_new)
        h_new, c_new = _where(m, h_new, h), _where(m, c_new, c)
        if not save:  # inference: emit the outputs (and the carries) only
            y = _where(m, h_new, jnp.zeros_like(h_new))
            return (h_new, c_new), ((y, h_new, c_new) if history else y)
        return (h_new, c_new), (h_new, c_new, t)

    (hT, cT), out = jax.lax.scan(step, (h0, c0), (seq, mask, resets), reverse=reverse, unroll=unroll)
    if not save:
        return ((hT, cT, *out) if history else (hT, cT, out)), None
    hs, cs, ts = out
    ys = _where(mask, hs, jnp.zeros_like(hs))
    return ((hT, cT, ys, hs, cs) if history else (hT, cT, ys)), (hs, cs, ts)


def lstm_scan(reverse, unroll, project, w_x, w_h, b, h0, c0, xs, mask, resets=None, hr=None,
              cr=None, history=False):
    """Fused LSTM over ``xs [T, B, D]``: returns ``(h_T, c_T, ys [T, B, H])``.

    ``project``: ``"step"`` or ``"hoisted"`` (see `PROJECTIONS`). ``resets [T, B]`` (or None)
    with the reset carry ``hr, cr [B, H]`` (see the module docstring). ``history=True`` also
    returns the carry after every step, ``(h_T, c_T, ys, hs [T, B, H], cs [T, B, H])`` (a padded
    step keeps the carry: ``hs[t]`` there is the carry it was given), differentiable like the rest.
    """
    return _lstm_scan(reverse, unroll, project, bool(history), w_x, w_h, b, h0, c0, xs, mask,
                      resets, hr, cr)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _lstm_scan(reverse, unroll, project, history, w_x, w_h, b, h0, c0, xs, mask, resets, hr, cr):
    return _lstm_forward(reverse, unroll, project, history, w_x, w_h, b, h0, c0, xs, mask, resets,
                         hr, cr, save=False)[0]


def _lstm_fwd(reverse, unroll, project, history, w_x, w_h, b, h0, c0, xs, mask, resets, hr, cr):
    out, (hs, cs, ts) = _lstm_forward(reverse, unroll, project, history, w_x, w_h, b, h0, c0, xs,
                                      mask, resets, hr, cr)
    return out, (w_x, w_h, h0, c0, xs, mask, resets, hr, cr, hs, cs, ts)


def _lstm_bwd(reverse, unroll, project, history, res, g):
    w_x, w_h, h0, c0, xs, mask, resets, hr, cr, hs, cs, ts = res
    dhT, dcT, dys = g[:3]
    dhs, dcs = g[3:] if history else (None, None)  # cotangents of the carry after each step
    c_prev = _prev(cs, c0, reverse)
    if resets is not None:  # the carry each step actually started from
        c_prev = jnp.where(resets[..., None], cr[None], c_prev)
    # Everything that does not depend on the incoming gradient is computed for all steps at once,
    # outside the serial loop (vectorised, and split over the cores), so the loop body is a few
    # multiply-adds and the matmul. σ(z) = (1 + t)/2 with t = tanh(z/2), so σ'(z) = (1 - t²)/4;
    # tanh'(z) = 1 - t². With dct = dc + dh·A the gate pre-activation gradients are
    # dz = [dct, dct, dct, dh]·P and the cell gradient passed back is dct·f.
    ti, tf, tg, to = jnp.split(ts, 4, axis=-1)
    tc = jnp.tanh(cs)
    A = (0.5 + 0.5 * to) * (1.0 - tc * tc)
    P = jnp.concatenate([0.25 * tg * (1.0 - ti * ti), 0.25 * c_prev * (1.0 - tf * tf),
                         (0.5 + 0.5 * ti) * (1.0 - tg * tg), 0.25 * tc * (1.0 - to * to)], axis=-1)
    F = 0.5 + 0.5 * tf
    if mask is not None:  # a padded step passes dh and dc through and has dz = 0
        A, P = _where(mask, A, jnp.zeros_like(A)), _where(mask, P, jnp.zeros_like(P))
        F = _where(mask, F, jnp.ones_like(F))
    w_hT = w_h.T

    def step(carry, inp):
        (dh, dc), (ghr, gcr) = carry
        dy, a, p, f, m, rs, gh, gc = inp
        if gh is not None:  # the carry after this step is an output too
            dh, dc = dh + gh, dc + gc
        dh_in = dh + dy
        dct = dc + dh_in * a
        dz = jnp.concatenate([dct, dct, dct, dh_in], axis=-1) * p
        dh_prev = _where(m, dz @ w_hT, dh)
        dc_prev = dct * f
        ghr, dh_prev = _take_reset(rs, ghr, dh_prev)
        gcr, dc_prev = _take_reset(rs, gcr, dc_prev)
        return ((dh_prev, dc_prev), (ghr, gcr)), dz

    dys = _where(mask, dys, jnp.zeros_like(dys))
    acc = (_zeros_or_none(hr), _zeros_or_none(cr))
    ((dh0, dc0), (ghr, gcr)), dz = jax.lax.scan(
        step, ((dhT, dcT), acc), (dys, A, P, F, mask, resets, dhs, dcs), reverse=not reverse,
        unroll=unroll)
    h_prev = _prev(hs, h0, reverse)
    if resets is not None:
        h_prev = jnp.where(resets[..., None], hr[None], h_prev)
    return (_flat_tmatmul(xs, dz), _flat_tmatmul(h_prev, dz), dz.sum(axis=(0, 1)), dh0, dc0,
            _flat_matmul(dz, w_x.T), None, None, ghr, gcr)


_lstm_scan.defvjp(_lstm_fwd, _lstm_bwd)


# ------------------------------------------------------------------------------------------ GRU

def _gru_forward(reverse, reset_after, unroll, project, history, w_x, w_h, b, b_hn, h0, xs, mask,
                 resets, hr, save=True):
    H = h0.shape[-1]
    D = w_x.shape[0]
    half = jnp.asarray(0.5, w_h.dtype)
    if project == "step":  # the input projection inside the step, in the recurrent matmul
        seq = xs
        b_rz, b_n = (b[:2 * H] * half)[None, :], b[None, 2 * H:]
        if reset_after:  # [x, h] @ [[W_xrz/2, W_xn, 0], [W_hrz/2, 0, W_hn]] -> (rz, x_n, h_n)
            w_blk = jnp.concatenate([
                jnp.concatenate([w_x[:, :2 * H] * half, w_x[:, 2 * H:],
                                 jnp.zeros((D, H), w_x.dtype)], axis=1),
                jnp.concatenate([w_h[:, :2 * H] * half, jnp.zeros((H, H), w_h.dtype),
                                 w_h[:, 2 * H:]], axis=1)], axis=0)
        else:
            w_rz = jnp.concatenate([w_x[:, :2 * H], w_h[:, :2 * H]], axis=0) * half
            w_nn = jnp.concatenate([w_x[:, 2 * H:], w_h[:, 2 * H:]], axis=0)

        def gates(x_t, h):
            """``(t = tanh(pre-activation of r, z halved), n, aux)``."""
            if reset_after:
                a = jnp.concatenate([x_t, h], axis=-1) @ w_blk
                t = jnp.tanh(a[:, :2 * H] + b_rz)
                hn = a[:, 3 * H:] + rows(b_hn, h)
                n = jnp.tanh(a[:, 2 * H:3 * H] + b_n + (0.5 + 0.5 * t[:, :H]) * hn)
                return t, n, hn
            t = jnp.tanh(jnp.concatenate([x_t, h], axis=-1) @ w_rz + b_rz)
            rh = (0.5 + 0.5 * t[:, :H]) * h
            return t, jnp.tanh(jnp.concatenate([x_t, rh], axis=-1) @ w_nn + b_n), None
    else:  # hoisted: the input projection of all steps as one matmul before the scan
        s = jnp.concatenate([jnp.full((2 * H,), 0.5, w_h.dtype), jnp.ones((H,), w_h.dtype)])
        seq = _flat_matmul(xs, w_x * s[None, :]) + (b * s).reshape(1, 1, -1)
        w_rz = w_h[:, :2 * H] * half
        w_n = w_h[:, 2 * H:]

        def gates(g_t, h):
            gr, gz, gn = jnp.split(g_t, 3, axis=-1)
            if reset_after:
                a = h @ jnp.concatenate([w_rz, w_n], axis=1)
                t = jnp.tanh(jnp.concatenate([gr, gz], -1) + a[:, :2 * H])
                hn = a[:, 2 * H:] + rows(b_hn, h)
                return t, jnp.tanh(gn + (0.5 + 0.5 * t[:, :H]) * hn), hn
            t = jnp.tanh(jnp.concatenate([gr, gz], -1) + h @ w_rz)
            # the backward pass of this form needs no extra residual
            return t, jnp.tanh(gn + ((0.5 + 0.5 * t[:, :H]) * h) @ w_n), None

    def step(h_kept, inp):
        u_t, m, rs = inp
        h = _reset(rs, hr, h_kept)
        t, n, aux = gates(u_t, h)
        z = 0.5 + 0.5 * t[:, H:]
        h_new = _where(m, h + z * (n - h), h_kept)
        if not save:  # inference: emit the outputs (and the carries) only
            y = _where(m, h_new, jnp.zeros_like(h_new))
            return h_new, ((y, h_new) if history else y)
        return h_new, (h_new, t, n, aux)

    hT, out = jax.lax.scan(step, h0, (seq, mask, resets), reverse=reverse, unroll=unroll)
    if not save:
        return ((hT, *out) if history else (hT, out)), None
    hs, ts, ns, auxs = out  # auxs: h W_hn + b_hn per step (reset after), else None
    ys = _where(mask, hs, jnp.zeros_like(hs))
    return ((hT, ys, hs) if history else (hT, ys)), (hs, ts, ns, auxs)


def gru_scan(reverse, reset_after, unroll, project, w_x, w_h, b, b_hn, h0, xs, mask, resets=None,
             hr=None, history=False):
    """Fused tanh GRU over ``xs [T, B, D]``: returns ``(h_T, ys [T, B, H])``.

    ``project``: ``"step"`` or ``"hoisted"`` (see `PROJECTIONS`). ``b_hn [H]`` is used only
    when ``reset_after`` (pass zeros otherwise). ``resets [T, B]`` (or None) with the reset carry
    ``hr [B, H]`` (see the module docstring). ``history=True`` also returns the carry after every
    step, ``(h_T, ys, hs [T, B, H])`` (a padded step keeps the carry).
    """
    return _gru_scan(reverse, reset_after, unroll, project, bool(history), w_x, w_h, b, b_hn, h0,
                     xs, mask, resets, hr)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _gru_scan(reverse, reset_after, unroll, project, history, w_x, w_h, b, b_hn, h0, xs, mask,
              resets, hr):
    return _gru_forward(reverse, reset_after, unroll, project, history, w_x, w_h, b, b_hn, h0, xs,
                        mask, resets, hr, save=False)[0]


def _gru_fwd(reverse, reset_after, unroll, project, history, w_x, w_h, b, b_hn, h0, xs, mask,
             resets, hr):
    out, (hs, ts, ns, auxs) = _gru_forward(reverse, reset_after, unroll, project, history, w_x, w_h,
                                           b, b_hn, h0, xs, mask, resets, hr)
    return out, (w_x, w_h, b_hn, h0, xs, mask, resets, hr, hs, ts, ns, auxs)


def _gru_bwd(reverse, reset_after, unroll, project, history, res, g):
    w_x, w_h, b_hn, h0, xs, mask, resets, hr, hs, ts, ns, auxs = res
    H = h0.shape[-1]
    dhT, dys = g[:2]
    dhs = g[2] if history else None  # cotangent of the carry after each step
    h_prev = _prev(hs, h0, reverse)
    if resets is not None:  # the carry each step actually started from
        h_prev = jnp.where(resets[..., None], hr[None], h_prev)
    # As for the LSTM, what does not depend on the incoming gradient is computed for all steps at
    # once, outside the serial loop. Every gate gradient is dh_in = dh + dy times such a factor
    # (reset after) or, for the reset gate before W_hn, the gradient drh of r⊙h times one; the loop
    # emits only dh_in (and drh) per step and the gate gradients are formed afterwards.
    tr, tz = ts[..., :H], ts[..., H:]
    r, z = 0.5 + 0.5 * tr, 0.5 + 0.5 * tz
    Pn = z * (1.0 - ns * ns)                              # d n_pre / d h_in
    Pz = (ns - h_prev) * 0.5 * (1.0 - tz) * z             # d z_pre / d h_in
    Pr = (auxs if reset_after else h_prev) * 0.5 * (1.0 - tr) * r  # d r_pre / d(r ⊙ hn or r ⊙ h)
    if mask is not None:  # a padded step passes dh through and has zero gate gradients
        Pn, Pz, Pr = (_where(mask, a, jnp.zeros_like(a)) for a in (Pn, Pz, Pr))
    K = 1.0 - z
    if reset_after:  # d(h W_h + [0, 0, b_hn]) = dh_in ⊙ Q, Q = [Pn Pr, Pz, Pn r]
        Q = jnp.concatenate([Pn * Pr, Pz, Pn * r], axis=-1)
        Q = Q.reshape(*Q.shape[:-1], 3, H)
        w_hT = w_h.T

        def step(carry, inp):
            dh, ghr = carry
            dy, q, k, m, rs, gh = inp
            dh = dh if gh is None else dh + gh
            dh_in = dh + dy
            da = (dh_in[:, None, :] * q).reshape(dh_in.shape[0], 3 * H)
            dh_prev = _where(m, da @ w_hT + dh_in * k, dh)
            ghr, dh_prev = _take_reset(rs, ghr, dh_prev)
            return (dh_prev, ghr), dh_in

        xs_loop = (Q, K)
    else:
        w_nT, w_rzT = w_h[:, 2 * H:].T, w_h[:, :2 * H].T
        PrzT = jnp.stack([Pr, Pz], axis=-2)  # [T, B, 2, H]

        def step(carry, inp):
            dh, ghr = carry
            dy, pn, prz, rr, k, m, rs, gh = inp
            dh = dh if gh is None else dh + gh
            dh_in = dh + dy
            drh = (dh_in * pn) @ w_nT  # d(r⊙h)
            drz = (jnp.stack([drh, dh_in], axis=-2) * prz).reshape(dh_in.shape[0], 2 * H)
            dh_prev = _where(m, drz @ w_rzT + drh * rr + dh_in * k, dh)
            ghr, dh_prev = _take_reset(rs, ghr, dh_prev)
            return (dh_prev, ghr), (dh_in, drh)

        xs_loop = (Pn, PrzT, r, K)

    dys = _where(mask, dys, jnp.zeros_like(dys))
    (dh0, ghr), out = jax.lax.scan(step, (dhT, _zeros_or_none(hr)), (dys, *xs_loop, mask, resets, dhs),
                                   reverse=not reverse, unroll=unroll)
    if reset_after:
        da = (out[..., None, :] * Q).reshape(*out.shape[:-1], 3 * H)  # d(h W_h), with b_hn
        dn = out * Pn
        dzs = jnp.concatenate([da[..., :2 * H], dn], axis=-1)
        dw_h = _flat_tmatmul(h_prev, da)
        db_hn = da[..., 2 * H:].sum(axis=(0, 1))
    else:
        dh_in, drh = out
        dn = dh_in * Pn
        dzs = jnp.concatenate([drh * Pr, dh_in * Pz, dn], axis=-1)
        dw_h = jnp.concatenate([_flat_tmatmul(h_prev, dzs[..., :2 * H]),
                                _flat_tmatmul(r * h_prev, dn)], axis=1)  # r⊙h: W_hn's input
        db_hn = jnp.zeros_like(b_hn)
    dw_x = _flat_tmatmul(xs, dzs)
    db = dzs.sum(axis=(0, 1))
    return dw_x, dw_h, db, db_hn, dh0, _flat_matmul(dzs, w_x.T), None, None, ghr


_gru_scan.defvjp(_gru_fwd, _gru_bwd)


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


BACKENDS = ("auto", "xla", "native")
"""Which implementation runs the fused LSTM / GRU sequence (``unroll(..., backend=...)``):

- ``"xla"``: the ``lax.scan`` paths of this module (every backend, every floating dtype);
- ``"native"``: the C++ kernels of `rnnjax._native` (the recurrence and the gates fused, the
  recurrent GEMMs through OpenBLAS, a custom VJP; CPU and float32 only), or a ``ValueError`` naming
  why they cannot run;
- ``"auto"``: ``"native"`` where the kernel can run (the CPU, float32 params, the build present,
  a sequential unroll without ``remat``), else ``"xla"``. Measured side by side
  (``benchmarks/results/speed-native``, a 2-core AVX2 EPYC), the kernel trains in 0.50-0.84x the
  XLA path's time (0.67-0.72x vmapped over 15 configurations) and runs forward in 0.73-1.02x.

Both paths are ``jax.custom_vjp`` functions: reverse mode (``jax.grad``, ``jax.vjp``) works on
either, forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) on neither; for those, unroll
with ``remat=True``, which scans the cell's ``apply`` (a plain ``lax.scan``, every derivative).
"""


def check_backend(backend: str) -> str:
    """``backend`` of ``unroll`` / ``unroll_reduce``: one of `BACKENDS`, else a ``ValueError``."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def native_unavailable(dtype) -> str:
    """Why the native kernels cannot run a sequence in ``dtype`` here ("" when they can)."""
    from rnnjax import _native

    if not _native.available():
        return _native.reason()
    if jax.default_backend() != "cpu":
        return (f"the native kernels run on the CPU only, and JAX's default backend is "
                f"{jax.default_backend()!r}")
    if jnp.dtype(dtype) != jnp.float32:
        return f"the native kernels compute in float32 only, and the params are {jnp.dtype(dtype).name}"
    return ""


def use_native(backend: str, dtype, T: int, B: int) -> bool:
    """Whether the fused sequence runs on the native kernel (see `BACKENDS`).

    ``"native"`` raises a ``ValueError`` naming the reason when the kernel cannot run, ``"auto"``
    then takes the XLA path; an empty sequence or batch (``T = 0`` or ``B = 0``, nothing to
    compute) always takes the XLA path.
    """
    check_backend(backend)
    if backend == "xla":
        return False
    why = native_unavailable(dtype)
    if why and backend == "native":
        raise ValueError(f"backend='native' cannot run: {why}. Use backend='auto' or 'xla'.")
    return not why and T > 0 and B > 0


PROJECTIONS = ("auto", "step", "hoisted")
"""Where the fused paths compute the input projection ``x_t W_x``:

- ``"step"``: inside each step, in one ``[B, D+H] x [D+H, nH]`` matmul with the recurrent one
  (the classic arrangement; nothing of size ``[T, B, nH]`` is written or read in the forward);
- ``"hoisted"``: for all steps at once, one ``[T*B, D] x [D, nH]`` matmul before the scan (the
  cuDNN arrangement; the per-step matmul is ``[B, H] x [H, nH]``);
- ``"auto"``: ``"step"`` when ``D <= max(H, 64)``, else ``"hoisted"`` (measured on CPU: see
  ``benchmarks/results/speed-projection``).
"""


def check_projection(projection: str) -> str:
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    return projection


def resolve_projection(projection: str, D: int, H: int) -> str:
    """The arrangement ``projection`` stands for at input size ``D`` and hidden size ``H``."""
    if projection != "auto":
        return projection
    return "step" if D <= max(H, 64) else "hoisted"


def lstm_sequence(projection: str = "auto"):
    """``Cell.sequence`` of ``rnnjax.lstm`` without peepholes (see `lstm_scan`)."""
    check_projection(projection)

    def sequence(params, carry, xs, *, mask, reverse, unroll, resets=None, reset_carry=None,
                 return_carries=False, backend="auto"):
        D = params["w_x"].shape[0]
        x2, m, batch, B = _flatten(xs, mask, carry.h, D)
        H = carry.h.shape[-1]
        r = _flat_resets(resets, m, xs.shape[0], B)
        hr = cr = None
        if r is not None:
            rc = carry if reset_carry is None else reset_carry
            hr, cr = rc.h.reshape(B, H), rc.c.reshape(B, H)
        args = (params["w_x"], params["w_h"], params["b"], carry.h.reshape(B, H), carry.c.reshape(B, H),
                x2, m, r, hr, cr)
        if use_native(backend, params["w_h"].dtype, xs.shape[0], B):
            from rnnjax._native import ops

            out = ops.lstm(reverse, return_carries, *args[:7], *args[7:])
        else:
            out = lstm_scan(reverse, unroll, resolve_projection(projection, D, H), *args,
                            history=return_carries)
        h, c, ys = out[:3]
        seq = (xs.shape[0], *batch, H)
        result = (LSTMState(h.reshape(*batch, H), c.reshape(*batch, H)), ys.reshape(seq))
        if return_carries:  # the carry after every step, [T, ..., H] each
            result += (LSTMState(out[3].reshape(seq), out[4].reshape(seq)),)
        return result

    return sequence


def gru_sequence(reset_after: bool, projection: str = "auto"):
    """``Cell.sequence`` of ``rnnjax.gru`` with the tanh candidate (see `gru_scan`)."""
    check_projection(projection)

    def sequence(params, carry, xs, *, mask, reverse, unroll, resets=None, reset_carry=None,
                 return_carries=False, backend="auto"):
        D = params["w_x"].shape[0]
        x2, m, batch, B = _flatten(xs, mask, carry, D)
        H = carry.shape[-1]
        b_hn = params["b_hn"] if reset_after else jnp.zeros((H,), params["b"].dtype)
        r = _flat_resets(resets, m, xs.shape[0], B)
        hr = None
        if r is not None:
            hr = (carry if reset_carry is None else reset_carry).reshape(B, H)
        args = (params["w_x"], params["w_h"], params["b"], b_hn, carry.reshape(B, H), x2, m, r, hr)
        if use_native(backend, params["w_h"].dtype, xs.shape[0], B):
            from rnnjax._native import ops

            out = ops.gru(reverse, reset_after, return_carries, *args)
        else:
            out = gru_scan(reverse, reset_after, unroll, resolve_projection(projection, D, H), *args,
                           history=return_carries)
        seq = (xs.shape[0], *batch, H)
        result = (out[0].reshape(*batch, H), out[1].reshape(seq))
        if return_carries:  # the carry after every step, [T, ..., H]
            result += (out[2].reshape(seq),)
        return result

    return sequence
