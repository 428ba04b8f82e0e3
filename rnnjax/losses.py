"""Losses, metrics and weight penalties: pure functions of arrays (and of params pytrees).

Every loss reduces to a scalar mean over the valid positions. Shapes must match exactly: there is no
silent broadcasting between, say, predictions ``[B, 1]`` and targets ``[B]``. An optional ``mask``
selects (bool) or weights (float; finite and >= 0, checked outside ``jit``) positions; the result
is ``sum(mask * loss) / sum(mask)``, and 0 when nothing is valid (never NaN). Classification losses
take *logits* and are numerically stable for any finite logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.types import Array, Params

__all__ = [
    "accuracy",
    "binary_accuracy",
    "binary_cross_entropy",
    "categorical_cross_entropy",
    "categorical_cross_entropy_probs",
    "is_weight",
    "l1_penalty",
    "l2_penalty",
    "mse",
    "sequence_cross_entropy",
]


# ----------------------------------------------------------------------------- checks


def _array(name: str, x: Any, kind: str, what: str) -> Array:
    """``x`` as an array of dtype ``kind`` ('float', 'int', 'real' = float/int/bool); else TypeError."""
    if not isinstance(x, (jax.Array, np.ndarray)):
        raise TypeError(f"{name} must be a jax or numpy array ({what}), got {type(x).__name__}")
    x = jnp.asarray(x)
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    integer = jnp.issubdtype(x.dtype, jnp.integer)
    if kind == "float" and not floating:
        raise TypeError(f"{name} must have a floating dtype ({what}), got {x.dtype}")
    if kind == "int" and not integer:
        raise TypeError(f"{name} must have an integer dtype ({what}), got {x.dtype}")
    if kind == "real" and not (floating or integer or x.dtype == jnp.bool_):
        raise TypeError(f"{name} must have a float, int or bool dtype ({what}), got {x.dtype}")
    return x


def _same_shape(name: str, x: Array, ref_name: str, shape: tuple[int, ...]) -> None:
    if x.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (the shape of {ref_name}), got {x.shape}; "
                         f"shapes must match exactly (reshape or squeeze explicitly)")


def _concrete(x: Array) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_labels(labels: Array, num_classes: int, mask: Array | None) -> None:
    """Eagerly (outside jit) check valid labels lie in ``[0, C)``."""
    if not (_concrete(labels) and (mask is None or _concrete(mask))) or labels.size == 0:
        return
    lab = np.asarray(labels)
    if mask is not None:
        lab = lab[np.asarray(mask) != 0]
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) (the number of classes, the last "
                         f"dim of logits) at valid positions, got values in [{lab.min()}, {lab.max()}]")


def _check_unit_interval(name: str, x: Array, mask: Array | None, what: str) -> None:
    """Eagerly (outside jit) check that ``x`` lies in ``[0, 1]`` (no NaN) at valid positions."""
    if not (_concrete(x) and (mask is None or _concrete(mask))) or x.size == 0:
        return
    v = np.asarray(x, np.float64)
    if mask is not None:
        m = np.asarray(mask) != 0
        v = v[np.broadcast_to(m.reshape(m.shape + (1,) * (v.ndim - m.ndim)), v.shape)]
    if v.size and (np.isnan(v).any() or v.min() < 0 or v.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1] ({what}) at valid positions, got values in "
                         f"[{np.nanmin(v) if not np.isnan(v).all() else np.nan}, "
                         f"{np.nanmax(v) if not np.isnan(v).all() else np.nan}]"
                         f"{' and NaN' if np.isnan(v).any() else ''}")


def _mask(mask: Any, shape: tuple[int, ...], ref_name: str, allow_prefix: bool = False) -> Array | None:
    if mask is None:
        return None
    mask = _array("mask", mask, "real", f"bool or float weights of shape {shape}")
    if allow_prefix:
        if mask.ndim > len(shape) or mask.shape != shape[: mask.ndim]:
            raise ValueError(f"mask must have the shape of {ref_name} {shape} or of its leading dims "
                             f"(e.g. {shape[:-1]}), got {mask.shape}")
    else:
        _same_shape("mask", mask, ref_name, shape)
    if _concrete(mask) and mask.size and mask.dtype != jnp.bool_:  # weights: finite and >= 0
        w = np.asarray(mask, np.float64)
        if not np.isfinite(w).all() or w.min() < 0:
            raise ValueError(f"mask weights must be finite and >= 0, got values in "
                             f"[{np.nanmin(w)}, {np.nanmax(w)}]{' and NaN' if np.isnan(w).any() else ''}")
    return mask


def _masked_mean(values: Array, mask: Array | None) -> Array:
    """Mean of ``values`` over positions where ``mask`` (shape = leading dims of values) is nonzero."""
    if mask is None:
        return jnp.mean(values)
    trailing = values.shape[mask.ndim:]
    m = mask.astype(values.dtype).reshape(mask.shape + (1,) * len(trailing))
    total = jnp.sum(jnp.where(m != 0, values * m, 0))
    count = jnp.sum(m) * int(np.prod(trailing, dtype=np.int64))
    return total / jnp.maximum(count, jnp.ones_like(count))


# ----------------------------------------------------------------------------- regression


def mse(predictions: Array, targets: Array, *, mask: Array | None = None) -> Array:
    """Mean squared error.

    ``mean((predictions - targets)^2)`` over all elements, or over the elements of valid positions.

    Args:
      predictions: float array of any shape, e.g. ``[T, B, O]``.
      targets: float array of exactly the same shape.
      mask: optional bool/float array with the shape of ``targets`` or of its leading dims (e.g.
        ``[T, B]`` for ``[T, B, O]``); each valid position contributes all its trailing elements.

    Returns:
      A scalar.
    """
    predictions = _array("predictions", predictions, "float", "model outputs")
    targets = _array("targets", targets, "real", f"shape {predictions.shape}")
    _same_shape("targets", targets, "predictions", predictions.shape)
    mask = _mask(mask, targets.shape, "targets", allow_prefix=True)
    return _masked_mean(jnp.square(predictions - targets.astype(predictions.dtype)), mask)


# ----------------------------------------------------------------------------- classification


def binary_cross_entropy(logits: Array, labels: Array, *, mask: Array | None = None) -> Array:
    """Binary cross-entropy from logits (sigmoid), numerically stable.

    ``-z log σ(x) - (1 - z) log(1 - σ(x)) = max(x, 0) - x z + log(1 + exp(-|x|))``, finite for any
    finite logit ``x`` (e.g. ±100) and exact for targets ``z`` in ``[0, 1]``.

    Args:
      logits: float array of any shape ``[...]``.
      labels: targets in ``[0, 1]`` (bool, int or float) of exactly the same shape (checked
        outside ``jit`` at valid positions).
      mask: optional bool/float array of the same shape.

    Returns:
      The mean over (valid) elements, a scalar.
    """
    logits = _array("logits", logits, "float", "pre-sigmoid scores")
    labels = _array("labels", labels, "real", f"0/1 or probabilities, shape {logits.shape}")
    _same_shape("labels", labels, "logits", logits.shape)
    mask = _mask(mask, logits.shape, "logits")
    _check_unit_interval("labels", labels, mask, "0/1 targets or probabilities; checked outside jit")
    z = labels.astype(logits.dtype)
    loss = jnp.maximum(logits, 0) - logits * z + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return _masked_mean(loss, mask)


def _class_logits(logits: Any) -> Array:
    logits = _array("logits", logits, "float", "scores of shape [..., C]")
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape [..., C] with C >= 1 classes, got {logits.shape}")
    return logits


def _int_labels(labels: Any, logits: Array) -> Array:
    labels = _array("labels", labels, "int", f"class indices of shape {logits.shape[:-1]}")
    _same_shape("labels", labels, "logits without the class dim", logits.shape[:-1])
    return labels


def _nll(logits: Array, labels: Array, mask: Array | None) -> Array:
    """Per-position ``-log softmax(logits)[label]``; labels at invalid positions are ignored."""
    if mask is not None:
        labels = jnp.where(mask != 0, labels, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def categorical_cross_entropy(logits: Array, labels: Array, *, mask: Array | None = None) -> Array:
    """Softmax cross-entropy from logits and integer class labels.

    ``-log softmax(logits)[label] = logsumexp(logits) - logits[label]``, averaged over positions.
    For one-hot or probability targets use
    [`categorical_cross_entropy_probs`][rnnjax.losses.categorical_cross_entropy_probs].

    Args:
      logits: float array ``[..., C]``.
      labels: int array ``[...]`` (the leading dims of ``logits``) with values in ``[0, C)``
        (checked outside ``jit``; labels at masked-out positions may be anything, e.g. -1).
      mask: optional bool/float array ``[...]``.

    Returns:
      The mean over (valid) positions, a scalar.
    """
    logits = _class_logits(logits)
    labels = _int_labels(labels, logits)
    mask = _mask(mask, labels.shape, "labels")
    _check_labels(labels, logits.shape[-1], mask)
    return _masked_mean(_nll(logits, labels, mask), mask)


def categorical_cross_entropy_probs(logits: Array, probs: Array, *, mask: Array | None = None) -> Array:
    """Softmax cross-entropy from logits and one-hot or probability targets.

    ``-sum_c probs_c log softmax(logits)_c``, averaged over positions (label smoothing, distillation).

    Args:
      logits: float array ``[..., C]``.
      probs: float array ``[..., C]`` of exactly the same shape, entries in ``[0, 1]`` (checked
        outside ``jit``); each row sums to 1 (not checked).
      mask: optional bool/float array ``[...]`` (the leading dims).

    Returns:
      The mean over (valid) positions, a scalar.
    """
    logits = _class_logits(logits)
    probs = _array("probs", probs, "real", f"one-hot or probabilities of shape {logits.shape}")
    _same_shape("probs", probs, "logits", logits.shape)
    mask = _mask(mask, logits.shape[:-1], "logits without the class dim")
    _check_unit_interval("probs", probs, mask, "one-hot or probability targets; checked outside jit")
    logp = jax.nn.log_softmax(logits, axis=-1)
    # 0 * log p = 0 even where p underflows to 0 (log p = -inf).
    terms = jnp.where(probs != 0, probs.astype(logits.dtype) * logp, 0)
    return _masked_mean(-jnp.sum(terms, axis=-1), mask)


def _lengths_mask(lengths: Any, shape: tuple[int, ...], time_major: bool) -> Array:
    T = shape[0] if time_major else shape[-1]
    batch = shape[1:] if time_major else shape[:-1]
    lengths = _array("lengths", lengths, "int", f"one length per sequence, shape {batch}")
    if lengths.shape != batch:
        raise ValueError(f"lengths must have shape {batch} (labels {shape} without the time axis, "
                         f"time_major={time_major}), got {lengths.shape}")
    if _concrete(lengths) and lengths.size:
        lo, hi = int(np.min(lengths)), int(np.max(lengths))
        if lo < 0 or hi > T:
            raise ValueError(f"lengths must lie in [0, T={T}], got values in [{lo}, {hi}]")
    t = jnp.arange(T)
    if time_major:
        return t.reshape((T,) + (1,) * len(batch)) < lengths[None]
    return t.reshape((1,) * len(batch) + (T,)) < lengths[..., None]


def sequence_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    mask: Array | None = None,
    lengths: Array | None = None,
    time_major: bool = True,
) -> Array:
    """Softmax cross-entropy over a batch of (padded) sequences, averaged over valid positions.

    ``sum_{valid (t, b)} -log softmax(logits[t, b])[labels[t, b]] / #valid``: every valid token
    weighs the same, whatever its sequence's length. Padding positions may hold any label (e.g. -1).

    Args:
      logits: float array ``[T, B, C]`` (any leading dims ``[T, ..., C]``; ``[..., T, C]`` when
        ``time_major=False``).
      labels: int array ``[T, B]``: ``logits`` without the class dim.
      mask: bool/float array with the shape of ``labels``; 1 at valid positions.
      lengths: int array of the batch shape (``labels`` without the time axis), each in ``[0, T]``;
        position ``t`` of a sequence is valid when ``t < length``. Pass ``mask`` or ``lengths``,
        not both; with neither, every position is valid.
      time_major: whether time is the first axis (``[T, B]``) or the last of ``labels`` (``[B, T]``).

    Returns:
      A scalar; 0 when no position is valid.
    """
    logits = _class_logits(logits)
    labels = _int_labels(labels, logits)
    if labels.ndim < 1:
        raise ValueError(f"labels must have a time axis ([T, B] or [B, T]), got shape {labels.shape}")
    if mask is not None and lengths is not None:
        raise ValueError("pass mask or lengths, not both")
    if lengths is not None:
        mask = _lengths_mask(lengths, labels.shape, time_major)
    mask = _mask(mask, labels.shape, "labels")
    _check_labels(labels, logits.shape[-1], mask)
    return _masked_mean(_nll(logits, labels, mask), mask)


def accuracy(logits: Array, labels: Array, *, mask: Array | None = None) -> Array:
    """Fraction of positions whose argmax class equals the integer label.

    Args:
      logits: float array ``[..., C]`` (or probabilities; only the argmax matters).
      labels: int array ``[...]``.
      mask: optional bool/float array ``[...]``; accuracy over valid positions only.

    Returns:
      A float scalar in ``[0, 1]`` (0 when nothing is valid).
    """
    logits = _class_logits(logits)
    labels = _int_labels(labels, logits)
    mask = _mask(mask, labels.shape, "labels")
    hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _masked_mean(hit, mask)


def binary_accuracy(logits: Array, labels: Array, *, mask: Array | None = None) -> Array:
    """Fraction of elements where ``logits > 0`` agrees with ``labels > 0.5``.

    Args:
      logits: float array of any shape.
      labels: 0/1 (bool, int or float) array of exactly the same shape.
      mask: optional bool/float array of the same shape.

    Returns:
      A float scalar in ``[0, 1]``.
    """
    logits = _array("logits", logits, "float", "pre-sigmoid scores")
    labels = _array("labels", labels, "real", f"0/1 labels of shape {logits.shape}")
    _same_shape("labels", labels, "logits", logits.shape)
    mask = _mask(mask, logits.shape, "logits")
    hit = ((logits > 0) == (labels.astype(jnp.float32) > 0.5)).astype(jnp.float32)
    return _masked_mean(hit, mask)


# ----------------------------------------------------------------------------- penalties


def key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def is_weight(name: str, leaf: Array) -> bool:
    """Default penalty selector: the leaf's own name starts with ``w`` (or is ``kernel``).

    Selects ``w_x``, ``w_h``, ``w_hh``, peepholes ``w_ci`` ... and never biases (``b``, ``b_y``).

    Args:
      name: the leaf's path, its key names joined by ``/`` (e.g. ``"layer0/w_h"``).
      leaf: the array (unused by this default).
    """
    del leaf
    last = name.rsplit("/", 1)[-1]
    return last.startswith("w") or last == "kernel"


def _penalty(params: Params, include: Callable[[str, Array], bool], fn: Callable) -> Array:
    if not callable(include):
        raise TypeError(f"include must be a callable (name, leaf) -> bool, got {type(include).__name__}")
    total = jnp.zeros((), jnp.float32)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(key_name(k) for k in path)
        if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue
        if include(name, leaf):
            total = total + jnp.sum(fn(leaf)).astype(jnp.float32)
    return total


def l2_penalty(params: Params, *, include: Callable[[str, Array], bool] = is_weight) -> Array:
    """Sum of squares of the selected parameters (L2 / ridge regularisation).

    ``sum_{w selected} sum(w^2)`` (no factor 1/2); add ``coef * l2_penalty(params)`` to a loss.

    Args:
      params: a pytree of arrays (e.g. a cell's params dict, or nested dicts of them).
      include: ``include(name, leaf) -> bool``, where ``name`` is the leaf's key path joined by
        ``/`` (``"readout/w"``); by default [`is_weight`][rnnjax.losses.is_weight] (weights, never biases).
        Non-float leaves are skipped.

    Returns:
      A float32 scalar (0 when nothing is selected).
    """
    return _penalty(params, include, jnp.square)


def l1_penalty(params: Params, *, include: Callable[[str, Array], bool] = is_weight) -> Array:
    """Sum of absolute values of the selected parameters (L1 / lasso regularisation).

    ``sum_{w selected} sum(|w|)``.

    Args:
      params: a pytree of arrays.
      include: ``include(name, leaf) -> bool`` as in [`l2_penalty`][rnnjax.losses.l2_penalty]; default
        [`is_weight`][rnnjax.losses.is_weight].

    Returns:
      A float32 scalar (0 when nothing is selected).
    """
    return _penalty(params, include, jnp.abs)
