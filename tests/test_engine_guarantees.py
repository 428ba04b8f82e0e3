"""One engine under fit and run_sweep (the same loop, defaults, guard, callback order and results
schema), and nothing lost or silent: the lock, exceptions during training, checks before
training, what a damaged work directory can and cannot give back, hyperparameter ranges."""

import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import sweep
from rnnjax.checkpoint import params_sha256

H, T, B = 4, 6, 3


def _model(seed=0):
    cell, readout = rnnjax.gru(H), rnnjax.dense(1)
    k1, k2 = jax.random.split(jax.random.key(seed))
    return cell, readout, {"cell": cell.init(k1, 2), "out": readout.init(k2, H)}


def _loss(cell, readout):
    def loss_fn(p, batch, key):
        del key
        _, hs = rnnjax.unroll(cell, p["cell"], batch[0])
        return rnnjax.mse(readout.apply(p["out"], hs[-1]), batch[1])

    return loss_fn


def _batch(step):
    return rnnjax.tasks.adding(jax.random.fold_in(jax.random.key(5), step), B, T)


def _fit_setup(lr=1e-2):
    cell, readout, params = _model()
    loss_fn = _loss(cell, readout)
    tx = rnnjax.optimizer("adam", lr, clip_norm=1.0)
    state = rnnjax.TrainState.create(params, tx, key=jax.random.key(1))
    return state, rnnjax.train_step(loss_fn, tx), loss_fn


def _same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- one engine

CELL, READOUT, _ = _model()
SWEEP_LOSS = _loss(CELL, READOUT)


def make_tx(c):
    return rnnjax.optimizer("sgd", c["lr"], clip_norm=None)


def init_fn(c):
    k1, k2, k3 = jax.random.split(jax.random.key(c["seed"]), 3)
    params = {"cell": CELL.init(k1, 2), "out": READOUT.init(k2, H)}
    return rnnjax.TrainState.create(params, make_tx(c), key=k3)


STEP = sweep.sweep_step(lambda p, b, k, c: SWEEP_LOSS(p, b, k), make_tx)


def batch_fn(c, step):
    return rnnjax.tasks.adding(jax.random.fold_in(jax.random.key(c["seed"] + 9), step), B, T)


def test_a_diverging_configuration_is_frozen_and_the_others_train_on_bitwise(tmp_path):
    good = [{"lr": 0.05, "seed": 0}, {"lr": 0.02, "seed": 1}]
    bad = {"lr": 1e3, "seed": 2}  # plain SGD at 1e3 on a GRU: inf within a few steps
    kw = dict(steps=12, progress=False, devices=jax.devices()[:1], max_consecutive_nonfinite=2)
    alone = sweep.run_sweep(good, init_fn, STEP, batch_fn, **kw)
    mixed = sweep.run_sweep([good[0], bad, good[1]], init_fn, STEP, batch_fn, workdir=tmp_path, **kw)
    assert alone.diverged == [None, None]
    assert mixed.diverged[0] is None and mixed.diverged[2] is None
    step = mixed.diverged[1]
    assert isinstance(step, int) and 2 <= step <= 12
    nonfinite = mixed.metrics["nonfinite"][1]
    k = list(mixed.metric_steps).index(step)
    assert nonfinite[k - 1] == 1 and nonfinite[k] == 1  # two in a row, the guard's limit
    # frozen at its last good state: every step after the divergence is skipped (NaN metrics)
    assert np.all(np.isnan(mixed.metrics["loss"][1, k + 1:]))
    assert np.all(np.isfinite(np.asarray(mixed.state(1).params["cell"]["w_h"])))
    for i, j in ((0, 0), (2, 1)):  # the others: bit for bit as without the diverging one
        _same(mixed.state(i).params, alone.state(j).params)
    assert mixed.params_sha256[2] == alone.params_sha256[1]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["diverged"] == [None, step, None]
    assert [r["diverged"] for r in mixed.table()] == [None, step, None]
    assert mixed.best() != 1


def test_fit_and_run_sweep_share_their_defaults_and_names():
    fit = inspect.signature(rnnjax.fit).parameters
    run = inspect.signature(sweep.run_sweep).parameters
    shared = set(fit) & set(run)
    assert {"chunk", "log_every", "max_to_keep", "max_consecutive_nonfinite", "callback",
            "ckpt_every", "eval_every", "workdir", "config", "tensorboard", "baseline",
            "override_hyperparams", "progress"} <= shared
    for name in shared - {"eval_fn", "steps"}:
        assert fit[name].default == run[name].default, name
    assert "steps_per_call" not in run


