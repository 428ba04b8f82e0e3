"""xLSTM's cells (Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter &
Hochreiter, "xLSTM: Extended Long Short-Term Memory", NeurIPS 2024): the scalar sLSTM and the
matrix mLSTM, both with exponential input gates, a normaliser state and a log-space stabiliser."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import initializers as inits
from rnnjax.cells._common import (
    check_batch_shape,
    check_carry_batch,
    check_input,
    check_number,
    check_size,
    rows,
    split_keys,
)
from rnnjax.types import Array, Cell, Initializer, LinearForm, LinearRecurrence


class SLSTMState(NamedTuple):
    """Carry of an sLSTM, each ``[..., H]``: hidden ``h``, cell ``c``, normaliser ``n`` and
    stabiliser ``m`` (``c`` and ``n`` are stored scaled by ``exp(−m)``)."""

    h: Array
    c: Array
    n: Array
    m: Array


class MLSTMState(NamedTuple):
    """An mLSTM carry unpacked by [`mlstm_state`][rnnjax.mlstm_state]: memory ``C [..., NH, d, d]``,
    normaliser ``n [..., NH, d]`` and stabiliser ``m [..., NH]`` (``None`` without the stabiliser); with the
    stabiliser, ``C`` and ``n`` are stored scaled by ``exp(−m)``."""

    C: Array
    n: Array
    m: Array | None


def small_init(key, shape, dtype=jnp.float32) -> Array:
    """``N(0, 2 / (5 fan_in))`` (Nguyen & Salazar 2019), the xLSTM reference code's projection init."""
    return math.sqrt(2.0 / (5.0 * shape[0])) * jax.random.normal(key, shape, dtype)


def _heads(hidden_size: int, num_heads: int) -> int:
    H = check_size("hidden_size", hidden_size)
    NH = check_size("num_heads", num_heads)
    if H % NH:
        raise ValueError(f"num_heads must divide hidden_size, got hidden_size={H}, num_heads={NH}")
    return H // NH


def _check_forget_gate(forget_gate: str) -> None:
    if forget_gate not in ("sigmoid", "exp"):
        raise ValueError(f"forget_gate must be 'sigmoid' or 'exp', got {forget_gate!r}")


def _log_forget(ft: Array, forget_gate: str) -> Array:
    return jax.nn.log_sigmoid(ft) if forget_gate == "sigmoid" else ft


def powerlaw_forget_bias(head_dim: int, num_heads: int, dtype=jnp.float32) -> Array:
    """The xLSTM reference code's sLSTM forget-gate bias: ``5 − 12 (j / (d − 1))^0.3`` for unit
    ``j`` of each head (``d = 1``: 5), ``[NH * d]``: a spread of time scales from long to short."""
    if head_dim == 1:
        per_head = jnp.full((1,), 5.0, dtype)
    else:
        per_head = 5.0 - 12.0 * (jnp.arange(head_dim, dtype=jnp.float32) / (head_dim - 1)) ** 0.3
    return jnp.tile(per_head.astype(dtype), num_heads)


