"""Oscillator cells: coRNN (Rusch & Mishra 2021), LEM (Rusch, Mishra, Erichson & Mahoney 2022)
and LinOSS (Rusch & Rus 2025): recurrences discretised from second-order (or multiscale) ODEs
whose gradients neither vanish nor explode exponentially in the sequence length."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.cells._common import (
    check_batch_shape,
    check_bool,
    check_carry_batch,
    check_float_dtype,
    check_input,
    check_number,
    check_size,
    check_tuple_carry,
    rows,
    split_keys,
)
from rnnjax.types import Array, BlockLinearRecurrence, Cell, LinearForm


class OscillatorState(NamedTuple):
    """Carry of [`cornn`][rnnjax.cornn] and [`lem`][rnnjax.lem]: position ``y`` and velocity ``z``, each
    ``[..., H]``."""

    y: Array
    z: Array


def _uniform(key, shape, bound, dtype):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def _bias(v: Array, like: Array) -> Array:
    return like + rows(v, like)


def _check_state(carry, H: int, name: str) -> OscillatorState:
    return OscillatorState(*check_tuple_carry(carry, ("y", "z"), f"the {name} carry, an OscillatorState"))


def cornn(
    hidden_size: int,
    *,
    dt: float = 0.06,
    gamma: float = 66.0,
    epsilon: float = 15.0,
    implicit_damping: bool = False,
    dtype=jnp.float32,
) -> Cell:
    """Coupled oscillatory RNN, coRNN (Rusch & Mishra, ICLR 2021).

    A network of damped, driven, coupled oscillators ``y'' = tanh(W y + 𝒲 y' + V u + b) − γ y − ε y'``
    discretised with the paper's IMEX scheme (``z = y'``, time step ``Δt``)::

        z_n = z_{n-1} + Δt (tanh(y_{n-1} W_y + z_{n-1} W_z + u_n W_x + b) − γ y_{n-1} − ε z_{n-1})
        y_n = y_{n-1} + Δt z_n

    output ``y_n``. With ``implicit_damping=True`` the damping term uses ``ε z_n`` (the paper's
    other choice of ``n̄``): ``z_n = (z_{n-1} + Δt (tanh(·) − γ y_{n-1})) / (1 + Δt ε)``; the
    default ``ε z_{n-1}`` is the authors' code. The paper proves that the hidden states stay
    bounded and that the gradients neither explode nor vanish exponentially in the sequence
    length (for small ``Δt``), its argument for long memory.

    Default initialisation (the authors' PyTorch code, one fused ``nn.Linear`` on ``[u, z, y]``):
    every weight and bias ``U(−1/√(D + 2H), 1/√(D + 2H))``. Defaults ``dt = 0.06``, ``γ = 66``,
    ``ε = 15`` are the authors' adding-task script (their sequential-MNIST script uses
    ``Δt = 0.042, γ = 2.7, ε = 4.7``; psMNIST ``0.076, 0.4, 8.0``).

    Params: ``w_x [D, H]`` (the paper's ``V``), ``w_y [H, H]`` (``W``), ``w_z [H, H]`` (``𝒲``),
    ``b [H]``. Carry: [`OscillatorState`][rnnjax.OscillatorState] ``(y, z)``, each ``[..., H]``. Input
    ``u [..., D]``, output ``y [..., H]``; over a sequence ``[T, B, D] -> [T, B, H]``.

    Args:
      hidden_size: H, the number of oscillators.
      dt: the time step ``Δt > 0``.
      gamma: the restoring-force coefficient ``γ``.
      epsilon: the damping coefficient ``ε``.
      implicit_damping: treat the damping ``ε z`` implicitly (see above).
      dtype: parameter dtype.
    """
    H = check_size("hidden_size", hidden_size)
    dt = check_number("dt", dt, positive=True)
    gamma = check_number("gamma", gamma)
    epsilon = check_number("epsilon", epsilon)
    implicit_damping = check_bool("implicit_damping", implicit_damping)
    dtype = check_float_dtype(dtype)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        kx, ky, kz, kb = split_keys(key, 4)
        bound = 1.0 / math.sqrt(D + 2 * H)
        return {
            "w_x": _uniform(kx, (D, H), bound, dtype),
            "w_y": _uniform(ky, (H, H), bound, dtype),
            "w_z": _uniform(kz, (H, H), bound, dtype),
            "b": _uniform(kb, (H,), bound, dtype),
        }

    def initial_carry(params, batch_shape):
        zeros = jnp.zeros((*check_batch_shape(batch_shape), H), params["w_y"].dtype)
        return OscillatorState(zeros, zeros)

    def apply(params, carry, u):
        y, z = _check_state(carry, H, "cornn")
        u = check_input(u, params["w_x"].shape[0], "u")
        check_carry_batch(y, u, "carry.y", size=H)
        check_carry_batch(z, u, "carry.z", size=H)
        force = jnp.tanh(_bias(params["b"], u @ params["w_x"] + y @ params["w_y"] + z @ params["w_z"]))
        if implicit_damping:
            z = (z + dt * (force - gamma * y)) / (1.0 + dt * epsilon)
        else:
            z = z + dt * (force - gamma * y - epsilon * z)
        y = y + dt * z
        return OscillatorState(y, z), y

    return Cell(init, initial_carry, apply)


def lem(hidden_size: int, *, dt: float = 0.0242, dtype=jnp.float32) -> Cell:
    """Long Expressive Memory, LEM (Rusch, Mishra, Erichson & Mahoney, ICLR 2022).

    A multiscale ODE system discretised with learned, input-dependent time steps::

        Δt_n  = Δt σ(y_{n-1} W_1 + u_n V_1 + b_1)        Δt̄_n = Δt σ(y_{n-1} W_2 + u_n V_2 + b_2)
        z_n = (1 − Δt_n) ⊙ z_{n-1} + Δt_n ⊙ tanh(y_{n-1} W_z + u_n V_z + b_z)
        y_n = (1 − Δt̄_n) ⊙ y_{n-1} + Δt̄_n ⊙ tanh(z_n W_y + u_n V_y + b_y)

    output ``y_n`` (σ the logistic sigmoid; the candidates use ``tanh``, as in the paper and the
    authors' code).
    For ``Δt <= 1`` every step is a convex combination, so ``|y|, |z| <= max(|y_0|, |z_0|, 1)``.

    Default initialisation (the authors' code): every weight and bias ``U(−1/√H, 1/√H)``.
    Default ``dt = 0.0242``: the authors' adding-task script (``T = 10000``); their other tasks
    use ``0.21`` (sMNIST), ``0.31`` (psMNIST), ``0.44`` (noisy CIFAR-10), ``0.00017``
    (EigenWorms); the module's own default is ``1``.

    Params: ``w_x [D, 4H]`` (``V_1, V_2, V_z, V_y``), ``w_y [H, 3H]`` (``W_1, W_2, W_z``, acting on
    ``y_{n-1}``), ``w_z [H, H]`` (``W_y``, acting on ``z_n``), ``b [4H]`` (``b_1, b_2, b_z,
    b_y``). Carry: [`OscillatorState`][rnnjax.OscillatorState] ``(y, z)``, each ``[..., H]``. Input ``u [...,
    D]``, output ``y [..., H]``; over a sequence ``[T, B, D] -> [T, B, H]``.

    Args:
      hidden_size: H.
      dt: the maximal time step ``Δt > 0``.
      dtype: parameter dtype.
    """
    H = check_size("hidden_size", hidden_size)
    dt = check_number("dt", dt, positive=True)
    dtype = check_float_dtype(dtype)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        kx, ky, kz, kb = split_keys(key, 4)
        bound = 1.0 / math.sqrt(H)
        return {
            "w_x": _uniform(kx, (D, 4 * H), bound, dtype),
            "w_y": _uniform(ky, (H, 3 * H), bound, dtype),
            "w_z": _uniform(kz, (H, H), bound, dtype),
            "b": _uniform(kb, (4 * H,), bound, dtype),
        }

    def initial_carry(params, batch_shape):
        zeros = jnp.zeros((*check_batch_shape(batch_shape), H), params["w_z"].dtype)
        return OscillatorState(zeros, zeros)

    def apply(params, carry, u):
        y, z = _check_state(carry, H, "lem")
        u = check_input(u, params["w_x"].shape[0], "u")
        check_carry_batch(y, u, "carry.y", size=H)
        check_carry_batch(z, u, "carry.z", size=H)
        ux = _bias(params["b"], u @ params["w_x"])
        u1, u2, uz, uy = jnp.split(ux, 4, axis=-1)
        h1, h2, hz = jnp.split(y @ params["w_y"], 3, axis=-1)
        step = dt * jax.nn.sigmoid(u1 + h1)
        step_bar = dt * jax.nn.sigmoid(u2 + h2)
        z = (1.0 - step) * z + step * jnp.tanh(uz + hz)
        y = (1.0 - step_bar) * y + step_bar * jnp.tanh(z @ params["w_z"] + uy)
        return OscillatorState(y, z), y

    return Cell(init, initial_carry, apply)


_DISCRETIZATIONS = ("im", "imex")


def linoss_transition(params, discretization: str = "im") -> Array:
    """LinOSS's per-oscillator transition matrix ``M [N, 2, 2]`` acting on ``(z, y)``.

    IM: ``M = [[S, −Δt A S], [Δt S, S]]`` with ``S = 1/(1 + Δt² A)``; IMEX:
    ``M = [[1, −Δt A], [Δt, 1 − Δt² A]]``; ``A = relu(a_hat)``, ``Δt = σ(dt_hat)`` (Rusch & Rus
    2025, eqs. for LinOSS-IM and LinOSS-IMEX).
    """
    if discretization not in _DISCRETIZATIONS:
        raise ValueError(f"discretization must be 'im' or 'imex', got {discretization!r}")
    A = jax.nn.relu(params["a_hat"])
    step = jax.nn.sigmoid(params["dt_hat"])
    if discretization == "im":
        s = 1.0 / (1.0 + step**2 * A)
        m = [[s, -step * A * s], [step * s, s]]
    else:
        m = [[jnp.ones_like(A), -step * A], [step, 1.0 - step**2 * A]]
    return jnp.stack([jnp.stack(r, axis=-1) for r in m], axis=-2)


def linoss(
    hidden_size: int,
    state_size: int,
    *,
    discretization: str = "im",
    dtype=jnp.float32,
) -> Cell:
    """Linear oscillatory state-space model, LinOSS (Rusch & Rus, ICLR 2025).

    ``N`` uncoupled, undamped forced oscillators ``y'' = −A y + B u`` with a diagonal ``A >= 0``,
    written as ``z = y'`` and discretised with the time steps ``Δt`` (one per oscillator):

    - IM (implicit, ``discretization="im"``): ``z_n = z_{n-1} + Δt (−A y_n + B u_n)``,
      ``y_n = y_{n-1} + Δt z_n``; solved, ``y_n = S (y_{n-1} + Δt z_{n-1} + Δt² B u_n)`` with
      ``S = 1/(1 + Δt² A)``. The transition's eigenvalues have modulus ``√S <= 1`` (dissipative).
    - IMEX (``discretization="imex"``): ``z_n = z_{n-1} + Δt (−A y_{n-1} + B u_n)``,
      ``y_n = y_{n-1} + Δt z_n``: symplectic, the transition has determinant 1 (no dissipation).

    Output ``o_n = Re(y_n C) + D ⊙ u_n``. The state ``(z, y)`` is complex, driven by a complex
    ``B`` and read by a complex ``C``, as in the authors' code (the transition is real, so the
    real and imaginary parts are two real oscillators sharing ``A`` and ``Δt``). This cell is the
    paper's LinOSS *layer*; the paper's block adds a normalisation, a GELU, a GLU and a skip
    connection around it (compose those with [`rnnjax.layers`][rnnjax.layers]). The recurrence is linear in
    the carry with a ``2 x 2`` block per oscillator, so ``unroll(..., parallel=True)`` runs it as
    an associative scan of those blocks
    ([`rnnjax.types.BlockLinearRecurrence`][rnnjax.types.BlockLinearRecurrence]).

    Parametrisation and initialisation (the authors' code): ``A = relu(a_hat)``,
    ``a_hat ~ U[0, 1]``; ``Δt = σ(dt_hat)``, ``dt_hat ~ U[0, 1]``; ``B = B_re + i B_im`` with
    ``B_re, B_im ~ U(−1/√D, 1/√D)``; ``C = C_re + i C_im`` with ``C_re, C_im ~ U(−1/√N, 1/√N)``;
    ``D ~ N(0, 1)``.

    Params (real arrays): ``a_hat [N]``, ``dt_hat [N]``, ``B_re, B_im [D, N]``,
    ``C_re, C_im [N, H]``, and the skip ``d``: ``[H]`` (elementwise, the paper's ``D u``) when the
    input size equals H, else a dense ``[D, H]`` (``u_n d``). Carry: ``[..., N, 2]`` complex
    (``complex64`` for float32 params), ``[..., 0] = z`` (velocity) and ``[..., 1] = y``
    (position), the paper's ``x = [z, y]``. Input ``u [..., D]``, output ``o [..., H]``; over a
    sequence ``[T, B, D] -> [T, B, H]``.

    Args:
      hidden_size: H, the output size.
      state_size: N, the number of oscillators.
      discretization: ``"im"`` (LinOSS-IM) or ``"imex"`` (LinOSS-IMEX).
      dtype: real parameter dtype.
    """
    H = check_size("hidden_size", hidden_size)
    N = check_size("state_size", state_size)
    if discretization not in _DISCRETIZATIONS:
        raise ValueError(f"discretization must be 'im' or 'imex', got {discretization!r}")
    dtype = check_float_dtype(dtype)
    complex_dtype = jnp.result_type(dtype, jnp.complex64)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        ka, kt, kbr, kbi, kcr, kci, kd = split_keys(key, 7)
        return {
            "a_hat": jax.random.uniform(ka, (N,), jnp.float32).astype(dtype),
            "dt_hat": jax.random.uniform(kt, (N,), jnp.float32).astype(dtype),
            "B_re": _uniform(kbr, (D, N), 1.0 / math.sqrt(D), dtype),
            "B_im": _uniform(kbi, (D, N), 1.0 / math.sqrt(D), dtype),
            "C_re": _uniform(kcr, (N, H), 1.0 / math.sqrt(N), dtype),
            "C_im": _uniform(kci, (N, H), 1.0 / math.sqrt(N), dtype),
            "d": jax.random.normal(kd, (H,) if D == H else (D, H), jnp.float32).astype(dtype),
        }

    def initial_carry(params, batch_shape):
        return jnp.zeros((*check_batch_shape(batch_shape), N, 2), complex_dtype)

    def drive(params, u):
        """``B u``, ``[..., N]`` complex."""
        return u @ params["B_re"] + 1j * (u @ params["B_im"])

    def readout(params, carries, u):
        y = carries[..., 1]
        o = y.real @ params["C_re"] - y.imag @ params["C_im"]
        d = params["d"]
        if d.ndim == 1:
            return o + rows(d, u) * u
        return o + u @ d

    def apply(params, x, u):
        u = check_input(u, params["B_re"].shape[0], "u")
        if not hasattr(x, "shape") or x.shape[-2:] != (N, 2):
            raise ValueError(f"the linoss carry must have shape [..., {N}, 2] (velocity z, "
                             f"position y), got {getattr(x, 'shape', type(x).__name__)}")
        check_carry_batch(x[..., 0], u)
        A = rows(jax.nn.relu(params["a_hat"]), u[..., :1])
        step = rows(jax.nn.sigmoid(params["dt_hat"]), u[..., :1])
        bu = drive(params, u)
        z, y = x[..., 0], x[..., 1]
        if discretization == "im":  # implicit in y: (1 + Δt² A) y_n = y + Δt z + Δt² B u
            y = (y + step * z + step**2 * bu) / (1.0 + step**2 * A)
            z = z + step * (bu - A * y)
        else:  # explicit in y for z, then implicit for y: symplectic Euler
            z = z + step * (bu - A * y)
            y = y + step * z
        x = jnp.stack([z, y], axis=-1).astype(complex_dtype)
        return x, readout(params, x, u)

    def coefficients(params, us):
        us = check_input(us, params["B_re"].shape[0], "xs")
        m = linoss_transition(params, discretization)  # [N, 2, 2]
        bu = drive(params, us)  # [T, ..., N]
        step = rows(jax.nn.sigmoid(params["dt_hat"]), bu)
        # the input's share of (z_n, y_n): IM (S Δt Bu, S Δt² Bu), IMEX (Δt Bu, Δt² Bu)
        if discretization == "im":
            s = 1.0 / (1.0 + step**2 * rows(jax.nn.relu(params["a_hat"]), bu))
            b = jnp.stack([s * step * bu, s * step**2 * bu], axis=-1)
        else:
            b = jnp.stack([step * bu, step**2 * bu], axis=-1)
        return BlockLinearRecurrence(m, b.astype(complex_dtype))

    return Cell(init, initial_carry, apply, linear=LinearForm(coefficients, readout))
