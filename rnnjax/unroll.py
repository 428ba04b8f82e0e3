"""``unroll``: run a cell over a sequence with ``jax.lax.scan``, or with
``jax.lax.associative_scan`` for cells whose recurrence is linear in the carry."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._block_scan import block_carries
from rnnjax.cells.fused import check_backend
from rnnjax.types import (
    Array,
    BlockLinearRecurrence,
    Carry,
    Cell,
    LinearRecurrence,
    LogLinearRecurrence,
    Params,
)


def check_xs(xs: Any, time_major: bool) -> tuple[int, tuple[int, ...]]:
    if not isinstance(xs, (jax.Array, np.ndarray)):
        raise TypeError(f"xs must be a jax or numpy array of shape [T, ..., D] (time-major) or "
                        f"[..., T, D], got {type(xs).__name__}")
    if xs.ndim < 2:
        raise ValueError(f"xs must have rank >= 2 ([T, D] or [T, B, D] time-major, [B, T, D] "
                         f"batch-major), got shape {xs.shape}")
    if time_major:
        return xs.shape[0], tuple(xs.shape[1:-1])
    return xs.shape[-2], tuple(xs.shape[:-2])


def check_lengths(lengths: Any, T: int, batch_shape: tuple[int, ...]) -> Array:
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


def _lengths_and_bad(lengths: Any, T: int, batch_shape: tuple[int, ...]) -> tuple[Array, Array | None]:
    """``(lengths, bad)``: concrete lengths outside ``[0, T]`` raise (`check_lengths`);
    traced ones cannot, so they are clipped into ``[0, T]`` and ``bad`` (bool, the batch shape)
    marks the out-of-range ones, whose outputs and carries `_poison` turns into NaN. ``bad``
    is None for concrete lengths."""
    lengths = check_lengths(lengths, T, batch_shape)
    if not isinstance(lengths, jax.core.Tracer):
        return lengths, None
    return jnp.clip(lengths, 0, T), (lengths < 0) | (lengths > T)


def _poison(bad: Array | None, tree: Any, lead: int = 0) -> Any:
    """NaN in every floating leaf of ``tree`` for the sequences where ``bad`` (batch shape) is true.

    ``lead``: the number of axes before the batch axes (1 for ``[T, ...]`` outputs and carries).
    """
    if bad is None:
        return tree

    def leaf(a):
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            return a
        m = bad.reshape((1,) * lead + bad.shape + (1,) * (a.ndim - lead - bad.ndim))
        return jnp.where(m, jnp.full((), jnp.nan, a.dtype), a)

    return jax.tree_util.tree_map(leaf, tree)


def check_carry(carry: Carry, batch_shape: tuple[int, ...]) -> None:
    for leaf in jax.tree_util.tree_leaves(carry):
        if not hasattr(leaf, "shape"):
            raise TypeError(f"carry leaves must be arrays, got {type(leaf).__name__}")
        if tuple(leaf.shape[: len(batch_shape)]) != batch_shape or leaf.ndim <= len(batch_shape):
            raise ValueError(f"carry has a leaf of shape {leaf.shape} but xs has batch shape "
                             f"{batch_shape}; make it with cell.initial_carry(params, {batch_shape})")


def _check_resets(resets: Any, T: int, batch_shape: tuple[int, ...], time_major: bool) -> Array:
    """``resets`` as a time-major bool array ``[T, ...]`` (it has the layout of ``xs`` minus ``D``)."""
    shape = (T, *batch_shape) if time_major else (*batch_shape, T)
    if not isinstance(resets, (jax.Array, np.ndarray)):
        raise TypeError(f"resets must be a bool array of shape {shape} (the layout of xs without "
                        f"its last axis), got {type(resets).__name__}")
    if resets.dtype != np.bool_:
        raise TypeError(f"resets must have dtype bool (True = the carry entering that step is the "
                        f"initial carry), got {resets.dtype}")
    if tuple(resets.shape) != shape:
        raise ValueError(f"resets must have shape {shape} (the layout of xs without its last "
                         f"axis), got {tuple(resets.shape)}")
    resets = jnp.asarray(resets)
    return resets if time_major else jnp.moveaxis(resets, -1, 0)


# ------------------------------------------------------------------------ params and dtypes

# init functions that need concrete values cannot be traced by ``jax.eval_shape``; their params
# are then not checked (never a false error).
_CONCRETE_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                    jax.errors.TracerIntegerConversionError, jax.errors.TracerBoolConversionError)


def _expected_params_uncached(cell: Cell, input_size: int):
    try:
        raw = jax.eval_shape(lambda k: cell.init(k, input_size), jax.random.key(0))
    except _CONCRETE_ERRORS:
        return None, None
    prepared = None
    if cell.prepare is not None:
        try:
            prepared = jax.eval_shape(cell.prepare, raw)
        except Exception:  # only an alternative form; the raw form is checked
            prepared = None
    return raw, prepared


_expected_params_cached = functools.lru_cache(maxsize=256)(_expected_params_uncached)


def _expected_params(cell: Cell, input_size: int):
    """``(raw, prepared)``: the shapes of ``cell.init(key, input_size)`` (and of ``prepare`` of it).

    Shapes only (``jax.eval_shape``: nothing is computed), cached per cell and input size, so the
    check costs nothing at run time and one trace of ``init`` per cell at trace time.
    """
    try:
        hash(cell)
    except TypeError:
        return _expected_params_uncached(cell, input_size)
    return _expected_params_cached(cell, input_size)


def _fmt_shape(s) -> str:
    return str(tuple(s))


def _match_params(expected, given, path: str, errors: list, shape_pairs: list) -> None:
    """Compare ``given`` with the ``ShapeDtypeStruct`` tree ``expected``; append messages to ``errors``."""
    if expected is None:
        if given is not None:
            errors.append(f"{path} should be None, found {type(given).__name__}")
        return
    if isinstance(expected, jax.ShapeDtypeStruct):
        if isinstance(given, (int, float, complex)) and not isinstance(given, bool):
            shape, dtype = (), np.result_type(given)
        elif hasattr(given, "shape") and hasattr(given, "dtype"):
            shape, dtype = tuple(given.shape), given.dtype
        else:
            errors.append(f"{path} must be an array of shape {_fmt_shape(expected.shape)}, found "
                          f"{type(given).__name__}")
            return
        if shape != tuple(expected.shape):
            errors.append(f"{path} has shape {_fmt_shape(shape)}, expected "
                          f"{_fmt_shape(expected.shape)}")
            shape_pairs.append((tuple(expected.shape), shape))
            return
        want_complex = jnp.issubdtype(expected.dtype, jnp.complexfloating)
        if jnp.issubdtype(expected.dtype, jnp.inexact) and not (
                jnp.issubdtype(dtype, jnp.complexfloating) if want_complex
                else jnp.issubdtype(dtype, jnp.floating)):
            errors.append(f"{path} has dtype {dtype}, expected a "
                          f"{'complex' if want_complex else 'real floating'} dtype like "
                          f"{expected.dtype}")
        return
    if isinstance(expected, Mapping):
        if not isinstance(given, Mapping):
            errors.append(f"{path} must be a dict with keys {sorted(map(str, expected))}, found "
                          f"{type(given).__name__}")
            return
        for k, e in expected.items():
            if k not in given:
                leaf = e.shape if isinstance(e, jax.ShapeDtypeStruct) else None
                errors.append(f"{path}[{k!r}] is missing" +
                              ("" if leaf is None else f" (expected shape {_fmt_shape(leaf)})"))
            else:
                _match_params(e, given[k], f"{path}[{k!r}]", errors, shape_pairs)
        for k in given:
            if k not in expected:
                found = getattr(given[k], "shape", None)
                errors.append(f"{path}[{k!r}] is not a parameter of this cell" +
                              ("" if found is None else f" (found shape {_fmt_shape(found)})"))
        return
    if isinstance(expected, (tuple, list)):
        if not isinstance(given, (tuple, list)) or len(given) != len(expected):
            n = len(given) if isinstance(given, (tuple, list)) else None
            errors.append(f"{path} must be a sequence of {len(expected)} entries, found "
                          + (f"{n} entries" if n is not None else type(given).__name__))
            return
        fields = getattr(expected, "_fields", None)
        for i, (e, g) in enumerate(zip(expected, given)):
            sub = f"{path}.{fields[i]}" if fields else f"{path}[{i}]"
            _match_params(e, g, sub, errors, shape_pairs)
        return
    # another pytree node type: compare structure and leaf shapes
    e_leaves, e_def = jax.tree_util.tree_flatten(expected)
    g_leaves, g_def = jax.tree_util.tree_flatten(given)
    if e_def != g_def:  # type: ignore[operator]  # PyTreeDef defines != (not in jax's stubs)
        errors.append(f"{path} has structure {g_def}, expected {e_def}")
        return
    for i, (e, g) in enumerate(zip(e_leaves, g_leaves)):
        _match_params(e, g, f"{path}<leaf {i}>", errors, shape_pairs)


def _param_errors(expected, params) -> tuple[list, list]:
    errors: list[str] = []
    pairs: list[tuple] = []
    _match_params(expected, params, "params", errors, pairs)
    return errors, pairs


def _check_params(cell: Cell, params: Params, input_size: int) -> None:
    """Raise a ``ValueError`` naming the parameter if ``params`` do not fit ``cell``.

    The expected structure and shapes are those of ``cell.init(key, input_size)`` (or, for a cell
    with a ``prepare`` hook, of ``prepare`` of them); missing and extra entries are errors too.
    Dtypes may differ in precision (see `_param_dtype`), not in kind.
    """
    raw, prepared = _expected_params(cell, input_size)
    if raw is None:
        return
    errors, pairs = _param_errors(raw, params)
    if not errors or (prepared is not None and not _param_errors(prepared, params)[0]):
        return
    name = _cell_name(cell)
    lead = f"params do not fit the {name!r} cell for input size {input_size}"
    if len(pairs) == len(errors):  # shapes only: did the params come from another input size?
        found = {g[i] for e, g in pairs if len(e) == len(g) for i in range(len(e)) if e[i] != g[i]}
        wanted = {e[i] for e, g in pairs if len(e) == len(g) for i in range(len(e)) if e[i] != g[i]}
        if (all(len(e) == len(g) for e, g in pairs) and wanted == {input_size}
                and len(found) == 1):
            lead = (f"xs has last dim {input_size} but the params expect input size "
                    f"{found.pop()}")
    shown = "; ".join(errors[:6]) + (f"; and {len(errors) - 6} more" if len(errors) > 6 else "")
    raise ValueError(f"{lead}: {shown}. Make params with cell.init(key, {input_size}) for this "
                     f"cell.")


def _param_dtype(params: Params):
    """The computation dtype: the one real floating dtype of the params (``None`` if they have none).

    Complex leaves (e.g. a learned LRU carry) do not count. Params of several floating dtypes are
    refused: the cell would silently compute in the widest one and its carry would change dtype.
    """
    found: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dt = getattr(leaf, "dtype", None)
        if dt is not None and jnp.issubdtype(dt, jnp.floating):
            found.setdefault(jnp.dtype(dt), jax.tree_util.keystr(path))
    if len(found) > 1:
        listed = ", ".join(f"params{p} is {d}" for d, p in found.items())
        raise ValueError(f"params mix floating dtypes ({listed}); a cell computes in its params' "
                         f"dtype, so give all of them one dtype, e.g. "
                         f"jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)")
    return next(iter(found)) if found else None


def _check_carry_fits(cell: Cell, params: Params, carry: Carry, batch_shape: tuple[int, ...]) -> None:
    """The given carry must have the structure, shapes and dtypes of
    ``cell.initial_carry(params, batch_shape)`` (from ``jax.eval_shape``: nothing is computed)."""
    try:
        expected = jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params)
    except _CONCRETE_ERRORS:
        return
    name, hint = _cell_name(cell), f"make it with cell.initial_carry(params, {batch_shape})"
    e_leaves, e_def = jax.tree_util.tree_flatten(expected)
    g_paths, g_def = jax.tree_util.tree_flatten_with_path(carry)
    if len(e_leaves) != len(g_paths):
        raise ValueError(f"carry has {len(g_paths)} arrays but the {name!r} cell's carry has "
                         f"{len(e_leaves)}; {hint}")
    if g_def != e_def:  # type: ignore[operator]  # PyTreeDef defines != (not in jax's stubs)
        raise ValueError(f"carry has structure {g_def} but the {name!r} cell's carry has structure "
                         f"{e_def}; {hint}")
    for (path, g), e in zip(g_paths, e_leaves):
        where = f"carry{jax.tree_util.keystr(path)}"
        if tuple(g.shape) != tuple(e.shape):
            raise ValueError(f"{where} has shape {tuple(g.shape)} but the {name!r} cell's carry "
                             f"for batch shape {batch_shape} has shape {tuple(e.shape)} there (a "
                             f"carry made for another hidden size?); {hint}")
        if jnp.dtype(g.dtype) != jnp.dtype(e.dtype):
            raise TypeError(f"{where} has dtype {g.dtype} but the {name!r} cell's carry is "
                            f"{e.dtype} for these params (a cell computes in its params' dtype); "
                            f"{hint} or cast it")


def select_carry(mask: Array, new: Carry, old: Carry) -> Carry:
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


def _log_combine_reset(earlier, later):
    # A segmented scan: a reset flag on ``later`` starts a new segment (its own (log a, log b)).
    # Both branches stay finite, so ``where`` passes no NaN cotangent.
    r1, la1, lb1 = earlier
    r2, la2, lb2 = later
    la = jnp.where(r2, la2, la1 + la2)
    lb = jnp.where(r2, lb2, jnp.logaddexp(lb1 + la2, lb2))
    return r1 | r2, la, lb


def _parallel_unroll(cell: Cell, params: Params, xs: Array, carry: Array, reverse: bool,
                     lengths: Array | None, resets: Array | None = None,
                     history: bool = False) -> tuple[Array, ...]:
    """Forward-order associative scan over time-major ``xs [T, ..., D]`` (``T >= 1``).

    ``resets [T, ...]`` (bool, in the time order of ``xs``, already shifted for ``reverse`` by
    ``unroll``): where true, that step starts from ``carry`` (``a_t = 0``, ``b_t + a_t carry``).
    ``history=True`` also returns ``after [T, ...]``: the carry the sequential scan holds after
    the step at ``xs[t]`` (see `sequential`), in the time order of ``xs``.
    """
    T = xs.shape[0]
    idx = None
    if reverse and lengths is not None:
        idx = _reverse_index(lengths, T)
        xs = _take_time(xs, idx)
        resets = None if resets is None else _take_time(resets, idx)
    elif reverse:
        xs = xs[::-1]
        resets = None if resets is None else resets[::-1]
    linear = cell.linear
    assert linear is not None  # the parallel path is taken only for cells with a linear form
    rec = linear.coefficients(params, xs)
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
        if resets is None:
            cum_log_a, log_h = jax.lax.associative_scan(_log_combine, (log_a, log_b), axis=0)
        else:  # segments restart the products: carry_t = exp(Σ_seg log a) carry + exp(log h_seg)
            r = jnp.broadcast_to(_bcast(resets, log_b), log_b.shape)
            _, cum_log_a, log_h = jax.lax.associative_scan(_log_combine_reset, (r, log_a, log_b),
                                                           axis=0)
        carries = jnp.exp(cum_log_a) * carry[None] + jnp.exp(log_h)
    elif isinstance(rec, LinearRecurrence):
        b = rec.b
        a = jnp.broadcast_to(rec.a, b.shape)
        if valid is not None:
            a = jnp.where(_bcast(valid, a), a, jnp.ones_like(a))
            b = jnp.where(_bcast(valid, b), b, jnp.zeros_like(b))
        if resets is not None:  # a reset step starts from the initial carry: a = 0, b + a carry
            r = _bcast(resets, b)
            b = jnp.where(r, b + a * carry[None], b)
            a = jnp.where(r, jnp.zeros_like(a), a)
        b = b.at[0].add(a[0] * carry)  # fold the initial carry into the first step
        _, carries = jax.lax.associative_scan(_combine, (a, b), axis=0)
    elif isinstance(rec, BlockLinearRecurrence):  # k x k blocks (LinOSS), see _block_scan
        carries = block_carries(rec, carry, valid, resets)
    else:
        raise TypeError(f"{_cell_name(cell)}.linear.coefficients must return a LinearRecurrence, "
                        f"LogLinearRecurrence or BlockLinearRecurrence, got {type(rec).__name__}")
    carries = carries.astype(carry.dtype)
    ys = linear.readout(params, carries, xs)
    if valid is not None:
        ys = jnp.where(_bcast(valid, ys), ys, jnp.zeros_like(ys))
    if idx is not None:
        ys = _take_time(ys, idx)
    elif reverse:
        ys = ys[::-1]
    if not history:
        return carries[-1], ys
    after = carries
    if idx is not None:  # padded steps come first in the backward scan: they hold the initial carry
        assert valid is not None  # idx is set only with lengths
        after = jnp.where(_bcast(valid, carries), _take_time(carries, idx), carry[None])
    elif reverse:
        after = carries[::-1]
    return carries[-1], ys, after


def _accepts(fn, name: str) -> bool:
    """Whether a ``Cell.sequence`` hook takes the keyword ``name`` (older hooks do not)."""
    try:
        ps = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in ps or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps.values())


def _accepts_resets(fn) -> bool:
    """Whether a ``Cell.sequence`` hook takes ``resets=`` (hooks written before resets do not)."""
    return _accepts(fn, "resets")


def _step(cell: Cell, params: Params, c0: Carry):
    """One step with the padding and reset rules: ``step(c, x, m, r) -> (new_c, y)``.

    ``m`` (batch shape, or None): False = padded (carry kept, output zero); ``r`` (or None): True =
    the carry entering the step is ``c0``.
    """

    def step(c, x, m, r):
        c_in = c if r is None else select_carry(r, c0, c)
        new_c, y = cell.apply(params, c_in, x)
        if m is None:
            return new_c, y
        return select_carry(m, new_c, c), jnp.where(_bcast(m, y), y, jnp.zeros_like(y))

    return step


def _native_needs(cell: Cell, why: str) -> ValueError:
    return ValueError(f"backend='native' (the native LSTM / GRU sequence kernel) needs {why}, which "
                      f"this call (a {_cell_name(cell)!r} cell) does not meet. Use backend='auto' or "
                      f"'xla'.")


def sequential(cell: Cell, params: Params, *, reverse: bool, unroll: int | bool, remat: bool,
               backend: str = "auto"):
    """``run(carry, xs, mask, resets=None, reset_carry=None, history=False) -> (carry, ys)``.

    The cell's fused path, or a ``lax.scan`` of ``apply``. ``mask [T, ...]``: False = padded step
    (carry kept, output zero). ``resets [T, ...]``: True = the carry entering that step (in the
    order the scan runs) is ``reset_carry`` (``carry`` if None). ``history=True`` returns
    ``(carry, ys, after)`` with ``after [T, ...]`` the carry after the step at ``xs[t]`` (time
    order of ``xs``; a padded step's is the carry it was given). ``backend`` is passed to a fused
    path that takes it (see ``rnnjax.cells.fused.BACKENDS``); ``"native"`` for a cell without one
    raises a ``ValueError``.
    """
    check_backend(backend)

    def scan_run(c, xs, mask, resets=None, reset_carry=None, history=False):
        step = _step(cell, params, c if reset_carry is None else reset_carry)

        def body(c, inp):
            new_c, y = step(c, *inp)
            return new_c, ((y, new_c) if history else y)

        if remat:
            body = jax.checkpoint(body)
        c, out = jax.lax.scan(body, c, (xs, mask, resets), reverse=reverse, unroll=unroll)
        return (c, *out) if history else (c, out)

    takes_backend = cell.sequence is not None and _accepts(cell.sequence, "backend")
    if backend == "native" and not takes_backend:
        raise _native_needs(cell, "rnnjax.lstm without peepholes or rnnjax.gru with the tanh candidate")
    if backend == "native" and remat:
        raise _native_needs(cell, "remat=False (it saves its own activations; use remat_chunk)")
    if cell.sequence is None or remat:
        return scan_run
    sequence = cell.sequence

    def fused_run(c, xs, mask, resets=None, reset_carry=None, history=False):
        kw = {}
        if takes_backend:
            kw["backend"] = backend
        if resets is not None:
            if not _accepts(sequence, "resets"):
                return scan_run(c, xs, mask, resets, reset_carry, history)
            kw.update(resets=resets, reset_carry=reset_carry)
        if history:
            if not _accepts(sequence, "return_carries"):  # a hook without it: plain scan
                return scan_run(c, xs, mask, resets, reset_carry, history)
            kw["return_carries"] = True
        return sequence(params, c, xs, mask=mask, reverse=reverse, unroll=unroll, **kw)

    return fused_run


def _check_chunk(remat_chunk: Any, T: int) -> int:
    if remat_chunk == "sqrt":
        return max(1, math.ceil(math.sqrt(T)))
    if isinstance(remat_chunk, bool) or not isinstance(remat_chunk, (int, np.integer)) or remat_chunk < 1:
        raise ValueError(f"remat_chunk must be a positive int or 'sqrt', got {remat_chunk!r}")
    return int(remat_chunk)


def _chunked(run, carry, xs, mask, k: int, reverse: bool, batch_shape: tuple[int, ...],
             resets: Array | None = None, history: bool = False):
    """Run ``run`` over chunks of ``k`` steps, each chunk rematerialised in the backward pass."""
    T = xs.shape[0]
    n = -(-T // k)
    pad = n * k - T
    if pad:
        if mask is None:
            mask = jnp.ones((T,) + batch_shape, bool)
        xs = jnp.concatenate([xs, jnp.zeros((pad,) + xs.shape[1:], xs.dtype)])
        mask = jnp.concatenate([mask, jnp.zeros((pad,) + mask.shape[1:], bool)])
        if resets is not None:
            resets = jnp.concatenate([resets, jnp.zeros((pad,) + resets.shape[1:], bool)])

    def split(a):
        return None if a is None else a.reshape((n, k) + a.shape[1:])

    chunks = (split(xs), split(mask), split(resets))
    carry0 = carry  # a reset inside any chunk restores the carry of the whole sequence

    def body(c, inp):
        out = run(c, inp[0], inp[1], inp[2], None if inp[2] is None else carry0, history)
        return out[0], out[1:]

    carry, out = jax.lax.scan(jax.checkpoint(body), carry, chunks, reverse=reverse)
    out = jax.tree_util.tree_map(lambda a: a.reshape((n * k,) + a.shape[2:])[:T], out)
    return (carry, *out)


class _Setup(NamedTuple):
    """What [`unroll`][rnnjax.unroll.unroll] and [`unroll_reduce`][rnnjax.unroll.unroll_reduce] share after
    checking their arguments."""
    params: Params       # prepared (``cell.prepare``) when the cell has the hook
    carry: Carry         # the initial carry
    dtype: Any           # the computation dtype (params' floating dtype) or None
    lengths: Array | None  # clipped into [0, T]
    bad: Array | None    # traced lengths that were outside [0, T] (batch shape), else None
    resets: Array | None  # time-major, shifted for reverse (the carry entering step t is reset)


def _setup(cell: Cell, params: Params, T: int, batch_shape: tuple[int, ...], input_size: int,
           carry: Carry | None, lengths: Any, resets: Any, reverse: bool, time_major: bool,
           prepare: bool = True) -> _Setup:
    """The argument checks of [`unroll`][rnnjax.unroll.unroll] and
    [`unroll_reduce`][rnnjax.unroll.unroll_reduce], in one place."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be an rnnjax.Cell, got {type(cell).__name__}")
    _check_params(cell, params, input_size)
    dtype = _param_dtype(params)
    if carry is None:
        carry = cell.initial_carry(params, batch_shape)
    else:
        check_carry(carry, batch_shape)
        _check_carry_fits(cell, params, carry, batch_shape)
    bad = None
    if lengths is not None:
        lengths, bad = _lengths_and_bad(lengths, T, batch_shape)
    if resets is not None:
        resets = _check_resets(resets, T, batch_shape, time_major)
        if reverse and T > 0:  # entering step t backwards = leaving step t + 1: reset where t + 1 starts
            resets = jnp.concatenate([resets[1:], jnp.zeros((1,) + resets.shape[1:], bool)])
    if prepare and cell.prepare is not None:
        params = cell.prepare(params)
    return _Setup(params, carry, dtype, lengths, bad, resets)


