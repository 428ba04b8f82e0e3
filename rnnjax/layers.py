"""Layers built from cells: deep stacks, bidirectional RNNs, dense readouts and dropout.

Everything here returns a [`rnnjax.Cell`][rnnjax.flax.Cell], a [`Layer`][rnnjax.layers.Layer] (a NamedTuple of
pure ``init``/``apply``) or is a pure function with an explicit ``key``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import initializers as inits
from rnnjax._checks import check_int
from rnnjax.cells._common import (
    check_batch_shape,
    check_float_dtype,
    check_initializer,
    check_input,
    check_size,
    rows,
    split_keys,
)
from rnnjax.types import Array, Carry, Cell, Initializer, Params, PRNGKey
from rnnjax.unroll import sequential, unroll


class Layer(NamedTuple):
    """A feed-forward layer: ``init(key, input_size) -> params``, ``apply(params, x) -> y``."""

    init: Callable[[PRNGKey, int], Params]
    apply: Callable[[Params, Array], Array]


def output_size(cell: Cell, params: Params, input_size: int) -> int:
    """The size ``O`` of ``cell``'s output for inputs of size ``input_size`` (shape inference only)."""
    D = check_size("input_size", input_size)

    def one(p):
        return cell.apply(p, cell.initial_carry(p, ()), jnp.zeros((D,), jnp.float32))[1]

    return int(jax.eval_shape(one, params).shape[-1])


def stack(*cells: Cell) -> Cell:
    """A deep RNN: the output of layer ``k`` is the input of layer ``k+1`` at the same step.

    ``carry = (carry_1, ..., carry_L)``; output ``y_t`` of the last layer.
    Params: a tuple ``(params_1, ..., params_L)``.

    Over a whole sequence (``unroll``) the stack runs layer after layer, each over all steps with
    its own fused path when it has one (the same function: layer ``k+1`` at step ``t`` needs only
    layer ``k``'s output at ``t``); the layers' ``prepare`` hooks are kept.
    """
    if not cells:
        raise ValueError("stack needs at least one cell")
    for i, c in enumerate(cells):
        if not isinstance(c, Cell):
            raise TypeError(f"cells[{i}] must be an rnnjax.Cell, got {type(c).__name__}")

    def init(key, input_size):
        size = check_size("input_size", input_size)
        params = []
        for c, k in zip(cells, split_keys(key, len(cells))):
            p = c.init(k, size)
            size = output_size(c, p, size)
            params.append(p)
        return tuple(params)

    def initial_carry(params, batch_shape):
        _check_layers(params, len(cells))
        return tuple(c.initial_carry(p, batch_shape) for c, p in zip(cells, params))

    def apply(params, carry, x):
        _check_layers(params, len(cells))
        if not isinstance(carry, tuple) or len(carry) != len(cells):
            raise ValueError(f"carry must be a tuple of {len(cells)} layer carries")
        new = []
        for c, p, h in zip(cells, params, carry):
            h, x = c.apply(p, h, x)
            new.append(h)
        return tuple(new), x

    def sequence(params, carry, xs, *, mask, reverse, unroll, resets=None, reset_carry=None):
        _check_layers(params, len(cells))
        if not isinstance(carry, tuple) or len(carry) != len(cells):
            raise ValueError(f"carry must be a tuple of {len(cells)} layer carries")
        new = []
        for k, (c, p, h) in enumerate(zip(cells, params, carry)):
            h0 = None if reset_carry is None else reset_carry[k]  # each layer restarts from its own
            h, xs = sequential(c, p, reverse=reverse, unroll=unroll, remat=False)(h, xs, mask, resets, h0)
            new.append(h)
        return tuple(new), xs

    prepare = None
    if any(c.prepare is not None for c in cells):
        def prepare(params):
            return tuple(p if c.prepare is None else c.prepare(p) for c, p in zip(cells, params))

    return Cell(init, initial_carry, apply, prepare=prepare, sequence=sequence)


