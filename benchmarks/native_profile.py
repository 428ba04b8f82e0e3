"""Where the time of the native (C++ FFI) LSTM / GRU kernel's step goes, part by part, one thread.

For each size ``BxTxDxH`` and cell, times (ms per call, or us per step for the C-level parts):

- C-level parts of one step, timed inside the extension (``_kernels.profile_parts``; the loop
  repeats one step's work on warm buffers, so it is the compute floor of each part):
  the per-step recurrent GEMM ``[B, H] x [H, nH]`` by OpenBLAS's sgemm and by the packed AVX2
  micro-kernel, the backward GEMM ``dz [B, nH] x W_h^T``, the forward gate math alone, the
  backward gate math alone, and one whole forward / backward step as the kernel runs it;
- through JAX (jitted, median of ``--repeats`` calls after two warm-up calls): the forward kernel
  call alone (saving residuals) and the backward kernel call alone (``jax.ffi.ffi_call`` on random
  inputs; it returns the weight and input gradients), the custom VJP's forward and backward,
  ``unroll(..., backend="native")`` forward (inference) and train
  (``value_and_grad`` of ``mean(ys**2)``), and the same two for ``backend="xla"``.

    python benchmarks/native_profile.py                                   # the study's sizes + 32x256x32x256
    python benchmarks/native_profile.py --sizes 32x200x2x64 --cells lstm --repeats 11

Prints a markdown table (and the machine); nothing is written. Run it alone on the machine: the
native kernels run on one thread at these sizes, and XLA's CPU client on all cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rnnjax  # noqa: E402
from rnnjax import _native, machine  # noqa: E402
from speed import checked_args  # noqa: E402


def _median_ms(f, args, repeats: int) -> float:
    jax.block_until_ready(f(*args))
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(ts)


def jax_parts(cell: str, B: int, T: int, D: int, H: int) -> dict:
    """name -> (jitted function, args) of the parts timed through JAX."""
    if not _native.available():  # also registers the FFI targets
        raise RuntimeError(f"the native kernels are not available: {_native.reason()}")
    key = jax.random.key(0)
    c = rnnjax.lstm(H) if cell == "lstm" else rnnjax.gru(H)
    p = c.init(key, D)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (T, B, D), jnp.float32)
    nG = 4 if cell == "lstm" else 3
    N = nG * H
    k = jax.random.split(jax.random.fold_in(key, 2), 4)
    h0 = jnp.zeros((B, H), jnp.float32)
    ones = jnp.ones((T, B), jnp.float32)
    zeros = jnp.zeros((T, B), jnp.float32)
    w_h = p["w_h"]
    dH = jax.random.normal(k[1], (T, B, H), jnp.float32)
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    i32 = np.int32
    if cell == "lstm":
        fwd_call = jax.ffi.ffi_call("rnnjax_lstm_fwd", [f32(T, B, H), f32(T, B, H), f32(T, B, N)])
        kfwd = jax.jit(lambda xs, w: fwd_call(xs, p["w_x"], p["b"], w, h0, h0, ones, zeros, h0, h0, reverse=i32(0)))
        fargs = (xs, w_h)
        hs, cs, gates = kfwd(*fargs)
        bwd_call = jax.ffi.ffi_call("rnnjax_lstm_bwd",
                                    [f32(D, N), f32(H, N), f32(N), f32(T, B, D)] + [f32(B, H)] * 4)
        none = jnp.zeros((1, B, H), jnp.float32)  # no history cotangent
        kbwd = jax.jit(lambda w, gates, hs, cs, dH: bwd_call(xs, p["w_x"], w, h0, h0, ones, zeros, h0, h0,
                                                             gates, hs, cs, dH, none, none, h0, h0,
                                                             reverse=i32(0)))
        bargs = (w_h, gates, hs, cs, dH)
    else:  # reset before (the default gru)
        fwd_call = jax.ffi.ffi_call("rnnjax_gru_fwd", [f32(T, B, H), f32(T, B, N), f32(1, B, H)])
        bhn = jnp.zeros((H,), jnp.float32)
        kfwd = jax.jit(lambda xs, w: fwd_call(xs, p["w_x"], p["b"], w, bhn, h0, ones, zeros, h0, reverse=i32(0),
                                              after=i32(0)))
        fargs = (xs, w_h)
        hs, gates, aux = kfwd(*fargs)
        bwd_call = jax.ffi.ffi_call("rnnjax_gru_bwd", [f32(D, N), f32(H, N), f32(N), f32(H), f32(T, B, D),
                                                       f32(B, H), f32(B, H)])
        none = jnp.zeros((1, B, H), jnp.float32)  # no history cotangent
        kbwd = jax.jit(lambda w, gates, aux, hs, dH: bwd_call(xs, p["w_x"], w, h0, ones, zeros, h0, gates, aux, hs,
                                                              dH, none, h0, reverse=i32(0), after=i32(0)))
        bargs = (w_h, gates, aux, hs, dH)

    from rnnjax._native import ops

    if cell == "lstm":
        vargs = (p["w_x"], w_h, p["b"], h0, h0, xs, ones, zeros, h0, h0)
        vfwd = jax.jit(lambda *a: ops._lstm_fwd(False, False, False, *a))
        out, res = vfwd(*vargs)
        vbwd = jax.jit(lambda res, g: ops._lstm_bwd(False, False, False, res, g))
        g = (jnp.zeros_like(out[0]), jnp.zeros_like(out[1]), out[2])
    else:
        vargs = (p["w_x"], w_h, p["b"], jnp.zeros((H,), jnp.float32), h0, xs, ones, zeros, h0)
        vfwd = jax.jit(lambda *a: ops._gru_fwd(False, False, False, False, *a))
        out, res = vfwd(*vargs)
        vbwd = jax.jit(lambda res, g: ops._gru_bwd(False, False, False, False, res, g))
        g = (jnp.zeros_like(out[0]), out[1])

    def fwd(backend):
        return jax.jit(lambda p, xs: rnnjax.unroll(c, p, xs, backend=backend)[1])

    def train(backend):
        return jax.jit(jax.value_and_grad(lambda p, xs: jnp.mean(rnnjax.unroll(c, p, xs, backend=backend)[1] ** 2)))

    return {
        "kernel call: forward (saving residuals)": (kfwd, fargs),
        "kernel call: backward": (kbwd, bargs),
        "native VJP forward (kernel, saving residuals)": (vfwd, vargs),
        "native VJP backward (kernel, with the weight gradients)": (vbwd, (res, g)),
        "native forward (inference)": (fwd("native"), (p, xs)),
        "native train (value_and_grad)": (train("native"), (p, xs)),
        "xla forward (inference)": (fwd("xla"), (p, xs)),
        "xla train (value_and_grad)": (train("xla"), (p, xs)),
    }


C_PARTS = [  # (key in profile_parts' dict, label)
    ("gemm_blas", "step GEMM [B,H]x[H,nH], OpenBLAS sgemm"),
    ("gemm_micro", "step GEMM [B,H]x[H,nH], packed AVX2 micro-kernel"),
    ("gemm_bwd_blas", "backward GEMM dz W_h^T, OpenBLAS sgemm"),
    ("gemm_bwd_micro", "backward GEMM dz W_h^T, packed AVX2 micro-kernel"),
    ("gates_fwd", "forward gate math alone"),
    ("gates_bwd", "backward gate math alone"),
    ("step_fwd", "one whole forward step (kernel's path)"),
    ("step_bwd", "one whole backward step (kernel's path)"),
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="32x200x2x64,32x1000x2x64,32x256x32x256", help="comma list of BxTxDxH")
    ap.add_argument("--cells", default="lstm,gru", help="comma list of lstm, gru (gru: reset before)")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per part (median), >= 1")
    ap.add_argument("--c-only", action="store_true", help="only the C-level parts")
    ap.add_argument("--isa", choices=("avx2+fma", "scalar"), default="avx2+fma",
                    help="the kernels' gate-math path (scalar: the portable fallback)")
    ap.add_argument("--no-huge-pages", action="store_true",
                    help="do not advise huge pages on the kernels' large outputs")
    ap.add_argument("--gemm", choices=("auto", "blas", "micro"), default="auto",
                    help="the kernels' per-step GEMM (blas + scalar: the kernels before the AVX2 paths)")
    args = ap.parse_args(argv)
    sizes, cells = checked_args(ap, args, args.sizes, args.cells)
    if not _native.available():
        sys.exit(f"the native kernels are not available: {_native.reason()}")
    kern = _native._load()["module"]
    kern.set_isa(args.isa)
    kern.set_gemm(args.gemm)
    kern.set_huge_pages(not args.no_huge_pages)
    m = machine()
    print(f"CPU {m['cpu']} ({m['cpu_isa']}), {m['cpu_count']} cores; jax {m['jax']}, backend "
          f"{m['backend']}; native kernel ISA: {kern.isa()}; OpenBLAS threads for large GEMMs: "
          f"{_native.num_threads()}; per-step GEMM: {args.gemm}; huge pages advised: {not args.no_huge_pages}; median of {args.repeats} calls\n")
    for B, T, D, H in sizes:
        for cell in cells:
            nG = 4 if cell == "lstm" else 3
            flop = 2.0 * B * H * nG * H
            c = kern.profile_parts(cell, B, H, max(10, int(5e7 // flop)))
            print(f"\n### {cell}, B={B} T={T} D={D} H={H}\n")
            print("| part | us / step | ms for T steps | x step GEMM (OpenBLAS) | GFLOP/s |")
            print("|---|---:|---:|---:|---:|")
            for k, label in C_PARTS:
                if k not in c:
                    continue
                us = c[k]
                gf = f"{flop / us / 1e3:.1f}" if k.startswith("gemm") else ""
                print(f"| {label} | {us:.2f} | {us * T / 1e3:.2f} | {us / c['gemm_blas']:.2f} | {gf} |")
            if args.c_only:
                continue
            ps = jax_parts(cell, B, T, D, H)
            res = {k: _median_ms(f, a, args.repeats) for k, (f, a) in ps.items()}
            print("\n| through JAX | ms | x xla same mode | us / step |\n|---|---:|---:|---:|")
            for k, v in res.items():
                ref = ""
                if k.startswith("native forward"):
                    ref = f"{v / res['xla forward (inference)']:.2f}"
                elif k.startswith("native train"):
                    ref = f"{v / res['xla train (value_and_grad)']:.2f}"
                print(f"| {k} | {v:.2f} | {ref} | {1e3 * v / T:.1f} |", flush=True)


if __name__ == "__main__":
    main()
