"""Sweep throughput: ``rnnjax.sweep.run_sweep`` against a Python loop over the same configurations.

N configurations (learning rates, log-spaced) of an LSTM (H=64) with a dense readout on the adding
problem (T=100, B=32), Adam with global-norm clipping, S training steps each (defaults: N=16,
S=200). In the same run, after compilation, the median of ``--repeats`` timings of:

- ``loop``: for each configuration, its own ``jax.jit(rnnjax.train_step(...))`` called once per
  step with a jitted batch (what one writes without a sweep); metrics stay on the device;
- ``sweep``: ``run_sweep`` over all configurations, sharded over all devices (one compiled program:
  all steps in a ``lax.scan``, data made inside);
- ``sweep_one_device``: the same on the first device only (no sharding), to show what the devices
  add.

On CPU the script asks JAX for one CPU device per core (``--cpu-devices``, default
``os.cpu_count()``) before JAX starts; the loop runs on the first device, as a plain loop would.

    python benchmarks/sweep.py --json out/sweep.json
    python benchmarks/sweep.py --steps 20 --repeats 1 --json /tmp/sweep.json   # a quick smoke run

Writes JSON (``n_configs``, ``sweep_seconds``, ``loop_seconds``, ``speedup_vs_loop``, ...,
machine info) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--json", default="out/sweep/sweep.json", help="where to write the JSON results")
    p.add_argument("--n-configs", type=int, default=16, help="number of configurations")
    p.add_argument("--hidden", type=int, default=64, help="LSTM hidden size H")
    p.add_argument("--T", type=int, default=100, help="sequence length")
    p.add_argument("--batch", type=int, default=32, help="batch size B")
    p.add_argument("--steps", type=int, default=200, help="training steps per configuration")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    p.add_argument("--cpu-devices", type=int, default=os.cpu_count() or 1,
                   help="CPU devices to ask JAX for (on CPU: one per core)")
    p.add_argument("--vmap-size", default="auto",
                   help="run_sweep's vmap_size: 'auto', 'all' or an int")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import jax

    if args.cpu_devices > 1:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before JAX starts
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import rnnjax
    from rnnjax import sweep

    N, H, T, B, S = args.n_configs, args.hidden, args.T, args.batch, args.steps
    vmap_size = {"auto": "auto", "all": None}.get(args.vmap_size) if not args.vmap_size.isdigit() \
        else int(args.vmap_size)
    cell, readout = rnnjax.lstm(H), rnnjax.dense(1)
    configs = sweep.grid(learning_rate=np.logspace(-4, -1, N), seed=[0])

    def make_tx(config):
        return rnnjax.optimizer("adam", config["learning_rate"], clip_norm=1.0)

    def init_fn(config):
        k1, k2, k3 = jax.random.split(jax.random.key(config["seed"]), 3)
        params = {"cell": cell.init(k1, 2), "readout": readout.init(k2, H)}
        return rnnjax.TrainState.create(params, make_tx(config), key=k3)

    def loss_fn(params, batch, key, config):
        xs, ys = batch
        _, hs = rnnjax.unroll(cell, params["cell"], xs)
        return rnnjax.losses.mse(readout.apply(params["readout"], hs[-1]), ys)

    data_key = jax.random.key(1234)

    def batch_fn(config, step):  # the same data for every configuration
        return rnnjax.tasks.adding(jax.random.fold_in(data_key, step), B, T)

    step_fn = sweep.sweep_step(loss_fn, make_tx)

    # ---- loop: one jitted step per configuration, one call per step
    loop_steps = [jax.jit(rnnjax.train_step(lambda p, b, k, c=c: loss_fn(p, b, k, c), make_tx(c)))
                  for c in configs]
    jit_batch = jax.jit(lambda t: batch_fn(None, t))
    jit_init = jax.jit(init_fn)

    def run_loop():
        out = []
        for c, step in zip(configs, loop_steps):
            state = jit_init(c)
            for t in range(S):
                state, metrics = step(state, jit_batch(t))
            out.append((state, metrics))
        jax.block_until_ready(out)
        return out

    def run_sweep(devices):
        res = sweep.run_sweep(configs, init_fn, step_fn, batch_fn, steps=S, devices=devices,
                              vmap_size=vmap_size)
        jax.block_until_ready(res.groups[0].state)
        return res

    cpu = {}

    def timed(fn, name):
        fn()  # compile (and warm up)
        ts, cs = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
        cpu[name] = statistics.median(cs)  # CPU seconds of all threads: cores kept busy = cpu/wall
        return statistics.median(ts), ts

    devices = jax.devices()
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}, backend {jax.default_backend()}, {len(devices)} devices "
          f"({devices[0].device_kind})", flush=True)
    print(f"# peers compared in this run: a Python loop of jitted rnnjax.train_step per configuration",
          flush=True)
    sweep_s, sweep_all = timed(lambda: run_sweep(devices), "sweep")
    one_s, one_all = (sweep_s, sweep_all) if len(devices) == 1 else \
        timed(lambda: run_sweep(devices[:1]), "sweep_one_device")
    cpu.setdefault("sweep_one_device", cpu["sweep"])
    loop_s, loop_all = timed(run_loop, "loop")
    res = run_sweep(devices)
    loop_final = np.array([float(m["loss"]) for _, m in run_loop()])
    agree = float(np.max(np.abs(res.metrics["loss"][:, -1] - loop_final)))

    out = {
        "n_configs": N, "hidden": H, "T": T, "batch": B, "steps": S, "repeats": args.repeats,
        "vmap_size": args.vmap_size,
        "sweep_seconds": sweep_s, "loop_seconds": loop_s, "sweep_one_device_seconds": one_s,
        "speedup_vs_loop": loop_s / sweep_s, "speedup_one_device_vs_loop": loop_s / one_s,
        "sweep_times": sweep_all, "loop_times": loop_all, "sweep_one_device_times": one_all,
        "max_abs_final_loss_difference_sweep_vs_loop": agree,
        "cpu_seconds": cpu,
        "cores_busy": {"loop": cpu["loop"] / loop_s, "sweep": cpu["sweep"] / sweep_s,
                       "sweep_one_device": cpu["sweep_one_device"] / one_s},
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "n_devices": len(devices),
            "devices": [d.device_kind for d in devices],
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\n{N} configurations x {S} steps, LSTM H={H}, T={T}, B={B} (median of {args.repeats})\n")
    busy = out["cores_busy"]
    print("| method | seconds | speedup vs loop | cores busy (CPU s / wall s) |\n|---|---|---|---|")
    print(f"| Python loop of jitted steps (1 device) | {loop_s:.3f} | 1.00 | {busy['loop']:.2f} |")
    print(f"| run_sweep, 1 device | {one_s:.3f} | {loop_s / one_s:.2f} | {busy['sweep_one_device']:.2f} |")
    print(f"| run_sweep, {len(devices)} devices | {sweep_s:.3f} | {loop_s / sweep_s:.2f} | {busy['sweep']:.2f} |")
    print(f"\nfinal losses, sweep vs loop: max abs difference {agree:.2e}; JSON: {args.json}")
    return out


if __name__ == "__main__":
    main()
