"""Multi-step time-series forecasting with a recurrent cell, against a naive last-value baseline.

A cell reads a window of ``--window`` past values and a dense readout of its last output predicts
the next ``--horizon`` values at once (direct multi-step forecast). Series:

- ``sunspots``: yearly mean sunspot numbers 1700-2008 (309 values), the CSV bundled with
  statsmodels (``statsmodels/datasets/sunspots/sunspots.csv``, read from the installed package;
  no download).
- ``sines``: a synthetic noisy sum of three sines (periods 50, 23 and 97 steps, 2000 values,
  Gaussian noise of std 0.1), fixed by ``--data-seed``.

The last ``--test-fraction`` of the series is held out: the model is trained on windows whose
targets lie in the first part only, and evaluated on every window whose targets lie in the tail.
MAE and RMSE (in the series' own units, over all horizons) of the model and of the naive forecast
(repeat the last observed value) go into ``results.json``. Example::

    python experiments/forecast.py --series sunspots --workdir runs/forecast_sunspots
"""

from __future__ import annotations

import os
import sys

# This folder holds scripts named like packages (mnist1d, copy): search it after everything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [q for q in sys.path if os.path.abspath(q or ".") != _HERE] + [_HERE]

import importlib.util

import time

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax
import _common


def sunspots() -> tuple[np.ndarray, str]:
    """Yearly sunspot numbers 1700-2008 from the CSV that ships with statsmodels."""
    spec = importlib.util.find_spec("statsmodels")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the sunspots series needs statsmodels (pip install statsmodels); "
                         "or run with --series sines")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "sunspots", "sunspots.csv")
    rows = np.loadtxt(path, delimiter=",", skiprows=1)
    return rows[:, 1].astype(np.float64), path


def sines(seed: int, n: int = 2000) -> tuple[np.ndarray, str]:
    """``sin(2πt/50) + 0.5 sin(2πt/23 + 1) + 0.3 sin(2πt/97) + N(0, 0.1²)`` for ``t < n``."""
    t = np.arange(n, dtype=np.float64)
    clean = np.sin(2 * np.pi * t / 50) + 0.5 * np.sin(2 * np.pi * t / 23 + 1) + 0.3 * np.sin(2 * np.pi * t / 97)
    noise = 0.1 * np.random.default_rng(seed).standard_normal(n)
    return clean + noise, f"synthetic: noisy sum of sines, numpy default_rng({seed})"


def windows(series: np.ndarray, window: int, horizon: int, first_target: int, last_target: int):
    """Inputs ``[window, n, 1]`` and targets ``[n, horizon]`` of every window whose targets
    ``series[s + window : s + window + horizon]`` lie in ``[first_target, last_target)``."""
    starts = [s for s in range(len(series) - window - horizon + 1)
              if s + window >= first_target and s + window + horizon <= last_target]
    if not starts:
        raise SystemExit(f"no windows: the series ({len(series)} values) is too short for "
                         f"--window {window} --horizon {horizon}")
    xs = np.stack([series[s:s + window] for s in starts], axis=1)[:, :, None]
    ys = np.stack([series[s + window:s + window + horizon] for s in starts])
    return xs.astype(np.float32), ys.astype(np.float32)


