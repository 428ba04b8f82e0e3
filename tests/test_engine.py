"""The training engine: rnnjax.fit with a workdir (checkpoints, bitwise resume, extension, config
checks, metrics.jsonl, TensorBoard, results.json), compiled and host-fed modes."""

import json
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import engine
from rnnjax.checkpoint import params_sha256

H, T, B = 6, 7, 4


def _setup(lr=1e-2, seed=0):
    cell, readout = rnnjax.gru(H), rnnjax.dense(1)
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"cell": cell.init(k1, 2), "out": readout.init(k2, H)}

    def loss_fn(p, batch, key):
        del key
        xs, ys = batch
        _, hs = rnnjax.unroll(cell, p["cell"], xs)
        return rnnjax.mse(readout.apply(p["out"], hs[-1]), ys)

    def batch_fn(step):  # traceable: compiled chunks
        return rnnjax.tasks.adding(jax.random.fold_in(jax.random.key(seed + 100), step), B, T)

    tx = rnnjax.optimizer("adam", lr, clip_norm=1.0)
    state = rnnjax.TrainState.create(params, tx, key=jax.random.key(seed + 7))
    step_fn = rnnjax.train_step(loss_fn, tx)

    def eval_fn(p):
        return {"loss": loss_fn(p, rnnjax.tasks.adding(jax.random.key(999), 16, T), None)}

    return state, step_fn, batch_fn, eval_fn


def _same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_compiled_chunks_equal_host_steps_and_any_chunking():
    state, step_fn, batch_fn, _ = _setup()
    ref, h_ref = rnnjax.fit(state, step_fn, batch_fn, steps=9, chunk=9, progress=False)
    for chunk in (4,):
        got, h = rnnjax.fit(state, step_fn, batch_fn, steps=9, chunk=chunk, progress=False)
        _same(got.params, ref.params)
        assert h["loss"] == h_ref["loss"]
    # a host-fed (non-traceable) batch_fn: the same numbers to float rounding
    host = lambda t: batch_fn(jnp.int32(int(t)))  # noqa: E731 - int(t) fails on a tracer
    got, h = rnnjax.fit(state, step_fn, host, steps=9, progress=False)
    np.testing.assert_allclose(h["loss"], h_ref["loss"], rtol=1e-5)
    # an iterator of batches
    got2, h2 = rnnjax.fit(state, step_fn, (host(t) for t in range(100)), steps=9, progress=False)
    np.testing.assert_allclose(h2["loss"], h["loss"], rtol=0, atol=0)


def test_workdir_resume_is_bitwise_and_writes_the_run_files(tmp_path):
    state, step_fn, batch_fn, eval_fn = _setup()
    kw = dict(steps=12, ckpt_every=4, eval_fn=eval_fn, eval_every=6, progress=False,
              config={"lr": 1e-2, "cell": "gru"})
    full, h_full = rnnjax.fit(state, step_fn, batch_fn, workdir=tmp_path / "full", **kw)
    # interrupted after step 8 (the checkpoint of step 8 exists), then resumed
    part, _ = rnnjax.fit(state, step_fn, batch_fn, workdir=tmp_path / "cut", **{**kw, "steps": 8})
    resumed, h = rnnjax.fit(state, step_fn, batch_fn, workdir=tmp_path / "cut", **kw)
    _same(resumed.params, full.params)
    assert h["step"] == h_full["step"] and h["loss"] == h_full["loss"]
    # the 8-step run evaluated at its end too
    assert h["eval_step"] == [6, 8, 12] and h_full["eval_step"] == [6, 12]
    assert [h["eval_loss"][0], h["eval_loss"][2]] == h_full["eval_loss"]
    res = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert res["params_sha256"] == [params_sha256(full.params)]  # indexed by configuration
    assert res["resumed_from_step"] == 8 and res["steps"] == 12
    assert len(res["sessions"]) == 2  # the wall time is summed over both processes' sessions
    assert res["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in res["sessions"]))
    assert res["final"][0]["eval_loss"] == h_full["eval_loss"][-1]
    assert res["config"] == {"lr": 1e-2, "cell": "gru"}
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == list(range(1, 13))
    assert (tmp_path / "cut" / "loss.png").stat().st_size > 0


def test_extending_a_finished_run_equals_the_longer_run(tmp_path):
    state, step_fn, batch_fn, _ = _setup()
    long, _ = rnnjax.fit(state, step_fn, batch_fn, steps=20, progress=False)
    rnnjax.fit(state, step_fn, batch_fn, steps=10, workdir=tmp_path, progress=False)
    ext, h = rnnjax.fit(state, step_fn, batch_fn, steps=20, workdir=tmp_path, progress=False)
    _same(ext.params, long.params)
    assert h["step"] == list(range(1, 21))


def test_a_changed_config_is_refused_naming_the_keys(tmp_path):
    state, step_fn, batch_fn, _ = _setup()
    rnnjax.fit(state, step_fn, batch_fn, steps=2, workdir=tmp_path, progress=False,
               config={"lr": 1e-2, "hidden": 6, "log_every": 1})
    with pytest.raises(ValueError, match=r"differing keys \['hidden', 'lr'\]"):
        rnnjax.fit(state, step_fn, batch_fn, steps=2, workdir=tmp_path, progress=False,
                   config={"lr": 1e-3, "hidden": 8, "log_every": 1})
    # cadence settings and steps may change
    rnnjax.fit(state, step_fn, batch_fn, steps=3, workdir=tmp_path, progress=False,
               config={"lr": 1e-2, "hidden": 6, "log_every": 5})


def test_bad_workdirs_fail_before_training(tmp_path):
    state, step_fn, batch_fn, _ = _setup()
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ValueError, match=f"workdir {f} is an existing file"):
        rnnjax.fit(state, step_fn, batch_fn, steps=2, workdir=f, progress=False)
    # a directory nobody can create (root included): /proc does not take new entries
    with pytest.raises(ValueError, match="workdir /proc/rnnjax-run cannot be written"):
        rnnjax.fit(state, step_fn, batch_fn, steps=2, workdir="/proc/rnnjax-run", progress=False)
    # a read-only directory (for a non-root user)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() != 0:
        with pytest.raises(ValueError, match="cannot be written"):
            rnnjax.fit(state, step_fn, batch_fn, steps=2, workdir=ro / "run", progress=False)