def test_callback_runs_after_the_evaluation_in_both(tmp_path):
    state, step_fn, loss_fn = _fit_setup()
    seen = []
    eval_fn = lambda p: {"mse": loss_fn(p, _batch(99), None)}  # noqa: E731
    rnnjax.fit(state, step_fn, _batch, steps=4, chunk=2, eval_fn=eval_fn, eval_every=2,
               progress=False, callback=lambda s, r: seen.append(r))
    assert [r["step"] for r in seen] == [1, 2, 3, 4]
    assert "eval_mse" in seen[1] and "eval_mse" in seen[3] and "eval_mse" not in seen[0]
    got = []
    res = sweep.run_sweep([{"lr": 0.05, "seed": 0}], init_fn, STEP, batch_fn, steps=2, progress=False,
                          devices=jax.devices()[:1], eval_fn=lambda p, c: {"mse": SWEEP_LOSS(p, _batch(99), None)},
                          callback=lambda s, r: got.append(r))
    assert [r["step"] for r in got] == [1, 2] and got[1]["eval_mse"].shape == (1,)
    np.testing.assert_allclose(got[1]["eval_mse"], res.eval_metrics["mse"][:, -1])


def test_fit_returns_its_results_as_an_object(tmp_path):
    state, step_fn, loss_fn = _fit_setup()
    res = rnnjax.fit(state, step_fn, _batch, steps=3, workdir=tmp_path, progress=False,
                     eval_fn=lambda p: {"mse": loss_fn(p, _batch(99), None)})
    saved = json.loads((tmp_path / "results.json").read_text())
    assert res.results == saved and res.params_sha256 == saved["params_sha256"]
    assert res.params_sha256 == [params_sha256(res.state.params)]
    assert res.final[0]["eval_mse"] == saved["final"][0]["eval_mse"]
    assert res.files["results"] == tmp_path.absolute() / "results.json" and res.diverged == [None]
    assert res.wall_time_s == pytest.approx(sum(x["wall_time_s"] for x in saved["sessions"]))
    assert res.wall_time_s > 0
    state2, history = res  # unpacks as it always did
    assert history["step"] == [1, 2, 3] and state2 is res.state


def test_a_resumed_sweep_records_where_each_session_started(tmp_path):
    kw = dict(progress=False, devices=jax.devices()[:1], workdir=tmp_path, chunk=2, ckpt_every=2)
    cfgs = [{"lr": 0.05, "seed": 0}]
    sweep.run_sweep(cfgs, init_fn, STEP, batch_fn, steps=2, **kw)
    res = sweep.run_sweep(cfgs, init_fn, STEP, batch_fn, steps=4, **kw)
    sessions = res.results["sessions"]
    assert [(s["from_step"], s["to_step"]) for s in sessions] == [(0, 2), (2, 4)]
    assert res.resumed_from_step == 2


# ----------------------------------------------------------------------------- the lock

