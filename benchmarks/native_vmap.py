"""The native kernel against the XLA path when a sweep vmaps the training step over
configurations: ``jax.jit(jax.vmap(jax.value_and_grad(loss)))`` over K stacked parameter sets,
one per configuration, the way ``rnnjax.run_sweep`` trains them.

    python benchmarks/native_vmap.py                       # B=32, T=200, D=2, H=64, K=1 and 15
    python benchmarks/native_vmap.py --size 32x1000x2x64 --K 1,15 --repeats 7

Prints one markdown table (median ms over interleaved rounds, native / XLA) and the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from speed import checked_args

import rnnjax


def step_fn(cell, backend: str, xs):
    def loss(p):
        return jnp.mean(rnnjax.unroll(cell, p, xs, backend=backend)[1] ** 2)

    return jax.jit(jax.vmap(jax.value_and_grad(loss)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="32x200x2x64", help="BxTxDxH")
    ap.add_argument("--K", default="1,15", help="comma list of configurations per vmapped step")
    ap.add_argument("--cells", default="lstm,gru", help="comma list of lstm, gru (gru: reset before)")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timed rounds (median), >= 1")
    args = ap.parse_args(argv)
    sizes, cells = checked_args(ap, args, args.size, args.cells)
    if len(sizes) != 1:
        ap.error(f"--size must be one BxTxDxH, got {args.size!r}")
    (s,) = sizes
    Ks = [k.strip() for k in args.K.split(",") if k.strip()]
    if not Ks or not all(k.isdigit() and int(k) > 0 for k in Ks):
        ap.error(f"--K must be a comma list of positive ints, got {args.K!r}")
    Ks = [int(k) for k in Ks]
    m = rnnjax.machine()
    print(f"CPU {m['cpu']} ({m['cpu_isa']}), {m['cpu_count']} cores; jax {m['jax']}; "
          f"{m['lstm_gru_cpu']}; B={s.B} T={s.T} D={s.D} H={s.H}; median of {args.repeats} interleaved rounds\n")
    print("| cell | K | XLA path ms | native ms | native / XLA |")
    print("|---|---:|---:|---:|---:|")
    xs = jax.random.normal(jax.random.key(1), (s.T, s.B, s.D), jnp.float32)
    for name in cells:
        cell = {"lstm": rnnjax.lstm, "gru": rnnjax.gru}[name](s.H)
        for K in Ks:
            params = jax.vmap(lambda k, c=cell: c.init(k, s.D))(jax.random.split(jax.random.key(0), K))
            fns = {b: step_fn(cell, b, xs) for b in ("xla", "native")}
            for f in fns.values():
                jax.block_until_ready(f(params))  # compile and warm up
            times: dict[str, list[float]] = {b: [] for b in fns}
            for _ in range(args.repeats):
                for b, f in fns.items():
                    t = time.perf_counter()
                    jax.block_until_ready(f(params))
                    times[b].append(1e3 * (time.perf_counter() - t))
            x, n = statistics.median(times["xla"]), statistics.median(times["native"])
            print(f"| {name} | {K} | {x:.1f} | {n:.1f} | {n / x:.2f} |", flush=True)


if __name__ == "__main__":
    main()
