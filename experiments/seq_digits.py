"""Sequential and permuted 8x8 digits: a cell reads an image one pixel per step (64 steps) and
classifies it from its last output.

The small cousin of sequential / permuted MNIST (Le, Jaitly & Hinton 2015), built on
scikit-learn's bundled digits (``rnnjax.tasks.sequential_digits``: 1437 train, 360 test).
Chance accuracy 10%. Example::

    python experiments/seq_digits.py --cell irnn --permuted --workdir runs/pdigits
"""

from __future__ import annotations

import os
import sys

# This folder holds scripts named like packages (mnist1d, copy): search it after everything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [q for q in sys.path if os.path.abspath(q or ".") != _HERE] + [_HERE]

import time

import jax

import rnnjax
import _common


def main(argv=None):
    t0 = time.time()  # wall time of the whole run: data, model, compile, training
    p = _common.parser(__doc__.split("\n\n")[0], name="seq_digits", steps=3000, ckpt_every=500,
                       eval_every=250)
    g = p.add_argument_group("task and model")
    g.add_argument("--permuted", action="store_true", help="read the pixels in a fixed random order")
    g.add_argument("--permutation-seed", type=int, default=0)
    g.add_argument("--cell", choices=_common.CELLS, default="gru")
    g.add_argument("--hidden", type=int, default=64)
    g.add_argument("--batch", type=int, default=64)
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd", "momentum", "rmsprop"), default="adam")
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    g.add_argument("--clip-norm", type=float, default=1.0, help="global gradient-norm clip")
    g.add_argument("--schedule", choices=("constant", "cosine", "linear"), default="cosine")
    args = p.parse_args(argv)

    data = rnnjax.tasks.sequential_digits(permuted=args.permuted,
                                          permutation_seed=args.permutation_seed)
    T, N = data.x_train.shape[0], data.x_train.shape[1]
    cell = _common.make_cell(args.cell, args.hidden, seq_len=T)
    readout = rnnjax.dense(10)
    k = _common.keys(args.seed)
    kc, kr = jax.random.split(k["init"])
    params = {"cell": cell.init(kc, 1)}
    params["readout"] = readout.init(kr, rnnjax.layers.output_size(cell, params["cell"], 1))

    def logits(p, xs):
        _, hs = rnnjax.unroll(cell, p["cell"], xs)
        return readout.apply(p["readout"], hs[-1])

    loss_fn, batch_fn, eval_fn = _common.classification(logits, data, k["data"], args.batch)

    tx = rnnjax.optimizer(args.optimizer, args.lr, clip_norm=args.clip_norm, schedule=args.schedule,
                          decay_steps=None if args.schedule == "constant" else args.steps)
    state = rnnjax.TrainState.create(params, tx, key=k["train"])
    kind = "permuted" if args.permuted else "sequential"
    print(f"[seq_digits] {kind} digits, {args.cell} H={args.hidden}: "
          f"{_common.num_params(params)} parameters; {N} train, {data.x_test.shape[1]} test", flush=True)
    step_fn = rnnjax.train_step(loss_fn, tx, has_aux=True, project=_common.projection(args.cell, T))
    return _common.train(args, t0=t0, name="seq_digits", state=state,
                         step_fn=step_fn, batch_fn=batch_fn,
                         eval_fn=eval_fn, info={"chance_accuracy": rnnjax.tasks.CHANCE_ACCURACY})


if __name__ == "__main__":
    main()
