"""Real-Gated Linear Recurrent Unit, RG-LRU (De et al. 2024, Griffin): a diagonal linear
recurrence whose decay is gated by the input, so the sequence runs as a parallel scan."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnjax.cells._common import (
    check_batch_shape,
    check_bool,
    check_carry_batch,
    check_input,
    check_number,
    check_size,
    rows,
    split_keys,
)
from rnnjax.types import Array, Cell, LinearForm, LinearRecurrence


def rglru_base_decay(params) -> Array:
    """The RG-LRU's base decay ``a = σ(Λ) = exp(−softplus(−Λ))`` per hidden unit, ``[H]``.

    The decay applied at step ``t`` is ``a_t = a^(c r_t)`` with the recurrence gate ``r_t``.
    """
    return jnp.exp(-jax.nn.softplus(-params["lam"]))


def rglru(
    hidden_size: int,
    *,
    c: float = 8.0,
    a_min: float = 0.9,
    a_max: float = 0.999,
    input_projection: bool = True,
    negative_eigenvalues: bool = False,
    dtype=jnp.float32,
) -> Cell:
    """Real-Gated Linear Recurrent Unit, RG-LRU (De, Smith, Fernando et al. 2024, "Griffin").

    ::

        x̃_t = x_t W_in                                  (input projection, see below)
        r_t = σ(x̃_t W_a + b_a)                          recurrence gate
        i_t = σ(x̃_t W_x + b_x)                          input gate
        log a_t = −c r_t softplus(−Λ)                   i.e. a_t = σ(Λ)^(c r_t) ∈ (0, 1]
        h_t = a_t ⊙ h_{t-1} + √(1 − a_t²) ⊙ (i_t ⊙ x̃_t)

    output ``h_t``. The gates see only the input, so ``h_t`` is linear in ``h_{t-1}`` and
    ``unroll(..., parallel=True)`` runs it as an associative scan (``a_t``, ``b_t`` real; ``h``
    may be negative, so the scan is in linear space; products of many ``a_t`` only underflow
    to 0, never overflow). ``a_t`` is computed in log space as in the paper and
    ``1 − a_t² = −expm1(2 log a_t)`` without cancellation.

    In Griffin the RG-LRU's input is the output of a linear layer (and a short convolution) of
    the same width as the recurrence; here ``input_projection=True`` (default) includes that
    linear layer, ``W_in [D, H]`` (no bias), so any input size works; with
    ``input_projection=False`` the cell is the bare RG-LRU and the input size must equal H. The
    gates are dense ``[H, H]`` matrices (Griffin's block-diagonal gates with one block).
    Griffin's code also skips the normalisation ``√(1 − a_t²)`` at a document's first token;
    here every step uses the equation above (resets are [`rnnjax.unroll`][rnnjax.flax.unroll]'s job).

    Default initialisation (the authors' code): ``Λ`` such that ``σ(Λ)`` (the base decay ``a``,
    not ``a^c``) lies in ``[a_min, a_max] = [0.9, 0.999]``, uniform over the ring's area
    (``a² ~ U[a_min², a_max²]``); ``W_a, W_x ~ N(0, 1/H)`` (variance scaling, fan-in), biases
    zero; ``c = 8`` as in the paper. ``W_in ~ N(0, 1/D)`` (LeCun normal; our choice for the
    projection, which Griffin initialises as part of its block).

    ``negative_eigenvalues=True`` (Grazzi, Siems, Franke, Zela, Hutter & Pontil, "Unlocking
    State-Tracking in Linear RNNs Through Negative Eigenvalues", ICLR 2025) maps the decay's range
    ``(0, 1]`` to ``(-1, 1]``: ``a'_t = 2 a_t - 1`` (computed as ``1 + 2 expm1(log a_t)``) replaces
    ``a_t``, with the normalisation ``√(1 − a'_t²) = √(4 a_t (1 − a_t))`` (no cancellation), so
    ``h`` can flip sign at a step (parity); the parallel scan is in linear space either way.

    Params: ``w_in [D, H]`` (only with ``input_projection``), ``w_a [H, H]``, ``b_a [H]``,
    ``w_x [H, H]``, ``b_x [H]``, ``lam [H]`` (``Λ``). Carry: ``h [..., H]``. Input
    ``x [..., D]``, output ``h [..., H]``; over a sequence ``[T, B, D] -> [T, B, H]``.

    Args:
      hidden_size: H.
      c: the gate's exponent scale ``c > 0``.
      a_min, a_max: the initial range of the base decay ``σ(Λ)``, ``0 < a_min < a_max < 1``.
      input_projection: include the linear layer ``W_in`` before the recurrence.
      negative_eigenvalues: the decay ``2 a_t - 1 ∈ (-1, 1]`` in place of ``a_t ∈ (0, 1]``.
      dtype: parameter dtype.
    """
    H = check_size("hidden_size", hidden_size)
    c = check_number("c", c, positive=True)
    a_min, a_max = check_number("a_min", a_min), check_number("a_max", a_max)
    if not 0.0 < a_min < a_max < 1.0:
        raise ValueError(f"need 0 < a_min < a_max < 1, got a_min={a_min}, a_max={a_max}")
    if not isinstance(input_projection, bool):
        raise TypeError(f"input_projection must be a bool, got {input_projection!r}")
    negative_eigenvalues = check_bool("negative_eigenvalues", negative_eigenvalues)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        if not input_projection and D != H:
            raise ValueError(f"rglru(input_projection=False) needs input_size == hidden_size "
                             f"({H}), got input_size {D}; use input_projection=True")
        k_in, k_a, k_x, k_l = split_keys(key, 4)

        def normal(k, shape, fan_in):
            return jax.random.normal(k, shape, jnp.float32) / math.sqrt(fan_in)

        u = jax.random.uniform(k_l, (H,), jnp.float32)
        log_a = 0.5 * jnp.log(u * (a_max**2 - a_min**2) + a_min**2)  # log σ(Λ) = −softplus(−Λ)
        lam = -jnp.log(jnp.expm1(-log_a))  # the inverse: σ(Λ) = exp(log_a)
        params = {
            "w_a": normal(k_a, (H, H), H),
            "b_a": jnp.zeros((H,), jnp.float32),
            "w_x": normal(k_x, (H, H), H),
            "b_x": jnp.zeros((H,), jnp.float32),
            "lam": lam,
        }
        if input_projection:
            params["w_in"] = normal(k_in, (D, H), D)
        return {k: v.astype(dtype) for k, v in params.items()}

    def initial_carry(params, batch_shape):
        return jnp.zeros((*check_batch_shape(batch_shape), H), params["lam"].dtype)

    def input_size(params):
        return params["w_in"].shape[0] if "w_in" in params else params["w_a"].shape[0]

    def coefficients(params, x):
        """``(a_t, b_t)`` for inputs ``x [..., D]``: ``h_t = a_t ⊙ h_{t-1} + b_t``."""
        xt = x @ params["w_in"] if "w_in" in params else x
        r = jax.nn.sigmoid(xt @ params["w_a"] + rows(params["b_a"], xt))
        i = jax.nn.sigmoid(xt @ params["w_x"] + rows(params["b_x"], xt))
        log_a = -c * r * rows(jax.nn.softplus(-params["lam"]), r)
        if negative_eigenvalues:  # a' = 2a - 1, 1 - a'^2 = 4 a (1 - a) = -4 a expm1(log a)
            em1 = jnp.expm1(log_a)
            one_minus_a2 = -4.0 * jnp.exp(log_a) * em1
            norm = jnp.sqrt(jnp.maximum(one_minus_a2, jnp.finfo(one_minus_a2.dtype).tiny))
            return 1.0 + 2.0 * em1, norm * (i * xt)
        one_minus_a2 = -jnp.expm1(2.0 * log_a)
        # √ at exactly 0 (r underflowed to 0) has an infinite derivative: clamp to the tiniest
        # normal number, which changes no value that float rounding could represent.
        norm = jnp.sqrt(jnp.maximum(one_minus_a2, jnp.finfo(one_minus_a2.dtype).tiny))
        return jnp.exp(log_a), norm * (i * xt)

    def apply(params, h, x):
        x = check_input(x, input_size(params))
        check_carry_batch(h, x)
        a, b = coefficients(params, x)
        h = a * h + b
        return h, h

    def linear_coefficients(params, xs):
        xs = check_input(xs, input_size(params), "xs")
        return LinearRecurrence(*coefficients(params, xs))

    def readout(params, carries, xs):
        del params, xs
        return carries

    return Cell(init, initial_carry, apply, linear=LinearForm(linear_coefficients, readout))
