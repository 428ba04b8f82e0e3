"""Magnitude pruning as an Optax transformation: one-shot or gradual, masks in the optimizer state.

Put [`prune`][rnnjax.pruning.prune] *last* in an Optax chain, after the optimizer::

    tx = optax.chain(rnnjax.optimizer("adam", 1e-3), rnnjax.prune(0.9, end_step=2000, frequency=100))
    state = rnnjax.TrainState.create(params, tx, key=key)   # fit, run_sweep, checkpoints as usual
    rnnjax.pruning.current_sparsity(state.opt_state)        # 0 ... 0.9 along the schedule

([`pruned`][rnnjax.pruning.pruned] builds the same chain). At a pruning step the weights the update would
produce, ``w = p + u``, are ranked by magnitude and the smallest ``round(s_t n)`` of each selected leaf
(``scope="leaf"``) or of all of them together (``scope="global"``) are masked; at every step the
transformation returns ``u`` where the mask keeps a weight and ``-p`` where it prunes one, so that
``p + (-p)`` sets the weight to exactly 0 (exact in floating point) and keeps it there for the
rest of training. Masks only ever grow: a pruned weight never comes back.

The target sparsity follows the polynomial schedule of Zhu & Gupta (2017), "To prune, or not to
prune: exploring the efficacy of pruning for model compression"::

    s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n dt))^power        (power = 3)

with pruning steps ``t = t_0, t_0 + dt, ..., t_0 + n dt = end_step`` (``dt = frequency``; the
``end_step`` is always a pruning step) and no pruning before ``t_0`` or after ``end_step``.
``end_step == begin_step`` (the default) prunes once, to ``s_f``, at ``begin_step``: one-shot
magnitude pruning (Han et al. 2015, "Learning both weights and connections for efficient neural
networks"). ``t`` counts the updates this transformation has applied (0 for the first).

Every numeric setting (``sparsity``, ``initial_sparsity``, ``begin_step``, ``end_step``,
``frequency``, ``power``) is an array leaf of the state's ``hyperparams``, as with
``optax.inject_hyperparams``, so ``rnnjax.sweep.run_sweep`` can vary the sparsity; the masks are
boolean arrays, so the state checkpoints and resumes like any other (``rnnjax.checkpoint``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax.losses import is_weight, key_name
from rnnjax.types import Array, Params

__all__ = [
    "PruneState",
    "current_sparsity",
    "find_prune_state",
    "leaf_sparsity",
    "masks",
    "prune",
    "pruned",
    "sparsity",
    "sparsity_schedule",
]

_HYPER = ("sparsity", "initial_sparsity", "begin_step", "end_step", "frequency", "power")
_SCOPES = ("leaf", "global")


class PruneState(NamedTuple):
    """State of [`prune`][rnnjax.pruning.prune] (a pytree of arrays).

    Attributes:
      count: updates applied so far (int32); the ``t`` of the schedule for the next update.
      masks: the params' structure; ``True`` where a weight is kept, ``False`` where it is pruned,
        for each selected leaf (bool, the leaf's shape); ``optax.MaskedNode()`` (no arrays) at the
        leaves that are not pruned.
      hyperparams: ``sparsity`` (``s_f``), ``initial_sparsity`` (``s_i``), ``begin_step``,
        ``end_step``, ``frequency``, ``power``: 0-d arrays (a sweep can vary them).
      target: the scheduled sparsity ``s_t`` of the last pruning step (0 before the first).
    """

    count: Array  # type: ignore[assignment]  # the field shadows tuple.count
    masks: Any
    hyperparams: dict[str, Array]
    target: Array


# ----------------------------------------------------------------------------- selection


def _name(path) -> str:
    return "/".join(key_name(k) for k in path)


def _is_float(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)


def _selected(params: Params, include: Any) -> list[bool]:
    """Which leaves of ``params`` (in ``tree_leaves`` order) are pruned."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    if callable(include):
        out = [bool(include(_name(p), leaf)) and _is_float(leaf) for p, leaf in flat]
    else:
        try:
            chosen = treedef.flatten_up_to(include)  # type: ignore[attr-defined]  # not in jax's stubs
        except (ValueError, TypeError) as e:
            raise ValueError(f"include must be a callable (name, leaf) -> bool or a pytree of "
                             f"bools with the params' structure; the pytree given does not match "
                             f"the params: {e}") from None
        out = []
        for (p, leaf), c in zip(flat, chosen):
            if not isinstance(c, (bool, np.bool_)):
                raise TypeError(f"include's entry at {_name(p)!r} must be a Python bool, got {c!r}")
            if c and not _is_float(leaf):
                raise ValueError(f"include selects {_name(p)!r}, which is not a float array")
            out.append(bool(c))
    return out


# ----------------------------------------------------------------------------- schedule


def sparsity_schedule(step: Any, *, sparsity: Any, initial_sparsity: Any = 0.0, begin_step: Any = 0,
                      end_step: Any = None, frequency: Any = 1, power: Any = 3) -> Array:
    """The target sparsity in force after update ``step`` (that of the last pruning step <= ``step``).

    ``s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(end - t_0))^power`` evaluated at the last pruning
    step ``t_e = min(t_0 + dt floor((t - t_0)/dt), end)`` (``t_e = end`` from ``end`` on);
    0 before ``t_0``; ``s_f`` when ``end == t_0`` (Zhu & Gupta 2017). Works on traced values.

    Args:
      step: the update count ``t`` (int, array).
      sparsity, initial_sparsity: ``s_f``, ``s_i`` in ``[0, 1]``.
      begin_step, end_step: ``t_0`` and ``t_0 + n dt`` (``end_step=None``: ``begin_step``).
      frequency: ``dt``, the steps between pruning steps.
      power: the exponent (3 in the paper).

    Returns:
      A float32 array of ``step``'s shape.
    """
    end_step = begin_step if end_step is None else end_step
    t = jnp.asarray(step, jnp.float32)
    t0 = jnp.asarray(begin_step, jnp.float32)
    end = jnp.asarray(end_step, jnp.float32)
    dt = jnp.asarray(frequency, jnp.float32)
    te = jnp.minimum(t0 + dt * jnp.floor((t - t0) / dt), end)
    te = jnp.where(t >= end, end, te)
    span = end - t0
    frac = jnp.where(span > 0, (te - t0) / jnp.where(span > 0, span, 1.0), 1.0)
    s_f = jnp.asarray(sparsity, jnp.float32)
    s_i = jnp.asarray(initial_sparsity, jnp.float32)
    s = s_f + (s_i - s_f) * (1.0 - frac) ** jnp.asarray(power, jnp.float32)
    return jnp.where(t >= t0, s, 0.0).astype(jnp.float32)


def _is_event(t: Array, hp: dict[str, Array]) -> Array:
    t0, end, dt = hp["begin_step"], hp["end_step"], hp["frequency"]
    return (t >= t0) & (t <= end) & (((t - t0) % dt == 0) | (t == end))


# ----------------------------------------------------------------------------- masks


def _rank_keep(scores: Array, k: Array) -> Array:
    """``True`` for all but the ``k`` lowest ``scores`` (flat; ties broken by position)."""
    n = scores.shape[0]
    order = jnp.argsort(scores, stable=True)
    ranks = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return ranks >= k


def _count(s: Array, n: int) -> Array:
    """``round(s n)`` weights to prune, clipped to ``[0, n]`` (int32)."""
    return jnp.clip(jnp.round(jnp.asarray(s, jnp.float32) * n), 0, n).astype(jnp.int32)


def _new_masks(weights: list[Array], old: list[Array], s: Array, scope: str) -> list[Array]:
    """Masks pruning the smallest magnitudes; the weights already pruned rank first and stay pruned."""
    scores = [jnp.where(m, jnp.abs(w), -1.0).astype(jnp.float32).reshape(-1)
              for w, m in zip(weights, old)]
    if scope == "leaf":
        keep = [_rank_keep(sc, _count(s, sc.shape[0])) for sc in scores]
    else:
        sizes = [sc.shape[0] for sc in scores]
        allk = _rank_keep(jnp.concatenate(scores), _count(s, sum(sizes)))
        keep = jnp.split(allk, np.cumsum(sizes)[:-1].tolist())
    return [jnp.logical_and(k.reshape(m.shape), m) for k, m in zip(keep, old)]


# ----------------------------------------------------------------------------- transformation


def _hyper(name: str, value: Any, lo: float, hi: float | None, integer: bool) -> Any:
    """A hyperparameter as an array leaf. Concrete values (Python and NumPy numbers and arrays, and
    concrete ``jax.Array`` s, e.g. a stacked sweep axis) are range-checked on the host, every
    element; traced values (inside ``jit``/``vmap``) cannot be and are taken unchecked."""
    if isinstance(value, jax.core.Tracer):
        return jnp.asarray(value, jnp.int32 if integer else jnp.float32)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number, np.ndarray,
                                                                    jax.Array)):
        raise TypeError(f"{name} must be a number or an array, got {type(value).__name__} {value!r}")
    host = np.asarray(value)
    if not (np.issubdtype(host.dtype, np.floating) or np.issubdtype(host.dtype, np.integer)):
        raise TypeError(f"{name} must be a real number or array, got dtype {host.dtype}")
    v = host.astype(np.float64)
    rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    if np.any(np.isnan(v)) or np.any(v < lo) or (hi is not None and np.any(v > hi)) \
            or (integer and np.any(v != np.round(v))):
        raise ValueError(f"{name} must be {'an integer ' if integer else ''}{rng}, got {value!r}")
    out = host.astype(np.int32 if integer else np.float32)
    return jnp.asarray(out) if isinstance(value, jax.Array) else out


