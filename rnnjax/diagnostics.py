"""Diagnostics of gradient flow through a recurrent cell.

* :func:`gradient_flow` — ``||dL/d carry_t||`` for every step ``t`` in one backward pass
  (Bengio, Simard & Frasconi 1994; Pascanu, Mikolov & Bengio 2013).
* :func:`jacobian_norms` — spectral norm of the Jacobian product ``d carry_{T-1} / d carry_t``
  (power iteration with ``jax.jvp``/``jax.vjp``) and the singular values of the one-step
  Jacobian ``d carry_{t+1} / d carry_t``.
* :func:`spectral_norm` — the power iteration on any function, on its own.
* :func:`gate_saturation` — the fraction of saturated sigmoid gates of an LSTM, GRU or MGU per
  step, recomputed from the params and the carries (no reaching into the cell).

Indexing used throughout: ``carry_t`` is the carry *after* consuming ``xs[t]``
(``carry_t, y_t = cell.apply(params, carry_{t-1}, xs[t])``), for ``t = 0 .. T-1``;
``carry_{-1}`` is the initial carry and ``carry_{T-1}`` the final one.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from rnnjax.types import Array, Carry, Cell, Params
from rnnjax.unroll import _check_carry, _check_lengths, _check_xs, _select

__all__ = [
    "GradientFlow",
    "gradient_flow",
    "JacobianNorms",
    "jacobian_norms",
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
    T, batch_shape = _check_xs(xs, time_major=True)
    if carry is None:
        carry = cell.initial_carry(params, batch_shape)
    else:
        _check_carry(carry, batch_shape)
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


# --------------------------------------------------------------------------------------------
# gradient flow
# --------------------------------------------------------------------------------------------


class GradientFlow(NamedTuple):
    """Result of :func:`gradient_flow`.

    Attributes:
      norms: ``[T]``; ``norms[t] = ||dL/d carry_t||_2`` over every carry leaf and the whole batch.
      leaf_norms: the carry's structure (e.g. ``LSTMState(h=[T], c=[T])``); the same norm for each
        leaf separately. ``norms**2 == sum(leaf_norms**2)``.
      loss: the scalar ``loss_fn(ys)`` of the unperturbed run.
      grads: the carry's structure with leaves ``[T, *leaf.shape]``: ``dL/d carry_t`` itself
        (e.g. for per-sequence norms: reduce over the hidden axis only).
    """

    norms: Array
    leaf_norms: Carry
    loss: Array
    grads: Carry


_AUTO = "auto"


def gradient_flow(
    cell: Cell,
    params: Params,
    xs: Array,
    loss_fn: Callable[[Array], Array],
    carry: Carry | None = None,
    *,
    lengths: Array | None = None,
    readout: str | Callable[[Carry], Array] | None = _AUTO,
) -> GradientFlow:
    """``||dL/d carry_t||`` for every step ``t``, in one backward pass.

    ``L = loss_fn(ys)`` where ``ys [T, ..., O]`` is the output sequence of
    ``rnnjax.unroll(cell, params, xs, carry, lengths=lengths)``.

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
    gives ``dL/d carry_t = ∂L/∂y_t · ∂y_t/∂carry_t + dL/d carry_{t+1} · ∂carry_{t+1}/∂carry_t``,
    which is what one reverse-mode pass computes: the ``eps`` are zeros ``[T, *leaf.shape]`` added
    inside the ``lax.scan``, and the gradient with respect to them is ``dL/d carry_t``.

    With ``lengths``, steps ``t >= lengths`` copy the carry forward and output zeros (as in
    ``unroll``); ``carry_t`` there is the copied carry, so its gradient is that of the final carry.

    Args:
      cell: a :class:`rnnjax.Cell`.
      params: its params.
      xs: time-major inputs ``[T, ..., D]`` (``[T, D]`` or ``[T, B, D]``).
      loss_fn: ``loss_fn(ys) -> scalar``; ``ys`` has shape ``[T, ..., O]``.
      carry: initial carry; ``cell.initial_carry`` (zeros) if None.
      lengths: optional int array of the batch shape (see ``rnnjax.unroll``).
      readout: ``"auto"``, a callable ``carry -> y`` or None (see above).

    Returns:
      A :class:`GradientFlow` ``(norms [T], leaf_norms, loss, grads)``.
    """
    T, batch_shape, carry = _prepare(cell, params, xs, carry)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable ys -> scalar, got {type(loss_fn).__name__}")
    if not (readout is None or callable(readout) or (isinstance(readout, str) and readout == _AUTO)):
        raise ValueError(f"readout must be 'auto', None or a callable carry -> y, got {readout!r}")
    if lengths is not None:
        lengths = _check_lengths(lengths, T, batch_shape)

    eps0 = jax.tree_util.tree_map(lambda l: jnp.zeros((T, *l.shape), l.dtype), carry)

    def step(c, inp):
        t, x, e = inp
        new_c, y = cell.apply(params, c, x)
        new_leaves = jax.tree_util.tree_leaves(new_c)
        # which leaf (if any) is the output: decided while tracing, before any masking
        idx = next((i for i, leaf in enumerate(new_leaves) if leaf is y), None)
        if lengths is not None:
            valid = t < lengths
            new_c = _select(valid, new_c, c)
        new_c = jax.tree_util.tree_map(jnp.add, new_c, e)
        if readout is None:
            pass
        elif callable(readout):
            y = readout(new_c)
        elif idx is not None:
            y = jax.tree_util.tree_leaves(new_c)[idx]
        if lengths is not None:
            y = jnp.where(_expand_to(valid, y), y, jnp.zeros_like(y))
        return new_c, y

    def total_loss(eps):
        _, ys = jax.lax.scan(step, carry, (jnp.arange(T), xs, eps))
        loss = loss_fn(ys)
        if jnp.ndim(loss) != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(loss)}")
        return loss

    loss, grads = jax.value_and_grad(total_loss)(eps0)

    def norm_t(g):
        return jnp.sqrt(jnp.sum(jnp.square(jnp.abs(g)).reshape(T, -1), axis=1))

    leaf_norms = jax.tree_util.tree_map(norm_t, grads)
    sq = [jnp.square(n) for n in jax.tree_util.tree_leaves(leaf_norms)]
    norms = jnp.sqrt(sum(sq)) if sq else jnp.zeros((T,))
    return GradientFlow(norms, leaf_norms, loss, grads)


# --------------------------------------------------------------------------------------------
# Jacobian norms
# --------------------------------------------------------------------------------------------


def spectral_norm(f: Callable[[Any], Any], x: Any, *, key: Array, iters: int = 50) -> Array:
    """Largest singular value of the Jacobian of ``f`` at ``x``, by power iteration.

    ``v <- J^T J v / ||J^T J v||`` (one ``jax.jvp`` and one ``jax.vjp`` per iteration, ``J``
    never formed), then ``sigma = ||J v||``. ``x`` and ``f(x)`` may be pytrees (flattened). The
    estimate approaches ``sigma_1`` from below at rate ``(sigma_2/sigma_1)^(2 iters)``.

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


