"""Optimizers: an Optax chain that clips the global gradient norm, then sgd / momentum / adam /
adamw / rmsprop, with a learning-rate schedule; every numeric hyperparameter an array leaf.

``optimizer(...)`` is ``optax.inject_hyperparams`` over ``chain(clip_by_global_norm, direction,
scale(-lr_t))``, so ``opt_state.hyperparams`` holds each value and a sweep can ``vmap`` over them.
[`hyperparameter_errors`][rnnjax.optim.hyperparameter_errors] checks concrete values of those leaves against
the same ranges [`optimizer`][rnnjax.optim.optimizer] enforces on Python numbers (the engine runs it before
training).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax.types import Array

__all__ = [
    "HYPERPARAMETER_RANGES",
    "ScheduleState",
    "current_learning_rate",
    "hyperparameter_errors",
    "optimizer",
]

# Hyperparameters (array leaves of opt_state.hyperparams) used by each optimizer and schedule,
# besides learning_rate, clip_norm and warmup_steps which every optimizer has.
_OPTIMIZERS = {
    "sgd": ("weight_decay",),
    "momentum": ("momentum", "weight_decay"),
    "adam": ("b1", "b2", "eps", "weight_decay"),
    "adamw": ("b1", "b2", "eps", "weight_decay"),
    "rmsprop": ("decay", "eps", "weight_decay"),
}
_SCHEDULES = {
    "constant": (),
    "linear": ("decay_steps", "end_factor"),
    "cosine": ("decay_steps", "end_factor"),
    "exponential": ("decay_steps", "decay_rate", "end_factor"),
}


# ----------------------------------------------------------------------------- optimizer


class ScheduleState(NamedTuple):
    """State of the final learning-rate scaling in [`optimizer`][rnnjax.optim.optimizer]'s chain.

    Attributes:
      count: updates applied so far (int32).
      learning_rate: the learning rate of the last update (before any update: of the first one).
    """

    count: Array  # type: ignore[assignment]  # the field shadows tuple.count
    learning_rate: Array


def _schedule_shape(schedule: str, hp: dict[str, Array]) -> Callable[[Array], Array]:
    """``count -> factor in [0, 1]``: linear warmup from 0, then the decay (see
    [`optimizer`][rnnjax.optim.optimizer])."""

    def shape(count):
        t = jnp.asarray(count, jnp.float32)
        warmup = hp["warmup_steps"]
        s = jnp.maximum(t - warmup, 0.0)  # steps since the end of the warmup
        if schedule == "constant":
            after = jnp.ones_like(t)
        else:
            frac = jnp.minimum(s / hp["decay_steps"], 1.0)
            end = hp["end_factor"]
            if schedule == "linear":
                after = 1.0 - (1.0 - end) * frac
            elif schedule == "cosine":
                after = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
            else:  # exponential: decay_rate per decay_steps, floored at end_factor
                after = jnp.maximum(hp["decay_rate"] ** (s / hp["decay_steps"]), end)
        return jnp.where(t < warmup, t / jnp.maximum(warmup, 1), after).astype(jnp.float32)

    return shape


def _scale_by_learning_rate(learning_rate: Array,
                            shape: Callable[[Array], Array]) -> optax.GradientTransformation:
    """``updates * -(learning_rate * shape(count))``, recording that rate in a
    [`ScheduleState`][rnnjax.optim.ScheduleState]."""

    def rate(count):
        return jnp.asarray(learning_rate * shape(count))

    def init(params):
        del params
        count = jnp.zeros([], jnp.int32)
        return ScheduleState(count, rate(count))

    def update(updates, state, params=None):
        del params
        lr = rate(state.count)
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        return updates, ScheduleState(optax.safe_increment(state.count), lr)

    return optax.GradientTransformation(init, update)


def _direction(name: str, hp: dict[str, Array], nesterov: bool, mask: Any,
               eps_in_sqrt: bool = True) -> optax.GradientTransformation:
    """The optimizer's update direction (before the learning rate), with its weight decay."""
    l2 = optax.add_decayed_weights(hp["weight_decay"], mask)  # coupled: grad + wd * param
    if name == "sgd":
        return l2
    if name == "momentum":
        return optax.chain(l2, optax.trace(decay=hp["momentum"], nesterov=nesterov))
    if name == "adam":
        return optax.chain(l2, optax.scale_by_adam(hp["b1"], hp["b2"], hp["eps"]))
    if name == "adamw":  # decoupled (Loshchilov & Hutter 2019): decay after the Adam scaling
        return optax.chain(optax.scale_by_adam(hp["b1"], hp["b2"], hp["eps"]), l2)
    return optax.chain(l2, optax.scale_by_rms(hp["decay"], hp["eps"], eps_in_sqrt=eps_in_sqrt))  # rmsprop


