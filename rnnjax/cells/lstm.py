"""Long short-term memory, with optional peepholes and chrono initialisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax import initializers as inits
from rnnjax.cells import fused
from rnnjax.cells._common import (
    check_batch_shape,
    check_bool,
    check_carry_batch,
    check_float_dtype,
    check_initializer,
    check_input,
    check_number,
    check_size,
    check_tuple_carry,
    rows,
    split_keys,
)
from rnnjax.types import Cell, Initializer, LSTMState


def lstm(
    hidden_size: int,
    *,
    forget_bias: float = 1.0,
    peephole: bool = False,
    chrono: float | None = None,
    input_init: Initializer = inits.glorot_uniform,
    recurrent_init: Initializer = inits.orthogonal(),
    bias_init: Initializer = inits.zeros,
    peephole_init: Initializer = inits.zeros,
    dtype=jnp.float32,
    projection: str = "auto",
) -> Cell:
    """LSTM (Hochreiter & Schmidhuber 1997) with forget gate and optional peepholes (Gers & Schmidhuber 2000).

    ``i = σ(x W_xi + h W_hi + w_ci⊙c_{t-1} + b_i)``, ``f = σ(x W_xf + h W_hf + w_cf⊙c_{t-1} + b_f)``,
    ``g = tanh(x W_xg + h W_hg + b_g)``, ``c_t = f⊙c_{t-1} + i⊙g``,
    ``o = σ(x W_xo + h W_ho + w_co⊙c_t + b_o)``, ``h_t = o⊙tanh(c_t)``; output ``h_t``.
    The peephole terms are present only with ``peephole=True``.

    Params: ``w_x [D, 4H]``, ``w_h [H, 4H]``, ``b [4H]`` with the gates fused in the order
    ``(i, f, g, o)`` (PyTorch's order); with peepholes also ``w_ci``, ``w_cf``, ``w_co`` ``[H]``.
    Carry: ``LSTMState(h [..., H], c [..., H])``.

    Args:
      hidden_size: H.
      forget_bias: added to ``b_f`` at initialisation (1.0: Gers et al. 2000; Jozefowicz et al. 2015).
      peephole: add the diagonal peephole connections.
      chrono: if given, chrono initialisation (Tallec & Ollivier 2018) with ``T_max = chrono``:
        ``b_f ~ log U[1, T_max - 1]`` and ``b_i = -b_f``; ``forget_bias`` is then ignored.
      input_init, recurrent_init: applied to each gate's block of ``w_x`` / ``w_h``.
      projection: where ``unroll``'s fused path (no peepholes) computes the input projection:
        ``"step"`` (inside each step, with the recurrent matmul), ``"hoisted"`` (for all steps
        before the scan) or ``"auto"`` (``"step"`` when ``D <= max(H, 64)``). The same function
        either way; only the speed differs (see ``rnnjax.cells.fused.PROJECTIONS``).
    """
    H = check_size("hidden_size", hidden_size)
    forget_bias = check_number("forget_bias", forget_bias)
    peephole = check_bool("peephole", peephole)
    for name, fn in (("input_init", input_init), ("recurrent_init", recurrent_init), ("bias_init", bias_init),
                     ("peephole_init", peephole_init)):
        check_initializer(name, fn)
    dtype = check_float_dtype(dtype)
    fused.check_projection(projection)
    if chrono is not None:
        if check_number("chrono", chrono) <= 2:
            raise ValueError(f"chrono must be > 2 (T_max of the chrono initialisation), got {chrono}")
        chrono_init = inits.chrono(chrono)

    def init(key, input_size):
        D = check_size("input_size", input_size)
        kx, kh, kb, kc, kp = split_keys(key, 5)
        b = bias_init(kb, (4 * H,), dtype)
        if chrono is None:
            b = b.at[H:2 * H].add(forget_bias)
        else:
            b_f = chrono_init(kc, (H,), dtype)
            b = b.at[H:2 * H].set(b_f).at[:H].set(-b_f)
        params = {
            "w_x": inits.blockwise(input_init, 4)(kx, (D, 4 * H), dtype),
            "w_h": inits.blockwise(recurrent_init, 4)(kh, (H, 4 * H), dtype),
            "b": b,
        }
        if peephole:
            kpi, kpf, kpo = split_keys(kp, 3)
            params.update(w_ci=peephole_init(kpi, (H,), dtype), w_cf=peephole_init(kpf, (H,), dtype),
                          w_co=peephole_init(kpo, (H,), dtype))
        return params

    def initial_carry(params, batch_shape):
        shape = (*check_batch_shape(batch_shape), H)
        dt = params["w_h"].dtype
        return LSTMState(jnp.zeros(shape, dt), jnp.zeros(shape, dt))

    def apply(params, carry, x):
        x = check_input(x, params["w_x"].shape[0])
        h, c = check_tuple_carry(carry, ("h", "c"), "an LSTMState")
        check_carry_batch(h, x, "carry.h", size=H)
        check_carry_batch(c, x, "carry.c", size=H)
        z = x @ params["w_x"] + h @ params["w_h"]
        z = z + rows(params["b"], z)
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        if peephole:
            zi = zi + rows(params["w_ci"], c) * c
            zf = zf + rows(params["w_cf"], c) * c
        c = jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zg)
        if peephole:
            zo = zo + rows(params["w_co"], c) * c
        h = jax.nn.sigmoid(zo) * jnp.tanh(c)
        return LSTMState(h, c), h

    return Cell(init, initial_carry, apply, sequence=None if peephole else fused.lstm_sequence(projection))
