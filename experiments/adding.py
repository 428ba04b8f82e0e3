"""The adding problem (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): a cell reads T steps
of (value, marker) pairs and must output the sum of the two marked values.

The no-memory baseline (always predict 1.0) has MSE 1/6 ~= 0.167; a model that learned the task
goes well below it. Example::

    python experiments/adding.py --cell lstm --seq-len 100 --steps 2000 --workdir runs/adding

``--cell`` takes every cell of ``rnnjax.registry`` by name, or a factory of your own as
``module:function`` (or ``path/to/file.py:function``): ``make(hidden_size, T)`` returning a
``rnnjax.Cell``, or ``(cell, project)`` with the projection applied after every update.

Running the same command again resumes from the newest checkpoint in --workdir.
"""

from __future__ import annotations

import os
import sys

# This folder holds scripts named like packages (mnist1d, copy): search it after everything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [q for q in sys.path if os.path.abspath(q or ".") != _HERE] + [_HERE]

import time

import jax
import jax.numpy as jnp

import rnnjax
import _common


def main(argv=None):
    t0 = time.time()  # wall time of the whole run: data, model, compile, training
    p = _common.parser(__doc__.split("\n\n")[0], name="adding", steps=2000, ckpt_every=200,
                       eval_every=200)
    g = _common.training_args(p, eval_batch=1000)
    g.add_argument("--seq-len", type=int, default=100, help="T, the sequence length")
    args = p.parse_args(argv)

    T = args.seq_len
    cell, project = _common.build_cell(args.cell, args.hidden, seq_len=T)
    readout = rnnjax.dense(1)
    k = _common.keys(args.seed)
    kc, kr = jax.random.split(k["init"])
    params = {"cell": cell.init(kc, 2)}
    H = rnnjax.layers.output_size(cell, params["cell"], 2)
    params["readout"] = readout.init(kr, H)

    def predict(p, xs):
        _, hs = rnnjax.unroll(cell, p["cell"], xs)
        return readout.apply(p["readout"], hs[-1])

    def loss_fn(p, batch, key):
        del key
        xs, ys = batch
        return rnnjax.losses.mse(predict(p, xs), ys)

    def batch_fn(step):
        return rnnjax.tasks.adding(jax.random.fold_in(k["data"], step), args.batch, T)

    eval_xs, eval_ys = rnnjax.tasks.adding(k["eval"], args.eval_batch, T)

    def eval_fn(p):
        mse = rnnjax.losses.mse(predict(p, eval_xs), eval_ys)
        return {"mse": mse, "mse_over_baseline": mse / rnnjax.tasks.ADDING_BASELINE_MSE}

    tx = rnnjax.optimizer(args.optimizer, args.lr, clip_norm=args.clip_norm, schedule=args.schedule,
                          decay_steps=None if args.schedule == "constant" else args.steps)
    state = rnnjax.TrainState.create(params, tx, key=k["train"])
    n = _common.num_params(params)
    print(f"[adding] {args.cell} H={args.hidden}, T={T}: {n} parameters; "
          f"baseline MSE {rnnjax.tasks.ADDING_BASELINE_MSE:.4f}", flush=True)
    step_fn = rnnjax.train_step(loss_fn, tx, project=project)
    return _common.train(args, t0=t0, name="adding", state=state, step_fn=step_fn,
                         batch_fn=batch_fn, eval_fn=eval_fn,
                         info={"baseline_mse": rnnjax.tasks.ADDING_BASELINE_MSE})


if __name__ == "__main__":
    main()