def _cast(x: Array, dtype) -> Array:
    """Floating inputs in the computation dtype (params' dtype)."""
    if dtype is not None and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
        return jnp.asarray(x).astype(dtype)
    return x


def _with_initial(c0: Carry, after: Carry, reverse: bool) -> Carry:
    """The ``T + 1`` carries: ``[c0, after...]`` forwards, ``[after..., c0]`` backwards."""
    def cat(a0, a):
        a0 = a0.astype(a.dtype)[None]
        return jnp.concatenate([a, a0] if reverse else [a0, a])
    return jax.tree_util.tree_map(cat, c0, after)


def unroll(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Carry | None = None,
    *,
    time_major: bool = True,
    reverse: bool = False,
    lengths: Array | None = None,
    resets: Array | None = None,
    unroll: int | bool = 1,
    remat: bool = False,
    remat_chunk: int | str | None = None,
    parallel: bool | None = None,
    return_carries: bool = False,
    backend: str = "auto",
) -> tuple[Carry, Array]:
    """Run ``cell`` over the time axis of ``xs`` with ``jax.lax.scan``.

    ``carry_t, y_t = cell.apply(params, carry_{t-1}, x_t)`` for every step; ``ys[t]`` is the output
    produced on consuming ``xs[t]`` (also with ``reverse=True``).

    Args:
      cell: a [`rnnjax.Cell`][rnnjax.flax.Cell].
      params: the cell's params. They are checked once (at trace time, from the shapes of
        ``cell.init(key, D)``): params that do not fit the cell, missing or extra entries raise a
        ``ValueError`` naming the parameter and the expected and found shapes.
      xs: inputs ``[T, ..., D]`` when ``time_major`` (e.g. ``[T, B, D]`` or ``[T, D]``), else
        ``[..., T, D]`` (e.g. ``[B, T, D]``).
      carry: initial carry with leading batch shape ``...``; ``cell.initial_carry`` (zeros) if None.
        It must have the structure, shapes and dtypes of ``cell.initial_carry(params, ...)``:
        otherwise a ``ValueError`` (``TypeError`` for a dtype) names the leaf, its shape and the
        expected one.
      time_major: layout of ``xs`` and of the returned ``ys``.
      reverse: run from the last step to the first. With ``lengths``, each sequence is reversed
        within its valid part: the cell consumes ``x[len-1], ..., x[0]``.
      lengths: int array of the batch shape, each in ``[0, T]``. Steps ``t >= lengths`` leave the
        carry unchanged and output zeros, so the final carry is each sequence's carry at its last
        valid step. Padded steps are inert: their inputs (NaN, inf, anything) are replaced by
        zeros before any path sees them, so nothing in them reaches outputs, carries or gradients.
        Concrete lengths outside ``[0, T]`` raise a ``ValueError``; traced ones (under ``jit``)
        cannot be checked, so such a sequence's outputs and final carry (and carries) are NaN.
      resets: bool array with the layout of ``xs`` minus its last axis (``[T, ...]`` time-major,
        ``[..., T]`` otherwise). Where ``resets[t, b]`` is true, sequence ``b`` starts a new
        segment at step ``t`` (an episode boundary, a new document in a packed sequence): the
        carry entering step ``t`` is the initial carry (``carry``, or ``initial_carry`` zeros),
        so the result equals running each segment separately from that carry. ``resets`` always
        marks segment *starts in the original time order*; with ``reverse=True`` each segment is
        run backwards on its own (the carry is reset on entering a segment's last step), and the
        final carry is that of the first segment. ``resets`` at padded steps are ignored.
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
        ``O(log T)``) of a cell with a linear form (``cell.linear``: LRU, minGRU, minLSTM,
        LinOSS, RG-LRU), with the same ``reverse``, ``lengths`` and ``resets`` semantics and the
        same values and gradients as the sequential scan (up to float rounding); a ``ValueError``
        for any other cell.
        ``False`` runs ``lax.scan``. ``None`` picks: parallel for cells with a linear form on
        GPU/TPU when ``T >= PARALLEL_MIN_STEPS[backend]`` (64), sequential otherwise and always on
        CPU (where ``lax.scan`` measured faster).
      return_carries: return every carry in place of the final one: ``(carries, ys)``, where
        ``carries`` has the carry's structure with a time axis of length ``T + 1`` on each leaf
        (``[T + 1, ..., H]`` time-major; ``[..., T + 1, H]`` otherwise, after the batch axes, as
        in ``ys``). ``carries[t]`` is the carry at the boundary before ``xs[t]``: forwards, the
        carry after the (valid) steps of ``xs[:t]``, so ``carries[0]`` is the initial carry,
        ``carries[t]`` the carry entering ``xs[t]`` and ``carries[T]`` the final carry; with
        ``reverse=True``, the carry after the (valid) steps of ``xs[t:]``, so ``carries[T]`` is
        the initial carry, ``carries[t + 1]`` the carry entering ``xs[t]`` and ``carries[0]`` the
        final carry. Padded steps hold the carry (forwards the last valid step's carry; backwards
        the initial carry, as the padding comes first there); with ``resets`` an entry is the
        carry the previous step produced (the end of the previous segment), not the reset carry
        the next step starts from. Same values and gradients on every path; the cost is
        ``T + 1`` carries stored (``(T + 1) * B * 2H`` numbers for an LSTM), also under
        ``remat_chunk``.
      backend: which implementation runs the fused sequence of ``rnnjax.lstm`` (no peepholes)
        and ``rnnjax.gru`` (tanh candidate): ``"xla"`` (the ``lax.scan`` paths, any device and
        dtype), ``"native"`` (the C++ CPU kernel of ``rnnjax._native``: the recurrence, the
        recurrent OpenBLAS GEMMs and the gates fused, with its own backward pass; float32 on the
        CPU, with every option above; deterministic) or ``"auto"`` (the default: ``"native"``
        where it can run, else ``"xla"``; measured on a 2-core AVX2 EPYC, the kernel trains in
        0.50-0.84x the XLA path's time, see ``benchmarks/results/speed-native``). The same
        function either way (to float rounding); both are ``jax.custom_vjp`` functions, so
        forward mode (``jax.jvp``, ``jax.jacfwd``) needs ``remat=True`` (a plain scan of
        ``apply``). ``"native"`` raises a ``ValueError`` naming the reason where it cannot run
        (not built, not the CPU, not float32, another cell, ``remat=True``, ``parallel=True``);
        another value raises a ``ValueError``. Other cells ignore ``"auto"`` and ``"xla"``.

    Dtypes: a cell computes in its params' dtype (all floating params must share one dtype).
    Floating ``xs`` of another dtype are cast to it (float16 inputs with float32 params compute
    and return float32; float32 inputs with bfloat16 params compute in bfloat16). A given
    ``carry`` must have the dtypes of ``cell.initial_carry(params, ...)``, else a ``TypeError``.

    If the cell has a ``prepare`` hook, ``unroll`` calls it once on ``params`` before the loop.

    Returns:
      ``(final_carry, ys)`` with ``ys`` of shape ``[T, ..., O]`` (time-major) or ``[..., T, O]``
      (``(carries, ys)`` with ``return_carries=True``: the same tuple and tree structure).
      For ``T = 0`` the carry is returned unchanged with an empty ``ys``.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be an rnnjax.Cell, got {type(cell).__name__}")
    T, batch_shape = check_xs(xs, time_major)
    if not time_major:
        xs = jnp.moveaxis(xs, -2, 0)
    if parallel is not None and not isinstance(parallel, bool):
        raise TypeError(f"parallel must be True, False or None, got {parallel!r}")
    check_backend(backend)
    s = _setup(cell, params, T, batch_shape, xs.shape[-1], carry, lengths, resets, reverse,
               time_major, prepare=False)
    xs, carry, lengths, resets = _cast(xs, s.dtype), s.carry, s.lengths, s.resets
    if parallel and cell.linear is None:
        raise ValueError(f"parallel=True needs a cell whose recurrence is linear in the carry "
                         f"(cell.linear), but the {_cell_name(cell)!r} cell has none; such cells "
                         f"are lru, mingru, minlstm, linoss, rglru and mlstm(stabilize=False). "
                         f"Use parallel=False or None.")
    if parallel and remat_chunk is not None:
        raise ValueError("remat_chunk applies to the sequential path only; parallel=True has no "
                         "chunks (use remat=True to checkpoint the whole associative scan)")
    if parallel is None:  # asking for chunked remat asks for the sequential path
        parallel = remat_chunk is None and _auto_parallel(cell, T)
    if parallel and backend == "native":
        raise _native_needs(cell, "the sequential path (parallel=False)")
    if cell.prepare is not None:
        params = cell.prepare(params)
    history = bool(return_carries)

    mask = None
    if lengths is not None:
        mask = jnp.arange(T).reshape((T,) + (1,) * len(batch_shape)) < lengths[None]
        # Padded inputs become zeros before any path sees them: f(0) is finite, so the masked
        # selection passes a zero (not a NaN) cotangent into the unused branch.
        xs = jnp.where(mask[..., None], xs, jnp.zeros((), xs.dtype))
        if resets is not None:
            resets = resets & mask

    if parallel and T > 0:
        if not isinstance(carry, (jax.Array, np.ndarray)):
            raise TypeError(f"the parallel path needs a single-array carry, got "
                            f"{type(carry).__name__}")
        run = lambda p, x, c: _parallel_unroll(cell, p, x, c, reverse, lengths, resets, history)
        if remat:
            run = jax.checkpoint(run)
        out = run(params, xs, jnp.asarray(carry))
    else:
        run = sequential(cell, params, reverse=reverse, unroll=unroll, remat=remat, backend=backend)
        if remat_chunk is None or T == 0:
            out = run(carry, xs, mask, resets, None, history)
        else:
            out = _chunked(run, carry, xs, mask, _check_chunk(remat_chunk, T), reverse,
                           batch_shape, resets, history)
    final, ys = _poison(s.bad, out[0]), _poison(s.bad, out[1], lead=1)
    if not time_major:
        ys = jnp.moveaxis(ys, 0, -2)
    if not history:
        return final, ys
    carries = _poison(s.bad, _with_initial(carry, out[2], reverse), lead=1)
    if not time_major:
        carries = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, len(batch_shape)), carries)
    return carries, ys


def _stream(inputs: Any, length: Any):
    """``(T, batch_shape, D, at, chunk)`` for [`unroll_reduce`][rnnjax.unroll.unroll_reduce]'s ``inputs``.

    ``at(t)`` is ``x_t`` (``[..., D]``) and ``chunk(start, size)`` the ``[size, ..., D]`` steps from
    ``start``; for a function ``t -> x_t`` both evaluate it (nothing of size ``T`` exists).
    """
    if isinstance(inputs, (jax.Array, np.ndarray)):
        T, batch_shape = check_xs(inputs, True)
        if length is not None and length != T:
            raise ValueError(f"length={length!r} but inputs has {T} steps (leading axis); leave "
                             f"length=None for an array")
        xs = jnp.asarray(inputs)
        return (T, batch_shape, xs.shape[-1],
                lambda t: jax.lax.dynamic_index_in_dim(xs, t, keepdims=False),
                lambda start, size: jax.lax.dynamic_slice_in_dim(xs, start, size))
    if not callable(inputs):
        raise TypeError(f"inputs must be an array [T, ..., D] or a function t -> x_t of shape "
                        f"[..., D], got {type(inputs).__name__}")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise TypeError(f"inputs is a function t -> x_t, so length must be the number of steps T "
                        f"(an int >= 0), got {length!r}")
    spec = jax.eval_shape(inputs, jax.ShapeDtypeStruct((), jnp.int32))
    if not isinstance(spec, jax.ShapeDtypeStruct) or len(spec.shape) < 1:
        raise TypeError(f"inputs(t) must return one array x_t of shape [..., D] (rank >= 1), got "
                        f"{spec}")
    return (int(length), tuple(spec.shape[:-1]), spec.shape[-1], inputs,
            lambda start, size: jax.vmap(inputs)(start + jnp.arange(size, dtype=jnp.int32)))


def unroll_reduce(
    cell: Cell,
    params: Params,
    inputs: Array | Any,
    reduce_fn: Any,
    init: Any,
    *,
    length: int | None = None,
    carry: Carry | None = None,
    reverse: bool = False,
    lengths: Array | None = None,
    resets: Array | None = None,
    remat: bool = False,
    remat_chunk: int | str | None = None,
    backend: str = "auto",
) -> tuple[Carry, Any]:
    """Run ``cell`` over a sequence folding each output into an accumulator: nothing of size ``T``.

    ``carry_t, y_t = cell.apply(params, carry_{t-1}, x_t)``, ``acc <- reduce_fn(acc, t, y_t)`` at
    every step, inside the scan: the result equals ``unroll`` followed by the same fold over
    ``ys``, but no ``[T, ..., O]`` output is stacked, and with ``inputs`` a function ``t -> x_t``
    no ``[T, ..., D]`` input is materialised either. Under ``remat_chunk`` the backward pass
    recomputes each chunk (inputs included) from the carry and ``acc`` at its start, so a training
    step keeps ``O(T / k + k)`` carries and nothing of size ``T``: ``remat_chunk="sqrt"`` runs an
    LSTM over a million steps in well under 2 GiB (``benchmarks/long_memory.py``).

    Args:
      cell: a [`rnnjax.Cell`][rnnjax.flax.Cell].
      params: the cell's params (checked as by [`unroll`][rnnjax.unroll.unroll]).
      inputs: time-major inputs ``[T, ..., D]``, or a function ``t -> x_t`` (``t`` an int32
        scalar, possibly traced; ``x_t`` of shape ``[..., D]``) evaluated inside the scan; then
        ``length=T`` is required.
      reduce_fn: ``reduce_fn(acc, t, y_t) -> acc`` with ``t`` the int32 index of the step in the
        original time order and ``y_t [..., O]`` the output ``unroll`` would put at ``ys[t]``
        (zeros at padded steps). Called once per step ``t < T`` in the order the scan runs
        (``T - 1, ..., 0`` with ``reverse=True``); ``acc`` keeps its structure, shapes and dtypes.
      init: the initial ``acc`` (any pytree of arrays).
      length: the number of steps ``T`` when ``inputs`` is a function.
      carry, reverse, lengths, resets, remat: as in [`unroll`][rnnjax.unroll.unroll] (time-major ``resets [T,
        ...]``; traced ``lengths`` outside ``[0, T]`` make that sequence's ``y_t`` and final carry NaN).
      remat_chunk: as in [`unroll`][rnnjax.unroll.unroll] (``k`` or ``"sqrt"``). Each chunk evaluates its
        ``k`` inputs, runs the cell's fastest sequential path (the fused LSTM/GRU when it has one) and
        folds its ``k`` outputs; a last, shorter chunk takes the remainder of ``T`` (no padding).
      backend: as in `unroll` (``"auto"``, ``"xla"`` or ``"native"``), for the chunks of
        ``remat_chunk``: without ``remat_chunk`` every step is folded as it is made and no
        sequence kernel runs, so ``"native"`` then raises a ``ValueError``.

    Returns:
      ``(final_carry, acc)``.
    """
    T, batch_shape, D, at, chunk = _stream(inputs, length)
    check_backend(backend)
    if backend == "native" and remat_chunk is None:
        raise _native_needs(cell, "remat_chunk (unroll_reduce folds step by step without it)")
    if not callable(reduce_fn):
        raise TypeError(f"reduce_fn must be a function (acc, t, y_t) -> acc, got "
                        f"{type(reduce_fn).__name__}")
    s = _setup(cell, params, T, batch_shape, D, carry, lengths, resets, reverse, True)
    params, c0, lengths, resets = s.params, s.carry, s.lengths, s.resets
    nb = len(batch_shape)

    def masks(ts):  # [size] -> the valid mask [size, ...] (None without lengths)
        return None if lengths is None else ts.reshape(ts.shape + (1,) * nb) < lengths[None]

    if remat_chunk is None or T == 0:
        step = _step(cell, params, c0)

        def body(state, _):
            c, acc, t = state
            m = masks(t[None])
            x = _cast(at(t), s.dtype)
            r = None if resets is None else jax.lax.dynamic_index_in_dim(resets, t, keepdims=False)
            if m is not None:
                m = m[0]
                x = jnp.where(m[..., None], x, jnp.zeros((), x.dtype))
                r = None if r is None else r & m
            c, y = step(c, x, m, r)
            acc = reduce_fn(acc, t, _poison(s.bad, y))
            return (c, acc, t - 1 if reverse else t + 1), None

        if remat:
            body = jax.checkpoint(body)
        t0 = jnp.asarray(T - 1 if reverse else 0, jnp.int32)
        (c, acc, _), _ = jax.lax.scan(body, (c0, init, t0), None, length=T)
        return _poison(s.bad, c), acc

    k = _check_chunk(remat_chunk, T)
    run = sequential(cell, params, reverse=reverse, unroll=1, remat=remat, backend=backend)

    def run_chunk(state, start, size):
        c, acc = state
        ts = start + jnp.arange(size, dtype=jnp.int32)
        x, m = _cast(chunk(start, size), s.dtype), masks(ts)
        r = None if resets is None else jax.lax.dynamic_slice_in_dim(resets, start, size)
        if m is not None:
            x = jnp.where(m[..., None], x, jnp.zeros((), x.dtype))
            r = None if r is None else r & m
        c, ys = run(c, x, m, r, None if r is None else c0)
        acc, _ = jax.lax.scan(lambda a, ty: (reduce_fn(a, ty[0], ty[1]), None), acc,
                              (ts, _poison(s.bad, ys, lead=1)), reverse=reverse)
        return c, acc

    n, rest = divmod(T, k)
    full = jax.checkpoint(lambda st, i: (run_chunk(st, i * k, k), None))
    tail = jax.checkpoint(lambda st: run_chunk(st, n * k, rest))
    state = (c0, init)
    if reverse and rest:  # the last (shorter) chunk runs first backwards
        state = tail(state)
    if n:
        state, _ = jax.lax.scan(full, state, jnp.arange(n, dtype=jnp.int32), reverse=reverse)
    if not reverse and rest:
        state = tail(state)
    return _poison(s.bad, state[0]), state[1]