def _check_layers(params, n):
    if not isinstance(params, (tuple, list)) or len(params) != n:
        raise ValueError(f"params must be a tuple of {n} layer params (from stack(...).init)")


_MERGES: dict[str, Callable[[Array, Array], Array]] = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": lambda a, b: a + b,
    "mean": lambda a, b: 0.5 * (a + b),
    "mul": lambda a, b: a * b,
}


class Bidirectional(NamedTuple):
    """A bidirectional RNN over whole sequences.

    ``init(key, input_size) -> {"fwd": params, "bwd": params}``;
    ``apply(params, xs, carry=None, *, lengths=None, time_major=True) -> ((carry_f, carry_b), ys)``.
    """

    init: Callable[[PRNGKey, int], Params]
    apply: Callable[..., tuple[tuple[Carry, Carry], Array]]


def bidirectional(fwd: Cell, bwd: Cell,
                  merge: str | Callable[[Array, Array], Array] = "concat") -> Bidirectional:
    """Run ``fwd`` left to right and ``bwd`` right to left and merge their outputs step by step.

    ``ys[t] = merge(y_fwd[t], y_bwd[t])``, where ``y_bwd[t]`` is ``bwd``'s output on consuming
    ``x_t`` having seen ``x_{T-1}, ..., x_{t}`` (Schuster & Paliwal 1997). With ``lengths`` the
    backward cell reverses each sequence within its valid part and padded outputs are zero.

    Args:
      fwd, bwd: cells; merge: ``"concat"`` (``[..., O_f + O_b]``), ``"sum"``, ``"mean"``, ``"mul"``
        or a function ``(y_fwd, y_bwd) -> y``.
    """
    for name, c in (("fwd", fwd), ("bwd", bwd)):
        if not isinstance(c, Cell):
            raise TypeError(f"{name} must be an rnnjax.Cell, got {type(c).__name__}")
    if isinstance(merge, str):
        if merge not in _MERGES:
            raise ValueError(f"merge must be one of {sorted(_MERGES)} or a callable, got {merge!r}")
        merge_fn = _MERGES[merge]
    elif callable(merge):
        merge_fn = merge
    else:
        raise TypeError(f"merge must be a string or a callable, got {type(merge).__name__}")

    def init(key, input_size):
        kf, kb = split_keys(key, 2)
        return {"fwd": fwd.init(kf, input_size), "bwd": bwd.init(kb, input_size)}

    def apply(params, xs, carry=None, *, lengths=None, time_major=True):
        cf, cb = (None, None) if carry is None else carry
        cf, yf = unroll(fwd, params["fwd"], xs, cf, lengths=lengths, time_major=time_major)
        cb, yb = unroll(bwd, params["bwd"], xs, cb, lengths=lengths, time_major=time_major, reverse=True)
        return (cf, cb), merge_fn(yf, yb)

    return Bidirectional(init, apply)


def dense(output_size: int, *, kernel_init: Initializer = inits.glorot_uniform,
          bias_init: Initializer = inits.zeros, dtype=jnp.float32) -> Layer:
    """Dense readout ``y = x W + b`` (the readout ``y_t = W_y h_t + b_y`` of an Elman network).

    Params: ``w [D, O]``, ``b [O]``. ``x`` has shape ``[..., D]`` (apply it to ``ys`` of any rank).
    """
    Y = check_size("output_size", output_size)  # O, the output size
    check_initializer("kernel_init", kernel_init)
    check_initializer("bias_init", bias_init)
    dtype = check_float_dtype(dtype)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        kw, kb = split_keys(key, 2)
        return {"w": kernel_init(kw, (D, Y), dtype), "b": bias_init(kb, (Y,), dtype)}

    def apply(params, x):
        x = check_input(x, params["w"].shape[0])
        y = x @ params["w"]
        return y + rows(params["b"], y)

    return Layer(init, apply)


