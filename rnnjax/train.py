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
import json
import math
from collections import defaultdict
from typing import Any, Callable, Iterable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from rnnjax._workdir import WorkdirError
from rnnjax.types import Array, Params, PRNGKey

__all__ = [
    "NonFiniteError",
    "ScheduleState",
    "TrainState",
    "WorkdirError",
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
    if not isinstance(eps_in_sqrt, bool):
        raise TypeError(f"eps_in_sqrt must be a bool, got {type(eps_in_sqrt).__name__} {eps_in_sqrt!r}")
    if not eps_in_sqrt and name != "rmsprop":
        raise ValueError(f"eps_in_sqrt=False applies to rmsprop only, not to {name!r}")
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
            _direction(name, hp, nesterov, weight_decay_mask, eps_in_sqrt),
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
    project: Callable[[Params], Params] | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, Array]]]:
    """Make a pure training step ``step(state, batch) -> (new_state, metrics)``.

    The step computes ``loss_fn(params, batch, key)`` and its gradient with
    ``key = jax.random.fold_in(state.key, state.step)``, so a run is a deterministic function of
    its seed, its data and the step (a resumed run repeats the same steps bitwise). Then
    ``updates = tx.update(grads, opt_state, params)`` and ``params + updates``, projected with
    ``project`` when given (projected gradient descent, e.g. IndRNN's bound on ``|u|``:
    :func:`rnnjax.indrnn_projection`; or an ``optax.projections`` function). If the loss, a
    gradient or an update is NaN/inf, the step is skipped: params and opt_state are returned
    unchanged (bitwise), the step counter still advances, and ``metrics["nonfinite"]`` is 1.

    The returned function is not jitted: ``jax.jit(step)`` it (``fit`` does), or ``vmap``/``scan``
    it first.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> loss`` (a scalar), or ``-> (loss, aux)`` with
        ``has_aux``, where ``aux`` is a dict of arrays added to the metrics.
      tx: the optimizer the state was created with.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      project: optional ``project(params) -> params`` (same tree structure) applied to the
        params after every update; ``update_norm`` is still the norm of the optimizer's update.

    Returns:
      ``step(state, batch) -> (state, metrics)``; metrics: ``loss``, ``grad_norm`` (global norm
      before clipping), ``update_norm`` (of the applied update; 0 if skipped), ``learning_rate``
      (of this step), ``nonfinite`` (int32, 1 if skipped), and the aux entries.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable (params, batch, key) -> loss, "
                        f"got {type(loss_fn).__name__}")
    _check_tx(tx)
    if project is not None and not callable(project):
        raise TypeError(f"project must be a callable params -> params or None, got {type(project).__name__}")

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
        if project is not None:
            projected = project(params)
            if jax.tree.structure(projected) != jax.tree.structure(params):
                raise ValueError(f"project must return params of the same structure; got "
                                 f"{jax.tree.structure(projected)}, expected {jax.tree.structure(params)}")
            params = projected
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


def _check_int(arg: str, value: Any, *, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{arg} must be {'>= 0' if minimum == 0 else 'a positive int'}, got {value}")


def _traceable(batch_fn: Callable[[Any], Any]) -> bool:
    """Whether ``batch_fn(step)`` can be traced with a traced int32 ``step`` (made inside jit)."""
    try:
        jax.eval_shape(batch_fn, jax.ShapeDtypeStruct((), jnp.int32))
    except Exception:  # noqa: BLE001 - any failure means: feed it host steps instead
        return False
    return True


def _boundaries(t: int, steps: int, every: Iterable[int | None]) -> int:
    """The next chunk end after ``t``: the nearest multiple of any of ``every``, or ``steps``."""
    return min([steps] + [(t // k + 1) * k for k in every if k])


def _records_to_history(records: Iterable[dict]) -> dict[str, list]:
    history: dict[str, list] = defaultdict(list)
    for r in records:
        if r.get("kind") == "eval":
            history["eval_step"].append(r["step"])
            for k, v in r.items():
                if k.startswith("eval_"):
                    history[k].append(v)
        elif r.get("kind") == "train":
            for k, v in r.items():
                if k != "kind":
                    history[k].append(v)
    return dict(history)


class _Placement:
    """Where the state and batches live: one device, or data parallel over a mesh's first axis."""

    def __init__(self, mesh: Any, batch_axes: Any):
        from jax.sharding import Mesh

        self.mesh = mesh
        self.batch_axes = batch_axes
        if mesh is None:
            return
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh (its first axis is the data axis), "
                            f"got {type(mesh).__name__}")
        self.axis = mesh.axis_names[0]
        self.size = int(mesh.shape[self.axis])

    def _specs(self, batch: Any) -> Any:
        """A ``PartitionSpec`` for every batch leaf (checked: the batch axis divides evenly)."""
        from jax.sharding import PartitionSpec as P

        leaves, treedef = jax.tree_util.tree_flatten(batch)
        axes = self.batch_axes
        if isinstance(axes, (int, np.integer)) or axes is None:
            axes = [axes] * len(leaves)
        else:
            try:
                axes = treedef.flatten_up_to(axes)
            except (ValueError, TypeError) as e:
                raise ValueError(f"batch_axes must be an int or a pytree of ints/None matching the "
                                 f"batch's structure {treedef}: {e}") from None
        specs = []
        for i, (leaf, ax) in enumerate(zip(leaves, axes)):
            if ax is None:
                specs.append(P())
                continue
            shape = np.shape(leaf)
            if not -len(shape) <= ax < len(shape):
                raise ValueError(f"batch_axes gives axis {ax} for batch leaf {i} of shape {shape}")
            ax = ax % len(shape)
            if shape[ax] % self.size:
                raise ValueError(f"batch leaf {i} has size {shape[ax]} along its batch axis {ax} "
                                 f"(shape {shape}), which does not divide over the {self.size} "
                                 f"devices of mesh axis {self.axis!r}; use a batch size that is a "
                                 f"multiple of {self.size}")
            specs.append(P(*([None] * ax + [self.axis])))
        return jax.tree_util.tree_unflatten(treedef, specs)

    def state(self, state: Any) -> Any:
        if self.mesh is None:
            return state
        from jax.sharding import NamedSharding, PartitionSpec as P

        replicated = NamedSharding(self.mesh, P())
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.host_local_array_to_global_array(state, self.mesh, P())
        return jax.device_put(state, replicated)

    def to_host(self, state: Any) -> Any:
        """A replicated state as this process's local copy (to save, hash or return)."""
        if self.mesh is None or jax.process_count() == 1:
            return state

        def local(x):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                return x.addressable_data(0)
            return x

        return jax.tree.map(local, state)

    def batch(self, batch: Any) -> Any:
        """Inside a program: constrain every batch leaf to be sharded along its batch axis."""
        if self.mesh is None:
            return batch
        from jax.sharding import NamedSharding

        specs = self._specs(batch)
        return jax.tree.map(lambda x, s: jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, s)),
                            batch, specs)

    def host_batch(self, batch: Any) -> Any:
        """A host batch as global arrays: this process's share on its devices."""
        if self.mesh is None:
            return batch
        from jax.sharding import NamedSharding

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            specs = self._local_specs(batch)
            return multihost_utils.host_local_array_to_global_array(batch, self.mesh, specs)
        specs = self._specs(batch)
        return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(self.mesh, s)), batch, specs)

    def _local_specs(self, batch: Any) -> Any:
        # the local share must divide over this process's devices along the data axis
        n_local = self.size // jax.process_count()
        saved, self.size = self.size, max(n_local, 1)
        try:
            return self._specs(batch)
        finally:
            self.size = saved

    def jit(self, f: Callable) -> Callable:
        return jax.jit(f)


