"""``unroll``: run a cell over a sequence with ``jax.lax.scan``, or with
``jax.lax.associative_scan`` for cells whose recurrence is linear in the carry."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.types import Array, Carry, Cell, LinearRecurrence, LogLinearRecurrence, Params


def _check_xs(xs: Any, time_major: bool) -> tuple[int, tuple[int, ...]]:
    if not isinstance(xs, (jax.Array, np.ndarray)):
        raise TypeError(f"xs must be a jax or numpy array of shape [T, ..., D] (time-major) or "
                        f"[..., T, D], got {type(xs).__name__}")
    if xs.ndim < 2:
        raise ValueError(f"xs must have rank >= 2 ([T, D] or [T, B, D] time-major, [B, T, D] "
                         f"batch-major), got shape {xs.shape}")
    if time_major:
        return xs.shape[0], tuple(xs.shape[1:-1])
    return xs.shape[-2], tuple(xs.shape[:-2])


def _check_lengths(lengths: Any, T: int, batch_shape: tuple[int, ...]) -> Array:
    if not isinstance(lengths, (jax.Array, np.ndarray, list, tuple)):
        raise TypeError(f"lengths must be an int array of shape {batch_shape}, got "
                        f"{type(lengths).__name__}")
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must have an integer dtype, got {lengths.dtype}")
    if lengths.shape != batch_shape:
        raise ValueError(f"lengths must have shape {batch_shape} (one length per sequence), got "
                         f"{lengths.shape}")
    if not isinstance(lengths, jax.core.Tracer):
        host = np.asarray(lengths)  # concrete: check on the host (also inside a jit trace)
        lo, hi = (int(host.min()), int(host.max())) if host.size else (0, 0)
        if lo < 0 or hi > T:
            raise ValueError(f"lengths must lie in [0, T={T}], got values in [{lo}, {hi}]")
    return lengths


def _check_carry(carry: Carry, batch_shape: tuple[int, ...]) -> None:
    for leaf in jax.tree_util.tree_leaves(carry):
        if not hasattr(leaf, "shape"):
            raise TypeError(f"carry leaves must be arrays, got {type(leaf).__name__}")
        if tuple(leaf.shape[: len(batch_shape)]) != batch_shape or leaf.ndim <= len(batch_shape):
            raise ValueError(f"carry has a leaf of shape {leaf.shape} but xs has batch shape "
                             f"{batch_shape}; make it with cell.initial_carry(params, {batch_shape})")


def _select(mask: Array, new: Carry, old: Carry) -> Carry:
    """``new`` where ``mask`` (shape = batch shape), else ``old``, leaf by leaf."""

    def pick(n, o):
        m = mask.reshape(mask.shape + (1,) * (n.ndim - mask.ndim))
        return jnp.where(m, n, o)

    return jax.tree_util.tree_map(pick, new, old)


# ``parallel=None`` uses the associative scan on these backends from this many steps on (see
# ``_auto_parallel``), and never on CPU, where ``lax.scan`` measured faster (2-core x86, B=8,
# H=64, T=256 and 1024: forward 2-10x, training step about 2x; the log-space scan of
# minGRU/minLSTM is the slowest there). The accelerator threshold is an estimate (a sequential
# scan pays a kernel launch per step, the associative scan O(log T) of them), to be replaced by
# the crossover that ``benchmarks/parallel.py`` measures on the machine.
PARALLEL_MIN_STEPS = {"gpu": 64, "cuda": 64, "rocm": 64, "tpu": 64}


def _cell_name(cell: Cell) -> str:
    """The factory that made ``cell`` (``'elman'`` from ``elman.<locals>.apply``), for messages."""
    name = getattr(cell.apply, "__qualname__", None) or type(cell.apply).__name__
    return name.split(".<locals>")[0]


def _auto_parallel(cell: Cell, T: int) -> bool:
    if cell.linear is None:
        return False
    threshold = PARALLEL_MIN_STEPS.get(jax.default_backend())
    return threshold is not None and T >= threshold


def _bcast(mask: Array, like: Array) -> Array:
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def _reverse_index(lengths: Array, T: int) -> Array:
    """``[T, ...]`` time index that reverses each sequence within its valid part.

    ``idx[t] = len - 1 - t`` for ``t < len`` and ``t`` otherwise; it is its own inverse.
    """
    t = jnp.arange(T).reshape((T,) + (1,) * lengths.ndim)
    n = lengths[None]
    return jnp.where(t < n, n - 1 - t, t)


def _take_time(a: Array, idx: Array) -> Array:
    """``a[idx[t, ...], ..., :]``: gather along the time axis per batch element."""
    return jnp.take_along_axis(a, _bcast(idx, a), axis=0)


def _combine(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


def _log_combine(earlier, later):
    # The paper's form, a*_t + logcumsumexp(log b - a*) with a* = cumsum(log a), computes the same
    # but loses about eps * |a*_t| absolute precision for long sequences (a large cancellation);
    # combining pairs with logaddexp keeps every partial result of moderate size.
    la1, lb1 = earlier
    la2, lb2 = later
    return la1 + la2, jnp.logaddexp(lb1 + la2, lb2)


def _parallel_unroll(cell: Cell, params: Params, xs: Array, carry: Array, reverse: bool,
                     lengths: Array | None) -> tuple[Array, Array]:
    """Forward-order associative scan over time-major ``xs [T, ..., D]`` (``T >= 1``)."""
    T = xs.shape[0]
    idx = None
    if reverse and lengths is not None:
        idx = _reverse_index(lengths, T)
        xs = _take_time(xs, idx)
    elif reverse:
        xs = xs[::-1]
    rec = cell.linear.coefficients(params, xs)
    valid = None
    if lengths is not None:
        valid = jnp.arange(T).reshape((T,) + (1,) * lengths.ndim) < lengths[None]  # [T, ...]
    if isinstance(rec, LogLinearRecurrence):
        log_b = rec.log_b
        log_a = jnp.broadcast_to(rec.log_a, log_b.shape)
        if valid is not None:
            # a = 1, b = 0 (a large negative finite log: -inf would make NaN gradients).
            log_a = jnp.where(_bcast(valid, log_a), log_a, jnp.zeros_like(log_a))
            neg = jnp.full_like(log_b, jnp.finfo(log_b.dtype).min / 4)
            log_b = jnp.where(_bcast(valid, log_b), log_b, neg)
        cum_log_a, log_h = jax.lax.associative_scan(_log_combine, (log_a, log_b), axis=0)
        carries = jnp.exp(cum_log_a) * carry[None] + jnp.exp(log_h)
    elif isinstance(rec, LinearRecurrence):
        b = rec.b
        a = jnp.broadcast_to(rec.a, b.shape)
        if valid is not None:
            a = jnp.where(_bcast(valid, a), a, jnp.ones_like(a))
            b = jnp.where(_bcast(valid, b), b, jnp.zeros_like(b))
        b = b.at[0].add(a[0] * carry)  # fold the initial carry into the first step
        _, carries = jax.lax.associative_scan(_combine, (a, b), axis=0)
    else:
        raise TypeError(f"{_cell_name(cell)}.linear.coefficients must return a "
                        f"LinearRecurrence or LogLinearRecurrence, got {type(rec).__name__}")
    carries = carries.astype(carry.dtype)
    ys = cell.linear.readout(params, carries, xs)
    if valid is not None:
        ys = jnp.where(_bcast(valid, ys), ys, jnp.zeros_like(ys))
    if idx is not None:
        ys = _take_time(ys, idx)
    elif reverse:
        ys = ys[::-1]
    return carries[-1], ys


def _sequential(cell: Cell, params: Params, *, reverse: bool, unroll: int | bool, remat: bool):
    """``run(carry, xs, mask) -> (carry, ys)``: the cell's fused path, or a ``lax.scan`` of ``apply``."""
    if cell.sequence is not None and not remat:
        return lambda c, xs, mask: cell.sequence(params, c, xs, mask=mask, reverse=reverse, unroll=unroll)

    def step(c, inp):
        x, m = inp
        new_c, y = cell.apply(params, c, x)
        if m is None:
            return new_c, y
        return _select(m, new_c, c), jnp.where(_bcast(m, y), y, jnp.zeros_like(y))

    if remat:
        step = jax.checkpoint(step)
    return lambda c, xs, mask: jax.lax.scan(step, c, (xs, mask), reverse=reverse, unroll=unroll)


