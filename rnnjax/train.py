"""Training: an Optax chain with clipping and a schedule, a pure train step, evaluation, a fit loop.

The pieces compose like the rest of the kit, as pure functions over pytrees::

    tx = rnnjax.optimizer("adam", 1e-3, clip_norm=1.0, schedule="cosine", decay_steps=1000)
    state = rnnjax.TrainState.create(params, tx, key=jax.random.key(0))
    step = jax.jit(rnnjax.train_step(loss_fn, tx))       # loss_fn(params, batch, key) -> loss
    state, metrics = step(state, batch)
    # or: state, history = rnnjax.fit(state, rnnjax.train_step(loss_fn, tx), batch_fn, steps=1000)

Every numeric hyperparameter of :func:`optimizer` is an array leaf of the optimizer state
(``opt_state.hyperparams``), so a sweep can ``vmap`` over learning rates, clip norms, decays.
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from typing import Any, Callable, Iterable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from rnnjax.types import Array, Params, PRNGKey

__all__ = [
    "NonFiniteError",
    "ScheduleState",
    "TrainState",
    "current_learning_rate",
    "evaluate",
    "fit",
    "optimizer",
    "train_step",
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
    """State of the final learning-rate scaling in :func:`optimizer`'s chain.

    Attributes:
      count: updates applied so far (int32).
      learning_rate: the learning rate of the last update (before any update: of the first one).
    """

    count: Array
    learning_rate: Array


def _schedule_shape(schedule: str, hp: dict[str, Array]) -> Callable[[Array], Array]:
    """``count -> factor in [0, 1]``: linear warmup from 0, then the decay (see :func:`optimizer`)."""

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
    """``updates * -(learning_rate * shape(count))``, recording that rate in a :class:`ScheduleState`."""

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


def _direction(name: str, hp: dict[str, Array], nesterov: bool, mask: Any) -> optax.GradientTransformation:
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
    return optax.chain(l2, optax.scale_by_rms(hp["decay"], hp["eps"]))  # rmsprop


def _number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
            lo_open: bool = False, hi_open: bool = False) -> Any:
    """A Python/NumPy number in range (checked) or any jax array (e.g. a traced sweep value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number, np.ndarray, jax.Array)):
        raise TypeError(f"{name} must be a number or an array, got {type(value).__name__} {value!r}")
    if isinstance(value, (int, float, np.number)):
        bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
            hi is not None and (value > hi or (hi_open and value == hi)))
        if bad or math.isnan(value):
            lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
            raise ValueError(f"{name} must lie in {lb}{lo if lo is not None else '-inf'}, "
                             f"{hi if hi is not None else 'inf'}{rb}, got {value}")
    return value


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
    (``g / sqrt(v + eps)``, ``v`` averaged with ``decay``). For all but ``adamw``, ``weight_decay``
    adds ``weight_decay * param`` to the clipped gradient (classic L2 decay).

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
      for weight decay). :func:`current_learning_rate` reads ``lr_t`` back from the state.
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
    if schedule != "constant" and decay_steps is None:
        raise ValueError(f"decay_steps must be given (a positive int) for schedule={schedule!r}")
    values = {
        "learning_rate": _number("learning_rate", learning_rate, 0.0),
        "clip_norm": _number("clip_norm", math.inf if clip_norm is None else clip_norm, 0.0, lo_open=True),
        "weight_decay": _number("weight_decay", weight_decay, 0.0),
        "momentum": _number("momentum", momentum, 0.0, 1.0, hi_open=True),
        "b1": _number("b1", b1, 0.0, 1.0, hi_open=True),
        "b2": _number("b2", b2, 0.0, 1.0, hi_open=True),
        "eps": _number("eps", eps, 0.0),
        "decay": _number("decay", decay, 0.0, 1.0, hi_open=True),
        "warmup_steps": _number("warmup_steps", warmup_steps, 0),
        "decay_steps": None if decay_steps is None else _number("decay_steps", decay_steps, 0, lo_open=True),
        "end_factor": _number("end_factor", end_factor, 0.0, 1.0),
        "decay_rate": _number("decay_rate", decay_rate, 0.0, 1.0, lo_open=True),
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
            _direction(name, hp, nesterov, weight_decay_mask),
            _scale_by_learning_rate(hp["learning_rate"], _schedule_shape(schedule, hp)),
        )

    # inject_hyperparams turns the arguments of `chain` into array leaves; give it a signature that
    # names exactly the hyperparameters this optimizer and schedule use.
    chain.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in names])
    return optax.inject_hyperparams(chain)(**{n: values[n] for n in names})