DEFAULT_CHUNK = 100
DEFAULT_CKPT_EVERY = 1000


def fit(
    state: TrainState,
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict[str, Array]]],
    batch_fn: Callable[[Any], Any] | Iterable[Any],
    *,
    steps: int,
    workdir: str | None = None,
    config: dict[str, Any] | None = None,
    ckpt_every: int | None = None,
    eval_fn: Callable[..., dict[str, Array]] | None = None,
    eval_batches: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    eval_every: int | None = None,
    log_every: int = 1,
    chunk: int | None = None,
    progress: bool = True,
    callback: Callable[[TrainState, dict[str, Any]], None] | None = None,
    max_consecutive_nonfinite: int | None = 10,
    max_to_keep: int = 3,
    tensorboard: bool | None = None,
    baseline: float | None = None,
    mesh: Any = None,
    batch_axes: Any = 0,
) -> tuple[TrainState, dict[str, list]]:
    """The training engine: train ``state`` until ``state.step == steps``; resumable with ``workdir``.

    Step ``t`` (0-based) runs ``state, metrics = step_fn(state, batch_fn(t))``. The data are a
    function of the step and :func:`train_step` folds the step into the key, so a run is a
    deterministic function of its seed; a resumed run repeats the same steps bitwise.

    **Compiled chunks.** When ``batch_fn(step)`` can be traced with a traced int32 ``step``, steps
    run in jitted chunks: a ``lax.scan`` over up to ``chunk`` steps with the batch made inside the
    program, no per-step dispatch or host round trip. Otherwise (a data loader, a function of a
    Python int, or an iterable of batches: ``batch_fn`` may be an iterator, advanced ``state.step``
    times on resume) each step is a jitted call fed a host batch, with the same guarantees.
    Chunks end at multiples of ``chunk``, ``ckpt_every``, ``eval_every`` and at ``steps``.

    **Work directory.** With ``workdir``, ``fit`` resumes from the newest intact checkpoint there
    (a damaged newest one is skipped with a warning naming it) and writes:
    ``checkpoints/`` (the whole :class:`TrainState`, every ``ckpt_every`` steps and at the end,
    atomic: a process killed at any moment, during a save too, leaves the previous checkpoint),
    ``metrics.jsonl``, TensorBoard event files (``tensorboard --logdir runs/``), ``loss.png``, and
    ``results.json`` (the config, the final metrics, ``params_sha256``, and ``wall_time_s`` summed
    over every process that worked on the run, from ``sessions.json``). ``config`` (JSON-able) is
    stored in ``config.json``; a resumed run with a different config is refused, naming the
    differing keys, except ``steps`` (a larger ``steps`` extends a finished run from its last
    checkpoint) and settings that change no result (``log_every``, ``eval_every``,
    ``ckpt_every``, ``chunk``, ``progress`` ...). Calling ``fit`` again with the same arguments
    after an interruption ends bitwise equal to an uninterrupted run.

    **Non-finite guard.** A step whose loss, gradients or updates are NaN/inf changes nothing but
    the step counter (:func:`train_step`); after ``max_consecutive_nonfinite`` such steps in a row,
    ``fit`` raises :class:`NonFiniteError` naming the step; no checkpoint is written after it, so
    the last good checkpoint stays intact.

    **Data parallel.** With ``mesh`` (a ``jax.sharding.Mesh`` whose first axis is the data axis),
    every batch leaf is sharded along its batch axis over that mesh axis, params and optimizer
    state are replicated, and XLA inserts the gradient all-reduce. ``batch_axes`` says where the
    batch axis is: an int for every leaf (0: ``[B, ...]``), or a pytree of ints / None (not
    sharded) matching the batch, e.g. ``(1, 0)`` for time-major inputs ``[T, B, D]`` with labels
    ``[B]``. On several hosts (after ``jax.distributed.initialize()``), a host-fed ``batch_fn``
    returns this process's share of the batch (``jax.process_index()`` tells which) and a
    traceable one returns the global batch, of which each device computes its shard.

    Args:
      state: the starting :class:`TrainState` (the template that checkpoints restore onto).
      step_fn: a pure step from :func:`train_step` (not jitted; a jitted one works too).
      batch_fn: ``batch_fn(step) -> batch`` (traceable for compiled chunks), or an iterable.
      steps: the total number of steps (runs ``steps - state.step`` more).
      workdir: the run's directory (see above); None keeps nothing on disk.
      config: the run's JSON-able config, stored and checked on resume (with ``workdir``).
      ckpt_every: checkpoint every this many steps (default 1000) and at the end.
      eval_fn: ``eval_fn(params) -> dict`` of scalars (jitted), or with ``eval_batches``
        ``eval_fn(params, batch)`` averaged over them by :func:`evaluate`.
      eval_batches: the evaluation batches (a sequence, or a function returning an iterable).
      eval_every: evaluate every this many steps and at the end; None: only at the end.
      log_every: record training metrics every this many steps (and at the last step, and every
        non-finite step) in the history, ``metrics.jsonl`` and TensorBoard.
      chunk: steps per compiled call (default 100).
      progress: one tqdm progress bar (steps, steps/s, ETA, last loss and eval metrics).
      callback: ``callback(state, record)`` for every step after its chunk ran; ``record`` holds
        ``step`` and the step's metrics as floats (plus ``eval_*`` on evaluation steps); ``state``
        is the state at the end of that chunk.
      max_consecutive_nonfinite: stop after this many consecutive skipped steps (None: never).
      max_to_keep: checkpoints kept in ``workdir``.
      tensorboard: write TensorBoard events (needs ``tensorboardX``, the ``tensorboard`` extra);
        None: when it is installed.
      baseline: a reference loss drawn and named in ``loss.png`` (e.g. the no-memory predictor's).
      mesh: a ``jax.sharding.Mesh`` for data-parallel training (see above), or None.
      batch_axes: the batch axis of each batch leaf (an int, or a pytree of ints / None).

    Returns:
      ``(state, history)``: the final state and a dict of lists: ``step`` with ``loss``,
      ``grad_norm``, ``update_norm``, ``learning_rate``, ``nonfinite`` and any aux metrics;
      ``eval_step`` with ``eval_<name>``. With ``workdir`` the history covers the whole run,
      earlier processes included.

    Raises:
      NonFiniteError: too many consecutive non-finite steps; ``.state`` is the last good state.
      WorkdirError (a ``ValueError``): ``workdir`` is a file, cannot be written, or holds a run
        with another config or one already beyond ``steps``.
      ValueError: ``state.step`` is beyond ``steps``.
    """
    import time

    from rnnjax import _workdir as wd

    if not isinstance(state, TrainState):
        raise TypeError(f"state must be an rnnjax.TrainState, got {type(state).__name__}")
    if not callable(step_fn):
        raise TypeError(f"step_fn must be callable, got {type(step_fn).__name__}")
    if not callable(batch_fn) and not isinstance(batch_fn, Iterable):
        raise TypeError(f"batch_fn must be a callable step -> batch or an iterable of batches, "
                        f"got {type(batch_fn).__name__}")
    _check_int("steps", steps, minimum=0)
    for arg, value in (("eval_every", eval_every), ("ckpt_every", ckpt_every), ("chunk", chunk),
                       ("max_consecutive_nonfinite", max_consecutive_nonfinite)):
        _check_int(arg, value, minimum=1, allow_none=True)
    _check_int("log_every", log_every, minimum=1)
    _check_int("max_to_keep", max_to_keep, minimum=1)
    if eval_batches is not None and eval_fn is None:
        raise ValueError("eval_batches needs eval_fn(params, batch); pass eval_fn and eval_batches together")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable, got {type(eval_fn).__name__}")
    if eval_batches is not None and not callable(eval_batches):
        eval_batches = list(eval_batches)  # reused at every evaluation
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a JSON-able dict, got {type(config).__name__}")
    if tensorboard and not wd.tensorboard_available():
        raise ImportError("tensorboard=True needs tensorboardX: pip install 'rnnjax[tensorboard]'")
    chunk = DEFAULT_CHUNK if chunk is None else int(chunk)
    ckpt_every = DEFAULT_CKPT_EVERY if ckpt_every is None else int(ckpt_every)
    steps = int(steps)
    t_start = time.time()

    placement = _Placement(mesh, batch_axes)
    state = placement.state(state)

    # -- the work directory: config check, resume
    run = ckpt = events = None
    records: list[dict] = []
    resumed_from = None
    primary = jax.process_index() == 0
    if workdir is not None:
        from rnnjax.checkpoint import Checkpointer

        run = wd.Workdir(workdir, config=config, steps=steps, write=primary)
        ckpt = Checkpointer(run.path / "checkpoints", max_to_keep=max_to_keep)
        restored = ckpt.restore_latest(state)
        if restored is not None:
            state = placement.state(restored)
            resumed_from = int(state.step)
        records = run.open_metrics(int(state.step))
        use_tb = wd.tensorboard_available() if tensorboard is None else tensorboard
        if use_tb and primary:
            events = wd.EventLog(run.path, purge_step=resumed_from)
    start = int(state.step)
    if start > steps:  # steps is the total: a smaller one would return this state as if it were that run
        if resumed_from is not None:
            raise WorkdirError(f"workdir {run.path} holds a run already at step {start}, beyond "
                               f"steps={steps} (the total number of steps); pass steps >= {start} to "
                               f"continue it, or another workdir for a new run")
        raise ValueError(f"state is already at step {start}, beyond steps={steps} (the total number "
                         f"of steps); pass steps >= {start} to continue it")

    # -- how steps run: compiled chunks, or host-fed steps
    iterator = None
    if not callable(batch_fn):
        iterator = iter(batch_fn)
        for _ in range(start):  # a resumed run skips the batches already consumed
            next(iterator)
    compiled = iterator is None and _traceable(batch_fn)
    guard = max_consecutive_nonfinite

    if compiled:
        chunk_fns: dict[int, Callable] = {}
        metrics_shape = jax.eval_shape(lambda s: step_fn(s, placement.batch(batch_fn(s.step)))[1], state)
        has_guard = "nonfinite" in metrics_shape

        def body(carry, _):
            s, streak = carry

            def do(s):
                return step_fn(s, placement.batch(batch_fn(s.step)))

            if guard is None or not has_guard:
                s, m = do(s)
                return (s, streak), m

            def skip(s):
                return s, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), metrics_shape)

            s, m = jax.lax.cond(streak >= guard, skip, do, s)
            streak = jnp.where(m["nonfinite"] > 0, streak + 1, 0)
            return (s, streak), m

        def run_chunk(s, streak, t, n):
            del t
            if n not in chunk_fns:
                chunk_fns[n] = placement.jit(lambda c: jax.lax.scan(body, c, None, length=n))
            (s, _), m = chunk_fns[n]((s, jnp.asarray(streak, jnp.int32)))
            return s, jax.device_get(m)
    else:
        jit_step = placement.jit(step_fn)

        def run_chunk(s, streak, t, n):
            ms = []
            for i in range(n):
                batch = next(iterator) if iterator is not None else batch_fn(t + i)
                s, m = jit_step(s, placement.host_batch(batch))
                m = jax.device_get(m)
                ms.append(m)
                streak = streak + 1 if int(m.get("nonfinite", 0)) else 0
                if guard is not None and streak >= guard:
                    break
            return s, {k: np.stack([np.asarray(m[k]) for m in ms]) for k in ms[0]}

    jit_eval = None if eval_fn is None else jax.jit(eval_fn)

    def evaluate_now(params) -> dict[str, float]:
        if eval_batches is not None:
            batches = eval_batches() if callable(eval_batches) else eval_batches
            res = evaluate(jit_eval, params, batches)
        else:
            out = jit_eval(params)
            if not isinstance(out, dict):
                raise TypeError(f"eval_fn must return a dict of scalars, got {type(out).__name__}")
            res = {k: float(v) for k, v in jax.device_get(out).items()}
        return {f"eval_{k}": v for k, v in res.items()}

    log = None
    if run is not None and primary:
        log = open(run.path / "metrics.jsonl", "a")
    new_records: list[dict] = []
    nonscalar: dict[str, list] = defaultdict(list)
    bar = tqdm(total=steps, initial=min(start, steps), disable=not progress or not primary,
               desc=_bar_label(workdir), dynamic_ncols=True, mininterval=0.5)
    streak, t, last_eval = 0, start, {}
    try:
        while t < steps:
            nb = _boundaries(t, steps, (chunk, ckpt_every if run is not None else None, eval_every))
            n = nb - t
            t0 = time.time()
            state, m = run_chunk(state, streak, t, n)
            dt = time.time() - t0
            ran = len(next(iter(m.values()))) if m else n
            stop_at = None
            for i in range(ran):
                done = t + i + 1
                scal = {k: float(v[i]) for k, v in m.items() if np.ndim(v[i]) == 0}
                bad = bool(scal.get("nonfinite", 0))
                streak = streak + 1 if bad else 0
                if done % log_every == 0 or done == steps or bad or \
                        (guard is not None and streak >= guard):
                    rec = {"kind": "train", "step": done, **scal, "sec_per_step": dt / max(ran, 1)}
                    new_records.append(rec)
                    for k, v in m.items():
                        if np.ndim(v[i]) != 0:
                            nonscalar[k].append(np.asarray(v[i]))
                    if log is not None:
                        log.write(json.dumps(rec) + "\n")
                    if events is not None:
                        events.scalars(done, scal, prefix="train/")
                if callback is not None:
                    callback(state, {"step": done, **{k: _host(v[i]) for k, v in m.items()}})
                if guard is not None and streak >= guard:
                    stop_at = done
                    break
            if stop_at is not None:
                if log is not None:
                    log.flush()
                if run is not None:
                    run.progress(start, stop_at)
                last_good = state.replace(step=jnp.asarray(stop_at - streak, jnp.int32))
                saved = ckpt.latest_step() if ckpt is not None else None
                raise NonFiniteError(
                    f"fit stopped at step {stop_at}: {streak} consecutive non-finite steps "
                    f"(NaN/inf loss, gradients or updates; steps {stop_at - streak + 1}..{stop_at} "
                    f"were skipped, params unchanged since step {stop_at - streak}). The "
                    f"exception's .state is the last good state"
                    + (f"; the last checkpoint (step {saved}) is intact" if ckpt is not None else "")
                    + ". Lower the learning rate or clip_norm, or check the data.",
                    state=last_good, step=stop_at)
            t = nb
            post = {"loss": f"{float(m['loss'][ran - 1]):.4g}"} if "loss" in m else {}
            if jit_eval is not None and ((eval_every and t % eval_every == 0) or t == steps):
                last_eval = evaluate_now(state.params)
                rec = {"kind": "eval", "step": t, **last_eval}
                new_records.append(rec)
                if log is not None:
                    log.write(json.dumps(rec) + "\n")
                if events is not None:
                    events.scalars(t, {k[5:]: v for k, v in last_eval.items()}, prefix="eval/")
                post.update({k[5:]: f"{v:.4g}" for k, v in last_eval.items()})
            if log is not None:
                log.flush()
            if ckpt is not None and (t % ckpt_every == 0 or t == steps) and (streak == 0 or t == steps):
                ckpt.save(placement.to_host(state))
            if run is not None:
                run.progress(start, t)
            bar.set_postfix(post, refresh=False)
            bar.update(n)
    finally:
        bar.close()
        if log is not None:
            log.close()
        if events is not None:
            events.close()

    history = _records_to_history(records + new_records)
    for k, v in nonscalar.items():
        history[k] = v
    if run is not None:
        if jit_eval is not None and not last_eval and int(state.step) >= steps:
            last_eval = evaluate_now(state.params)  # resumed at the end: evaluate what was restored
        _write_fit_results(run, ckpt, placement.to_host(state), records + new_records, last_eval, resumed_from,
                           baseline, time.time() - t_start)
        ckpt.close()
    return state, history


