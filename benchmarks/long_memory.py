"""Peak memory of an LSTM training step over very long sequences: streamed inputs and outputs
folded inside the scan (``rnnjax.unroll_reduce``) against the materialised path (``xs [T, B, D]``,
``unroll``, a loss on the stacked outputs), both with ``remat_chunk="sqrt"``.

The step is the gradient of a per-step loss summed over T, ``sum_t ||y_t - target_t||^2``, for an
LSTM with B=8, D=32, H=128; ``x_t`` and ``target_t`` are functions of ``t`` (a keyed normal and a
sinusoid). Each case runs in its own process (:func:`measure`) and reports its peak resident memory
(``VmHWM``), the whole process and above its baseline after imports and params, the compile time,
and the wall time of one compiled step (indicative only when the machine is shared).
``benchmarks/speed.py --long`` runs the same cases (``--long-steps``) through :func:`measure` and
:func:`table`.

    python benchmarks/long_memory.py                       # T = 1e5 and 1e6, both paths
    python benchmarks/long_memory.py --steps 100000 --skip-materialised-above 200000
    python benchmarks/long_memory.py --backend xla         # pin unroll's backend (default "auto")

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


def run_case(path: str, T: int, backend: str = "auto") -> dict:
    """One case in this process: ``{"peak_bytes", "baseline_bytes", "compile_s", "run_s", "loss",
    ...}``; ``backend`` is passed to ``unroll`` / ``unroll_reduce`` (the fused LSTM's kernel)."""
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
        _, acc = unroll_reduce(cell, p, x_at, fold, jnp.zeros(()), length=T, remat_chunk="sqrt",
                                backend=backend)
        return acc / T

    def materialised(p):
        ts = jnp.arange(T, dtype=jnp.int32)
        _, ys = rnnjax.unroll(cell, p, jax.vmap(x_at)(ts), remat_chunk="sqrt", backend=backend)
        return jnp.sum((ys - jax.vmap(target)(ts)) ** 2) / T

    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    step = jax.jit(jax.value_and_grad(streamed if path == "streamed" else materialised))
    baseline = _vm("VmHWM")
    t0 = time.perf_counter()
    compiled = step.lower(params).compile()
    t1 = time.perf_counter()
    loss, grads = compiled(params)
    jax.block_until_ready(grads)
    t2 = time.perf_counter()
    finite = all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))
    return {"path": path, "T": T, "backend": backend, "peak_bytes": _vm("VmHWM"), "baseline_bytes": baseline,
            "compile_s": t1 - t0, "run_s": t2 - t1, "seconds": t2 - t0, "loss": float(loss),
            "finite_gradients": finite}


PATHS = ("streamed", "materialised")


def measure(path: str, T: int, timeout: float | None = None, backend: str = "auto") -> dict:
    """:func:`run_case` in a fresh Python process (its peak memory is its own); a failed or
    timed-out case returns ``{"path", "T", "error"}``."""
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--case", path, str(T),
                               "--backend", backend],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"path": path, "T": T, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode:
        return {"path": path, "T": T,
                "error": f"exit code {proc.returncode} (-9: likely out of memory): {proc.stderr[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def study(steps: list[int], skip_materialised_above: int | None = None,
          timeout: float | None = None, backend: str = "auto") -> list[dict]:
    """Both paths at each ``T`` of ``steps``, each in a fresh process (:func:`measure`); the
    materialised path is skipped (``{"skipped": True}``) above ``skip_materialised_above``."""
    rows = []
    for T in steps:
        for path in PATHS:
            if path == "materialised" and skip_materialised_above is not None \
                    and T > skip_materialised_above:
                rows.append({"path": path, "T": T, "skipped": True})
            else:
                rows.append(measure(path, T, timeout, backend))
            print(rows[-1], flush=True)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """Per ``T`` with a streamed row: the issue's targets, streamed peak RSS of the whole process
    <= 2 GiB and streamed step time <= 1.2x the materialised path's (when that one ran)."""
    out = []
    for T in sorted({r["T"] for r in rows}):
        ran = {r["path"]: r for r in rows if r["T"] == T and "peak_bytes" in r}
        st, ma = ran.get("streamed"), ran.get("materialised")
        if st is None:
            continue
        t = {"T": T, "streamed_peak_gib": st["peak_bytes"] / 2.0**30, "max_peak_gib": 2.0,
             "max_time_ratio": 1.2}
        t["memory_met"] = t["streamed_peak_gib"] <= 2.0
        if ma is not None:
            t["time_ratio"] = st["run_s"] / ma["run_s"]
            t["memory_ratio"] = st["peak_bytes"] / ma["peak_bytes"]
            t["time_met"] = t["time_ratio"] <= 1.2
        out.append(t)
    return out