def current_learning_rate(opt_state: Any) -> Array:
    """The learning rate of the last update, read from an optimizer state.

    For :func:`optimizer` states this is ``learning_rate * shape(t)`` of the last update (before
    any update, of the first). For other ``optax.inject_hyperparams`` states it is
    ``hyperparams["learning_rate"]``; otherwise NaN.

    Args:
      opt_state: an optimizer state.

    Returns:
      A scalar array.
    """
    is_sched = lambda x: isinstance(x, ScheduleState)  # noqa: E731
    for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_sched):
        if is_sched(node):
            return node.learning_rate
    hyperparams = getattr(opt_state, "hyperparams", None)
    if isinstance(hyperparams, dict) and "learning_rate" in hyperparams:
        return jnp.asarray(hyperparams["learning_rate"])
    return jnp.asarray(jnp.nan, jnp.float32)


# ----------------------------------------------------------------------------- state and step


def _check_tx(tx: Any) -> None:
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"tx must be an optax.GradientTransformation (e.g. rnnjax.optimizer(...)), "
                        f"got {type(tx).__name__}")


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries from step to step; a pytree.

    Attributes:
      step: number of steps taken (int32 scalar); the next step's data and key are functions of it.
      params: the model's params pytree.
      opt_state: the optimizer state.
      key: the run's PRNG key; step ``t`` uses ``jax.random.fold_in(key, t)``.
    """

    step: Array
    params: Params
    opt_state: optax.OptState
    key: PRNGKey

    @classmethod
    def create(cls, params: Params, tx: optax.GradientTransformation, *, key: PRNGKey) -> "TrainState":
        """A state at step 0 with ``opt_state = tx.init(params)``.

        Args:
          params: the initial params pytree.
          tx: the optimizer (e.g. :func:`optimizer`).
          key: the run's PRNG key (``jax.random.key(seed)``), keyword-only.

        Returns:
          A :class:`TrainState`.
        """
        _check_tx(tx)
        if not isinstance(key, jax.Array):
            raise TypeError(f"key must be a jax PRNG key (jax.random.key(seed)), got {type(key).__name__}")
        return cls(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params), key=key)


def _all_finite(tree: Any) -> Array:
    leaves = [x for x in jax.tree_util.tree_leaves(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


_RESERVED = ("loss", "grad_norm", "update_norm", "learning_rate", "nonfinite")


def train_step(
    loss_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    has_aux: bool = False,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, Array]]]:
    """Make a pure training step ``step(state, batch) -> (new_state, metrics)``.

    The step computes ``loss_fn(params, batch, key)`` and its gradient with
    ``key = jax.random.fold_in(state.key, state.step)``, so a run is a deterministic function of
    its seed, its data and the step (a resumed run repeats the same steps bitwise). Then
    ``updates = tx.update(grads, opt_state, params)`` and ``params + updates``. If the loss, a
    gradient or an update is NaN/inf, the step is skipped: params and opt_state are returned
    unchanged (bitwise), the step counter still advances, and ``metrics["nonfinite"]`` is 1.

    The returned function is not jitted: ``jax.jit(step)`` it (``fit`` does), or ``vmap``/``scan``
    it first.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> loss`` (a scalar), or ``-> (loss, aux)`` with
        ``has_aux``, where ``aux`` is a dict of arrays added to the metrics.
      tx: the optimizer the state was created with.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
      ``step(state, batch) -> (state, metrics)``; metrics: ``loss``, ``grad_norm`` (global norm
      before clipping), ``update_norm`` (of the applied update; 0 if skipped), ``learning_rate``
      (of this step), ``nonfinite`` (int32, 1 if skipped), and the aux entries.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable (params, batch, key) -> loss, "
                        f"got {type(loss_fn).__name__}")
    _check_tx(tx)

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Array]]:
        key = jax.random.fold_in(state.key, state.step)
        out, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(state.params, batch, key)
        loss, aux = out if has_aux else (out, {})
        if not isinstance(aux, dict):
            raise TypeError(f"with has_aux=True, loss_fn must return (loss, aux) with aux a dict, "
                            f"got aux of type {type(aux).__name__}")
        clash = sorted(set(aux) & set(_RESERVED))
        if clash:
            raise ValueError(f"aux keys {clash} clash with the step's own metrics {list(_RESERVED)}")
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = _all_finite((loss, grads, updates))

        def keep(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "update_norm": jnp.where(finite, optax.tree.norm(updates), 0.0),
            "learning_rate": current_learning_rate(opt_state),
            "nonfinite": jnp.logical_not(finite).astype(jnp.int32),
            **aux,
        }
        new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                                  opt_state=keep(opt_state, state.opt_state))
        return new_state, metrics

    return step


