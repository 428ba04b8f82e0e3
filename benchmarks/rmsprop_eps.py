"""Where optax's and PyTorch's RMSprop differ: the step of each parameter leaf under ``eps`` inside the root.

``optax.rmsprop`` (and ``rnnjax.optimizer("rmsprop")`` by default) divides by ``sqrt(v + eps)``;
``torch.optim.RMSprop`` by ``sqrt(v) + eps``. An element whose RMS gradient is ``r = sqrt(v)`` then
moves ``r / sqrt(r^2 + eps)`` times PyTorch's step (for ``r >> eps``): the forms agree for large
gradients and part below ``sqrt(eps)``. This script trains a row of the gradient-vanishing study
(``benchmarks/vanishing.py``) with optax's form and, at the given steps, prints per parameter
leaf the median RMS gradient ``sqrt(v)``, the fraction of elements below ``sqrt(eps)`` and the
median and 10th percentile of that step ratio.

    python benchmarks/rmsprop_eps.py --row lstm-chrono-paper-eps-in-sqrt --task copy --T 500 \\
        --at 10,100,300 --out benchmarks/results/vanishing-multiseed/rmsprop_eps.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def step_ratio(nu: np.ndarray, eps: float) -> np.ndarray:
    """``|step with eps inside the root| / |step with eps added to it|`` for second moments ``nu``:
    ``(sqrt(nu) + eps) / sqrt(nu + eps)``; NaN where ``nu == 0`` (no gradient yet: neither form
    moves the element)."""
    nu = np.asarray(nu, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (np.sqrt(nu) + eps) / np.sqrt(nu + eps)
    return np.where(nu > 0, out, np.nan)


def _nu(opt_state):
    import optax
    import jax

    found = []
    is_rms = lambda x: isinstance(x, optax.ScaleByRmsState)  # noqa: E731
    for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_rms):
        if is_rms(node):
            found.append(node.nu)
    if len(found) != 1:
        raise ValueError(f"expected one RMSprop state in the optimizer state, found {len(found)}")
    return found[0]


def measure(row: str, task: str, T: int, at: list[int], seed: int = 0) -> list[dict]:
    """Train ``row`` of the vanishing study (its recipe, one seed) and measure at the steps ``at``."""
    import dataclasses

    import vanishing as V

    import rnnjax
    from rnnjax import bench

    spec = V.spec_by_name(row)
    rc = spec.recipe
    if rc.optimizer != "rmsprop":
        raise ValueError(f"row {row!r} trains with {rc.optimizer!r}, not rmsprop")
    opt = dict(rc.opt_kwargs)
    if opt.get("eps_in_sqrt", True) is not True:
        raise ValueError(f"row {row!r} already uses PyTorch's form (eps_in_sqrt=False): nothing to measure")
    eps = float(opt.get("eps", 1e-8))
    recipe = dataclasses.replace(rc, steps=max(at), eval_every=max(at))
    tr = V.build_training(spec, bench.tasks.get(task, T), recipe)
    config = {"seed": seed, "lr": rc.lr}
    state = tr.init_fn(config)
    step_fn = lambda s, b: tr.step_fn(s, b, config)  # noqa: E731
    batch_fn = lambda t: tr.batch_fn(config, t)  # noqa: E731
    out = []
    for stop in at:  # the training engine, stopped at each measuring step
        state, history = rnnjax.fit(state, step_fn, batch_fn, steps=stop, progress=False)
        loss = float(history["loss"][-1])
        for name, v in _nu(state.opt_state)["cell"].items():
            nu = np.asarray(v, np.float64).ravel()
            ratio = step_ratio(nu, eps)
            out.append({"step": stop, "leaf": name, "size": int(nu.size),
                        "rms_grad_median": float(np.median(np.sqrt(nu))),
                        "frac_below_sqrt_eps": float(np.mean(np.sqrt(nu) < np.sqrt(eps))),
                        "ratio_median": float(np.nanmedian(ratio)),
                        "ratio_p10": float(np.nanpercentile(ratio, 10)),
                        "train_loss": loss})
    return out


def table(rows: list[dict]) -> str:
    lines = ["| step | leaf | elements | median RMS gradient | fraction below sqrt(eps) | "
             "step / PyTorch's (median) | (10th percentile) | training loss |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['step']} | `{r['leaf']}` | {r['size']} | {r['rms_grad_median']:.2e} | "
                     f"{r['frac_below_sqrt_eps']:.2f} | {r['ratio_median']:.3f} | {r['ratio_p10']:.3f} | "
                     f"{r['train_loss']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--row", default="lstm-chrono-paper-eps-in-sqrt",
                   help="a row of benchmarks/vanishing.py that trains with optax's RMSprop form")
    p.add_argument("--task", default="copy", choices=("adding", "copy"))
    p.add_argument("--T", type=int, default=500, help="the task's horizon")
    p.add_argument("--at", default="10,100,300", help="comma-separated steps at which to measure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the table (markdown) here too")
    args = p.parse_args(argv)
    try:
        at = sorted({int(a) for a in args.at.split(",")})
    except ValueError:
        p.error(f"--at must be comma-separated integers, got {args.at!r}")
    if at[0] < 1 or args.T < 1:
        p.error("--at steps and --T must be positive")
    t0 = time.perf_counter()
    try:
        rows = measure(args.row, args.task, args.T, at, args.seed)
    except ValueError as e:
        p.error(str(e))
    from rnnjax import machine

    m = machine()
    text = (f"## RMSprop: optax's form (eps inside the root) against PyTorch's, per parameter leaf\n\n"
            f"Command: `python benchmarks/rmsprop_eps.py {' '.join(argv if argv is not None else sys.argv[1:])}`  \n"
            f"Row `{args.row}` on {args.task} T={args.T}, seed {args.seed}, trained with optax's form; "
            f"machine: {m['cpu']} ({m['cpu_isa']}), {m['cpu_count']} cores; "
            f"{time.perf_counter() - t0:.0f} s.\n\n{table(rows)}\n\n"
            "`step / PyTorch's`: `(sqrt(v) + eps) / sqrt(v + eps)`, the length of this element's step "
            "relative to PyTorch's RMSprop with the same second moment `v` (elements with no gradient yet "
            "left out).\n")
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