def _check_rate(rate: Any) -> None:
    """A real scalar in ``[0, 1)``; a traced rate (a swept hyperparameter) is not checked."""
    if isinstance(rate, jax.core.Tracer):
        return
    if isinstance(rate, (bool, np.bool_, str)) or not isinstance(rate, (int, float, np.number, np.ndarray,
                                                                       jax.Array)):
        raise TypeError(f"rate must be a float scalar in [0, 1), got {type(rate).__name__} {rate!r}")
    r = np.asarray(rate)
    if not (jnp.issubdtype(r.dtype, jnp.floating) or jnp.issubdtype(r.dtype, jnp.integer)):
        raise TypeError(f"rate must be a float scalar in [0, 1), got dtype {r.dtype}")
    if r.ndim != 0 or not (0.0 <= float(r) < 1.0):
        raise ValueError(f"rate must be a scalar in [0, 1), got {rate!r}")


def _check_dropout_args(x: Any, key: Any, name: str) -> None:
    if not isinstance(x, (jax.Array, np.ndarray)) or not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax PRNG key (jax.random.key or PRNGKey), got {type(key).__name__}")


def dropout(x: Array, rate: float | Array, *, key: PRNGKey) -> Array:
    """Inverted dropout: zero each element with probability ``rate``, scale the rest by ``1/(1-rate)``.

    ``rate`` may be a traced scalar (a swept hyperparameter); ``rate = 0`` returns ``x`` exactly.
    """
    _check_rate(rate)
    _check_dropout_args(x, key, "x")
    keep = 1.0 - jnp.asarray(rate, x.dtype)
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def variational_dropout(xs: Array, rate: float | Array, *, key: PRNGKey, time_axis: int = 0) -> Array:
    """Dropout with one mask shared by all time steps (Gal & Ghahramani 2016).

    ``xs`` is a sequence with time on ``time_axis`` (0 for ``[T, B, D]``); the same elements of
    every ``x_t`` are dropped.
    """
    _check_rate(rate)
    _check_dropout_args(xs, key, "xs")
    check_int("time_axis", time_axis, minimum=-xs.ndim)
    if not -xs.ndim <= time_axis < xs.ndim:
        raise ValueError(f"time_axis {time_axis} out of range for xs of rank {xs.ndim}")
    shape = list(xs.shape)
    shape[time_axis] = 1
    keep = 1.0 - jnp.asarray(rate, xs.dtype)
    mask = jax.random.bernoulli(key, keep, tuple(shape))
    return jnp.where(mask, xs / keep, jnp.zeros_like(xs))


def recurrent_dropout(cell: Cell, rate: float | Array, *, key: PRNGKey) -> Cell:
    """Variational dropout on the recurrent state: one mask for all steps (Gal & Ghahramani 2016).

    The hidden state entering each step (``carry.h`` for an LSTM or Jordan carry, the carry itself
    for single-array carries) is multiplied by a mask drawn once from ``key`` for the carry's
    shape; the cell state ``c`` of an LSTM is left alone. Use a fresh ``key`` per training step,
    and the plain cell for evaluation.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be an rnnjax.Cell, got {type(cell).__name__}")
    _check_rate(rate)
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax PRNG key (jax.random.key or PRNGKey), got {type(key).__name__}")

    def drop(h):
        keep = 1.0 - jnp.asarray(rate, h.dtype)
        mask = jax.random.bernoulli(key, keep, h.shape)
        return jnp.where(mask, h / keep, jnp.zeros_like(h))

    def apply(params, carry, x):
        if hasattr(carry, "_replace") and hasattr(carry, "h"):
            carry = carry._replace(h=drop(carry.h))
        elif isinstance(carry, jax.Array):
            carry = drop(carry)
        else:
            raise TypeError("recurrent_dropout needs a carry that is an array or has a field 'h'")
        return cell.apply(params, carry, x)

    return Cell(cell.init, cell.initial_carry, apply)


def map_output(cell: Cell, fn: Callable[[Array], Array]) -> Cell:
    """The same cell with ``fn`` applied to its output: ``y_t = fn(y_t)`` (carry unchanged).

    Puts a nonlinearity between the layers of a [`stack`][rnnjax.layers.stack] of cells whose output is linear
    in their input and carry (LRU), e.g. ``stack(map_output(lru(64, 64), jax.nn.gelu), lru(64, 64))``.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be an rnnjax.Cell, got {type(cell).__name__}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")

    def apply(params, carry, x):
        carry, y = cell.apply(params, carry, x)
        return carry, fn(y)

    return Cell(cell.init, cell.initial_carry, apply)


