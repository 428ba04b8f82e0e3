"""A user's own script, outside the repository, importing only rnnjax: trained with
``fit(..., workdir=)`` and ``run_sweep(..., workdir=)``, killed with SIGKILL mid-run, and resumed to
the same ``params_sha256`` as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import rnnjax

FIT_SCRIPT = textwrap.dedent('''
    import sys
    import jax
    import rnnjax

    steps, workdir = int(sys.argv[1]), sys.argv[2]
    T, B, H = 20, 16, 16
    cell, readout = rnnjax.lstm(H, forget_bias=1.0), rnnjax.dense(1)
    k_cell, k_out, k_run, k_data = jax.random.split(jax.random.key(0), 4)
    params = {"cell": cell.init(k_cell, 2), "out": readout.init(k_out, H)}

    def loss_fn(p, batch, key):
        xs, ys = batch
        _, hs = rnnjax.unroll(cell, p["cell"], xs)
        return rnnjax.mse(readout.apply(p["out"], hs[-1]), ys)

    def batch_fn(step):
        return rnnjax.tasks.adding(jax.random.fold_in(k_data, step), B, T)

    test = rnnjax.tasks.adding(jax.random.key(1), 200, T)
    tx = rnnjax.optimizer("adam", 1e-2, clip_norm=1.0)
    state = rnnjax.TrainState.create(params, tx, key=k_run)
    rnnjax.fit(state, rnnjax.train_step(loss_fn, tx), batch_fn, steps=steps, workdir=workdir,
               config={"T": T, "H": H}, ckpt_every=5, chunk=5, progress=False,
               eval_fn=lambda p: {"mse": loss_fn(p, test, None)}, eval_every=20)
''')

SWEEP_SCRIPT = textwrap.dedent('''
    import sys
    import jax
    import rnnjax
    from rnnjax import sweep

    steps, workdir = int(sys.argv[1]), sys.argv[2]
    T, B, H = 20, 16, 16
    cell, readout = rnnjax.gru(H), rnnjax.dense(1)

    def make_tx(config):
        return rnnjax.optimizer("adam", config["lr"], clip_norm=1.0)

    def init_fn(config):
        k1, k2, k3 = jax.random.split(jax.random.key(config["seed"]), 3)
        params = {"cell": cell.init(k1, 2), "out": readout.init(k2, H)}
        return rnnjax.TrainState.create(params, make_tx(config), key=k3)

    def loss_fn(p, batch, key, config):
        _, hs = rnnjax.unroll(cell, p["cell"], batch[0])
        return rnnjax.mse(readout.apply(p["out"], hs[-1]), batch[1])

    def batch_fn(config, step):
        return rnnjax.tasks.adding(jax.random.fold_in(jax.random.key(config["seed"] + 9), step), B, T)

    sweep.run_sweep(sweep.grid(lr=[3e-3, 1e-2], seed=[0, 1]), init_fn,
                    sweep.sweep_step(loss_fn, make_tx), batch_fn, steps=steps, workdir=workdir,
                    ckpt_every=5, chunk=5, progress=False, devices=jax.devices()[:1])
''')


def _env():
    env = dict(os.environ)
    root = str(Path(rnnjax.__file__).resolve().parents[1])  # the rnnjax under test
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _sha(workdir):
    return json.loads((Path(workdir) / "results.json").read_text())["params_sha256"]


def _kill_and_resume(tmp_path, script, steps):
    path = tmp_path / "elsewhere" / "train.py"  # a folder outside the repository
    path.parent.mkdir()
    path.write_text(script)
    run = lambda wd: [sys.executable, str(path), str(steps), str(tmp_path / wd)]  # noqa: E731
    subprocess.run(run("full"), env=_env(), check=True, cwd=path.parent, timeout=300)
    proc = subprocess.Popen(run("killed"), env=_env(), cwd=path.parent)
    sessions = tmp_path / "killed" / "sessions.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # wait until it has trained a while
        if sessions.exists() and (json.loads(sessions.read_text())["sessions"][-1].get("to_step") or 0) >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "results.json").exists()
    subprocess.run(run("killed"), env=_env(), check=True, cwd=path.parent, timeout=300)
    assert _sha(tmp_path / "killed") == _sha(tmp_path / "full")
    res = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert len(res["sessions"]) == 2 and res["wall_time_s"] > res["wall_time_this_process_s"]


@pytest.mark.slow
def test_user_fit_script_resumes_bitwise_after_sigkill(tmp_path):
    _kill_and_resume(tmp_path, FIT_SCRIPT, steps=400)


@pytest.mark.slow
def test_user_sweep_script_resumes_bitwise_after_sigkill(tmp_path):
    _kill_and_resume(tmp_path, SWEEP_SCRIPT, steps=300)
