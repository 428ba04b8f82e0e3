"""experiments/charlm.py --mode tbptt: the stream batching (stream b reads consecutive windows of
its slice, a random offset per epoch), the carry reset at an epoch's first window, and a stateful
fit that resumes bitwise from its work directory."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax

sys.path.append(os.path.join(os.path.dirname(__file__), os.pardir, "experiments"))
import charlm

N, B, L = 40, 3, 4  # slices of 13 characters, (13 - 4) // 4 = 2 windows per epoch
TINY = ["--mode", "tbptt", "--modules", "textwrap", "--test-fraction", "0.5", "--hidden", "6",
        "--seq-len", "6", "--batch", "3", "--eval-streams", "8", "--steps", "4"]


def test_stream_b_reads_consecutive_windows_of_its_slice():
    ids = jnp.arange(N, dtype=jnp.int32)  # each token is its own position in the text
    per, windows = N // B, (N // B - L) // L
    key = jax.random.key(3)
    offsets, previous = [], None
    for step in range(3 * windows):
        tokens, first = charlm.stream_batch(ids, jnp.int32(step), batch=B, seq_len=L, key=key)
        tokens = np.asarray(tokens)
        epoch, w = divmod(step, windows)
        assert tokens.shape == (L + 1, B) and bool(first) == (w == 0)
        offset = int(tokens[0, 0]) - w * L  # where epoch `epoch` starts in slice 0
        assert 0 <= offset < L
        want = np.arange(B)[None, :] * per + offset + w * L + np.arange(L + 1)[:, None]
        np.testing.assert_array_equal(tokens, want)  # same offset for every stream, within its slice
        assert tokens.max() < N and np.all(tokens // per == np.arange(B)[None, :])
        if w > 0:  # the window starts at the previous one's last character (its last target)
            np.testing.assert_array_equal(tokens[0], previous[-1])
        previous = tokens
        offsets.append(offset)
    assert len(set(offsets[::windows])) > 1  # the epochs' offsets differ (seeded by the epoch)


def test_the_carry_runs_on_within_an_epoch_and_is_reset_at_its_start():
    args = charlm.parser().parse_args(TINY + ["--lr", "0.01"])
    run = charlm.build(args)
    step = jax.jit(run["step_fn"])
    state, _ = step(run["state"], run["batch_fn"](jnp.int32(0)))  # a non-zero carry
    tokens, first = run["batch_fn"](jnp.int32(1))
    assert not bool(first)
    cell = charlm._common.make_cell(args.cell, args.hidden, seq_len=args.seq_len)
    V = run["info"]["vocab_size"]
    xs = jax.nn.one_hot(tokens[:-1], V, dtype=jnp.float32)
    on, _ = rnnjax.unroll(cell, state.params["cell"], xs, state.carry)
    reset, _ = rnnjax.unroll(cell, state.params["cell"], xs)  # from the zero state
    assert not np.allclose(np.asarray(on), np.asarray(reset), atol=1e-4)
    for first, want in ((False, on), (True, reset)):
        new, _ = step(state, (tokens, jnp.asarray(first)))
        np.testing.assert_allclose(np.asarray(new.carry), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_a_tbptt_fit_resumes_bitwise(tmp_path):
    run = charlm.build(charlm.parser().parse_args(TINY))
    kw = dict(progress=False, chunk=2, ckpt_every=2)
    full = rnnjax.fit(run["state"], run["step_fn"], run["batch_fn"], steps=4, **kw)
    rnnjax.fit(run["state"], run["step_fn"], run["batch_fn"], steps=2, workdir=tmp_path, **kw)
    resumed = rnnjax.fit(run["state"], run["step_fn"], run["batch_fn"], steps=4, workdir=tmp_path, **kw)
    assert resumed.resumed_from_step == 2
    assert resumed.params_sha256 == full.params_sha256
    np.testing.assert_array_equal(np.asarray(resumed.state.carry), np.asarray(full.state.carry))
    assert np.abs(np.asarray(full.state.carry)).max() > 0  # the state really carried something
