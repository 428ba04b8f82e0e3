"""Recurrent cells from discretised ordinary differential equations: AntisymmetricRNN and Lipschitz RNN.

Both are stated in the kit's row-vector convention (``x W``, ``h W``): a hidden state ``h [..., H]``
multiplies a matrix from the left. Transposing every matrix gives the papers' column form; the
spectra below are the same in both.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnjax import initializers as inits
from rnnjax.cells._common import (
    check_batch_shape,
    check_bool,
    check_carry_batch,
    check_float_dtype,
    check_initializer,
    check_input,
    check_number,
    check_size,
    rows,
    split_keys,
)
from rnnjax.types import Array, Cell, Initializer


def _dense(x: Array, w: Array, b: Array) -> Array:
    z = x @ w
    return z + rows(b, z)


def antisymmetric_matrix(w: Array, gamma: float) -> Array:
    """``W − Wᵀ − γI`` for a square ``w [H, H]``: antisymmetric minus a diffusion ``γ``.

    Its eigenvalues are ``−γ + iω`` (real parts all ``−γ``): the antisymmetric part has a purely
    imaginary spectrum (Chang, Chen, Haber & Chi, ICLR 2019, eq. 8).
    """
    return w - w.T - gamma * jnp.eye(w.shape[0], dtype=w.dtype)


def lipschitz_matrix(m: Array, beta: float, gamma: float) -> Array:
    """``A_{β,γ} = (1 − β)(M + Mᵀ) + β(M − Mᵀ) − γI`` for a square ``m [H, H]``.

    The Lipschitz RNN's hidden-to-hidden parametrisation (Erichson, Azencot, Queiruga, Hodgkinson
    & Mahoney, ICLR 2021, eq. 5): ``β`` trades the symmetric part for the skew-symmetric one;
    with ``β = 1`` the spectrum is ``−γ + iω``, and the real parts of its eigenvalues are at most
    ``(1 − β) λ_max(M + Mᵀ) − γ``.
    """
    eye = jnp.eye(m.shape[0], dtype=m.dtype)
    return (1.0 - beta) * (m + m.T) + beta * (m - m.T) - gamma * eye


def antisymmetric(
    hidden_size: int,
    *,
    epsilon: float = 0.01,
    gamma: float = 0.01,
    gated: bool = False,
    sigma_w: float = 1.0,
    input_init: Initializer = inits.lecun_normal,
    bias_init: Initializer = inits.zeros,
    dtype=jnp.float32,
) -> Cell:
    """AntisymmetricRNN (Chang, Chen, Haber & Chi, ICLR 2019): a forward-Euler step of a stable ODE.

    ``h_t = h_{t−1} + ε tanh(h_{t−1} (W − Wᵀ − γI) + x_t V + b)``; output ``h_t``. The
    antisymmetric ``W − Wᵀ`` has a purely imaginary spectrum, so the underlying ODE neither
    explodes nor vanishes; the diffusion ``γ > 0`` shifts every eigenvalue to real part ``−γ`` to
    make the Euler discretisation stable (the paper's Section 3;
    [`antisymmetric_matrix`][rnnjax.antisymmetric_matrix]).

    The gated variant (``gated=True``, the paper's eq. 15) adds an input gate sharing the
    recurrent matrix: ``z_t = σ(h_{t−1}(W − Wᵀ − γI) + x_t V_z + b_z)``,
    ``h_t = h_{t−1} + ε z_t ⊙ tanh(h_{t−1}(W − Wᵀ − γI) + x_t V_h + b_h)``.

    Default initialisation as in the paper's appendix C: ``V ~ N(0, 1/D)`` (``lecun_normal``),
    ``W ~ N(0, σ_w²/H)``, ``b = 0``.

    Params: ``w_x [D, H]`` (``V``; gated: ``[D, 2H]`` in the order ``(h, z)``), ``w_h [H, H]``
    (``W``; only its antisymmetric part acts), ``b [H]`` (gated: ``[2H]``); ``cell.prepare``
    adds ``w_rec = W − Wᵀ − γI`` once per sequence (``apply`` takes raw or prepared params).
    Carry: ``h [..., H]``.
    Input ``x [..., D]``, output ``h [..., H]``; over a sequence ``[T, B, D] -> [T, B, H]``.

    Args:
      hidden_size: H.
      epsilon: the step size ``ε > 0`` (the paper searches ``{0.01, 0.1, 1}``).
      gamma: the diffusion ``γ >= 0`` (the paper searches ``{0.001, 0.01, 0.1, 1}``).
      gated: the gated AntisymmetricRNN.
      sigma_w: ``W ~ N(0, σ_w²/H)`` at initialisation (the paper searches ``{0, 1, 2, 4, 8, 16}``).
      input_init, bias_init: initialisers for ``w_x`` (per block) and ``b``.
      dtype: parameter dtype.

    The defaults ``ε = γ = 0.01``, ``σ_w = 1`` are one point of the paper's search grids (no code
    was released with the paper); tune them per task as the paper did.
    """
    H = check_size("hidden_size", hidden_size)
    epsilon = check_number("epsilon", epsilon, positive=True)
    gamma = check_number("gamma", gamma, lo=0.0)
    sigma_w = check_number("sigma_w", sigma_w, lo=0.0)
    gated = check_bool("gated", gated)
    check_initializer("input_init", input_init)
    check_initializer("bias_init", bias_init)
    dtype = check_float_dtype(dtype)
    n = 2 if gated else 1

    def init(key, input_size):
        D = check_size("input_size", input_size)
        kx, kh, kb = split_keys(key, 3)
        return {
            "w_x": inits.blockwise(input_init, n)(kx, (D, n * H), dtype),
            "w_h": (sigma_w / math.sqrt(H)) * jax.random.normal(kh, (H, H), dtype),
            "b": bias_init(kb, (n * H,), dtype),
        }

    def initial_carry(params, batch_shape):
        return jnp.zeros((*check_batch_shape(batch_shape), H), params["w_h"].dtype)

    def prepare(params):
        return {**params, "w_rec": antisymmetric_matrix(params["w_h"], gamma)}

    def apply(params, h, x):
        x = check_input(x, params["w_x"].shape[0])
        check_carry_batch(h, x, size=H)
        w_rec = params["w_rec"] if "w_rec" in params else antisymmetric_matrix(params["w_h"], gamma)
        rec = h @ w_rec
        u = _dense(x, params["w_x"], params["b"])
        if gated:
            u_h, u_z = jnp.split(u, 2, axis=-1)
            h = h + epsilon * jax.nn.sigmoid(rec + u_z) * jnp.tanh(rec + u_h)
        else:
            h = h + epsilon * jnp.tanh(rec + u)
        return h, h

    return Cell(init, initial_carry, apply, prepare=prepare)


def lipschitz(
    hidden_size: int,
    *,
    beta: float = 0.75,
    gamma_a: float = 0.001,
    gamma_w: float = 0.001,
    epsilon: float = 0.03,
    method: str = "euler",
    init_std: float = 6.0,
    input_init: Initializer = inits.glorot_normal,
    bias_init: Initializer = inits.zeros,
    dtype=jnp.float32,
) -> Cell:
    """Lipschitz RNN (Erichson, Azencot, Queiruga, Hodgkinson & Mahoney, ICLR 2021).

    The continuous-time unit ``ḣ = h A + tanh(h W + x U + b)`` with
    ``A = A_{β,γ_A}(M_A)``, ``W = A_{β,γ_W}(M_W)`` and
    ``A_{β,γ}(M) = (1 − β)(M + Mᵀ) + β(M − Mᵀ) − γI`` ([`lipschitz_matrix`][rnnjax.lipschitz_matrix]),
    advanced by one step ``ε`` per input with the input held over the step; output ``h_t``.

    - ``method="euler"``: ``h_t = h_{t−1} + ε f(h_{t−1}, x_t)``, ``f(h, x) = h A + tanh(h W + x U + b)``.
    - ``method="rk2"`` (Heun's second-order Runge–Kutta): ``k₁ = f(h_{t−1}, x_t)``,
      ``k₂ = f(h_{t−1} + ε k₁, x_t)``, ``h_t = h_{t−1} + ε (k₁ + k₂) / 2``.

    Default initialisation as in the authors' code: ``M_A, M_W ~ N(0, (init_std / H)²)`` (note
    ``/H``, not ``/√H``), ``U`` Glorot normal, ``b = 0``.

    Params: ``w_x [D, H]`` (``U``), ``m_a [H, H]`` (``M_A``), ``m_w [H, H]`` (``M_W``), ``b [H]``;
    ``cell.prepare`` adds ``a`` and ``w`` (``A``, ``W``) once per sequence (``apply`` takes raw or
    prepared params). Carry: ``h [..., H]``. Input ``x [..., D]``, output ``h [..., H]``; over a sequence
    ``[T, B, D] -> [T, B, H]``.

    Args:
      hidden_size: H.
      beta: ``β ∈ [0, 1]``, the weight of the skew-symmetric part.
      gamma_a, gamma_w: ``γ_A, γ_W >= 0``, the diagonal shifts of ``A`` and ``W``.
      epsilon: the step size ``ε > 0``.
      method: ``"euler"`` or ``"rk2"``.
      init_std: ``σ`` of the recurrent init ``N(0, (σ/H)²)``.
      input_init, bias_init: initialisers for ``w_x`` and ``b``.
      dtype: parameter dtype.

    Defaults ``β = 0.75``, ``γ_A = γ_W = 0.001``, ``ε = 0.03``, ``σ = 6``: the authors' ordered
    pixel-MNIST run (their code's README: ``--eps 0.03 --beta 0.75 --gamma 0.001`` at 128 units,
    one ``γ`` for both matrices, ``init_std`` at its default 6; Euler step as here).
    """
    H = check_size("hidden_size", hidden_size)
    beta = check_number("beta", beta, lo=0.0, hi=1.0)
    gamma_a = check_number("gamma_a", gamma_a, lo=0.0)
    gamma_w = check_number("gamma_w", gamma_w, lo=0.0)
    epsilon = check_number("epsilon", epsilon, positive=True)
    init_std = check_number("init_std", init_std, lo=0.0)
    if method not in ("euler", "rk2"):
        raise ValueError(f"method must be 'euler' or 'rk2', got {method!r}")
    check_initializer("input_init", input_init)
    check_initializer("bias_init", bias_init)
    dtype = check_float_dtype(dtype)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        kx, ka, kw, kb = split_keys(key, 4)
        std = init_std / H
        return {
            "w_x": input_init(kx, (D, H), dtype),
            "m_a": std * jax.random.normal(ka, (H, H), dtype),
            "m_w": std * jax.random.normal(kw, (H, H), dtype),
            "b": bias_init(kb, (H,), dtype),
        }

    def initial_carry(params, batch_shape):
        return jnp.zeros((*check_batch_shape(batch_shape), H), params["m_a"].dtype)

    def prepare(params):
        return {**params, "a": lipschitz_matrix(params["m_a"], beta, gamma_a),
                "w": lipschitz_matrix(params["m_w"], beta, gamma_w)}

    def apply(params, h, x):
        x = check_input(x, params["w_x"].shape[0])
        check_carry_batch(h, x, size=H)
        if "a" not in params:
            params = prepare(params)
        a, w = params["a"], params["w"]
        u = _dense(x, params["w_x"], params["b"])

        def f(hh):
            return hh @ a + jnp.tanh(hh @ w + u)

        k1 = f(h)
        if method == "euler":
            h = h + epsilon * k1
        else:
            k2 = f(h + epsilon * k1)
            h = h + (0.5 * epsilon) * (k1 + k2)
        return h, h

    return Cell(init, initial_carry, apply, prepare=prepare)
