"""A character-level language model (Sutskever et al. 2011; Graves 2013) on Python's own source.

The corpus is the source code of a fixed list of pure-Python standard-library modules
(``--modules``, default ``textwrap,string,difflib,argparse``), read from the running
interpreter's ``Lib/`` (``inspect.getsourcefile``) and concatenated in that order: no download,
deterministic for a given Python version (the text's SHA-256 and size go into ``results.json``).
The last ``--test-fraction`` of the characters is held out.

Two ways to train, at the same cost per step (``--batch`` x ``--seq-len`` characters):

- ``--mode window`` (default): each step draws ``--batch`` independent random windows of
  ``--seq-len + 1`` characters from the training part (their starts a pure function of the seed
  and the step), each read from a zero state;
- ``--mode tbptt``: truncated backpropagation through time (Williams & Peng 1990) with
  ``rnnjax.tbptt_step``: the training part is cut into ``--batch`` contiguous slices, stream ``b``
  reads its slice window after window (``--seq-len`` characters each, consecutive windows sharing
  one character: the last target is the next input), and the recurrent state runs on from one
  step to the next in ``TrainState.carry`` (checkpointed, so a resumed run is bitwise the same)
  while gradients stop at each window's start. A pass over the slices is an epoch; each epoch
  starts the streams at a random offset in ``[0, --seq-len)`` (a function of the seed and the
  epoch) from a zero state (:func:`stream_batch`).

Both use one-hot inputs, a recurrent cell and a dense readout over the vocabulary; loss is the
mean next-character cross-entropy. Evaluation is the same for both: the whole held-out text read
as ``--eval-streams`` contiguous streams carrying the state across it (``eval_bits_per_char``,
cross-entropy / ln 2), and the held-out text cut into windows of ``--seq-len`` characters each
read from a zero state (``eval_window_bits_per_char``). At the end the script prints samples drawn
with temperature sampling from an explicit key. Example::

    python experiments/charlm.py --cell lstm --hidden 256 --steps 5000 --workdir runs/charlm
    python experiments/charlm.py --mode tbptt --workdir runs/charlm-tbptt
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


def stream_batch(train_ids: jax.Array, step: jax.Array, *, batch: int, seq_len: int,
                 key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Window ``step`` of the truncated-BPTT streams: ``(tokens [seq_len + 1, batch], first)``.

    The ``N`` training characters are cut into ``batch`` slices of ``S = N // batch``; stream ``b``
    reads slice ``b`` in ``W = (S - seq_len) // seq_len`` consecutive windows per epoch: window
    ``w`` of epoch ``e`` (``step = e W + w``) is ``train_ids[b S + o_e + w L : b S + o_e + (w + 1) L
    + 1]`` with ``L = seq_len`` and the epoch's offset ``o_e`` uniform in ``[0, L)`` (drawn from
    ``fold_in(key, e)``), so window ``w + 1`` starts at window ``w``'s last character (its last
    target) and no window leaves its slice. ``first`` is True at ``w = 0``: the carry is reset
    there (a new epoch starts from a zero state).

    Args:
      train_ids: the training characters' indices ``[N]`` (int32).
      step: the training step (an int32 scalar, may be traced).
      batch: the number of streams ``B``.
      seq_len: the window length ``L`` (characters predicted per stream and step).
      key: the data key (the epochs' offsets).

    Returns:
      ``(tokens [L + 1, B] int32, first)`` with ``first`` a bool scalar.
    """
    n = train_ids.shape[0]
    per = n // batch
    windows = (per - seq_len) // seq_len
    if windows < 1:
        raise SystemExit(f"--mode tbptt: the training text ({n} characters) is too short for "
                         f"--batch {batch} streams of windows of --seq-len {seq_len}")
    epoch, w = step // windows, step % windows
    offset = jax.random.randint(jax.random.fold_in(key, epoch), (), 0, seq_len)
    starts = jnp.arange(batch, dtype=jnp.int32) * per + offset + w * seq_len
    tokens = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(train_ids, s, seq_len + 1),
                      out_axes=1)(starts)
    return tokens, w == 0


