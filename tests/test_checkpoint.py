"""rnnjax.checkpoint: bitwise save/restore of a whole TrainState, damaged checkpoints skipped,
leftovers of a killed save ignored, params hashing; the non-finite guard keeps params intact."""

import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax.checkpoint import CheckpointError, Checkpointer, params_sha256, state_from_tree, state_to_tree


@functools.lru_cache(maxsize=None)
def _model():
    """One model, optimizer and jitted step for every test here (compiled once)."""
    cell = rnnjax.stack(rnnjax.elman(4), rnnjax.elman(3))  # tuple params

    def loss_fn(p, batch, key):
        _, hs = rnnjax.unroll(cell, p["cell"], batch)
        return jnp.mean((hs[-1] @ p["w"]) ** 2) + 0.0 * jax.random.normal(key)

    tx = rnnjax.optimizer("adam", 1e-2, clip_norm=1.0, schedule="cosine", decay_steps=10)
    raw_step = rnnjax.train_step(loss_fn, tx)
    return cell, loss_fn, tx, raw_step, jax.jit(raw_step)


def _state(seed=0, steps=3):
    cell, loss_fn, tx, raw_step, step = _model()
    params = {"cell": cell.init(jax.random.key(seed), 2), "w": jnp.ones((3, 1))}
    state = rnnjax.TrainState.create(params, tx, key=jax.random.key(seed + 1))
    for t in range(steps):
        state, _ = step(state, jax.random.normal(jax.random.key(100 + t), (5, 2, 2)))
    return state, step, raw_step, tx


def _assert_same(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jnp.issubdtype(y.dtype, jax.dtypes.prng_key)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_tree_roundtrip_keeps_typed_key():
    state, *_ = _state()
    leaves, paths = state_to_tree(state)
    assert any("key" in p for p in paths)
    assert all(not jnp.issubdtype(v.dtype, jax.dtypes.prng_key) for v in leaves.values())
    _assert_same(state_from_tree(leaves, state), state)


def test_save_restore_bitwise_and_resume_continues_identically(tmp_path):
    state, step, *_ = _state(steps=3)
    ckpt = Checkpointer(tmp_path / "ck", max_to_keep=2)
    ckpt.save(state)
    assert ckpt.steps() == [3]
    template, *_ = _state(steps=0)
    restored = ckpt.restore_latest(template)
    _assert_same(restored, state)
    assert int(restored.step) == 3
    # one more step from the restored state equals one more from the original, bitwise
    b = jax.random.normal(jax.random.key(7), (5, 2, 2))
    _assert_same(step(restored, b)[0], step(state, b)[0])
    # max_to_keep
    s = state
    for _ in range(3):
        s, _ = step(s, b)
        ckpt.save(s)
    assert ckpt.steps() == [5, 6]
    ckpt.close()


def test_damaged_latest_is_skipped_with_a_warning_naming_it(tmp_path):
    state, step, *_ = _state(steps=2)
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(state)
    later, _ = step(state, jnp.ones((5, 2, 2)))
    ckpt.save(later)
    assert ckpt.steps() == [2, 3]
    # damage every data file of the latest checkpoint (same sizes, different bytes)
    damaged = 0
    for root, _, files in os.walk(ckpt.path(3) / "state"):
        for f in files:
            p = os.path.join(root, f)
            size = os.path.getsize(p)
            with open(p, "r+b") as fh:
                fh.write(bytes((7 * i + 3) % 256 for i in range(size)))
            damaged += 1
    assert damaged
    with pytest.warns(RuntimeWarning, match=r"checkpoint .*[/\\]3 \(step 3\)"):
        restored = ckpt.restore_latest(state)
    _assert_same(restored, state)  # the previous one (step 2)
    assert ckpt.steps() == [2]
    assert any((tmp_path / "corrupt_checkpoints").iterdir())  # moved aside, not deleted
    ckpt.save(later)  # the resumed run can save step 3 again
    _assert_same(ckpt.restore_latest(state), later)


def test_missing_files_and_checksum_mismatch_are_checkpoint_errors(tmp_path):
    state, *_ = _state(steps=1)
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(state)
    import shutil

    shutil.rmtree(ckpt.path(1) / "state")
    with pytest.raises(CheckpointError, match="1"):
        ckpt.restore(state, 1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert ckpt.restore_latest(state) is None  # nothing intact left
    assert any("step 1" in str(x.message) for x in w)


def test_leftover_of_a_killed_save_is_ignored(tmp_path):
    state, *_ = _state(steps=1)
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(state)
    ckpt.close()
    tmp = tmp_path / "ck" / "2.orbax-checkpoint-tmp-1234567"  # what a SIGKILL mid-save leaves
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_bytes(b"\0" * 10)
    ckpt = Checkpointer(tmp_path / "ck")
    assert ckpt.steps() == [1]
    _assert_same(ckpt.restore_latest(state), state)
    assert not tmp.exists()  # cleaned up on open


def test_structure_mismatch_raises(tmp_path):
    state, *_ = _state(steps=1)
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(state)
    other = state.replace(params={**state.params, "w": jnp.ones((4, 1))})
    with pytest.raises(ValueError, match="different state structure"):
        ckpt.restore_latest(other)


def test_params_sha256():
    a = {"x": jnp.arange(3.0), "y": {"z": jnp.ones((2, 2), jnp.float32)}}
    b = {"y": {"z": jnp.ones((2, 2), jnp.float32)}, "x": jnp.arange(3.0)}  # other insertion order
    assert params_sha256(a) == params_sha256(b)
    bits = np.asarray(a["x"]).view(np.uint32).copy()
    bits[1] ^= 1  # flip one bit
    c = {**a, "x": jnp.asarray(bits.view(np.float32))}
    assert params_sha256(c) != params_sha256(a)
    assert params_sha256({"x": jnp.zeros(2, jnp.float32)}) != params_sha256({"x": jnp.zeros(2, jnp.float16)})
    assert len(params_sha256(a)) == 64


def test_nonfinite_batch_leaves_params_untouched_and_fit_stops():
    state, step, raw_step, tx = _state(steps=2)
    nan = jnp.full((5, 2, 2), jnp.nan)
    new, metrics = step(state, nan)
    assert int(metrics["nonfinite"]) == 1 and int(new.step) == int(state.step) + 1
    _assert_same(new.params, state.params)
    _assert_same(new.opt_state, state.opt_state)
    good = jnp.ones((5, 2, 2))
    with pytest.raises(rnnjax.NonFiniteError, match="step 5") as e:
        rnnjax.fit(state, raw_step,
                   lambda t: good if t < 3 else nan, steps=10, progress=False,
                   max_consecutive_nonfinite=2)
    assert int(e.value.state.step) == 3
