"""The copy-memory problem (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): recall 10
symbols after a delay of T blank steps.

The best memoryless predictor has cross-entropy 10 log 8 / (T + 20) nats per step
(``rnnjax.tasks.copy_baseline``); a model beats it only by remembering. Example::

    python experiments/copy.py --cell lstm --delay 50 --steps 3000 --workdir runs/copy
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
    p = _common.parser(__doc__.split("\n\n")[0], name="copy", steps=3000, ckpt_every=250,
                       eval_every=250)
    g = _common.training_args(p, eval_batch=500)
    g.add_argument("--delay", type=int, default=50, help="T, the number of steps to remember")
    args = p.parse_args(argv)

    T = args.delay
    classes = rnnjax.tasks.COPY_NUM_SYMBOLS + 1  # targets are 0 (blank) .. 8
    cell = _common.make_cell(args.cell, args.hidden, seq_len=T + 20)
    readout = rnnjax.dense(classes)
    k = _common.keys(args.seed)
    kc, kr = jax.random.split(k["init"])
    D = rnnjax.tasks.COPY_VOCAB
    params = {"cell": cell.init(kc, D)}
    params["readout"] = readout.init(kr, rnnjax.layers.output_size(cell, params["cell"], D))
    baseline = rnnjax.tasks.copy_baseline(T)
    L = rnnjax.tasks.COPY_LENGTH

    def logits(p, xs):
        _, hs = rnnjax.unroll(cell, p["cell"], xs)
        return readout.apply(p["readout"], hs)

    def loss_fn(p, batch, key):
        del key
        xs, ys = batch
        return rnnjax.losses.sequence_cross_entropy(logits(p, xs), ys)

    def batch_fn(step):
        return rnnjax.tasks.copy_memory(jax.random.fold_in(k["data"], step), args.batch, T)

    eval_xs, eval_ys = rnnjax.tasks.copy_memory(k["eval"], args.eval_batch, T)

    def eval_fn(p):
        out = logits(p, eval_xs)
        loss = rnnjax.losses.sequence_cross_entropy(out, eval_ys)
        return {"loss": loss, "loss_over_baseline": loss / baseline,
                "recall_accuracy": rnnjax.losses.accuracy(out[-L:], eval_ys[-L:])}

    tx = rnnjax.optimizer(args.optimizer, args.lr, clip_norm=args.clip_norm, schedule=args.schedule,
                          decay_steps=None if args.schedule == "constant" else args.steps)
    state = rnnjax.TrainState.create(params, tx, key=k["train"])
    print(f"[copy] {args.cell} H={args.hidden}, delay T={T}: {_common.num_params(params)} "
          f"parameters; memoryless baseline {baseline:.4f} nats/step, recall accuracy 1/8", flush=True)
    step_fn = rnnjax.train_step(loss_fn, tx, project=_common.projection(args.cell, T + 20))
    return _common.train(args, t0=t0, name="copy", state=state, step_fn=step_fn,
                         batch_fn=batch_fn, eval_fn=eval_fn,
                         info={"baseline_loss": baseline, "baseline_recall_accuracy": 1 / 8})


if __name__ == "__main__":
    main()