from rnnjax.attention import Attention, additive_attention, dot_product_attention, masked_softmax  # noqa: E402,F401


def learned_initial_carry(cell: Cell) -> Cell:
    """The same cell with a trained initial carry ``carry_0``, broadcast over the batch.

    ``carry_{-1} = carry0`` for every sequence (instead of zeros), where ``carry0`` is a parameter
    with the shape of one sequence's carry (the cell's zero carry at initialisation, so training
    starts from the plain cell), learned by gradient descent like any weight. ``unroll(cell,
    params, xs)`` with no ``carry`` then starts from ``carry0``, and ``resets`` restore it.

    Params: ``{"cell": <the cell's params>, "carry0": <one carry, batch shape ()>}``. Every param
    is real: a complex carry leaf ``[...]`` (the LRU's and LinOSS's state) is stored as a real
    ``[..., 2]`` array of its real and imaginary parts, so that any optimizer treats it like a
    weight (optax's clipping and weight decay expect real leaves, and JAX's gradient of a real
    loss with respect to a complex parameter is the conjugate of the descent direction, which
    plain ``params - lr * grad`` would follow the wrong way in the imaginary part).
    Carry: the cell's. The cell's fast paths (``prepare``, ``sequence``, ``linear``) are kept.

    Args:
      cell: any [`rnnjax.Cell`][rnnjax.flax.Cell].

    Returns:
      a [`rnnjax.Cell`][rnnjax.flax.Cell] whose ``initial_carry(params, batch_shape)`` is ``carry0``
      broadcast to ``batch_shape`` (complex leaves rebuilt from their stored parts).
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be an rnnjax.Cell, got {type(cell).__name__}")

    def init(key, input_size):
        params = cell.init(key, input_size)
        zero = cell.initial_carry(params, ())
        # complex leaves -> real [..., 2] (real, imaginary): params stay real for every optimizer
        carry0 = jax.tree_util.tree_map(
            lambda c: jnp.stack([c.real, c.imag], axis=-1) if jnp.iscomplexobj(c) else c, zero)
        return {"cell": params, "carry0": carry0}

    def initial_carry(params, batch_shape):
        batch_shape = check_batch_shape(batch_shape)
        zero = jax.eval_shape(lambda p: cell.initial_carry(p, ()), params["cell"])  # the leaves' dtypes

        def leaf(c, z):
            if jnp.issubdtype(z.dtype, jnp.complexfloating):
                if c.shape != (*z.shape, 2):
                    raise ValueError(f"carry0 must hold a complex carry leaf {z.shape} as a real array "
                                     f"{(*z.shape, 2)} (real, imaginary), got shape {c.shape}")
                c = jax.lax.complex(c[..., 0], c[..., 1]).astype(z.dtype)
            return jnp.broadcast_to(c, (*batch_shape, *c.shape))

        return jax.tree_util.tree_map(leaf, params["carry0"], zero)

    def apply(params, carry, x):
        return cell.apply(params["cell"], carry, x)

    prepare = None
    if cell.prepare is not None:
        def prepare(params):
            return {**params, "cell": cell.prepare(params["cell"])}

    sequence = None
    if cell.sequence is not None:
        inner = cell.sequence

        @functools.wraps(inner)  # keeps the inner signature: unroll sees whether it takes resets
        def sequence(params, carry, xs, **kwargs):
            return inner(params["cell"], carry, xs, **kwargs)

    linear = None
    if cell.linear is not None:
        form = cell.linear
        linear = type(form)(lambda params, xs: form.coefficients(params["cell"], xs),
                            lambda params, carries, xs: form.readout(params["cell"], carries, xs))

    return Cell(init, initial_carry, apply, linear=linear, prepare=prepare, sequence=sequence)