def _bar_label(workdir: Any) -> str:
    """The progress bar's label: the work directory's name, or ``fit``."""
    import os

    return os.path.basename(os.path.normpath(str(workdir))) if workdir is not None else "fit"


def _write_fit_results(run, ckpt, state: TrainState, records: list[dict], last_eval: dict,
                       resumed_from: int | None, baseline: float | None, elapsed: float) -> None:
    from rnnjax import _workdir as wd
    from rnnjax.checkpoint import params_sha256

    train = [r for r in records if r.get("kind") == "train"]
    final: dict[str, Any] = {}
    if train:
        final.update({k: v for k, v in train[-1].items() if k not in ("kind", "step")})
        tail = [r["loss"] for r in train[-10:] if "loss" in r and math.isfinite(r["loss"])]
        if tail:
            final["train_loss_last10"] = float(np.mean(tail))
    final.update(last_eval)
    sessions = run.sessions()  # one reading of the clock for both fields
    results = {
        "config": run.config,
        "steps": int(state.step),
        "final": final,
        "params_sha256": params_sha256(state.params),
        "num_params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(state.params))),
        "wall_time_s": run.total_wall_time(sessions),
        "wall_time_this_process_s": elapsed,
        "sessions": sessions,
        "resumed_from_step": resumed_from,
        "checkpoints": ckpt.steps(),
        "baseline": baseline,
    }
    run.results(results)
    if run.write:
        wd.plot_run(records, run.path / "loss.png", title=run.path.name, baseline=baseline)