class Range(NamedTuple):
    """An interval of allowed values: ``lo``/``hi`` (None: unbounded), open or closed at each end."""

    lo: float | None
    hi: float | None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, v: np.ndarray) -> np.ndarray:
        """Elementwise: ``v`` lies in the interval (NaN never does)."""
        ok = ~np.isnan(v)
        if self.lo is not None:
            ok &= (v > self.lo) if self.lo_open else (v >= self.lo)
        if self.hi is not None:
            ok &= (v < self.hi) if self.hi_open else (v <= self.hi)
        return ok

    def __str__(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        return f"{left}{lo}, {hi}{right}"


# The allowed values of every hyperparameter of [`optimizer`][rnnjax.optim.optimizer]: checked for Python
# numbers when the optimizer is made, and for concrete arrays (a sweep's values) by
# [`hyperparameter_errors`][rnnjax.optim.hyperparameter_errors].
HYPERPARAMETER_RANGES: dict[str, Range] = {
    "learning_rate": Range(0.0, None),
    "clip_norm": Range(0.0, None, lo_open=True),  # inf: no clipping
    "weight_decay": Range(0.0, None),
    "momentum": Range(0.0, 1.0, hi_open=True),
    "b1": Range(0.0, 1.0, hi_open=True),
    "b2": Range(0.0, 1.0, hi_open=True),
    "eps": Range(0.0, None),
    "decay": Range(0.0, 1.0, hi_open=True),
    "warmup_steps": Range(0, None),
    "decay_steps": Range(0, None, lo_open=True),
    "end_factor": Range(0.0, 1.0),
    "decay_rate": Range(0.0, 1.0, lo_open=True),
}


def _number(name: str, value: Any) -> Any:
    """A Python/NumPy number in its range (checked), or any jax array (e.g. a traced sweep value:
    concrete ones are checked by the engine before training, with
    [`hyperparameter_errors`][rnnjax.optim.hyperparameter_errors])."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number, np.ndarray, jax.Array)):
        raise TypeError(f"{name} must be a number or an array, got {type(value).__name__} {value!r}")
    if isinstance(value, (int, float, np.number)):
        rng = HYPERPARAMETER_RANGES[name]
        if not rng.contains(np.asarray(value, np.float64)):
            raise ValueError(f"{name} must lie in {rng}, got {value}")
    return value


def hyperparameter_errors(hyperparams: Mapping[str, Any], *, axis_names: str = "") -> list[str]:
    """The concrete hyperparameter values outside `HYPERPARAMETER_RANGES`, as messages.

    Args:
      hyperparams: ``opt_state.hyperparams`` of an [`optimizer`][rnnjax.optim.optimizer] state (traced values,
        and names not in the table, are skipped: they cannot be checked).
      axis_names: how to name an index of stacked values (e.g. ``"configuration"``: a sweep's
        leading axis); empty for scalars.

    Returns:
      One message per bad value (empty when all are in range), e.g.
      ``"learning_rate = -1 (configuration 3): must lie in [0, inf)"``.
    """
    errors = []
    for name, value in hyperparams.items():
        rng = HYPERPARAMETER_RANGES.get(name)
        if rng is None or isinstance(value, jax.core.Tracer):
            continue
        v = np.asarray(jax.device_get(value), np.float64)
        bad = ~rng.contains(v)
        for idx in zip(*np.nonzero(bad)) if v.ndim else ([()] if bad else []):
            where = f" ({axis_names} {', '.join(str(int(i)) for i in idx)})" if idx else ""
            errors.append(f"{name} = {v[idx]:g}{where}: must lie in {rng}")
    return errors


def optimizer(
    name: str = "adam",
    learning_rate: float | Array = 1e-3,
    *,
    clip_norm: float | Array | None = 1.0,
    weight_decay: float | Array = 0.0,
    momentum: float | Array = 0.9,
    nesterov: bool = False,
    b1: float | Array = 0.9,
    b2: float | Array = 0.999,
    eps: float | Array = 1e-8,
    decay: float | Array = 0.9,
    eps_in_sqrt: bool = True,
    schedule: str | None = "constant",
    decay_steps: int | Array | None = None,
    warmup_steps: int | Array = 0,
    end_factor: float | Array = 0.0,
    decay_rate: float | Array = 0.1,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformation:
    """An Optax chain: clip the global gradient norm, then sgd / momentum / adam / adamw / rmsprop.

    ``optax.inject_hyperparams(chain(clip_by_global_norm(clip_norm), direction, scale(-lr_t)))``
    with ``lr_t = learning_rate * shape(t)``. Every numeric argument the chosen optimizer and
    schedule use is an array leaf of ``opt_state.hyperparams`` (e.g.
    ``opt_state.hyperparams["learning_rate"]``), never a Python constant baked into a jitted
    closure, so a sweep can ``vmap`` over them. The structure does not depend on the values:
    ``clip_norm=None`` is stored as ``inf`` (no clipping), ``weight_decay=0`` as a zero decay.

    Directions: ``sgd`` (``g``), ``momentum`` (heavy ball ``m = momentum m + g``; ``nesterov``),
    ``adam`` (Kingma & Ba 2015; ``b1, b2, eps``), ``adamw`` (decoupled weight decay), ``rmsprop``
    (``g / sqrt(v + eps)``, ``v`` averaged with ``decay``, as ``optax.rmsprop`` and TensorFlow;
    ``eps_in_sqrt=False``: ``g / (sqrt(v) + eps)``, as ``torch.optim.RMSprop``). For all but
    ``adamw``, ``weight_decay`` adds ``weight_decay * param`` to the clipped gradient (classic L2
    decay).

    The two RMSprop forms differ where gradients are small: with ``eps = 1e-8`` inside the root,
    an element whose RMS gradient is ``r`` moves ``r / sqrt(r^2 + 1e-8)`` times PyTorch's step, so
    elements with ``r`` below ``1e-4`` (e.g. the input weights of a one-hot token that is rarely
    seen) train far slower than with PyTorch's form. Use ``eps_in_sqrt=False`` to run a recipe
    written for PyTorch.

    Schedule ``shape(t)`` in ``[0, 1]`` with ``s = t - warmup_steps``: ``t / warmup_steps`` during
    the linear warmup, then ``constant``: 1; ``linear``: from 1 to ``end_factor`` over
    ``decay_steps``; ``cosine``: ``end + (1 - end)(1 + cos(pi min(s / decay_steps, 1))) / 2``;
    ``exponential``: ``max(decay_rate^(s / decay_steps), end_factor)``.

    Args:
      name: one of ``sgd``, ``momentum``, ``adam``, ``adamw``, ``rmsprop``.
      learning_rate: the peak learning rate (a number or array; for a schedule use ``schedule``).
      clip_norm: maximum global gradient norm (> 0); None or ``inf`` for no clipping.
      weight_decay: decay coefficient (>= 0).
      momentum, nesterov: for ``momentum``.
      b1, b2, eps: for ``adam`` / ``adamw``; ``eps`` also for ``rmsprop``.
      decay: squared-gradient averaging of ``rmsprop``.
      eps_in_sqrt: ``rmsprop`` only: ``eps`` inside the square root (True, optax's and
        TensorFlow's form) or added to it (False, PyTorch's form). A Python bool: it changes the
        program, not a value, so a sweep cannot vary it.
      schedule: ``constant`` (or None), ``linear``, ``cosine`` or ``exponential``.
      decay_steps: length of the decay (after the warmup); required unless ``constant``.
      warmup_steps: steps of linear warmup from 0 to the peak (0: none).
      end_factor: final learning rate as a fraction of the peak (``linear``, ``cosine``), or the
        floor of ``exponential``.
      decay_rate: factor per ``decay_steps`` of ``exponential``.
      weight_decay_mask: optional ``optax.add_decayed_weights`` mask (a pytree of bools or a
        function of params); None decays every parameter.

    Returns:
      An ``optax.GradientTransformation``. Call ``update(grads, state, params)`` (params are needed
      for weight decay). [`current_learning_rate`][rnnjax.optim.current_learning_rate] reads ``lr_t`` back
      from the state.
    """
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer name {name!r}; valid names: {', '.join(_OPTIMIZERS)}")
    schedule = "constant" if schedule is None else schedule
    if schedule not in _SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules: {', '.join(_SCHEDULES)}")
    if callable(learning_rate):
        raise TypeError("learning_rate must be a number or array (the peak rate), not a callable; "
                        "choose a schedule with schedule='cosine', decay_steps=..., so that the "
                        "peak rate stays an array leaf")
    if not isinstance(eps_in_sqrt, bool):
        raise TypeError(f"eps_in_sqrt must be a bool, got {type(eps_in_sqrt).__name__} {eps_in_sqrt!r}")
    if not eps_in_sqrt and name != "rmsprop":
        raise ValueError(f"eps_in_sqrt=False applies to rmsprop only, not to {name!r}")
    if schedule != "constant" and decay_steps is None:
        raise ValueError(f"decay_steps must be given (a positive int) for schedule={schedule!r}")
    values = {
        "learning_rate": _number("learning_rate", learning_rate),
        "clip_norm": _number("clip_norm", math.inf if clip_norm is None else clip_norm),
        "weight_decay": _number("weight_decay", weight_decay),
        "momentum": _number("momentum", momentum),
        "b1": _number("b1", b1),
        "b2": _number("b2", b2),
        "eps": _number("eps", eps),
        "decay": _number("decay", decay),
        "warmup_steps": _number("warmup_steps", warmup_steps),
        "decay_steps": None if decay_steps is None else _number("decay_steps", decay_steps),
        "end_factor": _number("end_factor", end_factor),
        "decay_rate": _number("decay_rate", decay_rate),
    }
    for k, v in values.items():  # 0-d arrays (inject_hyperparams skips NumPy scalars); int32 steps
        if isinstance(v, (int, np.integer)) and k in ("warmup_steps", "decay_steps"):
            values[k] = np.asarray(v, np.int32)
        elif isinstance(v, np.number):
            values[k] = np.asarray(v)
    names = ("learning_rate", "clip_norm", *_OPTIMIZERS[name], "warmup_steps", *_SCHEDULES[schedule])

    def chain(**hp):
        return optax.chain(
            optax.clip_by_global_norm(hp["clip_norm"]),
            _direction(name, hp, nesterov, weight_decay_mask, eps_in_sqrt),
            _scale_by_learning_rate(hp["learning_rate"], _schedule_shape(schedule, hp)),
        )

    # inject_hyperparams turns the arguments of `chain` into array leaves; give it a signature that
    # names exactly the hyperparameters this optimizer and schedule use.
    chain.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in names])
    return optax.inject_hyperparams(chain)(**{n: values[n] for n in names})


def current_learning_rate(opt_state: Any) -> Array:
    """The learning rate of the last update, read from an optimizer state.

    For [`optimizer`][rnnjax.optim.optimizer] states this is ``learning_rate * shape(t)`` of the last update
    (before any update, of the first). For other ``optax.inject_hyperparams`` states it is
    ``hyperparams["learning_rate"]``; otherwise NaN.

    Args:
      opt_state: an optimizer state.

    Returns:
      A scalar array.
    """
    is_sched = lambda x: isinstance(x, ScheduleState)
    for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_sched):
        if is_sched(node):
            return node.learning_rate
    hyperparams = getattr(opt_state, "hyperparams", None)
    if isinstance(hyperparams, dict) and "learning_rate" in hyperparams:
        return jnp.asarray(hyperparams["learning_rate"])
    return jnp.asarray(jnp.nan, jnp.float32)