def prune(sparsity: float | Array, *, include: Callable[[str, Array], bool] | Any = is_weight,
          scope: str = "leaf", begin_step: int | Array = 0, end_step: int | Array | None = None,
          frequency: int | Array = 1, initial_sparsity: float | Array = 0.0,
          power: float | Array = 3) -> optax.GradientTransformation:
    """Magnitude pruning to a target sparsity, one-shot or gradual, as the last link of a chain.

    At pruning step ``t`` (see the module docstring) with target ``s_t`` (Zhu & Gupta 2017)
    ``s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(n dt))^3``, the weights ``w = p + u`` the incoming
    update ``u`` would produce are ranked by ``|w|`` and the ``round(s_t n)`` smallest are masked
    (per leaf, or over all selected leaves with ``scope="global"``); weights pruned before rank
    first, so masks only grow. Every update returns ``where(mask, u, -p)``: pruned weights become
    exactly 0 and stay 0. Must come *after* the optimizer (``optax.chain(tx, prune(...))`` or
    [`pruned`][rnnjax.pruning.pruned]), so that nothing rescales its output.

    Args:
      sparsity: ``s_f``, the final fraction of pruned weights, in ``[0, 1]`` (an array leaf).
      include: which leaves to prune: a predicate ``include(name, leaf) -> bool`` on the leaf's key
        path joined by ``/`` (``"cell/w_h"``; default [`rnnjax.losses.is_weight`][rnnjax.losses.is_weight]:
        every weight, no bias; ``lambda name, _: name.endswith("w_h")`` for the recurrent weights only),
        or a pytree of Python bools with the params' structure. Non-float leaves are never pruned.
      scope: ``"leaf"`` (each selected leaf reaches ``s_t``) or ``"global"`` (one magnitude
        threshold over all selected leaves together; their union reaches ``s_t``).
      begin_step: ``t_0``, the first pruning step (updates counted from 0).
      end_step: the last pruning step ``t_0 + n dt``; None: ``begin_step`` (one-shot).
      frequency: ``dt``, steps between pruning steps (>= 1).
      initial_sparsity: ``s_i``, the target at ``t_0`` of a gradual schedule.
      power: the schedule's exponent (3 in the paper).

    Every numeric setting is range-checked when it is concrete (a Python or NumPy number, or a
    concrete ``jax.Array``, every element of it): ``prune(jnp.array(1.5))`` raises a ``ValueError``
    naming ``sparsity``. Traced values (``prune`` built inside ``jit`` or ``vmap``) cannot be
    checked and are used as given.

    Returns:
      An ``optax.GradientTransformation`` with a [`PruneState`][rnnjax.pruning.PruneState]; ``update(updates,
      state, params)`` needs ``params``.
    """
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    if not callable(include) and include is None:
        raise TypeError("include must be a callable (name, leaf) -> bool or a pytree of bools, got None")
    end_step = begin_step if end_step is None else end_step
    hp = {
        "sparsity": _hyper("sparsity", sparsity, 0.0, 1.0, False),
        "initial_sparsity": _hyper("initial_sparsity", initial_sparsity, 0.0, 1.0, False),
        "begin_step": _hyper("begin_step", begin_step, 0, None, True),
        "end_step": _hyper("end_step", end_step, 0, None, True),
        "frequency": _hyper("frequency", frequency, 1, None, True),
        "power": _hyper("power", power, 0.0, None, False),
    }
    if not any(isinstance(hp[k], jax.core.Tracer) for k in ("begin_step", "end_step")) \
            and np.any(np.asarray(hp["end_step"]) < np.asarray(hp["begin_step"])):
        raise ValueError(f"end_step ({end_step}) must be >= begin_step ({begin_step})")

    def init(params):
        sel = _selected(params, include)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        masks = [jnp.ones(jnp.shape(x), bool) if s else optax.MaskedNode() for x, s in zip(leaves, sel)]
        return PruneState(count=jnp.zeros([], jnp.int32),
                          masks=jax.tree_util.tree_unflatten(treedef, masks),
                          hyperparams={k: jnp.asarray(v) for k, v in hp.items()},
                          target=jnp.zeros([], jnp.float32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("prune needs params: call update(updates, state, params)")
        sel = _selected(params, include)
        p_leaves, treedef = jax.tree_util.tree_flatten(params)
        u_leaves = treedef.flatten_up_to(updates)
        m_leaves = treedef.flatten_up_to(state.masks)
        idx = [i for i, s in enumerate(sel) if s]
        h = state.hyperparams
        t = state.count
        event = _is_event(t, h)
        s_t = sparsity_schedule(t, sparsity=h["sparsity"], initial_sparsity=h["initial_sparsity"],
                                begin_step=h["begin_step"], end_step=h["end_step"],
                                frequency=h["frequency"], power=h["power"])
        old = [m_leaves[i] for i in idx]
        if idx:
            weights = [p_leaves[i] + u_leaves[i] for i in idx]
            new = jax.lax.cond(event, lambda: _new_masks(weights, old, s_t, scope), lambda: old)
        else:
            new = old
        out_u = list(u_leaves)
        out_m = list(m_leaves)
        for i, m in zip(idx, new):
            out_u[i] = jnp.where(m, u_leaves[i], -p_leaves[i]).astype(u_leaves[i].dtype)
            out_m[i] = m
        return (jax.tree_util.tree_unflatten(treedef, out_u),
                PruneState(count=optax.safe_increment(t),
                           masks=jax.tree_util.tree_unflatten(treedef, out_m),
                           hyperparams=h,
                           target=jnp.where(event, s_t, state.target).astype(jnp.float32)))

    return optax.GradientTransformation(init, update)


def pruned(tx: optax.GradientTransformation, sparsity: float | Array,
           **kwargs: Any) -> optax.GradientTransformation:
    """``optax.chain(tx, prune(sparsity, **kwargs))``: the optimizer ``tx`` with magnitude pruning.

    Args:
      tx: the optimizer (e.g. [`rnnjax.optimizer`][rnnjax.optim.optimizer]).
      sparsity, **kwargs: as in [`prune`][rnnjax.pruning.prune].
    """
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"tx must be an optax.GradientTransformation (e.g. rnnjax.optimizer(...)), "
                        f"got {type(tx).__name__}")
    return optax.chain(tx, prune(sparsity, **kwargs))


# ----------------------------------------------------------------------------- reading


def find_prune_state(opt_state: Any) -> PruneState:
    """The [`PruneState`][rnnjax.pruning.PruneState] inside an optimizer state (e.g. of ``optax.chain(tx,
    prune(...))``)."""
    is_ps = lambda x: isinstance(x, PruneState)
    for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_ps):
        if is_ps(node):
            return node
    raise ValueError("opt_state holds no PruneState; build the optimizer with "
                     "optax.chain(tx, rnnjax.prune(...)) or rnnjax.pruning.pruned(tx, ...)")


