"""run_sweep as the engine over stacked configurations: evaluation, workdir, bitwise resume,
results.json (params_sha256 per configuration), TensorBoard, config checks."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import engine, sweep
from rnnjax.checkpoint import params_sha256

H, D, T, B = 5, 2, 6, 4


def make_tx(config):
    return rnnjax.optimizer("adam", config["lr"], clip_norm=1.0)


def init_fn(config):
    k1, k2, k3 = jax.random.split(jax.random.key(config["seed"]), 3)
    params = {"cell": rnnjax.gru(H).init(k1, D), "out": rnnjax.dense(1).init(k2, H)}
    return rnnjax.TrainState.create(params, make_tx(config), key=k3)


def predict(p, xs):
    _, hs = rnnjax.unroll(rnnjax.gru(H), p["cell"], xs)
    return rnnjax.dense(1).apply(p["out"], hs[-1])


def loss_fn(p, batch, key, config):
    del key, config
    return rnnjax.mse(predict(p, batch[0]), batch[1])


def batch_fn(config, step):
    return rnnjax.tasks.adding(jax.random.fold_in(jax.random.key(config["seed"] + 50), step), B, T)


TEST = rnnjax.tasks.adding(jax.random.key(123), 16, T)


def eval_fn(params, config):
    del config
    return {"loss": rnnjax.mse(predict(params, TEST[0]), TEST[1])}


CONFIGS = sweep.grid(lr=[1e-2, 3e-2], seed=[0, 1, 2])
STEP = sweep.sweep_step(loss_fn, make_tx)


def run(steps, **kw):
    kw.setdefault("devices", jax.devices()[:1])
    return sweep.run_sweep(CONFIGS, init_fn, STEP, batch_fn, steps=steps, progress=False, **kw)


def test_sweep_step_passes_project_to_train_step():
    config = CONFIGS[1]
    state = init_fn(config)
    batch = batch_fn(config, 0)
    shrink = lambda p: jax.tree.map(lambda x: jnp.clip(x, -0.05, 0.05), p)  # noqa: E731
    got, _ = sweep.sweep_step(loss_fn, make_tx, project=shrink)(state, batch, config)
    plain, _ = STEP(state, batch, config)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(plain.params)):
        np.testing.assert_array_equal(a, np.clip(b, -0.05, 0.05))
    with pytest.raises(TypeError, match="project"):
        sweep.sweep_step(loss_fn, make_tx, project=0.05)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    return run(8, eval_fn=eval_fn, eval_every=4, workdir=d, ckpt_every=4, tensorboard=True), d


def test_eval_metrics_are_eval_fn_of_each_configuration(full):
    res, _ = full
    assert list(res.eval_steps) == [4, 8]
    assert res.eval_metrics["loss"].shape == (6, 2)
    for i in (0, 5):
        want = float(eval_fn(res.state(i).params, None)["loss"])
        np.testing.assert_allclose(res.eval_metrics["loss"][i, -1], want, rtol=1e-5)


def test_results_json_lists_each_configuration(full):
    res, d = full
    out = json.loads((d / "results.json").read_text())
    assert out["params_sha256"] == [params_sha256(res.state(i).params) for i in range(6)]
    assert len(set(out["params_sha256"])) == 6
    assert out["configs"] == CONFIGS
    assert out["final"][3]["loss"] == pytest.approx(float(res.metrics["loss"][3, -1]))
    assert out["final"][3]["eval_loss"] == pytest.approx(float(res.eval_metrics["loss"][3, -1]))
    assert (d / "loss.png").stat().st_size > 0
    ev = engine.read_events(d / "tb" / "config_002")
    assert [s for s, _ in ev["eval/loss"]] == [4, 8]
    np.testing.assert_allclose([v for _, v in ev["eval/loss"]], res.eval_metrics["loss"][2], rtol=1e-6)


def test_killed_sweep_resumes_bitwise(full, tmp_path):
    res, d = full
    # the state a kill after step 4's checkpoint leaves: drop the step-8 checkpoint and results
    w = tmp_path / "cut"
    shutil.copytree(d, w)
    for g in (w / "checkpoints").glob("group_*"):
        shutil.rmtree(g / "8", ignore_errors=True)
        (g / "8.npz").unlink(missing_ok=True)
    (w / "results.json").unlink()
    again = run(8, eval_fn=eval_fn, eval_every=4, workdir=w, ckpt_every=4)
    for i in range(6):
        assert params_sha256(again.state(i).params) == params_sha256(res.state(i).params)
    np.testing.assert_array_equal(again.metrics["loss"], res.metrics["loss"])
    np.testing.assert_array_equal(again.eval_metrics["loss"], res.eval_metrics["loss"])
    out = json.loads((w / "results.json").read_text())
    assert len(out["sessions"]) == 2


def test_extending_a_sweep_equals_the_longer_sweep(tmp_path):
    short = run(3, workdir=tmp_path)
    longer = run(6, workdir=tmp_path)
    ref = run(6)
    assert longer.metrics["loss"].shape == (6, 6)
    np.testing.assert_array_equal(longer.metrics["loss"][:, :3], short.metrics["loss"])
    for i in range(6):
        assert params_sha256(longer.state(i).params) == params_sha256(ref.state(i).params)


def test_a_sweep_already_beyond_steps_is_refused(tmp_path):
    run(4, workdir=tmp_path)
    with pytest.raises(ValueError, match=r"already at step 4, beyond steps=2 \(the total number of steps\); pass steps >= 4"):
        run(2, workdir=tmp_path)


def test_changed_configurations_are_refused(tmp_path):
    run(2, workdir=tmp_path)
    with pytest.raises(ValueError, match=r"differing keys \['configs'\]"):
        sweep.run_sweep(CONFIGS[:2], init_fn, STEP, batch_fn, steps=2, workdir=tmp_path,
                        progress=False, devices=jax.devices()[:1])
