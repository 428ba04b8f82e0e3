"""S6, the selective state space of Mamba (Gu & Dao 2023): a diagonal linear recurrence whose
time step, input and output maps depend on the input, so the sequence runs as a parallel scan."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnjax.cells._common import (
    check_batch_shape,
    check_bool,
    check_input,
    check_number,
    check_size,
    rows,
    split_keys,
)
from rnnjax.types import Cell, LinearForm, LinearRecurrence


def s6(
    hidden_size: int,
    state_size: int = 16,
    *,
    dt_rank: int | None = None,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
    input_projection: bool = True,
    negative_eigenvalues: bool = False,
    dtype=jnp.float32,
) -> Cell:
    """S6, Mamba's selective state space (Gu & Dao 2023), the recurrence alone.

    Per channel ``j`` of ``u_t = x_t W_in`` (``[H]``) and state index ``n`` (``N`` of them)::

        Δ_t = softplus((u_t W_Δ) W_Δp + b_Δ)        [H]   input-dependent time step (rank R)
        B_t = u_t W_B + b_B,  C_t = u_t W_C + b_C   [N]   input-dependent input and output maps
        Ā_t = exp(Δ_t ⊙ A),  A = -exp(a_log) < 0    [H, N] zero-order hold of the diagonal A
        h_t = Ā_t ⊙ h_{t-1} + (Δ_t ⊙ u_t) ⊗ B_t     [H, N] (Mamba's simplified B̄ u = Δ B u)
        y_t = h_t C_t + D ⊙ u_t                     [H]

    output ``y_t``. ``Ā_t``, ``B̄_t u_t`` depend on the input only, so ``h_t`` is linear in
    ``h_{t-1}`` and ``unroll(..., parallel=True)`` runs it as an associative scan (in linear
    space: ``h`` and ``B̄ u`` take any sign). Mamba's block (input projection to 2 H, short
    convolution, SiLU, output gate) is not included; ``input_projection=True`` (default) keeps
    only its linear map ``W_in [D, H]`` (no bias) so any input size works; with
    ``input_projection=False`` the input size must equal H.

    ``negative_eigenvalues=True`` (Grazzi, Siems, Franke, Zela, Hutter & Pontil, "Unlocking
    State-Tracking in Linear RNNs Through Negative Eigenvalues", ICLR 2025) maps the transition's
    range ``(0, 1]`` to ``(-1, 1]``: ``Ā_t = 2 exp(Δ_t A) - 1`` (computed as
    ``1 + 2 expm1(Δ_t A)``), so the state can flip sign at a step (parity).

    Default initialisation (Mamba's): S4D-real ``A = -(1, 2, ..., N)`` per channel
    (``a_log = log n``), ``D = 1``, ``W_Δp ~ U[-R^{-1/2}, R^{-1/2}]``, ``b_Δ = softplus⁻¹(Δ₀)``
    with ``Δ₀`` log-uniform in ``[dt_min, dt_max]`` (floored at ``dt_init_floor``), so that
    ``Δ`` starts in ``[dt_min, dt_max]``; ``W_in, W_Δ, W_B, W_C ~ N(0, 1/fan_in)``, ``b_B = b_C = 0``
    (Mamba has no ``b_B, b_C``; zero-initialised they change nothing, and they let ``B, C`` be
    constant).

    Params: ``w_in [D, H]`` (only with ``input_projection``), ``w_dt [H, R]``, ``w_dt_proj [R, H]``,
    ``b_dt [H]``, ``w_bc [H, 2N]``, ``b_bc [2N]`` fused in the order ``(B, C)``, ``a_log [H, N]``,
    ``d [H]``. Carry: ``h [..., H, N]``. Input ``x [..., D]``, output ``[..., H]``; over a sequence
    ``[T, B, D] -> [T, B, H]``.

    Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023 (COLM 2024).

    Args:
      hidden_size: H, the channels (Mamba's ``d_inner``).
      state_size: N, the state per channel (Mamba's ``d_state``, 16).
      dt_rank: R, the rank of the time-step projection; None: ``ceil(H / 16)`` (Mamba's "auto").
      dt_min, dt_max: the initial range of ``Δ``, ``0 < dt_min <= dt_max``.
      dt_init_floor: the smallest initial ``Δ``.
      input_projection: include the linear map ``W_in`` before the recurrence.
      negative_eigenvalues: ``Ā ∈ (-1, 1]`` in place of ``(0, 1]``.
      dtype: parameter dtype.
    """
    H = check_size("hidden_size", hidden_size)
    N = check_size("state_size", state_size)
    R = math.ceil(H / 16) if dt_rank is None else check_size("dt_rank", dt_rank)
    dt_min = check_number("dt_min", dt_min, positive=True)
    dt_max = check_number("dt_max", dt_max, positive=True)
    if dt_min > dt_max:
        raise ValueError(f"need dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    dt_init_floor = check_number("dt_init_floor", dt_init_floor, positive=True)
    input_projection = check_bool("input_projection", input_projection)
    negative_eigenvalues = check_bool("negative_eigenvalues", negative_eigenvalues)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        if not input_projection and D != H:
            raise ValueError(f"s6(input_projection=False) needs input_size == hidden_size ({H}), "
                             f"got input_size {D}; use input_projection=True")
        k_in, k_dt, k_dtp, k_bc, k_b = split_keys(key, 5)

        def normal(k, shape):
            return jax.random.normal(k, shape, jnp.float32) / math.sqrt(shape[0])

        dt = jnp.exp(jax.random.uniform(k_b, (H,), jnp.float32, math.log(dt_min), math.log(dt_max)))
        dt = jnp.maximum(dt, dt_init_floor)
        bound = R ** -0.5
        params = {
            "w_dt": normal(k_dt, (H, R)),
            "w_dt_proj": jax.random.uniform(k_dtp, (R, H), jnp.float32, -bound, bound),
            "b_dt": dt + jnp.log(-jnp.expm1(-dt)),  # softplus(b_dt) = dt
            "w_bc": normal(k_bc, (H, 2 * N)),
            "b_bc": jnp.zeros((2 * N,), jnp.float32),
            "a_log": jnp.log(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=jnp.float32), (H, N))),
            "d": jnp.ones((H,), jnp.float32),
        }
        if input_projection:
            params["w_in"] = normal(k_in, (D, H))
        return {k: v.astype(dtype) for k, v in params.items()}

    def initial_carry(params, batch_shape):
        return jnp.zeros((*check_batch_shape(batch_shape), H, N), params["a_log"].dtype)

    def input_size(params):
        return params["w_in"].shape[0] if "w_in" in params else params["w_dt"].shape[0]

    def selective(params, x):
        """``u [..., H]``, ``Δ [..., H]``, ``B, C [..., N]`` from ``x [..., D]``."""
        u = x @ params["w_in"] if "w_in" in params else x
        z = (u @ params["w_dt"]) @ params["w_dt_proj"]
        delta = jax.nn.softplus(z + rows(params["b_dt"], z))
        bc = u @ params["w_bc"]
        B, C = jnp.split(bc + rows(params["b_bc"], bc), 2, axis=-1)
        return u, delta, B, C

    def coefficients(params, x):
        """``(Ā_t, B̄_t u_t)`` for ``x [..., D]``, each ``[..., H, N]``, and ``u, C``."""
        u, delta, B, C = selective(params, x)
        A = -jnp.exp(params["a_log"])
        dA = delta[..., None] * A.reshape((1,) * (delta.ndim - 1) + A.shape)
        a_bar = 1.0 + 2.0 * jnp.expm1(dA) if negative_eigenvalues else jnp.exp(dA)
        bu = (delta * u)[..., None] * B[..., None, :]
        return a_bar, bu, u, C

    def read(params, h, u, C):
        return jnp.einsum("...hn,...n->...h", h, C) + rows(params["d"], u) * u

    def apply(params, h, x):
        x = check_input(x, input_size(params))
        if h.shape != x.shape[:-1] + (H, N):
            raise ValueError(f"carry has shape {h.shape}, expected {x.shape[:-1] + (H, N)} (the batch "
                             f"shape of x + (hidden_size, state_size)); make it with initial_carry")
        a_bar, bu, u, C = coefficients(params, x)
        h = a_bar * h + bu
        return h, read(params, h, u, C)

    def linear_coefficients(params, xs):
        xs = check_input(xs, input_size(params), "xs")
        a_bar, bu, _, _ = coefficients(params, xs)
        return LinearRecurrence(a_bar, bu)

    def readout(params, carries, xs):
        u, _, _, C = selective(params, xs)
        return read(params, carries, u, C)

    return Cell(init, initial_carry, apply, linear=LinearForm(linear_coefficients, readout))
