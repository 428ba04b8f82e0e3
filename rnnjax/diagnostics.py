"""Diagnostics of gradient flow through a recurrent cell, computed in log space.

* [`gradient_flow`][rnnjax.diagnostics.gradient_flow] — ``||dL/d carry_t||`` for every step ``t`` in one
  backward pass (Bengio, Simard & Frasconi 1994; Pascanu, Mikolov & Bengio 2013), as exact ``log10`` values.
* [`jacobian_norms`][rnnjax.diagnostics.jacobian_norms] — spectral norm of the Jacobian product ``d
  carry_{T-1} / d carry_t`` (power iteration with ``jax.jvp``/``jax.vjp``, one step at a time, in log space)
  and the singular values of the one-step Jacobian ``d carry_{t+1} / d carry_t``.
* [`log10_decay_rate`][rnnjax.diagnostics.log10_decay_rate] — the per-step decay of the gradient norm (decades
  per step), fitted to ``log10`` norms.
* [`spectral_norm`][rnnjax.diagnostics.spectral_norm] — the power iteration on any function, on its own.
* [`gate_saturation`][rnnjax.diagnostics.gate_saturation] — the fraction of saturated sigmoid gates of an
  LSTM, GRU or MGU per step, recomputed from the params and the carries (no reaching into the cell).

Why log space. Vanishing gradients are the object of study, so the values span far more than
float32's range: a GRU(64) at initialisation has ``||dL/dh_0|| ≈ 1e-27`` at ``T = 200`` and far
less at ``T = 1000``. A plain float32 computation reports ``0`` there, for two reasons: the
squares in ``sqrt(sum(g**2))`` underflow for entries below about ``1e-19``, and the backward pass
itself flushes anything below about ``1e-38`` (the smallest normal float32) to zero. The
diagnostics here therefore never form a small or large product: they carry every vector as a
mantissa vector (largest entry in ``[0.5, 1)``) times an exact integer power of two, rescale after
every step, and report ``log10`` values (``-inf`` only for an exactly zero gradient). The plain
float fields (``norms``, ``grads``, ``spectral_norms``) are derived from those and are ``0``
where the value is below float32's range.

Indexing used throughout: ``carry_t`` is the carry *after* consuming ``xs[t]``
(``carry_t, y_t = cell.apply(params, carry_{t-1}, xs[t])``), for ``t = 0 .. T-1``;
``carry_{-1}`` is the initial carry and ``carry_{T-1}`` the final one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from rnnjax.types import Array, Carry, Cell, Params
from rnnjax.unroll import check_carry, check_lengths, check_xs, select_carry

__all__ = [
    "GradientFlow",
    "gradient_flow",
    "JacobianNorms",
    "jacobian_norms",
    "log10_decay_rate",
    "spectral_norm",
    "GateSaturation",
    "gate_saturation",
    "GATES",
]


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _check_cell(cell: Any) -> None:
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be an rnnjax.Cell, got {type(cell).__name__}")


def _prepare(cell: Cell, params: Params, xs: Any, carry: Carry | None):
    """Validate ``xs`` (time-major ``[T, ..., D]``) and the carry; return ``(T, batch_shape, carry)``."""
    _check_cell(cell)
    T, batch_shape = check_xs(xs, time_major=True)
    if carry is None:
        carry = cell.initial_carry(params, batch_shape)
    else:
        check_carry(carry, batch_shape)
    return T, batch_shape, carry


def _carry_sequence(cell: Cell, params: Params, xs: Array, carry: Carry) -> Carry:
    """All carries ``carry_0 .. carry_{T-1}`` stacked on a leading time axis (``[T, ...]`` leaves)."""

    def step(c, x):
        c, _ = cell.apply(params, c, x)
        return c, c

    _, carries = jax.lax.scan(step, carry, xs)
    return carries


def _expand_to(mask: Array, ref: Array) -> Array:
    """``mask`` (batch shape) with trailing singleton dims to the rank of ``ref``."""
    return mask.reshape(mask.shape + (1,) * (ref.ndim - mask.ndim))


# Scaled ("mantissa x 2**exponent") arithmetic. A vector g is held as (u, e) with g = u * 2**e,
# e an int32 and max|u| in [0.5, 1); rescaling by a power of two is exact, so a product of any
# number of factors keeps float32's relative precision and never under- or overflows.
# ``_ZERO`` is the exponent of an exact zero (far below any real exponent, and small enough that
# the sum of two of them still fits an int32).
_ZERO = -(2 ** 29)
_LOG10_2 = math.log10(2.0)


def _pow2(k: Array, dtype) -> Array:
    """Exactly ``2**k`` in ``dtype`` for int ``k`` in ``[minexp, maxexp - 1]`` (built from bits)."""
    fi = jnp.finfo(dtype)
    itype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[fi.bits // 8]
    biased = (k + (fi.maxexp - 1)).astype(itype)
    return jax.lax.bitcast_convert_type(jax.lax.shift_left(biased, itype(fi.nmant)), fi.dtype)


def _ldexp(x: Array, k: Array) -> Array:
    """``x * 2**k`` exactly (``k`` int32 broadcastable to ``x``; real or complex ``x``).

    Two multiplications by exact powers of two cover ``|k| <= 2 * 126`` (float32); beyond that the
    result of a factor ``<= 1`` is below float32's range anyway (``k`` is clipped).
    """
    fi = jnp.finfo(x.dtype)
    lo, hi = fi.minexp, fi.maxexp - 1
    k = jnp.clip(k, 2 * lo, 2 * hi).astype(jnp.int32)
    k1 = jnp.clip(k, lo, hi)
    return x * _pow2(k1, x.dtype) * _pow2(k - k1, x.dtype)


def _max_abs(a: Array, nb: int) -> Array:
    """``max |a|`` over all but the leading ``nb`` (batch) axes."""
    flat = jnp.abs(a).reshape(a.shape[:nb] + (-1,))
    return jnp.max(flat, axis=-1, initial=0.0)


def _exponent(a: Array, nb: int) -> Array:
    """Binary exponent ``e`` of ``max |a|`` per batch element (``max|a| in [2**(e-1), 2**e)``, read
    from the float's bits); ``_ZERO`` where ``a`` is exactly zero. NaN and inf keep a finite
    exponent and stay visible in the mantissa."""
    m = _max_abs(a, nb)
    fi = jnp.finfo(m.dtype)
    itype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[fi.bits // 8]
    bits = jax.lax.bitcast_convert_type(m, itype)
    field = jax.lax.shift_right_logical(bits, itype(fi.nmant)) & itype(2 ** fi.nexp - 1)
    e = field.astype(jnp.int32) - (fi.maxexp - 2)
    return jnp.where(m == 0, _ZERO, e)


def _normalise(a: Array, nb: int) -> tuple[Array, Array]:
    """``(u, e)`` with ``a = u * 2**e`` per batch element and ``max|u| in [0.5, 1)`` (or 0)."""
    e = _exponent(a, nb)
    return _ldexp(a, -_expand_to(e, a)), e


def _sum_scaled(vs: Array, es: Array, nb: int) -> tuple[Array, Array]:
    """``sum_m vs[m] * 2**es[m]`` in scaled form ``(u, e)``; ``vs [M, *batch, ...]``, ``es [M, *batch]``.

    Terms below ``2**-126`` of the largest one (far below float32's relative precision) are
    dropped; nothing else is rounded but the final sum.
    """
    ex = jax.vmap(lambda v: _exponent(v, nb))(vs)
    top = jnp.where((es == _ZERO) | (ex == _ZERO), _ZERO, es + ex)
    emax = jnp.max(top, axis=0)
    shift = jnp.where(es == _ZERO, -2000, es - emax[None])  # a zero term stays zero
    scaled = _ldexp(vs, _expand_to(shift, vs))  # every term now has max|.| <= 1
    u, e2 = _normalise(jnp.sum(scaled, axis=0), nb)
    return u, jnp.where(e2 == _ZERO, _ZERO, emax + e2)


def _seq_norm(u: Array, nb: int) -> Array:
    """2-norm of a mantissa array (``max|u| <= 1``) over all but the leading ``nb`` axes."""
    return jnp.sqrt(jnp.sum(jnp.square(jnp.abs(u)).reshape(u.shape[:nb] + (-1,)), axis=-1))


def _pool(n: Array, e: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
    """``sqrt(sum (n * 2**e)**2)`` over ``axes`` as ``(m, k)`` with the result ``m * 2**k``."""
    e = jnp.where(n == 0, _ZERO, e)
    if not axes:
        return n, e
    emax = jnp.max(e, axis=axes, keepdims=True)
    m = jnp.sqrt(jnp.sum(jnp.square(_ldexp(n, e - emax)), axis=axes))
    return m, jnp.where(m == 0, _ZERO, jnp.squeeze(emax, axis=axes))


def _log10_scaled(m: Array, k: Array) -> Array:
    """``log10(m * 2**k)``; ``-inf`` only where ``m == 0`` (an exactly zero norm), NaN where ``m`` is
    NaN (a non-finite gradient stays visible in log space), ``inf`` where ``m`` is ``inf``."""
    safe = jnp.where(m > 0, m, 1.0)
    return jnp.where(m > 0, k.astype(m.dtype) * _LOG10_2 + jnp.log10(safe),
                     jnp.where(m == 0, -jnp.inf, jnp.nan).astype(m.dtype))


# --------------------------------------------------------------------------------------------
# gradient flow
# --------------------------------------------------------------------------------------------


class GradientFlow(NamedTuple):
    """Result of [`gradient_flow`][rnnjax.diagnostics.gradient_flow].

    The ``log10`` fields are the measurement: computed in log space (a mantissa vector and an
    exact power-of-two scale, rescaled after every step), they hold any magnitude, e.g.
    ``1e-300`` from a float32 model, and are ``-inf`` only where the gradient is exactly zero
    (NaN where it is NaN, e.g. from NaN in the valid inputs, as in ``norms``). The
    plain fields are derived from the same scaled values for convenience and are ``0`` where the
    value lies below float32's range (about ``1e-38``; ``inf`` above ``3e38``).

    Attributes:
      norms: ``[T]``; ``norms[t] = ||dL/d carry_t||_2`` over every carry leaf and the whole batch.
      leaf_norms: the carry's structure (e.g. ``LSTMState(h=[T], c=[T])``); the same norm for each
        leaf separately. ``norms**2 == sum(leaf_norms**2)``.
      loss: the scalar ``loss_fn(ys)`` of the unperturbed run.
      grads: the carry's structure with leaves ``[T, *leaf.shape]``: ``dL/d carry_t`` itself
        (e.g. for per-sequence norms: reduce over the hidden axis only); entries below float32's
        range are ``0`` (use ``log10_norms`` for magnitudes).
      log10_norms: ``[T]``; ``log10(norms)`` exactly, for every step however small or large.
      log10_leaf_norms: the carry's structure with ``[T]`` leaves; ``log10(leaf_norms)``.
    """

    norms: Array
    leaf_norms: Carry
    loss: Array
    grads: Carry
    log10_norms: Array
    log10_leaf_norms: Carry


_AUTO = "auto"


def _check_resets(resets: Any, T: int, batch_shape: tuple[int, ...]) -> Array:
    if not isinstance(resets, (jax.Array, np.ndarray, list, tuple)):
        raise TypeError(f"resets must be a bool array of shape {(T, *batch_shape)} ([T, ...batch]), "
                        f"got {type(resets).__name__}")
    resets = jnp.asarray(resets)
    if resets.dtype != jnp.bool_:
        raise TypeError(f"resets must have dtype bool, got {resets.dtype}")
    if resets.shape != (T, *batch_shape):
        raise ValueError(f"resets must have shape {(T, *batch_shape)} ([T, ...batch]: one flag per "
                         f"step and sequence), got {resets.shape}")
    return resets


def gradient_flow(
    cell: Cell,
    params: Params,
    xs: Array,
    loss_fn: Callable[[Array], Array],
    carry: Carry | None = None,
    *,
    lengths: Array | None = None,
    resets: Array | None = None,
    readout: str | Callable[[Carry], Array] | None = _AUTO,
) -> GradientFlow:
    """``||dL/d carry_t||`` for every step ``t``, in one backward pass, in log space.

    ``L = loss_fn(ys)`` where ``ys [T, ..., O]`` is the output sequence of
    ``rnnjax.unroll(cell, params, xs, carry, lengths=lengths, resets=resets)``.

    Definition. ``dL/d carry_t`` is the *total* derivative of ``L`` with respect to the carry after
    consuming ``xs[t]``: the gradient with respect to an additive perturbation ``eps_t`` of
    ``carry_t`` that is seen by every later step (``carry_t + eps_t`` enters step ``t+1``) **and**
    by the output of step ``t`` when that output is a function of ``carry_t``:

    * ``readout="auto"`` (default): if the cell returns one of its new carry's leaves as its output
      (``return h, h`` — every rnnjax cell: Elman, LSTM (``y = h``), GRU, MGU, Jordan (``y = carry.y``)),
      ``y_t`` is that leaf of the perturbed carry. Otherwise ``y_t`` is the cell's own output and the
      perturbation reaches only the later steps. (Detected by object identity while tracing.)
    * ``readout=f``: ``y_t = f(carry_t + eps_t)`` replaces the cell's output.
    * ``readout=None``: ``y_t`` is the cell's own output, never perturbed: ``dL/d carry_t`` then
      counts only the paths through steps ``t+1 .. T-1`` (so ``norms[T-1] == 0``).

    So with ``y_t = h_t`` and ``L = sum(y_{T-1})``, ``dL/d h_{T-1}`` is all ones. The chain rule
    gives the backward recursion

        g_t = ∂L/∂y_t · ∂y_t/∂carry_t + g_{t+1} · ∂carry_{t+1}/∂carry_t,   g_t = dL/d carry_t.

    How it is computed (log space). After the forward pass, ``∂L/∂ys`` is computed once by
    autodiff; then one reverse ``lax.scan`` applies the recursion one step at a time with
    ``jax.vjp`` of the step, holding every vector as a mantissa (largest entry in ``[0.5, 1)``)
    times an exact power of two, per carry leaf and per sequence, and rescaling after every step
    (the direct term ``∂L/∂y_t`` is scaled the same way and added with ``logaddexp``-style
    alignment of the exponents). No product of many Jacobians is ever formed in float32, so
    ``log10_norms`` is exact to float32 relative precision (about ``1e-6`` decades per step of
    rounding) for any magnitude; a plain float32 backward pass reports ``0`` below about
    ``1e-38`` (and its squared norms below about ``1e-19``). Assumptions: ``∂L/∂y_t`` itself is
    representable in float32 (true for the usual losses on the outputs), and the cell treats the
    sequences of a batch independently (the cell contract).

    With ``lengths``, steps ``t >= lengths`` copy the carry forward and output zeros (as in
    ``unroll``); ``carry_t`` there is the copied carry, so its gradient is that of the final carry.
    Padded inputs are replaced by zeros before the cell sees them, so NaN or inf there never reach
    outputs, carries, gradients or norms; a sequence of length 0 has zero gradients
    (``log10 = -inf``).

    With ``resets`` (bool ``[T, ...batch]``), where ``resets[t, b]`` is true the carry entering step
    ``t`` of sequence ``b`` is the initial carry (``carry``, or zeros), as in ``rnnjax.unroll``; no
    gradient flows back through a reset. A reset on a padded step is ignored.

    The computation is compiled once per ``(cell, loss_fn, readout)`` and shapes and reused on
    later calls (so ``loss_fn`` and ``readout`` must be pure functions, as under ``jax.jit``).

    Args:
      cell: a [`rnnjax.Cell`][rnnjax.flax.Cell].
      params: its params.
      xs: time-major inputs ``[T, ..., D]`` (``[T, D]`` or ``[T, B, D]``).
      loss_fn: ``loss_fn(ys) -> scalar``; ``ys`` has shape ``[T, ..., O]``.
      carry: initial carry; ``cell.initial_carry`` (zeros) if None.
      lengths: optional int array of the batch shape (see ``rnnjax.unroll``).
      resets: optional bool array ``[T, ...batch]`` (see above).
      readout: ``"auto"``, a callable ``carry -> y`` or None (see above).

    Returns:
      A [`GradientFlow`][rnnjax.diagnostics.GradientFlow] ``(norms [T], leaf_norms, loss, grads, log10_norms
      [T], log10_leaf_norms)``.
    """
    T, batch_shape, carry0 = _prepare(cell, params, xs, carry)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable ys -> scalar, got {type(loss_fn).__name__}")
    if not (readout is None or callable(readout) or (isinstance(readout, str) and readout == _AUTO)):
        raise ValueError(f"readout must be 'auto', None or a callable carry -> y, got {readout!r}")
    if lengths is not None:
        lengths = check_lengths(lengths, T, batch_shape)
    if resets is not None:
        resets = _check_resets(resets, T, batch_shape)
    impl: Callable[..., GradientFlow]
    try:  # one compiled program per (cell, loss_fn, readout) and shapes, reused across calls
        hash((cell, loss_fn, readout))
        impl = _gradient_flow_jit
    except TypeError:  # an unhashable callable: trace it afresh
        impl = _gradient_flow_impl
    return impl(cell, loss_fn, readout, params, jnp.asarray(xs), carry0, lengths, resets)


def _gradient_flow_impl(cell, loss_fn, readout, params, xs, carry0, lengths, resets) -> GradientFlow:
    """The computation of [`gradient_flow`][rnnjax.diagnostics.gradient_flow] on validated arguments (see its
    docstring)."""
    T = xs.shape[0]
    batch_shape = tuple(xs.shape[1:-1])
    nb = len(batch_shape)
    bt = (T, *batch_shape)
    valid = None
    if lengths is not None:
        valid = jnp.arange(T).reshape((T,) + (1,) * nb) < lengths[None]
        # padded inputs never reach the cell (a NaN there would poison the gradients via `where`)
        xs = jnp.where(valid.reshape(bt + (1,)), xs, jnp.zeros((), xs.dtype))
        if resets is not None:
            resets = resets & valid  # a reset on a padded step is ignored
    p = cell.prepare(params) if cell.prepare is not None else params

    # which carry leaf (if any) is the cell's output: decided while tracing, by identity
    found: list = []

    def probe(c, x):
        new_c, y = cell.apply(p, c, x)
        found.append(next((i for i, leaf in enumerate(jax.tree_util.tree_leaves(new_c)) if leaf is y),
                          None))
        return new_c, y

    jax.eval_shape(probe, carry0, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))
    idx = found[0]
    mode = "cell" if readout is None else (
        "fn" if callable(readout) else ("leaf" if idx is not None else "cell"))

    def step(c, x, v, r):
        """One masked step ``carry_{t-1} -> (carry_t, y_t)`` (``y_t`` per ``mode``)."""
        if r is not None:
            c = select_carry(r, carry0, c)
        new_c, y = cell.apply(p, c, x)
        if v is not None:
            new_c = select_carry(v, new_c, c)
        if mode == "leaf":
            y = jax.tree_util.tree_leaves(new_c)[idx]
        elif mode == "fn":
            y = readout(new_c)
        if v is not None:
            y = jnp.where(_expand_to(v, y), y, jnp.zeros((), y.dtype))
        return new_c, y

    def fwd(c, inp):
        new_c, y = step(c, *inp)
        return new_c, (new_c, y)

    _, (carries, ys) = jax.lax.scan(fwd, carry0, (xs, valid, resets))
    loss, loss_vjp = jax.vjp(loss_fn, ys)
    if jnp.ndim(loss) != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(loss)}")
    (gys,) = loss_vjp(jnp.ones_like(loss))
    wy, ey = jax.vmap(lambda g: _normalise(g, nb))(gys)  # dL/dy_t = wy_t * 2**ey_t
    if valid is not None:
        ey = jnp.where(valid, ey, _ZERO)

    def shift(a):  # a[t+1] at t; at T-1 a padded step (zeros, no reset)
        if a is None or T == 0:
            return a
        return jnp.concatenate([a[1:], jnp.zeros((1,) + a.shape[1:], a.dtype)])

    c_leaves0, treedef = jax.tree_util.tree_flatten(carry0)
    L = len(c_leaves0)

    def bwd(state, inp):
        us, es = state  # mantissas (list of leaves) and exponents ([L, *batch]) of g_{t+1}
        c_t, x1, v1, r1, wy1, ey1, wy0, ey0 = inp
        _, vjp = jax.vjp(lambda c: step(c, x1, v1, r1), c_t)
        zeros = [jnp.zeros_like(u) for u in us]
        cts = [[u if i == j else z for i, (u, z) in enumerate(zip(us, zeros))] for j in range(L)]
        cty = [jnp.zeros_like(wy1)] * L
        src_e = [es[j] for j in range(L)]
        if mode == "cell":  # y_{t+1} depends on carry_t through step t+1
            cts.append(zeros)
            cty.append(wy1)
            src_e.append(ey1)
        ct = (jax.tree_util.tree_unflatten(treedef, [jnp.stack(leaves) for leaves in zip(*cts)]),
              jnp.stack(cty))
        vs = jax.tree_util.tree_leaves(jax.vmap(vjp)(ct)[0])  # leaves [M, *leaf.shape]
        if mode == "leaf":  # direct term: y_t is leaf idx of carry_t
            vs = [jnp.concatenate([v, (wy0 if i == idx else jnp.zeros_like(v[0]))[None]])
                  for i, v in enumerate(vs)]
            src_e.append(ey0)
        elif mode == "fn":  # direct term through the readout
            _, r_vjp = jax.vjp(readout, c_t)
            d = jax.tree_util.tree_leaves(r_vjp(wy0)[0])
            vs = [jnp.concatenate([v, dv[None]]) for v, dv in zip(vs, d)]
            src_e.append(ey0)
        src_e = jnp.stack(src_e)
        out = [_sum_scaled(v, src_e, nb) for v in vs]
        us = [u for u, _ in out]
        es = jnp.stack([e for _, e in out])
        return (us, es), (us, es)

    v1s = shift(valid)
    if v1s is None and T > 0:  # the step after the last one must not contribute
        v1s = jnp.arange(T).reshape((T,) + (1,) * nb) < jnp.full((1, *batch_shape), T - 1)
    ey1s = shift(ey)
    if v1s is not None:
        ey1s = jnp.where(v1s, ey1s, _ZERO)
    init = ([jnp.zeros_like(leaf) for leaf in c_leaves0], jnp.full((L, *batch_shape), _ZERO, jnp.int32))
    inputs = (carries, shift(xs), v1s, shift(resets), shift(wy), ey1s, wy, ey)
    _, (us, es) = jax.lax.scan(bwd, init, inputs, reverse=True)  # us: leaves [T, ...], es [T, L, *batch]

    grads, leaf_m, leaf_k = [], [], []
    for j, u in enumerate(us):
        e = es[:, j]
        grads.append(_ldexp(u, _expand_to(e, u)))
        n = jax.vmap(lambda a: _seq_norm(a, nb))(u)  # [T, *batch]
        m, k = _pool(n, e, tuple(range(1, 1 + nb)))
        leaf_m.append(m)
        leaf_k.append(k)
    m, k = _pool(jnp.stack(leaf_m), jnp.stack(leaf_k), (0,))
    unflat = lambda ls: jax.tree_util.tree_unflatten(treedef, ls)
    return GradientFlow(
        norms=_ldexp(m, k),
        leaf_norms=unflat([_ldexp(a, b) for a, b in zip(leaf_m, leaf_k)]),
        loss=loss,
        grads=unflat(grads),
        log10_norms=_log10_scaled(m, k),
        log10_leaf_norms=unflat([_log10_scaled(a, b) for a, b in zip(leaf_m, leaf_k)]),
    )


_gradient_flow_jit = jax.jit(_gradient_flow_impl, static_argnums=(0, 1, 2))


def log10_decay_rate(log10_norms: Array, *, min_distance: int = 1) -> Array:
    """Per-step decay of the gradient norm, in decades: ``log10`` of the per-step factor.

    The least-squares slope of ``log10_norms[t]`` against the distance ``k = T-1-t`` from the
    last step: ``||dL/d carry_t|| ≈ C · rate**k`` with ``log10(rate)`` returned (negative when
    gradients vanish backwards in time, e.g. ``-0.301`` for a factor ``0.5`` per step). It works
    on log values (``GradientFlow.log10_norms``), so the fit is never flattened by float32
    underflow. Steps with ``-inf`` (an exactly zero gradient) or ``k < min_distance`` are left
    out; NaN if fewer than two steps remain, and NaN if a fitted step is NaN or ``+inf`` (a
    non-finite gradient is never fitted around silently).

    Args:
      log10_norms: ``[..., T]`` log10 norms (leading axes: independent series).
      min_distance: the smallest distance ``k`` fitted (``1`` skips the last step, whose norm
        often has only the direct output term).

    Returns:
      ``[...]`` the slope ``log10(rate)`` in decades per step.
    """
    min_distance = _check_int("min_distance", min_distance, minimum=0)
    y = jnp.asarray(log10_norms)
    if y.ndim < 1:
        raise ValueError(f"log10_norms must have a time axis [..., T], got shape {y.shape}")
    T = y.shape[-1]
    k = jnp.broadcast_to((T - 1 - jnp.arange(T)).astype(jnp.float32), y.shape)
    fitted = k >= min_distance
    broken = jnp.any(fitted & (jnp.isnan(y) | (y == jnp.inf)), axis=-1)
    ok = jnp.isfinite(y) & fitted
    w = ok.astype(jnp.float32)
    ys = jnp.where(ok, y, 0.0).astype(jnp.float32)
    n = jnp.sum(w, axis=-1, keepdims=True)
    kbar = jnp.sum(w * k, axis=-1, keepdims=True) / jnp.maximum(n, 1.0)
    ybar = jnp.sum(w * ys, axis=-1, keepdims=True) / jnp.maximum(n, 1.0)
    sxy = jnp.sum(w * (k - kbar) * (ys - ybar), axis=-1)
    sxx = jnp.sum(w * jnp.square(k - kbar), axis=-1)
    return jnp.where((n[..., 0] >= 2) & (sxx > 0) & ~broken, sxy / jnp.where(sxx > 0, sxx, 1.0), jnp.nan)


# --------------------------------------------------------------------------------------------
# Jacobian norms
# --------------------------------------------------------------------------------------------


def spectral_norm(f: Callable[[Any], Any], x: Any, *, key: Array, iters: int = 50) -> Array:
    """Largest singular value of the Jacobian of ``f`` at ``x``, by power iteration.

    ``v <- J^T J v / ||J^T J v||`` (one ``jax.jvp`` and one ``jax.vjp`` per iteration, ``J``
    never formed), then ``sigma = ||J v||``. ``x`` and ``f(x)`` may be pytrees (flattened). The
    estimate approaches ``sigma_1`` from below at rate ``(sigma_2/sigma_1)^(2 iters)``. This is a
    plain float computation: for a product of many Jacobians (whose norm may leave float32's
    range) use [`jacobian_norms`][rnnjax.diagnostics.jacobian_norms], which works in log space.

    Args:
      f: a differentiable function of ``x``.
      x: the point (a pytree of float arrays).
      key: PRNG key for the random start vector.
      iters: number of iterations (``>= 1``).
    """
    iters = _check_int("iters", iters, minimum=1)
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax PRNG key, got {type(key).__name__}")
    flat_x, unravel = ravel_pytree(x)

    def g(v):
        return ravel_pytree(f(unravel(v)))[0]

    _, vjp = jax.vjp(g, flat_x)
    v0 = jax.random.normal(key, flat_x.shape, flat_x.dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    tiny = jnp.finfo(flat_x.dtype).tiny

    def body(_, v):
        u = jax.jvp(g, (flat_x,), (v,))[1]
        w = vjp(u)[0]
        return w / jnp.maximum(jnp.linalg.norm(w), tiny)

    v = jax.lax.fori_loop(0, iters, body, v0)
    return jnp.linalg.norm(jax.jvp(g, (flat_x,), (v,))[1])


def _log_product_norm(step: Callable[[Array, Array], Array], points: Array, xs: Array, v0: Array,
                      iters: int) -> tuple[Array, Array]:
    """Spectral norm of ``J = J_{L-1} ... J_0`` (``J_i`` = Jacobian of ``step(., xs[i])`` at
    ``points[i]``, flat vectors) by power iteration, in scaled form ``(m, k)``: ``m * 2**k``.

    Every product is applied one factor at a time and rescaled by an exact power of two after
    each factor, so ``J v`` is never formed in float32 however small or large it is.
    """

    def forward(v):  # J v = u * 2**e
        def body(state, inp):
            u, e = state
            c, x = inp
            w, de = _normalise(jax.jvp(lambda z: step(z, x), (c,), (u,))[1], 0)
            return (w, jnp.where((e == _ZERO) | (de == _ZERO), _ZERO, e + de)), None

        return jax.lax.scan(body, (v, jnp.int32(0)), (points, xs))[0]

    def backward(u):  # direction of J^T u
        def body(w, inp):
            c, x = inp
            _, vjp = jax.vjp(lambda z: step(z, x), c)
            return _normalise(vjp(w)[0], 0)[0], None

        return jax.lax.scan(body, u, (points, xs), reverse=True)[0]

    def iterate(_, v):
        return _normalise(backward(forward(v)[0]), 0)[0]

    v = jax.lax.fori_loop(0, iters, iterate, _normalise(v0, 0)[0])
    u, e = forward(v)
    nv = jnp.linalg.norm(v)
    m = jnp.linalg.norm(u) / jnp.where(nv > 0, nv, 1.0)
    return m, jnp.where(m > 0, e, _ZERO)


class JacobianNorms(NamedTuple):
    """Result of [`jacobian_norms`][rnnjax.diagnostics.jacobian_norms] (``S = len(steps)``, ``n`` = size of
    one sequence's carry).

    Attributes:
      steps: ``[S]`` the steps ``t`` (ints, ``-1`` is the initial carry).
      spectral_norms: ``[S, ...batch]``: ``||d carry_{T-1} / d carry_t||_2`` per sequence
        (``0`` below float32's range, ``inf`` above; ``log10_spectral_norms`` holds any value).
      singular_values: ``[S, ...batch, n]``: singular values (descending) of the one-step Jacobian
        ``d carry_{t+1} / d carry_t`` per sequence, over the flattened carry.
      log10_spectral_norms: ``[S, ...batch]``: ``log10`` of ``spectral_norms``, computed in log
        space (exact for any magnitude; ``-inf`` for an exactly zero Jacobian product).
    """

    steps: np.ndarray
    spectral_norms: Array
    singular_values: Array
    log10_spectral_norms: Array


def _check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def jacobian_norms(
    cell: Cell,
    params: Params,
    xs: Array,
    *,
    key: Array,
    steps: Sequence[int] | None = None,
    carry: Carry | None = None,
    iters: int = 50,
) -> JacobianNorms:
    """Norms of the carry-to-carry Jacobians along a sequence, in log space.

    For each ``t`` in ``steps``:

    * ``spectral_norms`` / ``log10_spectral_norms``: ``||d carry_{T-1} / d carry_t||_2``, the
      Jacobian of the unrolled suffix ``xs[t+1:]`` with respect to ``carry_t`` (flattened over the
      carry leaves of one sequence); its decay in ``T-1-t`` is vanishing gradients (Pascanu,
      Mikolov & Bengio 2013). Power iteration ``v <- J^T J v`` with ``J = J_{T-1} ... J_{t+1}``
      applied one step at a time (``jax.jvp`` forwards, ``jax.vjp`` backwards), the vector
      rescaled by an exact power of two after every step and the scales accumulated as integer
      exponents: the product, e.g. ``0.5**1000``, never under- or overflows.
    * ``singular_values``: all singular values of the one-step Jacobian
      ``d carry_{t+1} / d carry_t = ∂ apply(params, ·, xs[t+1])[0]`` at ``carry_t``
      (``jax.jacfwd``, ``jnp.linalg.svd``).

    Each sequence of a batch is its own problem (the batch Jacobian is block diagonal).

    Args:
      cell, params: the cell and its params.
      xs: time-major inputs ``[T, ..., D]`` with ``T >= 2``.
      key: PRNG key for the power-iteration start vectors.
      steps: ints in ``[-1, T-2]`` (``-1`` = the initial carry); default: up to 8 evenly spaced.
      carry: initial carry; zeros if None.
      iters: power iterations.

    Returns:
      A [`JacobianNorms`][rnnjax.diagnostics.JacobianNorms].
    """
    T, batch_shape, carry = _prepare(cell, params, xs, carry)
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax PRNG key, got {type(key).__name__}")
    iters = _check_int("iters", iters, minimum=1)
    if T < 2:
        raise ValueError(f"xs must have T >= 2 steps for carry-to-carry Jacobians, got T={T}")
    raw_steps: Any = steps
    if raw_steps is None:
        raw_steps = np.unique(np.linspace(-1, T - 2, num=min(T, 8)).round().astype(int))
    if isinstance(raw_steps, (int, np.integer)):
        raise TypeError("steps must be a sequence of ints, got a single int; wrap it: (t,)")
    steps = tuple(_check_int("steps", s) for s in raw_steps)
    if not steps:
        raise ValueError("steps must not be empty")
    for s in steps:
        if not -1 <= s <= T - 2:
            raise ValueError(f"steps must lie in [-1, T-2] = [-1, {T - 2}], got {s}")
    p = cell.prepare(params) if cell.prepare is not None else params

    def one_sequence(xs1, carry1, key1):
        carries = _carry_sequence(cell, p, xs1, carry1)
        flat0, unravel = ravel_pytree(carry1)
        flat = jax.vmap(lambda c: ravel_pytree(c)[0])(carries)  # [T, n]
        prev = jnp.concatenate([flat0[None], flat[:-1]])  # prev[t] = carry_{t-1}, the point of step t

        def step(fc, x):
            return ravel_pytree(cell.apply(p, unravel(fc), x)[0])[0]

        keys = jax.random.split(key1, len(steps))
        ms, ks, svals = [], [], []
        for s, k in zip(steps, keys):
            v0 = jax.random.normal(k, flat0.shape, flat0.dtype)
            m, e = _log_product_norm(step, prev[s + 1:], xs1[s + 1:], v0, iters)
            ms.append(m)
            ks.append(e)
            jac = jax.jacfwd(step)(prev[s + 1], xs1[s + 1])
            svals.append(jnp.linalg.svd(jac, compute_uv=False))
        return jnp.stack(ms), jnp.stack(ks), jnp.stack(svals)

    D = xs.shape[-1]
    nb = int(np.prod(batch_shape, dtype=int))
    if batch_shape:
        xs_b = jnp.reshape(xs, (T, nb, D))
        carry_b = jax.tree_util.tree_map(lambda a: jnp.reshape(a, (nb, *a.shape[len(batch_shape):])), carry)
        keys = jax.random.split(key, nb)
        ms, ks, svals = jax.jit(jax.vmap(one_sequence, in_axes=(1, 0, 0)))(xs_b, carry_b, keys)
        # vmap puts the batch first: [nb, S] -> [S, *batch]
        ms = jnp.moveaxis(ms, 0, 1).reshape((len(steps), *batch_shape))
        ks = jnp.moveaxis(ks, 0, 1).reshape((len(steps), *batch_shape))
        svals = jnp.moveaxis(svals, 0, 1)
        svals = svals.reshape((len(steps), *batch_shape, svals.shape[-1]))
    else:
        ms, ks, svals = jax.jit(one_sequence)(xs, carry, key)
    return JacobianNorms(np.asarray(steps), _ldexp(ms, ks), svals, _log10_scaled(ms, ks))


# --------------------------------------------------------------------------------------------
# gate saturation
# --------------------------------------------------------------------------------------------

GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z"), "mgu": ("f",)}
"""The sigmoid gates of each gated cell, in the order of the fused parameter blocks."""

_BLOCKS = {"lstm": 4, "gru": 3, "mgu": 2}


class GateSaturation(NamedTuple):
    """Result of [`gate_saturation`][rnnjax.diagnostics.gate_saturation].

    Attributes:
      high: ``{gate: [T]}``, the fraction (over the batch and the hidden units) of the gate's
        activations above ``upper`` at each step.
      low: ``{gate: [T]}``, the fraction below ``lower``.
    """

    high: dict
    low: dict


def _bias(b: Array, z: Array) -> Array:
    return jnp.reshape(b, (1,) * (z.ndim - 1) + b.shape)


def gate_saturation(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Carry | None = None,
    *,
    kind: str,
    upper: float = 0.99,
    lower: float = 0.01,
) -> GateSaturation:
    """Fraction of saturated sigmoid gates per step for an rnnjax LSTM, GRU or MGU.

    The cell is unrolled to get the carries ``carry_{-1} .. carry_{T-1}``; the gates are then
    recomputed from the params with the documented fused layouts (nothing inside the cell is
    touched):

    * ``kind="lstm"``: ``z = x W_x + h_{t-1} W_h + b`` split ``(i, f, g, o)``;
      ``i = σ(z_i + w_ci⊙c_{t-1})``, ``f = σ(z_f + w_cf⊙c_{t-1})``, ``o = σ(z_o + w_co⊙c_t)``
      (peephole terms when ``w_ci``, ``w_cf``, ``w_co`` are in params). Gates ``i, f, o``.
    * ``kind="gru"``: ``w_x [D, 3H]``, ``w_h [H, 3H]``, ``b [3H]`` split ``(r, z, n)``;
      ``r = σ(x W_xr + h W_hr + b_r)``, ``z = σ(x W_xz + h W_hz + b_z)`` (the same for both
      ``reset`` placements). Gates ``r, z``.
    * ``kind="mgu"``: ``[D, 2H]`` split ``(f, n)``; ``f = σ(x W_xf + h W_hf + b_f)``. Gate ``f``.

    Args:
      cell: the cell (used only to unroll; it must be of ``kind``).
      params: its params.
      xs: time-major inputs ``[T, ..., D]``.
      carry: initial carry; zeros if None.
      kind: ``"lstm"``, ``"gru"`` or ``"mgu"``.
      upper, lower: saturation thresholds (``0 < lower < upper < 1``).

    Returns:
      A [`GateSaturation`][rnnjax.diagnostics.GateSaturation] of ``{gate: [T]}`` fractions; NaN at a step
      where any activation of that gate is NaN (a NaN is neither saturated nor unsaturated, so no fraction is
      reported).
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a str, one of {tuple(GATES)}, got {type(kind).__name__}")
    if kind not in GATES:
        raise ValueError(f"kind must be one of {tuple(GATES)}, got {kind!r}")
    for name, v in (("upper", upper), ("lower", lower)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise TypeError(f"{name} must be a float in (0, 1), got {type(v).__name__}")
    if not 0.0 < lower < upper < 1.0:
        raise ValueError(f"need 0 < lower < upper < 1, got lower={lower}, upper={upper}")
    if not isinstance(params, dict) or not all(k in params for k in ("w_x", "w_h", "b")):
        raise ValueError(f"params must be a dict with 'w_x', 'w_h', 'b' (an rnnjax {kind}), got "
                         f"{sorted(params) if isinstance(params, dict) else type(params).__name__}")
    H = params["w_h"].shape[0]
    nblk = _BLOCKS[kind]
    if params["w_h"].shape != (H, nblk * H) or params["w_x"].shape[-1] != nblk * H:
        raise ValueError(f"params do not have the {kind} layout (w_h [H, {nblk}H]): w_x "
                         f"{params['w_x'].shape}, w_h {params['w_h'].shape}; check kind=")
    T, batch_shape, carry = _prepare(cell, params, xs, carry)

    carries = _carry_sequence(cell, params, xs, carry)
    prev = jax.tree_util.tree_map(lambda c0, cs: jnp.concatenate([c0[None], cs[:-1]], axis=0),
                                  carry, carries)
    if kind == "lstm":
        h_prev, c_prev = prev
        c_t = carries[1]
    else:
        h_prev = prev
    z = xs @ params["w_x"] + h_prev @ params["w_h"]
    z = z + _bias(params["b"], z)
    blocks = jnp.split(z, nblk, axis=-1)
    if kind == "lstm":
        zi, zf, _, zo = blocks
        if "w_ci" in params:
            zi = zi + _bias(params["w_ci"], c_prev) * c_prev
            zf = zf + _bias(params["w_cf"], c_prev) * c_prev
            zo = zo + _bias(params["w_co"], c_t) * c_t
        pre = {"i": zi, "f": zf, "o": zo}
    elif kind == "gru":
        pre = {"r": blocks[0], "z": blocks[1]}
    else:
        pre = {"f": blocks[0]}

    high, low = {}, {}
    for g, zg in pre.items():
        a = jax.nn.sigmoid(zg).reshape(T, -1)
        nan = jnp.any(jnp.isnan(a), axis=1)
        high[g] = jnp.where(nan, jnp.nan, jnp.mean(a > upper, axis=1))
        low[g] = jnp.where(nan, jnp.nan, jnp.mean(a < lower, axis=1))
    return GateSaturation(high, low)
