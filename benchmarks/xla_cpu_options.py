"""Does any XLA CPU option make the fused LSTM/GRU faster, and how close are its GEMMs to the machine?

Two questions that decide whether the CPU speed target of ``benchmarks/speed.py`` can still be
reached by rearranging rnnjax's own code:

1. **The machine's GEMM peak.** A large ``2048 x 2048`` float32 matmul through NumPy's BLAS with
   one thread and with every thread (an implementation independent of XLA), and through XLA.
   The serial recurrent matmul of each size (one ``[B, D+H] x [D+H, nH]`` matmul per step, timed
   alone inside a ``lax.scan``: the LSTM's forward loop runs exactly this one; the default GRU's
   two dependent matmuls have the same FLOPs) is then reported as a rate against it: when it
   already runs near the peak, no rearrangement of the step can make that part faster.
2. **XLA's CPU options.** The same jitted training step (``value_and_grad`` of ``mean(ys**2)``
   through ``rnnjax.unroll``) and inference forward in one child process per ``XLA_FLAGS`` variant
   (XLA reads them once, at start-up): the dot through XNNPACK / YNNPACK / oneDNN fusions, the
   Eigen thread pool off, XNNPACK off. Variants run in rounds, the order rotated by one each round
   (default, A, B, ...; A, B, ..., default; ...), and each figure is the median over rounds of each
   child's median, so a drift of the shared machine, or a cost of being first, hits every variant
   alike.

    python benchmarks/xla_cpu_options.py                    # the sizes of benchmarks/speed.py
    python benchmarks/xla_cpu_options.py --rounds 3 --out benchmarks/results/speed-epyc-avx512/xla_options.md

A variant whose flag this jaxlib does not know fails in its child; its cells then read ``n/a``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speed import DEFAULT_SIZES, GATES, parse_list, parse_sizes, timed  # noqa: E402

# (name, XLA_FLAGS); the first is the baseline the others are compared with
VARIANTS = [
    ("default", ""),
    ("XNNPACK dot fusion", "--xla_cpu_experimental_xnn_fusion_type=dot"),
    ("YNNPACK dot fusion", "--xla_cpu_experimental_ynn_fusion_type=dot"),
    ("oneDNN custom calls", "--xla_cpu_experimental_onednn_custom_call=true"),
    ("Eigen thread pool off", "--xla_cpu_multi_thread_eigen=false"),
    ("XNNPACK off", "--xla_cpu_use_xnnpack=false"),
]


def _median_ms(fn, args, repeats: int) -> float:
    import jax

    return timed(lambda: fn(*args), jax.block_until_ready, repeats)["median_ms"]


def child(sizes: list, cells: list[str], repeats: int) -> dict:
    """Times in this process (whose XLA_FLAGS the parent set): ms per size, cell and part."""
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import rnnjax

    out = {}
    n = 2048
    a = jax.random.normal(jax.random.key(10), (n, n), jnp.float32)
    out["gemm2048_ms"] = _median_ms(jax.jit(jnp.matmul), (a, a), repeats)
    for B, T, D, H in sizes:
        for cell_name in cells:
            cell = getattr(rnnjax, cell_name)(H)
            key = jax.random.key(0)
            p = cell.init(key, D)
            xs = jax.random.normal(jax.random.fold_in(key, 1), (T, B, D), jnp.float32)

            def loss(p, xs, cell=cell):
                return jnp.mean(rnnjax.unroll(cell, p, xs)[1] ** 2)

            train = jax.jit(jax.value_and_grad(loss))
            fwd = jax.jit(lambda p, xs, cell=cell: rnnjax.unroll(cell, p, xs)[1])
            w = jax.random.normal(jax.random.fold_in(key, 2), (D + H, GATES[cell_name] * H)) * 0.05

            def recurrent(w, h0, x, T=T, H=H):  # the forward loop's one matmul, alone
                def step(h, _):
                    return jnp.tanh(jnp.concatenate([x, h], -1) @ w)[:, :H], None
                return jax.lax.scan(step, h0, None, length=T)[0]

            rec_args = (w, jnp.zeros((B, H)), jnp.ones((B, D)))
            out[f"{B}x{T}x{D}x{H}/{cell_name}"] = {
                "train_ms": _median_ms(train, (p, xs), repeats),
                "forward_ms": _median_ms(fwd, (p, xs), repeats),
                "recurrent_matmul_ms": _median_ms(jax.jit(recurrent), rec_args, repeats)}
    return out


def blas_gflops(threads: int, n: int = 2048) -> float | None:
    """GFLOP/s of NumPy's BLAS on an ``n x n`` float32 matmul with ``threads`` threads."""
    code = ("import time, numpy as np\n"
            f"n = {n}\n"
            "a = np.random.rand(n, n).astype(np.float32)\n"
            "a @ a\n"
            "ts = []\n"
            "for _ in range(7):\n"
            "    t = time.perf_counter(); a @ a; ts.append(time.perf_counter() - t)\n"
            "print(2 * n ** 3 / min(ts) / 1e9)\n")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return float(r.stdout.strip()) if r.returncode == 0 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES), help="comma list of BxTxDxH")
    p.add_argument("--cells", type=lambda t: parse_list(t, tuple(GATES), "--cells"), default=list(GATES),
                   help="comma list of lstm, gru")
    p.add_argument("--rounds", type=int, default=2, help="rounds over all variants (one child each)")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per part in each child")
    p.add_argument("--out", default=None, help="also write the markdown here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        p.error("--rounds and --repeats must be at least 1")
    if args.child:
        print(json.dumps(child(args.sizes, args.cells, args.repeats)))
        return 0

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from rnnjax import machine

    sizes_arg = ",".join("x".join(map(str, s)) for s in args.sizes)
    runs: dict[str, list[dict]] = {name: [] for name, _ in VARIANTS}
    errors: dict[str, str] = {}
    for r in range(args.rounds):
        k = r % len(VARIANTS)  # rotate the order, so no variant is always the first child of a round
        for name, flags in VARIANTS[k:] + VARIANTS[:k]:
            env = dict(os.environ, XLA_FLAGS=flags)
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--sizes", sizes_arg,
                   "--cells", ",".join(args.cells), "--repeats", str(args.repeats)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                errors[name] = (res.stderr.strip().splitlines() or ["failed"])[-1]
                continue
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds}: {name} done", file=sys.stderr, flush=True)

    def med(name: str, key: str, part: str | None = None) -> float | None:
        vals = [(x[key] if part is None else x[key][part]) for x in runs[name]]
        return statistics.median(vals) if vals else None

    m = machine()
    blas1, blas_all = blas_gflops(1), blas_gflops(os.cpu_count() or 1)
    gemm_ms = med("default", "gemm2048_ms")
    xla_gflops = 2 * 2048 ** 3 / (gemm_ms * 1e-3) / 1e9 if gemm_ms else None
    fmt = lambda v, s=".1f": "n/a" if v is None else format(v, s)  # noqa: E731
    md = ["# XLA CPU options and the GEMM peak", "",
          f"CPU {m['cpu']} ({m['cpu_isa']}), {m['cpu_count']} cores; jax {m['jax']}; "
          f"rounds: {args.rounds}, each over the {len(VARIANTS)} variants, one child process per variant, "
          f"{args.repeats} timed calls per part; figures are medians over rounds of each child's median.",
          "",
          f"2048x2048 float32 GEMM: NumPy BLAS 1 thread {fmt(blas1)} GFLOP/s, {m['cpu_count']} threads "
          f"{fmt(blas_all)} GFLOP/s; XLA (default flags) {fmt(xla_gflops)} GFLOP/s.", "",
          "## The serial recurrent matmul against that peak (default flags)", "",
          "| size (B, T, D, H) | cell | recurrent matmuls alone, ms | GFLOP/s | / XLA 2048² rate | "
          "train ms | forward ms | forward / recurrent matmuls |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
    for B, T, D, H in args.sizes:
        for c in args.cells:
            k = f"{B}x{T}x{D}x{H}/{c}"
            rec = med("default", k, "recurrent_matmul_ms")
            fwd = med("default", k, "forward_ms")
            gf = 2.0 * B * T * (D + H) * GATES[c] * H / (rec * 1e-3) / 1e9 if rec else None
            md.append(f"| {B}, {T}, {D}, {H} | {c} | {fmt(rec, '.3g')} | {fmt(gf, '.3g')} | "
                      f"{fmt(gf / xla_gflops if gf and xla_gflops else None, '.2f')} | "
                      f"{fmt(med('default', k, 'train_ms'))} | {fmt(fwd)} | "
                      f"{fmt(fwd / rec if fwd and rec else None, '.2f')} |")
    md += ["", "## Each XLA_FLAGS variant, time / default (train · forward)", "",
           "| size (B, T, D, H) | cell | " + " | ".join(
               f"{n} (`{f}`)" if f else n for n, f in VARIANTS[1:]) + " |",
           "|---|---|" + "---:|" * (len(VARIANTS) - 1)]
    for B, T, D, H in args.sizes:
        for c in args.cells:
            k = f"{B}x{T}x{D}x{H}/{c}"
            cells = []
            for name, _ in VARIANTS[1:]:
                rt = [med(name, k, part) and med("default", k, part) and
                      med(name, k, part) / med("default", k, part) for part in ("train_ms", "forward_ms")]
                cells.append(" · ".join(fmt(v, ".2f") for v in rt))
            md.append(f"| {B}, {T}, {D}, {H} | {c} | " + " | ".join(cells) + " |")
    base = {c: {f"{B}x{T}x{D}x{H}": (med('default', f"{B}x{T}x{D}x{H}/{c}", 'train_ms'),
                                      med('default', f"{B}x{T}x{D}x{H}/{c}", 'forward_ms'))
                for B, T, D, H in args.sizes} for c in args.cells}
    md += ["", "Default times (ms, train / forward): " + "; ".join(
        f"{c} {s}: {fmt(t)} / {fmt(f)}" for c, d in base.items() for s, (t, f) in d.items()) + "."]
    if errors:
        md += ["", "Variants that failed: " + "; ".join(f"{n}: {e}" for n, e in errors.items())]
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
