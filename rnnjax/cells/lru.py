"""Linear Recurrent Unit (Orvieto et al. 2023): a complex diagonal linear recurrence."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnjax.cells._common import (
    check_batch_shape,
    check_carry_batch,
    check_float_dtype,
    check_input,
    check_number,
    check_size,
    rows,
    split_keys,
)
from rnnjax.types import Array, Cell, LinearForm, LinearRecurrence


def lru_eigenvalues(params) -> Array:
    """The diagonal of the LRU's state matrix, ``λ = exp(-exp(ν_log) + i exp(θ_log))``, ``[N]`` complex."""
    return jnp.exp(-jnp.exp(params["nu_log"]) + 1j * jnp.exp(params["theta_log"]))


def lru(
    hidden_size: int,
    state_size: int,
    *,
    r_min: float = 0.0,
    r_max: float = 1.0,
    max_phase: float = 2 * math.pi,
    dtype=jnp.float32,
) -> Cell:
    """Linear Recurrent Unit, LRU (Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De 2023).

    ``x_t = λ⊙x_{t-1} + γ⊙(u_t B)``, ``y_t = Re(x_t C) + D⊙u_t``; output ``y_t``, with a complex
    diagonal ``λ = exp(-exp(ν_log) + i exp(θ_log))`` (``|λ| < 1`` for every real ``ν_log``) and
    the normalisation ``γ = exp(γ_log)``, ``γ_log = log sqrt(1 - |λ|²)`` at initialisation (a
    trained parameter afterwards, as in the paper). The recurrence is linear in the carry, so
    ``unroll(..., parallel=True)`` runs it as an associative scan.

    Initialisation as in the paper: ring init, ``|λ| = sqrt(U(r_max² - r_min²) + r_min²)`` (so
    ``|λ| ∈ [r_min, r_max]``, uniform over the ring's area) via
    ``ν_log = log(-½ log(U(r_max² - r_min²) + r_min²))``; phase ``θ ~ U[0, max_phase]``;
    ``B = (N(0,1) + i N(0,1)) / sqrt(2D)``, ``C = (N(0,1) + i N(0,1)) / sqrt(N)``, ``D ~ N(0,1)``.

    Params (real arrays): ``nu_log [N]``, ``theta_log [N]``, ``gamma_log [N]``,
    ``B_re, B_im [D, N]``, ``C_re, C_im [N, H]``, and the skip ``d``: ``[H]`` (elementwise, the
    paper's ``D⊙u``) when the input size equals H, else a dense ``[D, H]`` (``u_t d``).
    Carry: ``x [..., N]`` complex (``complex64`` for float32 params). Input ``u [..., D]``,
    output ``y [..., H]``.

    Args:
      hidden_size: H, the output size.
      state_size: N, the number of complex state dims.
      r_min, r_max: the ring of initial eigenvalue magnitudes, ``0 <= r_min < r_max <= 1``.
      max_phase: initial phases are ``U[0, max_phase]`` (``max_phase > 0``).
      dtype: real parameter dtype.
    """
    H = check_size("hidden_size", hidden_size)
    N = check_size("state_size", state_size)
    r_min, r_max = check_number("r_min", r_min), check_number("r_max", r_max)
    max_phase = check_number("max_phase", max_phase, positive=True)
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
    dtype = check_float_dtype(dtype)
    complex_dtype = jnp.result_type(dtype, jnp.complex64)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        k_nu, k_th, k_br, k_bi, k_cr, k_ci, k_d = split_keys(key, 7)
        # u in (0, 1): a u of exactly 0 with r_min = 0 would give |λ| = 0 and ν_log = +inf.
        tiny = jnp.finfo(jnp.float32).tiny
        u1 = jax.random.uniform(k_nu, (N,), jnp.float32, minval=tiny, maxval=1.0)
        u2 = jax.random.uniform(k_th, (N,), jnp.float32)
        nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = jnp.log(max_phase * jnp.maximum(u2, tiny))
        mag = jnp.exp(-jnp.exp(nu_log))
        gamma_log = jnp.log(jnp.sqrt(jnp.maximum(1.0 - mag**2, tiny)))
        normal = lambda k, shape: jax.random.normal(k, shape, jnp.float32)
        params = {
            "nu_log": nu_log,
            "theta_log": theta_log,
            "gamma_log": gamma_log,
            "B_re": normal(k_br, (D, N)) / math.sqrt(2 * D),
            "B_im": normal(k_bi, (D, N)) / math.sqrt(2 * D),
            "C_re": normal(k_cr, (N, H)) / math.sqrt(N),
            "C_im": normal(k_ci, (N, H)) / math.sqrt(N),
            "d": normal(k_d, (H,) if D == H else (D, H)),
        }
        return {k: v.astype(dtype) for k, v in params.items()}

    def initial_carry(params, batch_shape):
        return jnp.zeros((*check_batch_shape(batch_shape), N), complex_dtype)

    def drive(params, u):
        """``γ⊙(u B)``, ``[..., N]`` complex."""
        bu = u @ params["B_re"] + 1j * (u @ params["B_im"])
        gamma = jnp.exp(params["gamma_log"])
        return bu * rows(gamma, bu)

    def readout(params, x, u):
        # the state is complex64 also for half-precision params (there is no complex half
        # type); the output returns to the params' dtype
        dt = params["C_re"].dtype
        y = x.real.astype(dt) @ params["C_re"] - x.imag.astype(dt) @ params["C_im"]
        d = params["d"]
        if d.ndim == 1:
            return y + rows(d, u) * u
        return y + u @ d

    def apply(params, x, u):
        u = check_input(u, params["B_re"].shape[0], "u")
        check_carry_batch(x, u, size=N)
        lam = lru_eigenvalues(params)
        x = rows(lam, x) * x + drive(params, u)
        return x, readout(params, x, u)

    def coefficients(params, us):
        us = check_input(us, params["B_re"].shape[0], "xs")
        return LinearRecurrence(lru_eigenvalues(params), drive(params, us))

    return Cell(init, initial_carry, apply, linear=LinearForm(coefficients, readout))