def parser():
    """The script's flags (every default printed by ``--help``)."""
    p = _common.parser(__doc__.split("\n\n")[0], name="charlm", steps=3000, ckpt_every=500,
                       eval_every=500)
    g = p.add_argument_group("task and model")
    g.add_argument("--modules", default="textwrap,string,difflib,argparse",
                   help="comma-separated stdlib modules whose source is the corpus")
    g.add_argument("--test-fraction", type=float, default=0.1, help="held-out tail of the text")
    g.add_argument("--mode", choices=("window", "tbptt"), default="window",
                   help="window: independent random windows from a zero state; tbptt: --batch "
                        "contiguous streams, the state carried across steps (truncated BPTT)")
    g.add_argument("--seq-len", type=int, default=100,
                   help="characters per training window (tbptt: the truncation length k)")
    g.add_argument("--cell", choices=_common.CELLS, default="gru")
    g.add_argument("--hidden", type=int, default=128)
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine schedule)")
    g.add_argument("--clip-norm", type=float, default=1.0)
    g.add_argument("--eval-streams", type=int, default=16, help="parallel streams of the held-out text")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    g.add_argument("--sample-len", type=int, default=300, help="characters per sample")
    g.add_argument("--prompt", default="def ", help="text the samples start from")
    return p


def build(args) -> dict:
    """What ``main`` hands to the engine for ``args``: ``state``, ``step_fn``, ``batch_fn``,
    ``eval_fn``, ``final_fn`` and ``info`` (the keywords of ``_common.train``)."""
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
    n_win = (len(test_ids) - 1) // L  # held-out windows of L predictions, each from a zero state
    test_windows = jnp.asarray(test_ids[np.arange(L + 1)[:, None] + L * np.arange(n_win)[None, :]])
    if split <= L + 1 or per < 2 or n_win < 1:
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

    def tbptt_loss(p, batch, key, carry):  # the carry is reset (zero) at an epoch's first window
        del key
        tokens, first = batch
        zero = cell.initial_carry(p["cell"], (args.batch,))
        carry = jax.tree.map(lambda z, c: jnp.where(first, z, c), zero, carry)
        carry, out = logits(p, tokens[:-1], carry)
        return rnnjax.losses.sequence_cross_entropy(out, tokens[1:]), carry

    def stream_fn(step):
        return stream_batch(train_ids, step, batch=args.batch, seq_len=L, key=k["data"])

    def eval_fn(p):
        _, out = logits(p, test_streams[:-1])
        ce = rnnjax.losses.sequence_cross_entropy(out, test_streams[1:])
        _, out_w = logits(p, test_windows[:-1])
        ce_w = rnnjax.losses.sequence_cross_entropy(out_w, test_windows[1:])
        return {"loss": ce, "bits_per_char": ce / math.log(2), "window_bits_per_char": ce_w / math.log(2)}

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
    project = _common.projection(args.cell, L)
    if args.mode == "tbptt":
        stream_fn(jnp.zeros([], jnp.int32))  # a corpus too short for the streams fails here, named
        state = rnnjax.TrainState.create(params, tx, key=k["train"],
                                         carry=cell.initial_carry(params["cell"], (args.batch,)))
        step_fn = rnnjax.tbptt_step(tbptt_loss, tx, project=project)
    else:
        state = rnnjax.TrainState.create(params, tx, key=k["train"])
        step_fn = rnnjax.train_step(loss_fn, tx, project=project)
    digest = hashlib.sha256(text.encode()).hexdigest()
    print(f"[charlm] corpus: {len(text)} characters from {len(files)} stdlib files "
          f"({', '.join(os.path.basename(f) for f in files)}), vocabulary {V}, "
          f"{split} train / {S * per} held-out characters; {args.cell} H={args.hidden}: "
          f"{_common.num_params(params)} parameters; uniform = {math.log2(V):.2f} bits/char; "
          f"training: {args.mode}", flush=True)
    return {"state": state, "step_fn": step_fn,
            "batch_fn": stream_fn if args.mode == "tbptt" else batch_fn,
            "eval_fn": eval_fn, "final_fn": final_fn,
            "info": {"corpus_files": files, "corpus_chars": len(text), "corpus_sha256": digest,
                     "python": sys.version, "vocab_size": V}}


def main(argv=None):
    t0 = time.time()  # wall time of the whole run: data, model, compile, training
    args = parser().parse_args(argv)
    res = _common.train(args, t0=t0, name="charlm", **build(args))
    print(f"[charlm] held-out bits per character: {res['final'][0]['eval_bits_per_char']:.4f} "
          f"(windows of {args.seq_len} from a zero state: "
          f"{res['final'][0]['eval_window_bits_per_char']:.4f})")
    return res


if __name__ == "__main__":
    main()