class JacobianNorms(NamedTuple):
    """Result of :func:`jacobian_norms` (``S = len(steps)``, ``n`` = size of one sequence's carry).

    Attributes:
      steps: ``[S]`` the steps ``t`` (ints, ``-1`` is the initial carry).
      spectral_norms: ``[S, ...batch]``: ``||d carry_{T-1} / d carry_t||_2`` per sequence.
      singular_values: ``[S, ...batch, n]``: singular values (descending) of the one-step Jacobian
        ``d carry_{t+1} / d carry_t`` per sequence, over the flattened carry.
    """

    steps: np.ndarray
    spectral_norms: Array
    singular_values: Array


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
    """Norms of the carry-to-carry Jacobians along a sequence.

    For each ``t`` in ``steps``:

    * ``spectral_norms``: ``||d carry_{T-1} / d carry_t||_2``, the Jacobian of the unrolled suffix
      ``xs[t+1:]`` with respect to ``carry_t`` (flattened over the carry leaves of one sequence),
      by power iteration (:func:`spectral_norm`); its decay in ``T-1-t`` is vanishing gradients.
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
      A :class:`JacobianNorms`.
    """
    T, batch_shape, carry = _prepare(cell, params, xs, carry)
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax PRNG key, got {type(key).__name__}")
    iters = _check_int("iters", iters, minimum=1)
    if T < 2:
        raise ValueError(f"xs must have T >= 2 steps for carry-to-carry Jacobians, got T={T}")
    if steps is None:
        steps = np.unique(np.linspace(-1, T - 2, num=min(T, 8)).round().astype(int))
    if isinstance(steps, (int, np.integer)):
        raise TypeError("steps must be a sequence of ints, got a single int; wrap it: (t,)")
    steps = tuple(_check_int("steps", s) for s in steps)
    if not steps:
        raise ValueError("steps must not be empty")
    for s in steps:
        if not -1 <= s <= T - 2:
            raise ValueError(f"steps must lie in [-1, T-2] = [-1, {T - 2}], got {s}")

    def one_sequence(xs1, carry1, key1):
        carries = _carry_sequence(cell, params, xs1, carry1)
        keys = jax.random.split(key1, len(steps))
        norms, svals = [], []
        for s, k in zip(steps, keys):
            c_s = carry1 if s == -1 else jax.tree_util.tree_map(lambda l: l[s], carries)
            suffix = xs1[s + 1:]

            def run_suffix(c, suffix=suffix):
                return jax.lax.scan(lambda cc, x: (cell.apply(params, cc, x)[0], None), c, suffix)[0]

            norms.append(spectral_norm(run_suffix, c_s, key=k, iters=iters))
            flat_c, unravel = ravel_pytree(c_s)
            x_next = xs1[s + 1]

            def one_step(fc, x_next=x_next, unravel=unravel):
                return ravel_pytree(cell.apply(params, unravel(fc), x_next)[0])[0]

            jac = jax.jacfwd(one_step)(flat_c)
            svals.append(jnp.linalg.svd(jac, compute_uv=False))
        return jnp.stack(norms), jnp.stack(svals)

    D = xs.shape[-1]
    nb = int(np.prod(batch_shape, dtype=int))
    if batch_shape:
        xs_b = jnp.reshape(xs, (T, nb, D))
        carry_b = jax.tree_util.tree_map(lambda l: jnp.reshape(l, (nb, *l.shape[len(batch_shape):])), carry)
        keys = jax.random.split(key, nb)
        norms, svals = jax.jit(jax.vmap(one_sequence, in_axes=(1, 0, 0)))(xs_b, carry_b, keys)
        # vmap puts the batch first: [nb, S] -> [S, *batch]
        norms = jnp.moveaxis(norms, 0, 1).reshape((len(steps), *batch_shape))
        svals = jnp.moveaxis(svals, 0, 1)
        svals = svals.reshape((len(steps), *batch_shape, svals.shape[-1]))
    else:
        norms, svals = jax.jit(one_sequence)(xs, carry, key)
    return JacobianNorms(np.asarray(steps), norms, svals)


# --------------------------------------------------------------------------------------------
# gate saturation
# --------------------------------------------------------------------------------------------

GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z"), "mgu": ("f",)}
"""The sigmoid gates of each gated cell, in the order of the fused parameter blocks."""

_BLOCKS = {"lstm": 4, "gru": 3, "mgu": 2}


class GateSaturation(NamedTuple):
    """Result of :func:`gate_saturation`.

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
      A :class:`GateSaturation` of ``{gate: [T]}`` fractions.
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
        high[g] = jnp.mean(a > upper, axis=1)
        low[g] = jnp.mean(a < lower, axis=1)
    return GateSaturation(high, low)