def main(argv=None):
    t0 = time.time()  # wall time of the whole run: data, model, compile, training
    p = _common.parser(__doc__.split("\n\n")[0], name="forecast", steps=2000, ckpt_every=500,
                       eval_every=250)
    g = p.add_argument_group("task and model")
    g.add_argument("--series", choices=("sunspots", "sines"), default="sunspots")
    g.add_argument("--data-seed", type=int, default=0, help="noise seed of the sines series")
    g.add_argument("--window", type=int, default=30, help="past values the model reads")
    g.add_argument("--horizon", type=int, default=10, help="future values it predicts")
    g.add_argument("--test-fraction", type=float, default=0.2, help="held-out tail of the series")
    g.add_argument("--cell", choices=_common.CELLS, default="gru")
    g.add_argument("--hidden", type=int, default=32)
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine schedule)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    g.add_argument("--clip-norm", type=float, default=1.0)
    args = p.parse_args(argv)

    series, origin = sunspots() if args.series == "sunspots" else sines(args.data_seed)
    split = int(round(len(series) * (1 - args.test_fraction)))
    mean, std = series[:split].mean(), series[:split].std()  # train statistics only
    z = (series - mean) / std
    W, Hz = args.window, args.horizon
    x_train, y_train = windows(z, W, Hz, 0, split)
    x_test, y_test = windows(z, W, Hz, split, len(z))
    N = x_train.shape[1]
    batch = min(args.batch, N)

    cell = _common.make_cell(args.cell, args.hidden, seq_len=W)
    readout = rnnjax.dense(Hz)
    k = _common.keys(args.seed)
    kc, kr = jax.random.split(k["init"])
    params = {"cell": cell.init(kc, 1)}
    params["readout"] = readout.init(kr, rnnjax.layers.output_size(cell, params["cell"], 1))

    def predict(p, xs):
        _, hs = rnnjax.unroll(cell, p["cell"], xs)
        return xs[-1] + readout.apply(p["readout"], hs[-1])  # residual on the last value

    def loss_fn(p, b, key):
        del key
        return rnnjax.losses.mse(predict(p, b[0]), b[1])

    x_train_j, y_train_j = jnp.asarray(x_train), jnp.asarray(y_train)
    x_test_j, y_test_j = jnp.asarray(x_test), jnp.asarray(y_test)

    def batch_fn(step):
        idx = rnnjax.tasks.batch_indices(k["data"], step, N, batch)
        return x_train_j[:, idx], y_train_j[idx]

    def errors(pred, target):
        err = (pred - target) * std  # in the series' units
        return {"mae": jnp.mean(jnp.abs(err)), "rmse": jnp.sqrt(jnp.mean(err ** 2))}

    def eval_fn(p):
        return errors(predict(p, x_test_j), y_test_j)

    naive = errors(jnp.broadcast_to(x_test_j[-1], y_test_j.shape), y_test_j)
    naive = {f"naive_{k}": float(v) for k, v in naive.items()}

    def final_fn(p):
        m = {k: float(v) for k, v in eval_fn(p).items()}
        per_h = jnp.mean(jnp.abs(predict(p, x_test_j) - y_test_j), axis=0) * std
        return {"model_mae": m["mae"], "model_rmse": m["rmse"], **naive,
                "mae_ratio_to_naive": m["mae"] / naive["naive_mae"],
                "rmse_ratio_to_naive": m["rmse"] / naive["naive_rmse"],
                "model_mae_per_horizon": [float(v) for v in per_h]}

    tx = rnnjax.optimizer("adamw", args.lr, clip_norm=args.clip_norm, weight_decay=args.weight_decay,
                          schedule="cosine", decay_steps=args.steps)
    state = rnnjax.TrainState.create(params, tx, key=k["train"])
    print(f"[forecast] {args.series} ({len(series)} values; {origin}); window {W}, horizon {Hz}: "
          f"{N} train windows, {x_test.shape[1]} test windows in the held-out tail of "
          f"{len(series) - split} values; {args.cell} H={args.hidden}, "
          f"{_common.num_params(params)} parameters", flush=True)
    print(f"[forecast] naive last-value baseline on the tail: MAE {naive['naive_mae']:.4g}, "
          f"RMSE {naive['naive_rmse']:.4g}", flush=True)
    step_fn = rnnjax.train_step(loss_fn, tx, project=_common.projection(args.cell, W))
    res = _common.train(args, t0=t0, name="forecast", state=state, step_fn=step_fn, batch_fn=batch_fn,
                        eval_fn=eval_fn, final_fn=final_fn,
                        info={"data_origin": origin, "series_length": len(series),
                              "test_start_index": split})
    f = res["final"][0]
    print(f"[forecast] held-out tail: model MAE {f['model_mae']:.4g} RMSE {f['model_rmse']:.4g} | "
          f"naive MAE {f['naive_mae']:.4g} RMSE {f['naive_rmse']:.4g}")
    return res


if __name__ == "__main__":
    main()