def masks(opt_state: Any) -> Any:
    """The masks (``True`` = kept) of the pruning state in ``opt_state``; see
    [`PruneState`][rnnjax.pruning.PruneState]."""
    return find_prune_state(opt_state).masks


def current_sparsity(opt_state: Any) -> Array:
    """The fraction of pruned weights over all masked leaves of ``opt_state`` (global, float32).

    Traceable (works on a swept state under ``jax.vmap``); 0 when nothing is selected.
    """
    ms = jax.tree_util.tree_leaves(masks(opt_state))
    n = sum(int(np.prod(m.shape)) for m in ms)
    if n == 0:
        return jnp.zeros([], jnp.float32)
    pruned_count = sum(jnp.sum(jnp.logical_not(m)).astype(jnp.float32) for m in ms)
    return (pruned_count / n).astype(jnp.float32)  # type: ignore[union-attr]  # n > 0: not sum's 0


def leaf_sparsity(params: Params, *, include: Callable[[str, Array], bool] = is_weight) -> dict[str, Array]:
    """Fraction of exactly-zero entries of each selected leaf: ``{"cell/w_h": 0.9, ...}``."""
    if not callable(include):
        raise TypeError(f"include must be a callable (name, leaf) -> bool, got {type(include).__name__}")
    return {_name(p): jnp.mean((leaf == 0).astype(jnp.float32))
            for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
            if _is_float(leaf) and include(_name(p), leaf)}


def sparsity(params: Params, *, include: Callable[[str, Array], bool] = is_weight) -> Array:
    """Fraction of exactly-zero entries over all selected leaves together (global, float32)."""
    if not callable(include):
        raise TypeError(f"include must be a callable (name, leaf) -> bool, got {type(include).__name__}")
    leaves = [leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
              if _is_float(leaf) and include(_name(p), leaf)]
    n = sum(int(np.prod(x.shape)) for x in leaves)
    if n == 0:
        return jnp.zeros([], jnp.float32)
    total = sum(jnp.sum(x == 0).astype(jnp.float32) for x in leaves)
    return (total / n).astype(jnp.float32)  # type: ignore[union-attr]  # n > 0: not sum's 0