def _check_chunk(remat_chunk: Any, T: int) -> int:
    if remat_chunk == "sqrt":
        return max(1, math.ceil(math.sqrt(T)))
    if isinstance(remat_chunk, bool) or not isinstance(remat_chunk, (int, np.integer)) or remat_chunk < 1:
        raise ValueError(f"remat_chunk must be a positive int or 'sqrt', got {remat_chunk!r}")
    return int(remat_chunk)


def _chunked(run, carry, xs, mask, k: int, reverse: bool, batch_shape: tuple[int, ...]):
    """Run ``run`` over chunks of ``k`` steps, each chunk rematerialised in the backward pass."""
    T = xs.shape[0]
    n = -(-T // k)
    pad = n * k - T
    if pad:
        if mask is None:
            mask = jnp.ones((T,) + batch_shape, bool)
        xs = jnp.concatenate([xs, jnp.zeros((pad,) + xs.shape[1:], xs.dtype)])
        mask = jnp.concatenate([mask, jnp.zeros((pad,) + mask.shape[1:], bool)])
    chunks = (xs.reshape((n, k) + xs.shape[1:]),
              None if mask is None else mask.reshape((n, k) + mask.shape[1:]))
    body = jax.checkpoint(lambda c, inp: run(c, *inp))
    carry, ys = jax.lax.scan(body, carry, chunks, reverse=reverse)
    return carry, ys.reshape((n * k,) + ys.shape[2:])[:T]


def unroll(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Carry | None = None,
    *,
    time_major: bool = True,
    reverse: bool = False,
    lengths: Array | None = None,
    unroll: int | bool = 1,
    remat: bool = False,
    remat_chunk: int | str | None = None,
    parallel: bool | None = None,
) -> tuple[Carry, Array]:
    """Run ``cell`` over the time axis of ``xs`` with ``jax.lax.scan``.

    ``carry_t, y_t = cell.apply(params, carry_{t-1}, x_t)`` for every step; ``ys[t]`` is the output
    produced on consuming ``xs[t]`` (also with ``reverse=True``).

    Args:
      cell: a :class:`rnnjax.Cell`.
      params: the cell's params.
      xs: inputs ``[T, ..., D]`` when ``time_major`` (e.g. ``[T, B, D]`` or ``[T, D]``), else
        ``[..., T, D]`` (e.g. ``[B, T, D]``).
      carry: initial carry with leading batch shape ``...``; ``cell.initial_carry`` (zeros) if None.
      time_major: layout of ``xs`` and of the returned ``ys``.
      reverse: run from the last step to the first. With ``lengths``, each sequence is reversed
        within its valid part: the cell consumes ``x[len-1], ..., x[0]``.
      lengths: int array of the batch shape, each in ``[0, T]``. Steps ``t >= lengths`` leave the
        carry unchanged and output zeros, so the final carry is each sequence's carry at its last
        valid step.
      unroll: passed to ``lax.scan`` (steps unrolled per loop iteration); unused by the
        parallel path.
      remat: wrap the step in ``jax.checkpoint`` (recompute activations in the backward pass);
        on the parallel path, the whole scan.
      remat_chunk: checkpoint chunks of steps for long sequences: the scan runs over chunks of
        ``remat_chunk`` steps, each wrapped in ``jax.checkpoint``, so the backward pass keeps only
        the carries at chunk boundaries plus one chunk's activations (``"sqrt"``: chunks of
        ``ceil(sqrt(T))`` steps, memory ``O(sqrt(T))`` for one extra forward pass). ``T`` need not
        be a multiple: the last chunk is padded with masked steps. Sequential path only.
      parallel: ``True`` runs the associative-scan path (``jax.lax.associative_scan``, depth
        ``O(log T)``) of a cell with a linear form (``cell.linear``: LRU, minGRU, minLSTM), with the
        same ``reverse`` and ``lengths`` semantics and the same values and gradients as the
        sequential scan (up to float rounding); a ``ValueError`` for any other cell. ``False``
        runs ``lax.scan``. ``None`` picks: parallel for cells with a linear form on GPU/TPU when
        ``T >= PARALLEL_MIN_STEPS[backend]`` (64), sequential otherwise and always on CPU
        (where ``lax.scan`` measured faster).

    If the cell has a ``prepare`` hook, ``unroll`` calls it once on ``params`` before the loop.

    Returns:
      ``(final_carry, ys)`` with ``ys`` of shape ``[T, ..., O]`` (time-major) or ``[..., T, O]``.
      For ``T = 0`` the carry is returned unchanged with an empty ``ys``.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be an rnnjax.Cell, got {type(cell).__name__}")
    T, batch_shape = _check_xs(xs, time_major)
    if not time_major:
        xs = jnp.moveaxis(xs, -2, 0)
    if carry is None:
        carry = cell.initial_carry(params, batch_shape)
    else:
        _check_carry(carry, batch_shape)
    if lengths is not None:
        lengths = _check_lengths(lengths, T, batch_shape)
    if parallel is not None and not isinstance(parallel, bool):
        raise TypeError(f"parallel must be True, False or None, got {parallel!r}")
    if parallel and cell.linear is None:
        raise ValueError(f"parallel=True needs a cell whose recurrence is linear in the carry "
                         f"(cell.linear), but the {_cell_name(cell)!r} cell has none; such cells "
                         f"are lru, mingru, minlstm. Use parallel=False or None.")
    if parallel and remat_chunk is not None:
        raise ValueError("remat_chunk applies to the sequential path only; parallel=True has no "
                         "chunks (use remat=True to checkpoint the whole associative scan)")
    if parallel is None:  # asking for chunked remat asks for the sequential path
        parallel = remat_chunk is None and _auto_parallel(cell, T)
    if cell.prepare is not None:
        params = cell.prepare(params)
    if parallel and T > 0:
        if not isinstance(carry, (jax.Array, np.ndarray)):
            raise TypeError(f"the parallel path needs a single-array carry, got "
                            f"{type(carry).__name__}")
        run = lambda p, x, c: _parallel_unroll(cell, p, x, c, reverse, lengths)  # noqa: E731
        if remat:
            run = jax.checkpoint(run)
        carry, ys = run(params, xs, jnp.asarray(carry))
        if not time_major:
            ys = jnp.moveaxis(ys, 0, -2)
        return carry, ys

    mask = None
    if lengths is not None:
        mask = jnp.arange(T).reshape((T,) + (1,) * len(batch_shape)) < lengths[None]
    run = _sequential(cell, params, reverse=reverse, unroll=unroll, remat=remat)
    if remat_chunk is None or T == 0:
        carry, ys = run(carry, xs, mask)
    else:
        carry, ys = _chunked(run, carry, xs, mask, _check_chunk(remat_chunk, T), reverse, batch_shape)
    if not time_major:
        ys = jnp.moveaxis(ys, 0, -2)
    return carry, ys