HOLDER = textwrap.dedent("""
    import sys, time
    from rnnjax.engine import Workdir
    w = Workdir(sys.argv[1], config={}, steps=1)
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_second_process_on_a_workdir_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    root = str(Path(rnnjax.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        state, step_fn, _ = _fit_setup()
        with pytest.raises(rnnjax.WorkdirError, match=rf"in use by another process \(pid {proc.pid} on host"):
            rnnjax.fit(state, step_fn, _batch, steps=2, workdir=tmp_path, progress=False)
        assert not (tmp_path / "checkpoints").exists()
    finally:
        proc.kill()
        proc.wait()
    state, step_fn, _ = _fit_setup()  # its process is dead: the lock is free again
    res = rnnjax.fit(state, step_fn, _batch, steps=2, workdir=tmp_path, progress=False)
    assert int(res.state.step) == 2
    assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()


# ----------------------------------------------------------------------------- exceptions


def test_an_exception_during_training_saves_the_last_good_state(tmp_path):
    state, step_fn, _ = _fit_setup()

    def loader(step):  # a host data loader that fails at step 7
        if step == 7:
            raise OSError("disk gone")
        return jax.tree.map(np.asarray, _batch(jnp.int32(step)))

    with pytest.raises(OSError, match="disk gone") as e:
        rnnjax.fit(state, step_fn, loader, steps=10, workdir=tmp_path, progress=False)
    assert "resumes from step 7" in "".join(e.value.__notes__)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 8))
    ok = lambda step: jax.tree.map(np.asarray, _batch(jnp.int32(step)))  # noqa: E731
    resumed = rnnjax.fit(state, step_fn, ok, steps=10, workdir=tmp_path, progress=False)
    full = rnnjax.fit(state, step_fn, ok, steps=10, progress=False)
    assert resumed.resumed_from_step == 7
    _same(resumed.state.params, full.state.params)


def test_a_keyboard_interrupt_in_a_callback_saves_the_chunk(tmp_path):
    state, step_fn, _ = _fit_setup()

    def stop(s, record):
        if record["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rnnjax.fit(state, step_fn, _batch, steps=8, chunk=4, workdir=tmp_path, progress=False,
                   callback=stop)
    res = rnnjax.fit(state, step_fn, _batch, steps=8, chunk=4, workdir=tmp_path, progress=False)
    assert res.resumed_from_step == 4


def test_an_iterable_shorter_than_steps_names_the_step(tmp_path):
    state, step_fn, _ = _fit_setup()
    batches = [jax.tree.map(np.asarray, _batch(jnp.int32(t))) for t in range(3)]
    with pytest.raises(ValueError, match="ran out at step 3"):
        rnnjax.fit(state, step_fn, iter(batches), steps=5, workdir=tmp_path, progress=False)
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3


# ----------------------------------------------------------------------------- checked first


def test_bad_eval_and_step_outputs_fail_before_any_training(tmp_path):
    state, step_fn, loss_fn = _fit_setup()
    cases = [
        (lambda p: {"mse": jnp.zeros(3)}, ValueError, r"eval_fn: entry 'mse' must be a scalar, got shape \(3,\)"),
        (lambda p: loss_fn(p, _batch(0), None), TypeError, "eval_fn must return a dict"),
    ]
    for eval_fn, err, match in cases:
        with pytest.raises(err, match=match):
            rnnjax.fit(state, step_fn, _batch, steps=3, workdir=tmp_path / "e", eval_fn=eval_fn,
                       progress=False)
        assert not (tmp_path / "e" / "checkpoints").exists() or not any((tmp_path / "e" / "checkpoints").iterdir())
    with pytest.raises(TypeError, match=r"must return \(state, metrics\)"):
        rnnjax.fit(state, lambda s, b: step_fn(s, b)[0], _batch, steps=2, progress=False)
    with pytest.raises(ValueError, match=r"eval_fn: entry 'mse' must be a scalar"):
        sweep.run_sweep([{"lr": 0.05, "seed": 0}], init_fn, STEP, batch_fn, steps=2, progress=False,
                        devices=jax.devices()[:1], eval_fn=lambda p, c: {"mse": jnp.zeros(2)})


def test_hyperparameters_out_of_range_are_refused_naming_the_configuration():
    kw = dict(steps=1, progress=False, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match=r"configs\[1\].*learning_rate = -1: must lie in \[0, inf\)"):
        sweep.run_sweep([{"lr": 0.1, "seed": 0}, {"lr": -1.0, "seed": 0}], init_fn, STEP, batch_fn, **kw)
    with pytest.raises(ValueError, match=r"learning_rate = nan"):
        sweep.run_sweep([{"lr": float("nan"), "seed": 0}], init_fn, STEP, batch_fn, **kw)

    def clipped(c):
        return rnnjax.optimizer("sgd", 0.1, clip_norm=c["clip"])

    def init(c):
        return rnnjax.TrainState.create(init_fn({"seed": 0, "lr": 0.1}).params, clipped(c), key=jax.random.key(0))

    step = sweep.sweep_step(lambda p, b, k, c: SWEEP_LOSS(p, b, k), clipped)
    with pytest.raises(ValueError, match=r"clip_norm = 0: must lie in \(0, inf\)"):
        sweep.run_sweep([{"clip": 0.0, "seed": 0}], init, step, batch_fn, **kw)
    with pytest.raises(ValueError, match=r"configs\[0\]\['seed'\] = 1099511627776 does not fit in int32"):
        sweep.run_sweep([{"lr": 0.1, "seed": 2**40}], init_fn, STEP, batch_fn, **kw)
    # fit: an array learning rate is checked as concrete values are
    state, _, loss_fn = _fit_setup()
    tx = rnnjax.optimizer("adam", jnp.asarray(-1.0))
    st = rnnjax.TrainState.create(state.params, tx, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"learning_rate = -1: must lie in \[0, inf\)"):
        rnnjax.fit(st, rnnjax.train_step(loss_fn, tx), _batch, steps=1, progress=False)


def test_a_new_learning_rate_on_resume_is_refused_unless_overridden(tmp_path):
    state, step_fn, _ = _fit_setup(lr=1e-2)
    rnnjax.fit(state, step_fn, _batch, steps=2, workdir=tmp_path, progress=False)
    faster, faster_step, _ = _fit_setup(lr=1e-1)
    with pytest.raises(rnnjax.WorkdirError, match=r"learning_rate: 0.01 vs 0.1"):
        rnnjax.fit(faster, faster_step, _batch, steps=4, workdir=tmp_path, progress=False)
    res = rnnjax.fit(faster, faster_step, _batch, steps=4, workdir=tmp_path, progress=False,
                     override_hyperparams=True)
    assert res.history.train["learning_rate"][0, -1] == pytest.approx(0.1)
    assert res.history.train["learning_rate"][0, 0] == pytest.approx(0.01)


def test_a_state_from_another_optimizer_is_refused():
    state, _, loss_fn = _fit_setup(lr=1e-2)
    sgd = rnnjax.optimizer("sgd", 1e-2)
    with pytest.raises(ValueError, match="made by a different optimizer"):
        rnnjax.fit(state, rnnjax.train_step(loss_fn, sgd), _batch, steps=1, progress=False)
    other = rnnjax.optimizer("adam", 0.5, clip_norm=1.0)  # same structure, other values
    with pytest.raises(ValueError, match=r"other optimizer hyperparameters .*learning_rate"):
        rnnjax.fit(state, rnnjax.train_step(loss_fn, other), _batch, steps=1, progress=False)


# ----------------------------------------------------------------------------- damaged workdirs


def test_what_a_checkpoint_holds_is_rebuilt_and_what_is_unknown_is_refused(tmp_path):
    state, step_fn, _ = _fit_setup()
    kw = dict(ckpt_every=2, chunk=2, progress=False)
    rnnjax.fit(state, step_fn, _batch, steps=4, workdir=tmp_path, **kw)
    (tmp_path / "metrics.jsonl").unlink()  # a deleted log: rebuilt from the checkpoint's history
    res = rnnjax.fit(state, step_fn, _batch, steps=6, workdir=tmp_path, **kw)
    assert res.history.as_lists()["step"] == [1, 2, 3, 4, 5, 6]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    (tmp_path / "config.json").write_text("{garbage")
    with pytest.raises(rnnjax.WorkdirError, match="config.json cannot be read"):
        rnnjax.fit(state, step_fn, _batch, steps=8, workdir=tmp_path, **kw)
    assert (tmp_path / "config.json").read_text() == "{garbage"  # not overwritten


def test_configs_with_nan_resume_and_unrecordable_values_are_refused(tmp_path):
    state, step_fn, _ = _fit_setup()
    cfg = {"dropout": float("nan"), "tags": {"b", "a"}}
    rnnjax.fit(state, step_fn, _batch, steps=1, workdir=tmp_path, config=cfg, progress=False)
    res = rnnjax.fit(state, step_fn, _batch, steps=2, workdir=tmp_path, config=cfg, progress=False)
    assert res.resumed_from_step == 1 and res.results["config"]["tags"] == ["a", "b"]
    with pytest.raises(TypeError, match=r"config\['act'\] is .*lambda"):
        rnnjax.fit(state, step_fn, _batch, steps=1, workdir=tmp_path / "f", progress=False,
                   config={"act": lambda x: x})


def test_the_data_parallel_hint_names_the_time_axis():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1] * 1), ("data",))
    place = rnnjax.engine.Placement(mesh, 0)
    place.size = 2  # as on two devices
    with pytest.raises(ValueError, match=r"for time-major inputs \[T, B, D\] pass batch_axes=1"):
        place.specs((np.zeros((5, 4, 2)), np.zeros((4,))))


def test_a_feature_whose_extra_is_missing_names_the_extra(monkeypatch):
    for module in ("sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, module, None)  # as if scikit-learn were not installed
    rnnjax.tasks.digits._digits_numpy.cache_clear()
    with pytest.raises(ImportError, match=r"pip install 'rnnjax\[data\]'"):
        rnnjax.tasks.sequential_digits()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'rnnjax\[plot\]'"):
        sweep.SweepResult(configs=[{}], groups=[], steps=0).plot()


def test_a_sweep_batch_fn_that_needs_a_python_int_is_named():
    with pytest.raises(TypeError, match=r"batch_fn\(config, step\).*traced"):
        sweep.run_sweep([{"lr": 0.1, "seed": 0}], init_fn, STEP, lambda c, t: _batch(int(t)), steps=1,
                        progress=False, devices=jax.devices()[:1])
