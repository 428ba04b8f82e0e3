"""Training steps: the state a run carries, a pure train step with a non-finite guard, evaluation.

The pieces compose like the rest of the kit, as pure functions over pytrees::

    tx = rnnjax.optimizer("adam", 1e-3, clip_norm=1.0, schedule="cosine", decay_steps=1000)
    state = rnnjax.TrainState.create(params, tx, key=jax.random.key(0))
    step = jax.jit(rnnjax.train_step(loss_fn, tx))       # loss_fn(params, batch, key) -> loss
    state, metrics = step(state, batch)
    # or: state, history = rnnjax.fit(state, rnnjax.train_step(loss_fn, tx), batch_fn, steps=1000)

The optimizers are in [`rnnjax.optim`][rnnjax.optim], the training engine (``fit``) in
[`rnnjax.engine`][rnnjax.engine].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax.optim import current_learning_rate
from rnnjax.types import Array, Params, PRNGKey

__all__ = [
    "NonFiniteError",
    "TrainState",
    "evaluate",
    "tbptt_step",
    "train_step",
]

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
      carry: the recurrent state that truncated backpropagation through time carries from one
        batch to the next ([`tbptt_step`][rnnjax.train.tbptt_step]), checkpointed with the rest; None
        otherwise (no leaves: a state without it saves and restores as before).
    """

    step: Array
    params: Params
    opt_state: optax.OptState
    key: PRNGKey
    carry: Any = None

    @classmethod
    def create(cls, params: Params, tx: optax.GradientTransformation, *, key: PRNGKey,
               carry: Any = None) -> TrainState:
        """A state at step 0 with ``opt_state = tx.init(params)``.

        Args:
          params: the initial params pytree.
          tx: the optimizer (e.g. [`optimizer`][rnnjax.optim.optimizer]).
          key: the run's PRNG key (``jax.random.key(seed)``), keyword-only.
          carry: the initial recurrent state for [`tbptt_step`][rnnjax.train.tbptt_step] (e.g.
            ``cell.initial_carry(params["cell"], (B,))``); None for [`train_step`][rnnjax.train.train_step].

        Returns:
          A [`TrainState`][rnnjax.train.TrainState].
        """
        _check_tx(tx)
        if not isinstance(key, jax.Array):
            raise TypeError(f"key must be a jax PRNG key (jax.random.key(seed)), got {type(key).__name__}")
        return cls(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params), key=key,
                   carry=carry)


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
    [`rnnjax.indrnn_projection`][rnnjax.indrnn_projection]; or an ``optax.projections`` function). If the
    loss, a gradient or an update is NaN/inf, the step is skipped: params and opt_state are returned
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
        check_opt_state(tx, state)
        key = jax.random.fold_in(state.key, state.step)
        out, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(state.params, batch, key)
        loss, aux = out if has_aux else (out, {})
        return _apply(tx, project, state, loss, aux, grads)

    step.tx = tx  # type: ignore[attr-defined]  # the engine compares it with the state's optimizer
    return step


def _apply(tx: optax.GradientTransformation, project: Callable[[Params], Params] | None,
           state: TrainState, loss: Array, aux: Any, grads: Any) -> tuple[TrainState, dict[str, Array]]:
    """The update of [`train_step`][rnnjax.train.train_step]: the optimizer, the projection, the non-finite
    skip."""
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
        if jax.tree.structure(projected) != jax.tree.structure(params):  # type: ignore[operator]
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
    new_state = state.replace(  # type: ignore[attr-defined]  # flax.struct adds replace
        step=state.step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state))
    return new_state, metrics


