"""Where the time of a fused LSTM/GRU training step on the XLA path (``backend="xla"``) goes: its
parts, timed one by one (``benchmarks/native_profile.py`` does the same for the native kernel).

For each size ``BxTxDxH`` and cell, times (median over interleaved rounds, ms):

- ``forward (inference)``: the fused forward that emits only the outputs;
- ``forward (saving residuals)``: the forward of a training step, which also stores what the
  backward needs (LSTM: ``h, c`` and the gate values; GRU: ``h``, the gates, the candidate);
- ``backward``: the custom VJP's backward given those residuals (the reverse scan plus the
  weight-gradient matmuls after it);
- ``weight-gradient matmuls``: those matmuls alone (``[D+H, T*B] x [T*B, nH]`` and the input
  gradient), the part of the backward outside the scan;
- ``recurrent matmuls alone``: a ``lax.scan`` doing only the step's recurrent matmul (the
  forward's ``[B, D+H] x [D+H, nH]`` with ``projection="step"``), i.e. the serial GEMM floor of
  one direction;
- ``train step (value_and_grad)``: what ``jax.value_and_grad`` of ``mean(ys**2)`` costs in all.

    python benchmarks/profile_fused.py                       # the sizes of benchmarks/speed.py
    python benchmarks/profile_fused.py --sizes 32x256x32x256 --cells lstm --repeats 21

Prints a markdown table (and the machine); nothing is written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rnnjax  # noqa: E402
from rnnjax import machine  # noqa: E402
from rnnjax.cells import fused  # noqa: E402
from speed import checked_args  # noqa: E402


def parts(cell: str, B: int, T: int, D: int, H: int) -> dict:
    """name -> (jitted function, args) for each timed part."""
    key = jax.random.key(0)
    G = 4 if cell == "lstm" else 3
    c = rnnjax.lstm(H) if cell == "lstm" else rnnjax.gru(H)
    p = c.init(key, D)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (T, B, D), jnp.float32)
    h0 = jnp.zeros((B, H), jnp.float32)
    proj = fused.resolve_projection("auto", D, H)
    if cell == "lstm":
        args = (p["w_x"], p["w_h"], p["b"], h0, h0, xs, None)
        primal = lambda *a: fused.lstm_scan(False, 1, proj, *a)  # noqa: E731
        fwd = lambda *a: fused._lstm_fwd(False, 1, proj, False, *a, None, None, None)  # noqa: E731
        bwd = lambda res, g: fused._lstm_bwd(False, 1, proj, False, res, g)  # noqa: E731
        ct = lambda out: (jnp.zeros_like(out[0]), jnp.zeros_like(out[1]), out[2])  # noqa: E731
    else:
        args = (p["w_x"], p["w_h"], p["b"], jnp.zeros((H,)), h0, xs, None)
        primal = lambda *a: fused.gru_scan(False, False, 1, proj, *a)  # noqa: E731
        fwd = lambda *a: fused._gru_fwd(False, False, 1, proj, False, *a, None, None)  # noqa: E731
        bwd = lambda res, g: fused._gru_bwd(False, False, 1, proj, False, res, g)  # noqa: E731
        ct = lambda out: (jnp.zeros_like(out[0]), out[1])  # noqa: E731
    out, res = jax.jit(fwd)(*args)
    g = ct(out)
    zs = jax.random.normal(jax.random.fold_in(key, 2), (T, B, G * H), jnp.float32)
    hs = jax.random.normal(jax.random.fold_in(key, 3), (T, B, H), jnp.float32)
    w = jnp.concatenate([p["w_x"], p["w_h"]], axis=0)

    def weight_grads(xs, hs, dz, w_x):
        xh = jnp.concatenate([xs, hs], axis=-1).reshape(T * B, D + H)
        return xh.T @ dz.reshape(T * B, -1), (dz.reshape(T * B, -1) @ w_x.T)

    def recurrent(w, xs):
        def step(h, x):
            a = jnp.concatenate([x, h], axis=-1) @ w
            return a[:, :H] * 1e-3, None  # keep the dependency, nothing else
        return jax.lax.scan(step, h0, xs)[0]

    def loss(p, xs):
        return jnp.mean(rnnjax.unroll(c, p, xs, backend="xla")[1] ** 2)  # the XLA path profiled here

    return {
        "forward (inference)": (jax.jit(primal), args),
        "forward (saving residuals)": (jax.jit(fwd), args),
        "backward": (jax.jit(bwd), (res, g)),
        "  of which weight-gradient matmuls": (jax.jit(weight_grads), (xs, hs, zs, p["w_x"])),
        "recurrent matmuls alone (one direction)": (jax.jit(recurrent), (w, xs)),
        "train step (value_and_grad)": (jax.jit(jax.value_and_grad(loss)), (p, xs)),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="32x256x32x256,8x1000x32x128,128x64x32x512",
                    help="comma list of BxTxDxH")
    ap.add_argument("--cells", default="lstm,gru", help="comma list of lstm, gru")
    ap.add_argument("--repeats", type=int, default=11, help="interleaved timing rounds")
    args = ap.parse_args(argv)
    sizes, cells = checked_args(ap, args, args.sizes, args.cells)
    m = machine()
    print(f"CPU {m['cpu']} ({m['cpu_isa']}), {m['cpu_count']} cores; jax {m['jax']}, backend "
          f"{m['backend']}; median of {args.repeats} interleaved rounds, ms\n")
    print("| size | cell | arrangement | part | ms |\n|---|---|---|---|---:|")
    for B, T, D, H in sizes:
        for cell in cells:
            ps = parts(cell, B, T, D, H)
            for f, a in ps.values():  # compile and warm up
                jax.block_until_ready(f(*a))
                jax.block_until_ready(f(*a))
            times = {k: [] for k in ps}
            for _ in range(args.repeats):
                for k, (f, a) in ps.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(f(*a))
                    times[k].append(1e3 * (time.perf_counter() - t0))
            proj = fused.resolve_projection("auto", D, H)
            for k, v in times.items():
                print(f"| B={B} T={T} D={D} H={H} | {cell} | {proj} | {k} | "
                      f"{statistics.median(v):.2f} |", flush=True)


if __name__ == "__main__":
    main()
