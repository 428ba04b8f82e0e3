"""Sequential (``lax.scan``) vs parallel (``lax.associative_scan``) unroll of linear cells.

For each cell with an associative-scan path (the cells of ``rnnjax.registry`` with
``parallel=True``: lru, mingru, minlstm, linoss, rglru, s6) and sequence length T, times with
``jax.jit``:

- ``forward``: ``rnnjax.unroll(cell, params, xs, parallel=...)``;
- ``train``: one training step, ``jax.grad`` of an MSE loss on the outputs plus an
  ``optax.adam`` update,

reporting the median over ``--repeats`` calls after a warm-up (compile) call. Writes
``parallel.json`` (machine-readable), ``parallel.md`` (a table) and ``parallel.png`` (time vs T,
log-log) to ``--out``, and prints the machine, backend and devices first.

    python benchmarks/parallel.py --out out/parallel            # T in 256 1024 4096 16384
    python benchmarks/parallel.py --quick --out out/parallel    # a smoke run (seconds)

The crossover it finds is what ``rnnjax.unroll(..., parallel=None)`` should use
(``rnnjax.unroll.PARALLEL_MIN_STEPS``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rnnjax import registry  # noqa: E402
from rnnjax.unroll import unroll  # noqa: E402

# the cells of rnnjax.registry whose recurrence is linear in the carry (cell.linear): the others
# have no parallel path to compare
CELLS = tuple(name for name, spec in registry.CELLS.items() if spec.parallel)


def cell_name(text: str) -> str:
    """``--cells`` entry: a registry cell with a parallel path, or an error naming those that have one."""
    try:
        registry.spec(text)
    except ValueError as e:  # an unknown name: the message names every registered cell
        raise argparse.ArgumentTypeError(str(e)) from None
    if text not in CELLS:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no associative-scan path (its recurrence is not linear in the carry); "
            f"the cells with one: {', '.join(CELLS)}")
    return text


def machine() -> dict:
    devs = jax.devices()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [getattr(d, "device_kind", str(d)) for d in devs],
    }


def median_time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_one(name: str, T: int, B: int, H: int, parallel: bool, repeats: int) -> dict:
    cell = registry.cell(name, H, T)
    params = cell.init(jax.random.key(0), H)
    xs = jax.random.normal(jax.random.key(1), (T, B, H), jnp.float32)
    target = jax.random.normal(jax.random.key(2), (T, B, H), jnp.float32)
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)

    @jax.jit
    def forward(p, x):
        return unroll(cell, p, x, parallel=parallel)[1]

    def loss(p, x, y):
        return jnp.mean((unroll(cell, p, x, parallel=parallel)[1] - y) ** 2)

    @jax.jit
    def train_step(p, s, x, y):
        g = jax.grad(loss)(p, x, y)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s

    return {
        "cell": name, "T": T, "batch": B, "hidden": H,
        "mode": "parallel" if parallel else "sequential",
        "forward_s": median_time(forward, (params, xs), repeats),
        "train_s": median_time(train_step, (params, opt_state, xs, target), repeats),
    }


def write_outputs(out: str, info: dict, rows: list[dict]) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "parallel.json"), "w") as f:
        json.dump({"machine": info, "results": rows}, f, indent=2)
    lines = [f"Backend `{info['backend']}` ({', '.join(info['devices'])}), jax {info['jax']}, "
             f"{info['processor']} x{info['cpu_count']}.", "",
             "| cell | T | B | H | forward seq (ms) | forward par (ms) | speed-up | "
             "train seq (ms) | train par (ms) | speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    key = lambda r: (r["cell"], r["T"])  # noqa: E731
    by = {(key(r), r["mode"]): r for r in rows}
    for k in sorted({key(r) for r in rows}):
        s, p = by.get((k, "sequential")), by.get((k, "parallel"))
        if s is None or p is None:
            continue
        lines.append(
            f"| {k[0]} | {k[1]} | {s['batch']} | {s['hidden']} | {1e3 * s['forward_s']:.2f} | "
            f"{1e3 * p['forward_s']:.2f} | {s['forward_s'] / p['forward_s']:.2f}x | "
            f"{1e3 * s['train_s']:.2f} | {1e3 * p['train_s']:.2f} | "
            f"{s['train_s'] / p['train_s']:.2f}x |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "parallel.md"), "w") as f:
        f.write(table)
    print(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib not installed: no PNG written")
        return
    cells = sorted({r["cell"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, metric, title in ((axes[0], "forward_s", "forward"), (axes[1], "train_s", "train step")):
        for c in cells:
            for mode, style in (("sequential", "-o"), ("parallel", "--s")):
                pts = sorted((r["T"], r[metric]) for r in rows if r["cell"] == c and r["mode"] == mode)
                if pts:
                    ax.plot([t for t, _ in pts], [1e3 * v for _, v in pts], style, label=f"{c} {mode}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T (steps)")
        ax.set_ylabel("median time (ms)")
        ax.set_title(f"{title} ({info['backend']})")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "parallel.png"), dpi=120)
    print(f"wrote {out}/parallel.json, parallel.md, parallel.png")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/parallel", help="output folder")
    ap.add_argument("--T", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--cells", nargs="+", default=list(CELLS), type=cell_name, metavar="CELL",
                    help=f"cells with a parallel path, among {', '.join(CELLS)}")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: T in 16 64, batch 2, hidden 8, 2 repeats, one cell")
    args = ap.parse_args(argv)
    if args.quick:
        args.T, args.batch, args.hidden, args.repeats, args.cells = [16, 64], 2, 8, 2, ["mingru"]
    print("flags:", {k: v for k, v in vars(args).items()})
    info = machine()
    print("machine:", json.dumps(info))
    rows = []
    for name in args.cells:
        for T in args.T:
            for parallel in (False, True):
                r = bench_one(name, T, args.batch, args.hidden, parallel, args.repeats)
                rows.append(r)
                print(f"{name:8s} T={T:6d} {r['mode']:10s} forward {1e3 * r['forward_s']:9.2f} ms"
                      f"  train {1e3 * r['train_s']:9.2f} ms", flush=True)
    write_outputs(args.out, info, rows)


if __name__ == "__main__":
    main()
