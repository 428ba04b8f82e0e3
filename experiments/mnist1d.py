"""MNIST-1D (Greydanus 2020) with a small bidirectional recurrent network.

4000 training and 1000 test sequences of 40 steps (one channel), 10 classes, generated locally by
the ``mnist1d`` package (``rnnjax.tasks.mnist1d``, no download). Reference test accuracies from
the MNIST-1D paper: logistic regression 32%, MLP 68%, GRU 91%, CNN 94%; chance 10%.

Default model: a stack of bidirectional GRU layers (``rnnjax.layers.bidirectional``), the outputs
of the last layer pooled over time (mean and max, concatenated), and a dense readout
(``rnnjax.layers.dense``); under 10k parameters. Adam with a cosine learning-rate schedule and
global-norm clipping. Example::

    python experiments/mnist1d.py --workdir runs/mnist1d

The test accuracy at the end goes into ``results.json`` (``final.eval_accuracy``).
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

REFERENCE_ACCURACY = {"logistic_regression": 0.32, "mlp": 0.68, "gru": 0.91, "cnn": 0.94}


def build(args):
    """(init(key) -> params, logits(params, xs [T, B, 1]) -> [B, 10])."""
    sizes = [int(s) for s in str(args.hidden).split(",")]
    cells = [_common.make_cell(args.cell, h, seq_len=40) for h in sizes]
    readout = rnnjax.dense(10)
    pools = args.pool.split("+")
    if args.bidirectional:
        layers = [rnnjax.bidirectional(c, _common.make_cell(args.cell, h, seq_len=40))
                  for c, h in zip(cells, sizes)]
        feat = 2 * sizes[-1]
    else:
        layers = [rnnjax.stack(*cells)]
        feat = sizes[-1]

    def init(key):
        ks = jax.random.split(key, len(layers) + 1)
        ps, d = [], 1
        for layer, kk, h in zip(layers, ks, sizes if args.bidirectional else [None]):
            ps.append(layer.init(kk, d))
            d = 2 * h if args.bidirectional else d
        return {"rnn": tuple(ps), "readout": readout.init(ks[-1], feat * len(pools))}

    def logits(p, xs):
        h = xs
        for layer, lp in zip(layers, p["rnn"]):
            if args.bidirectional:
                _, h = layer.apply(lp, h)
            else:
                _, h = rnnjax.unroll(layer, lp, h)
        pooled = {"mean": lambda: jnp.mean(h, 0), "max": lambda: jnp.max(h, 0), "last": lambda: h[-1]}
        z = jnp.concatenate([pooled[k]() for k in pools], axis=-1)
        return readout.apply(p["readout"], z)

    return init, logits


def main(argv=None):
    t0 = time.time()  # wall time of the whole run: data, model, compile, training
    p = _common.parser(__doc__.split("\n\n")[0], name="mnist1d", steps=3000, ckpt_every=500,
                       eval_every=500, chunk=100, log_every=20)
    g = p.add_argument_group("task and model")
    g.add_argument("--cell", choices=_common.CELLS, default="gru")
    g.add_argument("--hidden", default="32",
                   help="hidden size per direction of each layer, comma-separated (e.g. 16,24)")
    g.add_argument("--bidirectional", action=argparse_bool(), default=True)
    g.add_argument("--pool", default="mean+max", help="time pooling: mean, max, last, joined by +")
    g.add_argument("--batch", type=int, default=100)
    g.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (cosine schedule)")
    g.add_argument("--warmup", type=int, default=200, help="warmup steps")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW decoupled weight decay")
    g.add_argument("--clip-norm", type=float, default=1.0)
    g.add_argument("--data-seed", type=int, default=42, help="seed of the MNIST-1D generator")
    args = p.parse_args(argv)

    data = rnnjax.tasks.mnist1d(seed=args.data_seed)
    init, logits = build(args)
    k = _common.keys(args.seed)
    params = init(k["init"])
    n = _common.num_params(params)
    print(f"[mnist1d] {args.cell} hidden={args.hidden} bidirectional={args.bidirectional} "
          f"pool={args.pool}: {n} parameters; train {data.x_train.shape[1]}, test "
          f"{data.x_test.shape[1]} sequences of {data.x_train.shape[0]} steps", flush=True)

    loss_fn, batch_fn, eval_fn = _common.classification(logits, data, k["data"], args.batch)

    tx = rnnjax.optimizer("adamw", args.lr, clip_norm=args.clip_norm, weight_decay=args.weight_decay,
                          schedule="cosine", warmup_steps=args.warmup,
                          decay_steps=max(args.steps - args.warmup, 1))
    state = rnnjax.TrainState.create(params, tx, key=k["train"])
    step_fn = rnnjax.train_step(loss_fn, tx, has_aux=True, project=_common.projection(args.cell, 40))
    res = _common.train(args, t0=t0, name="mnist1d", state=state,
                        step_fn=step_fn, batch_fn=batch_fn, eval_fn=eval_fn,
                        final_fn=lambda p: {"test_accuracy": float(eval_fn(p)["accuracy"])},
                        info={"num_params_model": n, "reference_accuracy": REFERENCE_ACCURACY,
                              "chance_accuracy": rnnjax.tasks.CHANCE_ACCURACY})
    print(f"[mnist1d] test accuracy {res['final'][0]['test_accuracy']:.4f} with {n} parameters "
          f"(references: GRU 0.91, CNN 0.94)")
    return res


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


if __name__ == "__main__":
    main()
