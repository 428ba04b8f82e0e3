"""Data-parallel training of one model: rnnjax.fit(..., mesh=) over 4 CPU devices in one process,
and over 2 processes joined by jax.distributed (CPU collectives), against single-device training
on the same global batches; resume after killing every process."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import rnnjax

MODEL = textwrap.dedent('''
    import json
    import sys
    import jax
    import jax.numpy as jnp
    import numpy as np
    import rnnjax

    H, T, B = 8, 10, 8
    cell, readout = rnnjax.lstm(H), rnnjax.dense(1)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"cell": cell.init(k1, 2), "out": readout.init(k2, H)}

    def loss_fn(p, batch, key):
        xs, ys = batch
        _, hs = rnnjax.unroll(cell, p["cell"], xs)
        return rnnjax.mse(readout.apply(p["out"], hs[-1]), ys)

    def global_batch(step):  # time-major xs [T, B, 2], ys [B, 1]
        return rnnjax.tasks.adding(jax.random.fold_in(jax.random.key(5), step), B, T)

    tx = rnnjax.optimizer("adam", 1e-2)
    state0 = rnnjax.TrainState.create(params, tx, key=jax.random.key(1))
    step_fn = rnnjax.train_step(loss_fn, tx)

    def flat(state):
        return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(state.params)])
''')

FOUR_DEVICES = MODEL + textwrap.dedent('''
    from jax.sharding import Mesh
    assert len(jax.devices()) == 4
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    ref, h_ref = rnnjax.fit(state0, step_fn, global_batch, steps=6, progress=False)
    dp, h_dp = rnnjax.fit(state0, step_fn, global_batch, steps=6, progress=False, mesh=mesh,
                          batch_axes=(1, 0))
    host = lambda t: global_batch(jnp.int32(int(t)))  # host-fed batches, sharded on the way in
    dp_host, _ = rnnjax.fit(state0, step_fn, host, steps=6, progress=False, mesh=mesh,
                            batch_axes=(1, 0))
    sharding = dp.params["out"]["w"].sharding
    try:
        rnnjax.fit(state0, step_fn, lambda t: rnnjax.tasks.adding(jax.random.key(0), 6, T), steps=1,
                   progress=False, mesh=mesh, batch_axes=(1, 0))
        err = None
    except ValueError as e:
        err = str(e)
    print(json.dumps({"ref": flat(ref).tolist(), "dp": flat(dp).tolist(), "dp_host": flat(dp_host).tolist(),
                      "loss_ref": h_ref["loss"], "loss_dp": h_dp["loss"], "replicated": sharding.is_fully_replicated,
                      "err": err}))
''')

PROCESS = textwrap.dedent('''
    import sys
    import jax
    pid, nproc, port, workdir, steps = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if nproc > 1:  # before JAX computes anything
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                                   process_id=pid)
''') + MODEL + textwrap.dedent('''
    from jax.sharding import Mesh

    def local_batch(step):  # only this process's share: a function of the step and the process
        xs, ys = global_batch(jnp.int32(step))
        n, i = B // jax.process_count(), jax.process_index()
        return np.asarray(xs[:, i * n:(i + 1) * n]), np.asarray(ys[i * n:(i + 1) * n])

    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    state, h = rnnjax.fit(state0, step_fn, local_batch, steps=steps, progress=False, mesh=mesh,
                          batch_axes=(1, 0), workdir=workdir, ckpt_every=2, config={"B": B})
    if jax.process_index() == 0:
        np.save(workdir + "/params.npy", flat(rnnjax.engine.Placement(mesh, 0).to_host(state)))
''')


def _env(**extra):
    env = dict(os.environ)
    root = str(Path(rnnjax.__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def test_four_devices_equal_one_device(tmp_path):
    script = tmp_path / "dp4.py"
    script.write_text(FOUR_DEVICES)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(r["dp"], r["ref"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["dp_host"], r["ref"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["loss_dp"], r["loss_ref"], rtol=1e-5)
    assert r["replicated"]
    assert "does not divide over the 4 devices" in r["err"]


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script, nproc, workdir, steps):
    port = _port()
    return [subprocess.Popen([sys.executable, str(script), str(i), str(nproc), str(port),
                              str(workdir), str(steps)], env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for i in range(nproc)]


def _wait(procs):
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("dp")
    script = d / "proc.py"
    script.write_text(PROCESS)
    _wait(_launch(script, 2, d / "two", 6))
    return script, d


def test_two_processes_equal_one_process(two_process_run):
    _, d = two_process_run
    scope = {}
    exec(compile(MODEL, "model", "exec"), scope)  # the same model on this process's one device
    one, _ = rnnjax.fit(scope["state0"], scope["step_fn"], scope["global_batch"], steps=6, progress=False)
    np.testing.assert_allclose(np.load(d / "two" / "params.npy"), scope["flat"](one), rtol=1e-5, atol=1e-6)
    res = json.loads((d / "two" / "results.json").read_text())
    assert res["steps"] == 6 and res["checkpoints"][-1] == 6  # written once, by process 0


@pytest.mark.slow
def test_two_processes_killed_and_restarted_resume_to_the_same_params(two_process_run, tmp_path):
    script, d = two_process_run
    _wait(_launch(script, 2, tmp_path / "full", 300))
    procs = _launch(script, 2, tmp_path / "cut", 300)
    sessions = tmp_path / "cut" / "sessions.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if sessions.exists() and (json.loads(sessions.read_text())["sessions"][-1].get("to_step") or 0) >= 20:
            break
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not (tmp_path / "cut" / "results.json").exists()
    _wait(_launch(script, 2, tmp_path / "cut", 300))
    np.testing.assert_array_equal(np.load(tmp_path / "cut" / "params.npy"),
                                  np.load(tmp_path / "full" / "params.npy"))
    res = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert res["resumed_from_step"] >= 20 and len(res["sessions"]) == 2