def table(rows: list[dict]) -> list[str]:
    """The markdown table of ``rows`` (and the targets), as lines."""
    gib = 2.0 ** 30
    lines = ["| T | path | peak RSS (GiB) | above baseline (GiB) | step s | compile s | loss "
             "| finite grads |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "peak_bytes" in r:
            compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "–"
            lines.append(f"| {r['T']:,} | {r['path']} | {r['peak_bytes'] / gib:.2f} | "
                         f"{(r['peak_bytes'] - r['baseline_bytes']) / gib:.3f} | "
                         f"{r.get('run_s', r['seconds']):.1f} | {compile_s} | {r['loss']:.4f} | "
                         f"{r['finite_gradients']} |")
        else:
            lines.append(f"| {r['T']:,} | {r['path']} | {'skipped' if r.get('skipped') else 'error'} "
                         f"| | | | | |")
    lines.append("")
    for t in targets(rows):
        time_s = (f"time x{t['time_ratio']:.2f} of the materialised path (target <= 1.2: "
                  f"{'met' if t['time_met'] else 'NOT met'})" if "time_ratio" in t
                  else "time: no materialised row to compare")
        lines.append(f"- T = {t['T']:,}: streamed peak {t['streamed_peak_gib']:.2f} GiB (target <= 2 GiB: "
                     f"{'met' if t['memory_met'] else 'NOT met'}); {time_s}.")
    lines += ["", "streamed = `rnnjax.unroll_reduce` with `inputs` a function of t and the loss folded "
              "in the scan; materialised = `xs` built as an array, `rnnjax.unroll`, loss on the "
              "stacked outputs; both `remat_chunk=\"sqrt\"`, each in a fresh process. Peak = the "
              "process's VmHWM (compilation included); baseline = VmHWM after imports and params. "
              "Step s = one compiled call (forward and backward), compile s apart; indicative on a "
              "shared machine."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--skip-materialised-above", type=int, default=None,
                    help="do not run the materialised path above this T (it needs ~13 GB at 1e6)")
    ap.add_argument("--backend", choices=("auto", "xla", "native"), default="auto",
                    help="the fused LSTM's implementation (unroll's backend=)")
    ap.add_argument("--case", nargs=2, metavar=("PATH", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:  # child process: one measurement, printed as JSON
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.backend)))
        return
    rows = study(args.steps, args.skip_materialised_above, backend=args.backend)
    meta = {"cpu": _cpu_model(), "command": "python " + " ".join(sys.argv), "B": B, "D": D, "H": H,
            "remat_chunk": "sqrt", "backend": args.backend,
            "note": "step time excludes compilation (compile_s); indicative only on a shared machine"}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "targets": targets(rows)},
                                                 indent=2) + "\n")
    lines = [f"# Long-sequence memory: LSTM training step (B={B}, D={D}, H={H}), "
             f"remat_chunk=\"sqrt\"", "", f"CPU: {meta['cpu']}  ", f"Command: `{meta['command']}`", "",
             *table(rows)]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