def slstm(
    hidden_size: int,
    *,
    num_heads: int = 4,
    forget_gate: str = "sigmoid",
    stabilize: bool = True,
    forget_bias: float | str = "powerlaw",
    input_init: Initializer = small_init,
    recurrent_init: Initializer = inits.zeros,
    dtype=jnp.float32,
) -> Cell:
    """sLSTM, xLSTM's scalar LSTM (Beck et al., NeurIPS 2024): exponential gating and a normaliser.

    Pre-activations ``[ĩ, f̃, z̃, õ] = x_t W_x + h_{t−1} R + b``, with ``R`` block-diagonal over
    ``num_heads`` heads (each head's ``d = H / NH`` units see only their own head's ``h``);
    ``z_t = tanh(z̃)``, ``o_t = σ(õ)``, input gate ``i_t = exp(ĩ)``, forget gate ``f_t = σ(f̃)``
    (``forget_gate="sigmoid"``) or ``exp(f̃)`` (``"exp"``);
    ``c_t = f_t c_{t−1} + i_t z_t``, ``n_t = f_t n_{t−1} + i_t``, ``h_t = o_t ⊙ c_t / n_t``;
    output ``h_t``.

    Stabilised (``stabilize=True``, the paper's eqs. 15-17): ``m_t = max(log f_t + m_{t−1}, log i_t)``,
    ``i'_t = exp(log i_t − m_t)``, ``f'_t = exp(log f_t + m_{t−1} − m_t)`` replace ``i_t, f_t``;
    the carried ``c, n`` are then the true ones times ``exp(−m_t)``, and ``h_t`` is unchanged
    (exactly, in exact arithmetic) while no exponential exceeds 1. A unit whose ``n`` is 0 (the
    zero initial carry) starts with ``m_t = log i_t``, as in the reference code, so ``n_t >= 1``
    from its first step on. With ``stabilize=False`` ``m`` stays at its carried value
    (``i'_t = exp(ĩ − m)``, ``f'_t = f_t``; from the zero carry, the plain equations), and large
    ``ĩ`` overflow.

    Default initialisation as in the xLSTM reference code: ``W_x ~ N(0, 2/(5D))``
    (`small_init`), ``R = 0``, biases 0 except the forget gate's,
    `powerlaw_forget_bias` (``forget_bias="powerlaw"``) or a constant.

    Params: ``w_x [D, 4H]``, ``b [4H]`` fused in the order ``(i, f, z, o)`` (each block
    head-major), ``w_h [NH, 4, d, d]`` (``w_h[k, g]`` maps head ``k``'s ``h`` to its gate ``g``).
    Carry: [`SLSTMState`][rnnjax.SLSTMState] ``(h, c, n, m)``, each ``[..., H]``. Input ``x [..., D]``, output
    ``h [..., H]``; over a sequence ``[T, B, D] -> [T, B, H]``.

    Args:
      hidden_size: H.
      num_heads: NH, must divide H (the reference code's default: 4).
      forget_gate: ``"sigmoid"`` or ``"exp"``.
      stabilize: the log-space stabiliser ``m``.
      forget_bias: ``"powerlaw"`` or a number for the forget-gate bias at initialisation.
      input_init, recurrent_init: initialisers for ``w_x`` (per gate block) and each ``d × d``
        block of ``w_h``.
      dtype: parameter dtype.
    """
    d = _heads(hidden_size, num_heads)
    H, NH = hidden_size, num_heads
    _check_forget_gate(forget_gate)
    if not isinstance(stabilize, bool):
        raise TypeError(f"stabilize must be a bool, got {stabilize!r}")
    if not (isinstance(forget_bias, str) and forget_bias == "powerlaw"):
        try:
            forget_bias = check_number("forget_bias", forget_bias)
        except TypeError:
            raise TypeError(f"forget_bias must be 'powerlaw' or a finite number, "
                            f"got {forget_bias!r}") from None

    def init(key, input_size):
        D = check_size("input_size", input_size)
        kx, kh = split_keys(key, 2)
        if forget_bias == "powerlaw":
            b_f = powerlaw_forget_bias(d, NH, dtype)
        else:
            b_f = jnp.full((H,), forget_bias, dtype)
        zeros = jnp.zeros((H,), dtype)
        w_h = jnp.stack([recurrent_init(k, (d, d), dtype) for k in jax.random.split(kh, NH * 4)])
        return {
            "w_x": inits.blockwise(input_init, 4)(kx, (D, 4 * H), dtype),
            "w_h": w_h.reshape(NH, 4, d, d),
            "b": jnp.concatenate([zeros, b_f, zeros, zeros]),
        }

    def initial_carry(params, batch_shape):
        z = jnp.zeros((*check_batch_shape(batch_shape), H), params["w_x"].dtype)
        return SLSTMState(z, z, z, z)

    def apply(params, carry, x):
        x = check_input(x, params["w_x"].shape[0])
        if not isinstance(carry, SLSTMState):
            raise TypeError(f"carry must be an SLSTMState (from initial_carry), got {type(carry).__name__}")
        for name, leaf in zip(SLSTMState._fields, carry):
            check_carry_batch(leaf, x, f"carry.{name}")
        h, c, n, m = carry
        batch = h.shape[:-1]
        rec = jnp.einsum("...kd,kgde->...gke", h.reshape(batch + (NH, d)), params["w_h"])
        z = x @ params["w_x"] + rec.reshape(batch + (4 * H,))
        z = z + rows(params["b"], z)
        it, ft, zt, ot = jnp.split(z, 4, axis=-1)
        log_f = _log_forget(ft, forget_gate)
        if stabilize:
            empty = n == 0
            m_new = jnp.where(empty, it, jnp.maximum(log_f + m, it))
            i_p = jnp.exp(it - m_new)
            # An empty unit (n = 0) keeps nothing; the double where keeps exp finite there.
            f_p = jnp.where(empty, 0.0, jnp.exp(jnp.where(empty, 0.0, log_f + m - m_new)))
        else:
            m_new = m
            i_p = jnp.exp(it - m)
            f_p = jnp.exp(log_f)
        c = f_p * c + i_p * jnp.tanh(zt)
        n = f_p * n + i_p
        h = jax.nn.sigmoid(ot) * c / n
        return SLSTMState(h, c, n, m_new), h

    return Cell(init, initial_carry, apply)