def tbptt_step(
    loss_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    project: Callable[[Params], Params] | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, Array]]]:
    """A training step for truncated backpropagation through time (Williams & Peng 1990).

    A long stream is cut into consecutive windows of ``k`` steps (``batch_fn(step)`` returns
    window ``step``); the recurrent state runs on from one window to the next in
    ``state.carry``, and gradients stop at the window's start: the step is
    [`train_step`][rnnjax.train.train_step] with ``loss_fn(params, batch, key, carry) -> (loss, new_carry)``
    differentiated with respect to ``params`` only (``carry`` enters as a constant), and ``state.carry =
    new_carry`` after it. So the state sees the whole stream while each gradient spans ``k`` steps.
    ``state.carry`` is part of the checkpoint, so [`rnnjax.fit`][rnnjax.engine.fit] resumes a stateful run
    bitwise. A non-finite step keeps the old params, optimizer state and carry.

    Args:
      loss_fn: ``loss_fn(params, batch, key, carry) -> (loss, carry)``, or with ``has_aux``
        ``-> ((loss, aux), carry)`` (``aux`` a dict of metrics); ``carry`` is the state's carry
        (e.g. from ``rnnjax.unroll(cell, params, xs, carry)``).
      tx: the optimizer the state was created with.
      has_aux: whether the loss comes with an aux dict.
      project: as in [`train_step`][rnnjax.train.train_step].

    Returns:
      ``step(state, batch) -> (state, metrics)``, the metrics of [`train_step`][rnnjax.train.train_step].
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable (params, batch, key, carry) -> (loss, carry), "
                        f"got {type(loss_fn).__name__}")
    _check_tx(tx)
    if project is not None and not callable(project):
        raise TypeError(f"project must be a callable params -> params or None, got {type(project).__name__}")

    def wrapped(params, batch, key, carry):
        out, new_carry = loss_fn(params, batch, key, carry)
        loss, aux = out if has_aux else (out, {})
        return loss, (aux, new_carry)

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Array]]:
        check_opt_state(tx, state)
        if state.carry is None:
            raise ValueError("tbptt_step needs the state's carry: create the state with "
                             "TrainState.create(params, tx, key=..., carry=cell.initial_carry(...))")
        key = jax.random.fold_in(state.key, state.step)
        carry = jax.lax.stop_gradient(state.carry)
        (loss, (aux, new_carry)), grads = jax.value_and_grad(wrapped, has_aux=True)(
            state.params, batch, key, carry)
        if jax.tree.structure(new_carry) != jax.tree.structure(carry):  # type: ignore[operator]
            raise ValueError(f"loss_fn must return (loss, carry) with the carry's structure "
                             f"{jax.tree.structure(carry)}, got {jax.tree.structure(new_carry)}")
        new_state, metrics = _apply(tx, project, state, loss, aux, grads)
        finite = metrics["nonfinite"] == 0
        carry_out = jax.tree.map(lambda n, o: jnp.where(finite, n, o).astype(o.dtype), new_carry, carry)
        return new_state.replace(carry=carry_out), metrics  # type: ignore[attr-defined]

    step.tx = tx  # type: ignore[attr-defined]
    return step


def check_opt_state(tx: optax.GradientTransformation, state: TrainState) -> None:
    """Refuse a state whose optimizer state was not made by ``tx`` (a different optimizer or
    schedule): its structure differs from ``tx.init(state.params)``. Works on traced states."""
    expected = jax.tree.structure(jax.eval_shape(tx.init, state.params))
    given = jax.tree.structure(state.opt_state)
    if expected != given:  # type: ignore[operator]
        raise ValueError(
            "the state's opt_state was made by a different optimizer than the step's tx (another "
            "optimizer name, schedule or chain): create the state with the same tx the step was "
            f"built from (TrainState.create(params, tx, key=...)). Step's tx makes {expected}; "
            f"the state holds {given}")


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
    """Raised by [`fit`][rnnjax.engine.fit] after too many consecutive non-finite (skipped) steps.

    Attributes:
      state: the last good state: the state after the last finite step (or the initial state).
      step: the step count at which training stopped.
    """

    def __init__(self, message: str, *, state: TrainState, step: int):
        super().__init__(message)
        self.state = state
        self.step = step