def test_unwritable_workdir_error_names_the_path(tmp_path, monkeypatch):
    state, step_fn, batch_fn, _ = _setup()

    def deny(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(engine.Path, "write_text", deny)
    with pytest.raises(ValueError, match=f"workdir {tmp_path / 'run'} cannot be written: Permission denied"):
        rnnjax.fit(state, step_fn, batch_fn, steps=2, workdir=tmp_path / "run", progress=False)


def test_tensorboard_events_hold_every_logged_step(tmp_path):
    state, step_fn, batch_fn, eval_fn = _setup()
    _, h = rnnjax.fit(state, step_fn, batch_fn, steps=6, ckpt_every=3, workdir=tmp_path,
                      eval_fn=eval_fn, eval_every=3, progress=False, tensorboard=True)
    ev = engine.read_events(tmp_path)
    assert [s for s, _ in ev["train/loss"]] == list(range(1, 7))
    np.testing.assert_allclose([v for _, v in ev["train/loss"]], h["loss"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in ev["eval/loss"]], h["eval_loss"], rtol=1e-6)


def test_nonfinite_guard_in_compiled_chunks_keeps_the_last_checkpoint(tmp_path):
    state, step_fn, batch_fn, _ = _setup()

    def poisoned(step):
        xs, ys = batch_fn(step)
        return jnp.where(step >= 5, jnp.nan, xs), ys

    with pytest.raises(rnnjax.NonFiniteError, match="step 8: 3 consecutive") as e:
        rnnjax.fit(state, step_fn, poisoned, steps=20, ckpt_every=2, chunk=10, workdir=tmp_path,
                   progress=False, max_consecutive_nonfinite=3)
    assert e.value.step == 8 and int(e.value.state.step) == 5
    ok, _ = rnnjax.fit(state, step_fn, batch_fn, steps=5, progress=False)
    _same(e.value.state.params, ok.params)
    ckpts = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts[-1] == 4  # nothing saved after the non-finite steps


def test_machine_records_what_runs_the_lstm_and_gru_unrolls(monkeypatch):
    """``machine()`` (stored in every work directory's session record) names the path a float32
    LSTM / GRU unroll with ``backend="auto"`` takes here: the native kernel, or the XLA path and
    why."""
    from rnnjax import _native

    got = rnnjax.machine()["lstm_gru_cpu"]
    if _native.available():
        assert got == (f"native kernel ({_native._load()['module'].isa()} gate math, "
                       f"{_native.num_threads()} OpenBLAS threads)")
    else:
        assert got == f"XLA path ({_native.reason()})"
    monkeypatch.setattr(_native, "_load", lambda: {"ok": False, "reason": "not built here"})
    assert rnnjax.machine()["lstm_gru_cpu"] == "XLA path (not built here)"
