"""Peak memory of an LSTM training step over very long sequences: streamed inputs and outputs
folded inside the scan (``rnnjax.unroll_reduce``) against the materialised path (``xs [T, B, D]``,
``unroll``, a loss on the stacked outputs), both with ``remat_chunk="sqrt"``.

The step is the gradient of a per-step loss summed over T, ``sum_t ||y_t - target_t||^2``, for an
LSTM with B=8, D=32, H=128; ``x_t`` and ``target_t`` are functions of ``t`` (a keyed normal and a
sinusoid). Each case runs in its own process and reports its peak resident memory (``VmHWM``), the
whole process and above its baseline after imports and params, and the wall time of one jitted
step (compile included; indicative only when the machine is shared).

    python benchmarks/long_memory.py                       # T = 1e5 and 1e6, both paths
    python benchmarks/long_memory.py --steps 100000 --skip-materialised-above 200000

Writes benchmarks/results/long_memory/results.json and results.md (with the CPU model and the
command).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

B, D, H = 8, 32, 128
OUT = Path(__file__).resolve().parent / "results" / "long_memory"


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_case(path: str, T: int) -> dict:
    """One case in this process: ``{"peak_bytes", "baseline_bytes", "seconds", "loss"}``."""
    import importlib

    import jax
    import jax.numpy as jnp

    import rnnjax

    unroll_reduce = importlib.import_module("rnnjax.unroll").unroll_reduce
    cell = rnnjax.lstm(H)
    params = cell.init(jax.random.key(0), D)
    key = jax.random.key(1)
    phase = jnp.linspace(0.0, 3.0, B * H).reshape(B, H)

    def x_at(t):
        return jax.random.normal(jax.random.fold_in(key, t), (B, D))

    def target(t):
        return jnp.sin(0.001 * t.astype(jnp.float32) + phase)

    def streamed(p):
        def fold(acc, t, y):
            return acc + jnp.sum((y - target(t)) ** 2)
        _, acc = unroll_reduce(cell, p, x_at, fold, jnp.zeros(()), length=T, remat_chunk="sqrt")
        return acc / T

    def materialised(p):
        ts = jnp.arange(T, dtype=jnp.int32)
        _, ys = rnnjax.unroll(cell, p, jax.vmap(x_at)(ts), remat_chunk="sqrt")
        return jnp.sum((ys - jax.vmap(target)(ts)) ** 2) / T

    step = jax.jit(jax.value_and_grad(streamed if path == "streamed" else materialised))
    baseline = _vm("VmHWM")
    t0 = time.perf_counter()
    loss, grads = step(params)
    jax.block_until_ready(grads)
    seconds = time.perf_counter() - t0
    finite = all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))
    return {"path": path, "T": T, "peak_bytes": _vm("VmHWM"), "baseline_bytes": baseline,
            "seconds": seconds, "loss": float(loss), "finite_gradients": finite}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--skip-materialised-above", type=int, default=10**9,
                    help="do not run the materialised path above this T (it needs ~13 GB at 1e6)")
    ap.add_argument("--case", nargs=2, metavar=("PATH", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:  # child process: one measurement, printed as JSON
        print(json.dumps(run_case(args.case[0], int(args.case[1]))))
        return
    rows = []
    for T in args.steps:
        for path in ("streamed", "materialised"):
            if path == "materialised" and T > args.skip_materialised_above:
                rows.append({"path": path, "T": T, "skipped": True})
                continue
            proc = subprocess.run([sys.executable, __file__, "--case", path, str(T)],
                                  capture_output=True, text=True)
            if proc.returncode:
                rows.append({"path": path, "T": T, "error": proc.stderr[-2000:]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    meta = {"cpu": _cpu_model(), "command": "python " + " ".join(sys.argv), "B": B, "D": D, "H": H,
            "remat_chunk": "sqrt", "note": "wall time includes compilation; indicative only on a "
            "shared machine"}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    gib = 2.0 ** 30
    lines = [f"# Long-sequence memory: LSTM training step (B={B}, D={D}, H={H}), "
             f"remat_chunk=\"sqrt\"", "", f"CPU: {meta['cpu']}  ", f"Command: `{meta['command']}`", "",
             "| T | path | peak RSS (GiB) | above baseline (GiB) | wall s (compile incl.) | loss | finite grads |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "peak_bytes" in r:
            lines.append(f"| {r['T']:,} | {r['path']} | {r['peak_bytes'] / gib:.2f} | "
                         f"{(r['peak_bytes'] - r['baseline_bytes']) / gib:.3f} | {r['seconds']:.1f} | "
                         f"{r['loss']:.4f} | {r['finite_gradients']} |")
        else:
            lines.append(f"| {r['T']:,} | {r['path']} | {'skipped' if r.get('skipped') else 'error'} "
                         f"| | | | |")
    lines += ["", "streamed = `rnnjax.unroll_reduce` with `inputs` a function of t and the loss folded "
              "in the scan; materialised = `xs` built as an array, `rnnjax.unroll`, loss on the "
              "stacked outputs. Peak = the process's VmHWM; baseline = VmHWM after imports and "
              "params. Wall times are indicative (shared 2-core machine)."]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