def mlstm_state(carry: Array, hidden_size: int, num_heads: int = 4) -> MLSTMState:
    """Unpack an mLSTM carry ``[..., S]`` into [`MLSTMState`][rnnjax.MLSTMState] ``(C, n, m)``.

    The layout is ``[C (NH·d·d, row-major per head) | n (NH·d) | m (NH)]``, without ``m`` for a
    cell made with ``stabilize=False``; ``d = hidden_size / num_heads``.
    """
    d = _heads(hidden_size, num_heads)
    NH = num_heads
    sc, sn = NH * d * d, NH * d
    if carry.shape[-1] not in (sc + sn, sc + sn + NH):
        raise ValueError(f"carry has last dim {carry.shape[-1]}, but an mLSTM with hidden_size="
                         f"{hidden_size}, num_heads={NH} has {sc + sn + NH} (stabilised) or "
                         f"{sc + sn} (stabilize=False)")
    batch = carry.shape[:-1]
    C = carry[..., :sc].reshape(batch + (NH, d, d))
    n = carry[..., sc:sc + sn].reshape(batch + (NH, d))
    m = carry[..., sc + sn:] if carry.shape[-1] == sc + sn + NH else None
    return MLSTMState(C, n, m)


def mlstm(
    hidden_size: int,
    *,
    num_heads: int = 4,
    forget_gate: str = "sigmoid",
    stabilize: bool = True,
    negative_eigenvalues: bool = False,
    input_init: Initializer = small_init,
    dtype=jnp.float32,
) -> Cell:
    """mLSTM, xLSTM's matrix LSTM (Beck et al., NeurIPS 2024): a matrix memory with covariance update.

    Per head (``NH`` heads of ``d = H / NH`` units), from the input only:
    ``q_t = x_t W_q + b_q``, ``k_t = x_t W_k / √d + b_k``, ``v_t = x_t W_v + b_v``,
    ``o_t = σ(x_t W_o + b_o)``, scalar gates ``i_t = exp(ĩ_t)``, ``f_t = σ(f̃_t)`` (or
    ``exp(f̃_t)``) with ``[ĩ, f̃] = x_t W_g + b_g``;
    ``C_t = f_t C_{t−1} + i_t v_t k_tᵀ``, ``n_t = f_t n_{t−1} + i_t k_t``,
    ``h̃_t = C_t q_t / max(|n_tᵀ q_t|, 1)``, ``h_t = o_t ⊙ h̃_t`` (heads concatenated); output ``h_t``.

    Stabilised (``stabilize=True``, the paper's appendix and reference code): as in [`slstm`][rnnjax.slstm],
    ``m_t = max(log f_t + m_{t−1}, log i_t)`` and ``C, n`` are carried times ``exp(−m_t)``, with the
    normaliser's floor scaled alike: ``h̃_t = C'_t q_t / max(|n'_tᵀ q_t|, exp(−m_t))`` (the same
    ``h̃_t`` exactly, with no exponential above 1).

    Parallel path: the gates depend on the input only, so without the stabiliser the carry
    ``(C, n)`` follows ``carry_t = f_t carry_{t−1} + i_t (v_t k_tᵀ, k_t)``, linear in the carry,
    and ``stabilize=False`` gives the cell a [`LinearForm`][rnnjax.types.LinearForm]: ``unroll(...,
    parallel=True)`` computes every ``(C_t, n_t)`` with an associative scan (depth ``O(log T)``), then ``h_t``
    from them, the same values as ``apply`` step by step. The stabilised cell has no parallel path:
    its ``m_t`` depends on the carried ``m_0`` through a max, so its update is not of the form
    ``a_t ⊙ carry + b_t`` with ``a_t, b_t`` from the inputs. Without the stabiliser ``f_t <= 1``
    (sigmoid) keeps the memory bounded by ``Σ i_s |v_s| |k_s|``; it overflows float32 only for
    ``ĩ`` above about 88 (or growing ``exp`` forget gates).

    ``negative_eigenvalues=True`` (Grazzi, Siems, Franke, Zela, Hutter & Pontil, "Unlocking
    State-Tracking in Linear RNNs Through Negative Eigenvalues", ICLR 2025; sigmoid forget gate
    only) maps the forget gate's range ``(0, 1)`` to ``(-1, 1)``: ``f_t = 2σ(f̃_t) - 1 = tanh(f̃_t / 2)``,
    so the memory can flip sign at a step (parity). The stabiliser then uses ``log |f_t|``
    (``m_t = max(log |f_t| + m_{t−1}, log i_t)``, ``f'_t = f_t exp(m_{t−1} − m_t)``); the parallel
    path (``stabilize=False``) is in linear space either way.

    Default initialisation as in the xLSTM reference code: ``W_q, W_k, W_v, W_o ~ N(0, 2/(5D))``
    (`small_init`), their biases 0; gate weights ``W_g = 0``, input-gate bias
    ``N(0, 0.1²)``, forget-gate bias ``linspace(3, 6)`` over the heads.

    Params: ``w_x [D, 4H]``, ``b [4H]`` fused in the order ``(q, k, v, o)`` (each block
    head-major), ``w_gates [D, 2NH]``, ``b_gates [2NH]`` in the order ``(i, f)``.
    Carry: one array ``[..., S]``, ``S = NH(d² + d + 1)`` (``NH(d² + d)`` with
    ``stabilize=False``), laid out as ``[C | n | m]``; [`mlstm_state`][rnnjax.mlstm_state] unpacks it.
    Input ``x [..., D]``, output ``h [..., H]``; over a sequence ``[T, B, D] -> [T, B, H]``.

    Args:
      hidden_size: H.
      num_heads: NH, must divide H (the reference code's default: 4).
      forget_gate: ``"sigmoid"`` or ``"exp"``.
      stabilize: the log-space stabiliser ``m`` (no parallel path when True).
      negative_eigenvalues: the forget gate ``2σ(f̃) - 1 ∈ (-1, 1)`` in place of ``σ(f̃) ∈ (0, 1)``.
      input_init: initialiser for each block of ``w_x``.
      dtype: parameter dtype.
    """
    d = _heads(hidden_size, num_heads)
    H, NH = hidden_size, num_heads
    _check_forget_gate(forget_gate)
    if not isinstance(stabilize, bool):
        raise TypeError(f"stabilize must be a bool, got {stabilize!r}")
    if not isinstance(negative_eigenvalues, bool):
        raise TypeError(f"negative_eigenvalues must be a bool, got {negative_eigenvalues!r}")
    if negative_eigenvalues and forget_gate != "sigmoid":
        raise ValueError(f"negative_eigenvalues=True needs forget_gate='sigmoid' (2σ(f̃) - 1 ∈ (-1, 1)), "
                         f"got forget_gate={forget_gate!r}")
    sc, sn = NH * d * d, NH * d
    S = sc + sn + (NH if stabilize else 0)
    inv_sqrt_d = 1.0 / math.sqrt(d)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        kx, ki = split_keys(key, 2)
        b_i = 0.1 * jax.random.normal(ki, (NH,), dtype)
        b_f = jnp.linspace(3.0, 6.0, NH, dtype=dtype) if NH > 1 else jnp.full((1,), 3.0, dtype)
        return {
            "w_x": inits.blockwise(input_init, 4)(kx, (D, 4 * H), dtype),
            "b": jnp.zeros((4 * H,), dtype),
            "w_gates": jnp.zeros((D, 2 * NH), dtype),
            "b_gates": jnp.concatenate([b_i, b_f]),
        }

    def initial_carry(params, batch_shape):
        return jnp.zeros((*check_batch_shape(batch_shape), S), params["w_x"].dtype)

    def project(params, x):
        """``q, k, v [..., NH, d]``, ``o [..., H]``, ``log i, log f [..., NH]`` from ``x [..., D]``
        (with ``negative_eigenvalues``, the signed gate ``f = tanh(f̃ / 2)`` in place of ``log f``)."""
        xw = x @ params["w_x"]
        bq, bk, bv, bo = jnp.split(params["b"], 4)
        wq, wk, wv, wo = jnp.split(xw, 4, axis=-1)
        split = lambda a: a.reshape(a.shape[:-1] + (NH, d))
        q = split(wq + rows(bq, wq))
        k = split(wk * inv_sqrt_d + rows(bk, wk))
        v = split(wv + rows(bv, wv))
        o = jax.nn.sigmoid(wo + rows(bo, wo))
        g = x @ params["w_gates"]
        g = g + rows(params["b_gates"], g)
        log_i, ft = jnp.split(g, 2, axis=-1)
        if negative_eigenvalues:
            return q, k, v, o, log_i, jnp.tanh(0.5 * ft)
        return q, k, v, o, log_i, _log_forget(ft, forget_gate)

    def read(C, n, floor, q, o):
        """``o ⊙ C q / max(|nᵀ q|, floor)``, heads concatenated, ``[..., H]``."""
        num = jnp.einsum("...kab,...kb->...ka", C, q)
        den = jnp.maximum(jnp.abs(jnp.sum(n * q, axis=-1)), floor)
        h = num / den[..., None]
        return o * h.reshape(h.shape[:-2] + (H,))

    def pack(C, n, m=None):
        batch = C.shape[:-3]
        parts = [C.reshape(batch + (sc,)), n.reshape(batch + (sn,))]
        if m is not None:
            parts.append(m)
        return jnp.concatenate(parts, axis=-1)

    def apply(params, carry, x):
        x = check_input(x, params["w_x"].shape[0])
        check_carry_batch(carry, x)
        if carry.shape[-1] != S:
            raise ValueError(f"carry has last dim {carry.shape[-1]}, expected {S}; make it with "
                             f"initial_carry(params, batch_shape)")
        C, n, m = mlstm_state(carry, H, NH)
        q, k, v, o, log_i, log_f = project(params, x)
        if negative_eigenvalues and stabilize:  # log_f holds the signed gate f: use log |f|
            f = log_f
            log_abs_f = jnp.log(jnp.maximum(jnp.abs(f), jnp.finfo(f.dtype).tiny))
            m_new = jnp.maximum(log_abs_f + m, log_i)
            i_p = jnp.exp(log_i - m_new)
            f_p = f * jnp.exp(m - m_new)  # m - m_new <= -log max(|f|, tiny): finite, |f'| <= 1
            floor = jnp.exp(-m_new)
        elif negative_eigenvalues:
            i_p, f_p = jnp.exp(log_i), log_f
            floor = jnp.ones_like(log_i)
        elif stabilize:
            m_new = jnp.maximum(log_f + m, log_i)
            i_p = jnp.exp(log_i - m_new)
            f_p = jnp.exp(log_f + m - m_new)
            floor = jnp.exp(-m_new)
        else:
            i_p, f_p = jnp.exp(log_i), jnp.exp(log_f)
            floor = jnp.ones_like(log_i)
        C = f_p[..., None, None] * C + i_p[..., None, None] * (v[..., :, None] * k[..., None, :])
        n = f_p[..., None] * n + i_p[..., None] * k
        h = read(C, n, floor, q, o)
        return pack(C, n, m_new if stabilize else None), h

    def coefficients(params, xs):
        xs = check_input(xs, params["w_x"].shape[0], "xs")
        _, k, v, _, log_i, log_f = project(params, xs)
        i, f = jnp.exp(log_i), (log_f if negative_eigenvalues else jnp.exp(log_f))
        a = jnp.concatenate([jnp.repeat(f, d * d, axis=-1), jnp.repeat(f, d, axis=-1)], axis=-1)
        b = pack(i[..., None, None] * (v[..., :, None] * k[..., None, :]), i[..., None] * k)
        return LinearRecurrence(a, b)

    def readout(params, carries, xs):
        C, n, _ = mlstm_state(carries, H, NH)
        q, _, _, o, _, _ = project(params, xs)
        return read(C, n, jnp.ones(q.shape[:-1], q.dtype), q, o)

    linear = None if stabilize else LinearForm(coefficients, readout)
    return Cell(init, initial_carry, apply, linear=linear)
