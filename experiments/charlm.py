"""A character-level language model (Sutskever et al. 2011; Graves 2013) on Python's own source.

The corpus is the source code of a fixed list of pure-Python standard-library modules
(``--modules``, default ``textwrap,string,difflib,argparse``), read from the running
interpreter's ``Lib/`` (``inspect.getsourcefile``) and concatenated in that order: no download,
deterministic for a given Python version (the text's SHA-256 and size go into ``results.json``).
The last ``--test-fraction`` of the characters is held out.

Training draws random windows of ``--seq-len + 1`` characters from the training part (their
starts a pure function of the seed and the step), one-hot inputs, a recurrent cell and a dense
readout over the vocabulary; loss is the mean next-character cross-entropy. Evaluation reads the
whole held-out text as ``--eval-streams`` contiguous streams, carrying the state across it, and
reports bits per character (cross-entropy / ln 2). At the end the script prints samples drawn
with temperature sampling from an explicit key. Example::

    python experiments/charlm.py --cell lstm --hidden 256 --steps 5000 --workdir runs/charlm
"""

from __future__ import annotations

import os
import sys

# This folder holds scripts named like packages (mnist1d, copy): search it after everything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [q for q in sys.path if os.path.abspath(q or ".") != _HERE] + [_HERE]

import hashlib
import importlib
import inspect
import math

import time

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax
import _common


def corpus(modules: list[str]) -> tuple[str, list[str]]:
    """The concatenated source of ``modules`` (stdlib), and the files it came from."""
    texts, files = [], []
    for name in modules:
        path = inspect.getsourcefile(importlib.import_module(name))
        if path is None:
            raise SystemExit(f"module {name!r} has no Python source file")
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
        files.append(path)
    return "\n".join(texts), files


def main(argv=None):
    t0 = time.time()  # wall time of the whole run: data, model, compile, training
    p = _common.parser(__doc__.split("\n\n")[0], name="charlm", steps=3000, ckpt_every=500,
                       eval_every=500)
    g = p.add_argument_group("task and model")
    g.add_argument("--modules", default="textwrap,string,difflib,argparse",
                   help="comma-separated stdlib modules whose source is the corpus")
    g.add_argument("--test-fraction", type=float, default=0.1, help="held-out tail of the text")
    g.add_argument("--seq-len", type=int, default=100, help="characters per training window")
    g.add_argument("--cell", choices=_common.CELLS, default="gru")
    g.add_argument("--hidden", type=int, default=128)
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine schedule)")
    g.add_argument("--clip-norm", type=float, default=1.0)
    g.add_argument("--eval-streams", type=int, default=16, help="parallel streams of the held-out text")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    g.add_argument("--sample-len", type=int, default=300, help="characters per sample")
    g.add_argument("--prompt", default="def ", help="text the samples start from")
    args = p.parse_args(argv)

    text, files = corpus([m.strip() for m in args.modules.split(",") if m.strip()])
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    V = len(vocab)
    ids = np.array([index[c] for c in text], np.int32)
    split = int(len(ids) * (1 - args.test_fraction))
    train_ids, test_ids = jnp.asarray(ids[:split]), ids[split:]
    S = args.eval_streams
    per = len(test_ids) // S
    test_streams = jnp.asarray(test_ids[:S * per].reshape(S, per).T)  # [per, S] time-major
    L = args.seq_len
    if split <= L + 1 or per < 2:
        raise SystemExit("the corpus is too short for --seq-len / --eval-streams")
    for c in args.prompt:
        if c not in index:
            raise SystemExit(f"--prompt character {c!r} is not in the vocabulary")

    cell = _common.make_cell(args.cell, args.hidden, seq_len=L)
    readout = rnnjax.dense(V)
    k = _common.keys(args.seed)
    kc, kr = jax.random.split(k["init"])
    params = {"cell": cell.init(kc, V)}
    params["readout"] = readout.init(kr, rnnjax.layers.output_size(cell, params["cell"], V))

    def logits(p, tokens, carry=None):
        xs = jax.nn.one_hot(tokens, V, dtype=jnp.float32)
        carry, hs = rnnjax.unroll(cell, p["cell"], xs, carry)
        return carry, readout.apply(p["readout"], hs)

    def loss_fn(p, tokens, key):
        del key
        _, out = logits(p, tokens[:-1])
        return rnnjax.losses.sequence_cross_entropy(out, tokens[1:])

    def batch_fn(step):
        starts = jax.random.randint(jax.random.fold_in(k["data"], step), (args.batch,), 0, split - L - 1)
        return jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(train_ids, s, L + 1), out_axes=1)(starts)

    def eval_fn(p):
        _, out = logits(p, test_streams[:-1])
        ce = rnnjax.losses.sequence_cross_entropy(out, test_streams[1:])
        return {"loss": ce, "bits_per_char": ce / math.log(2)}

    def sample(p, key, n):
        prompt = jnp.asarray([index[c] for c in args.prompt], jnp.int32)[:, None]  # [P, 1]
        carry, out = logits(p, prompt)

        def step(c, kt):
            carry, lg = c
            tok = jax.random.categorical(kt, lg / args.temperature, axis=-1)  # [1]
            carry, lg = logits(p, tok[None], carry)
            return (carry, lg[0]), tok[0]

        _, toks = jax.lax.scan(step, (carry, out[-1]), jax.random.split(key, n))
        return toks

    def final_fn(p):
        samples = []
        for i in range(2):
            toks = np.asarray(jax.jit(sample, static_argnums=2)(p, jax.random.fold_in(k["eval"], i),
                                                                  args.sample_len))
            samples.append(args.prompt + "".join(vocab[t] for t in toks))
        for i, s in enumerate(samples):
            print(f"----- sample {i} (temperature {args.temperature}) -----\n{s}\n")
        return {"samples": samples, "uniform_bits_per_char": math.log2(V)}

    tx = rnnjax.optimizer("adam", args.lr, clip_norm=args.clip_norm, schedule="cosine",
                          decay_steps=args.steps)
    state = rnnjax.TrainState.create(params, tx, key=k["train"])
    digest = hashlib.sha256(text.encode()).hexdigest()
    print(f"[charlm] corpus: {len(text)} characters from {len(files)} stdlib files "
          f"({', '.join(os.path.basename(f) for f in files)}), vocabulary {V}, "
          f"{split} train / {S * per} held-out characters; {args.cell} H={args.hidden}: "
          f"{_common.num_params(params)} parameters; uniform = {math.log2(V):.2f} bits/char",
          flush=True)
    step_fn = rnnjax.train_step(loss_fn, tx, project=_common.projection(args.cell, L))
    res = _common.train(args, t0=t0, name="charlm", state=state, step_fn=step_fn, batch_fn=batch_fn,
                        eval_fn=eval_fn, final_fn=final_fn,
                        info={"corpus_files": files, "corpus_chars": len(text),
                              "corpus_sha256": digest, "python": sys.version, "vocab_size": V})
    print(f"[charlm] held-out bits per character: {res['final'][0]['eval_bits_per_char']:.4f}")
    return res


if __name__ == "__main__":
    main()