# ----------------------------------------------------------------------------- evaluate and fit


def evaluate(
    eval_fn: Callable[[Params, Any], dict[str, Array]],
    params: Params,
    batches: Iterable[Any],
    *,
    weight_fn: Callable[[Any], float] | None = None,
) -> dict[str, float]:
    """Mean of ``eval_fn``'s metrics over batches.

    ``sum_i w_i m_i / sum_i w_i`` for each metric, with ``w_i = weight_fn(batch_i)`` (e.g. the
    batch size, so that a short last batch counts less) or 1 when ``weight_fn`` is None (exact for
    equal-size batches).

    Args:
      eval_fn: ``eval_fn(params, batch) -> dict`` of scalar arrays (jit it for speed).
      params: the params to evaluate.
      batches: a non-empty iterable of batches.
      weight_fn: optional ``weight_fn(batch) -> number``.

    Returns:
      A dict of Python floats with the keys of ``eval_fn``'s output.
    """
    if not callable(eval_fn):
        raise TypeError(f"eval_fn must be a callable (params, batch) -> dict, got {type(eval_fn).__name__}")
    totals, weight = None, 0.0
    for batch in batches:
        metrics = eval_fn(params, batch)
        if not isinstance(metrics, dict):
            raise TypeError(f"eval_fn must return a dict of scalars, got {type(metrics).__name__}")
        for k, v in metrics.items():
            if np.ndim(v) != 0:
                raise ValueError(f"eval_fn's metric {k!r} must be a scalar, got shape {np.shape(v)}")
        if totals is not None and set(metrics) != set(totals):
            raise ValueError(f"eval_fn returned keys {sorted(metrics)} after {sorted(totals)}")
        w = 1.0 if weight_fn is None else float(weight_fn(batch))
        weighted = {k: w * jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        totals = weighted if totals is None else {k: totals[k] + weighted[k] for k in totals}
        weight += w
    if totals is None:
        raise ValueError("batches must contain at least one batch, got none")
    if weight <= 0:
        raise ValueError(f"weight_fn's weights must sum to a positive number, got {weight}")
    return {k: float(v) / weight for k, v in jax.device_get(totals).items()}


class NonFiniteError(RuntimeError):
    """Raised by :func:`fit` after too many consecutive non-finite (skipped) steps.

    Attributes:
      state: the last good state: the state after the last finite step (or the initial state).
      step: the step count at which training stopped.
    """

    def __init__(self, message: str, *, state: TrainState, step: int):
        super().__init__(message)
        self.state = state
        self.step = step


def _host(v: Any) -> Any:
    return float(v) if np.ndim(v) == 0 else np.asarray(v)


def fit(
    state: TrainState,
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict[str, Array]]],
    batch_fn: Callable[[int], Any],
    *,
    steps: int,
    eval_fn: Callable[[Params, Any], dict[str, Array]] | None = None,
    eval_batches: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    eval_every: int | None = None,
    log_every: int = 1,
    progress: bool = True,
    callback: Callable[[TrainState, dict[str, Any]], None] | None = None,
    max_consecutive_nonfinite: int | None = 10,
) -> tuple[TrainState, dict[str, list]]:
    """Train until ``state.step == steps``, with a progress bar, periodic evaluation and a history.

    Step ``t`` (0-based) runs ``step_fn(state, batch_fn(t))``; the data is a function of the step,
    so a run resumed from a checkpoint at step ``t`` (``fit(restored, ..., steps=N)``) sees the
    same batches and, with :func:`train_step`, the same keys. ``step_fn`` is jitted once here
    (and ``eval_fn`` too). Each step's metrics are read back to the host (one small transfer).

    Args:
      state: the starting :class:`TrainState`; training starts at ``state.step``.
      step_fn: a pure step from :func:`train_step` (not yet jitted, though a jitted one works too).
      batch_fn: ``batch_fn(step: int) -> batch``.
      steps: the total number of steps: runs ``steps - state.step`` more (none if already there).
      eval_fn: optional ``eval_fn(params, batch) -> dict`` of scalars, averaged by :func:`evaluate`.
      eval_batches: the evaluation batches (a sequence, or a function returning an iterable);
        required with ``eval_fn``.
      eval_every: evaluate every this many steps (when ``state.step % eval_every == 0``) and at
        the end; None: only at the end.
      log_every: record the metrics in the history every this many steps (and at the last step).
      progress: show a tqdm progress bar with the loss.
      callback: optional ``callback(state, record)`` after every step; ``record`` holds the step's
        metrics as Python floats, ``step`` (= ``state.step``), and the ``eval_*`` metrics on steps
        that evaluated.
      max_consecutive_nonfinite: raise :class:`NonFiniteError` after this many consecutive
        skipped (NaN/inf) steps; None never stops.

    Returns:
      ``(state, history)``: the final state and a dict of lists: ``step`` (``state.step`` after the
      update) with ``loss``, ``grad_norm``, ``update_norm``, ``learning_rate``, ``nonfinite`` and
      any aux metrics; ``eval_step`` with ``eval_<name>`` for each evaluation metric.

    Raises:
      NonFiniteError: too many consecutive non-finite steps; ``.state`` is the last good state.
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be an rnnjax.TrainState, got {type(state).__name__}")
    for fn_name, fn in (("step_fn", step_fn), ("batch_fn", batch_fn)):
        if not callable(fn):
            raise TypeError(f"{fn_name} must be callable, got {type(fn).__name__}")
    for arg, value, allow_none in (("steps", steps, False), ("eval_every", eval_every, True),
                                   ("log_every", log_every, False),
                                   ("max_consecutive_nonfinite", max_consecutive_nonfinite, True)):
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{arg} must be an int, got {type(value).__name__} {value!r}")
        if value < (0 if arg == "steps" else 1):
            raise ValueError(f"{arg} must be {'>= 0' if arg == 'steps' else 'a positive int'}, got {value}")
    if (eval_fn is None) != (eval_batches is None):
        raise ValueError("pass eval_fn and eval_batches together (or neither)")
    if eval_batches is not None and not callable(eval_batches):
        eval_batches = list(eval_batches)  # reused at every evaluation
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")

    jit_step = jax.jit(step_fn)
    jit_eval = None if eval_fn is None else jax.jit(eval_fn)
    history: dict[str, list] = defaultdict(list)
    start = int(state.step)
    last_good, streak = state, 0
    bar = tqdm(total=steps, initial=min(start, steps), disable=not progress, desc="fit", dynamic_ncols=True)
    try:
        for t in range(start, steps):
            state, metrics = jit_step(state, batch_fn(t))
            done = t + 1
            record = {k: _host(v) for k, v in jax.device_get(metrics).items()}
            if record.get("nonfinite", 0):
                streak += 1
                if max_consecutive_nonfinite is not None and streak >= max_consecutive_nonfinite:
                    raise NonFiniteError(
                        f"fit stopped at step {done}: {streak} consecutive non-finite steps "
                        f"(NaN/inf loss, gradients or updates; steps {done - streak + 1}..{done} "
                        f"were skipped). The exception's .state is the last good state (step "
                        f"{int(last_good.step)}); lower the learning rate or clip_norm, or check "
                        f"the data.", state=last_good, step=done)
            else:
                streak, last_good = 0, state
            if done % log_every == 0 or done == steps:
                history["step"].append(done)
                for k, v in record.items():
                    history[k].append(v)
            if jit_eval is not None and ((eval_every and done % eval_every == 0) or done == steps):
                batches = eval_batches() if callable(eval_batches) else eval_batches
                results = evaluate(jit_eval, state.params, batches)
                history["eval_step"].append(done)
                for k, v in results.items():
                    history[f"eval_{k}"].append(v)
                    record[f"eval_{k}"] = v
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                             if k == "loss" or k.startswith("eval_")}, refresh=False)
            bar.update(1)
            if callback is not None:
                callback(state, {"step": done, **record})
    finally:
        bar.close()
    return state, dict(history)
