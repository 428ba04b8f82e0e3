"""The experiment scripts: resume after SIGKILL is bitwise exact, the non-finite guard stops a run
without saving, and every script runs end to end in a tiny configuration."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
RUN = ["--no-progress", "--log-every", "1"]
ADDING = [*RUN, "--seq-len", "8", "--hidden", "6", "--batch", "4", "--eval-batch", "8",
          "--cell", "elman", "--eval-every", "100"]


def _script(name):
    """Import experiments/<name>.py as a module (its main(argv) runs the script in-process)."""
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", EXP / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cmd(script, workdir, *args):
    return [sys.executable, str(EXP / f"{script}.py"), "--workdir", str(workdir), *args]


def _env():
    env = dict(os.environ)
    env.setdefault("XLA_FLAGS", "")
    env["PYTHONWARNINGS"] = "default"
    return env


def _results(workdir):
    return json.loads((Path(workdir) / "results.json").read_text())


def _check_outputs(workdir, steps):
    workdir = Path(workdir)
    res = _results(workdir)
    assert res["steps"] == steps and len(res["params_sha256"][0]) == 64  # indexed by configuration
    assert res["num_params"][0] > 0 and res["wall_time_s"] > 0 and "config" in res
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    assert any(r["kind"] == "eval" for r in lines)
    png = (workdir / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    return res


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    args = [*ADDING, "--steps", "30", "--ckpt-every", "2", "--chunk", "2"]
    full = subprocess.Popen(_cmd("adding", tmp_path / "full", *args), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_cmd("adding", killed_dir, *args), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = killed_dir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # wait for the first checkpoint
        if ck.exists() and any(p.name.isdigit() for p in ck.iterdir()):
            break
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere in the middle of the run (possibly inside a save)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "results.json").exists()
    out = subprocess.run(_cmd("adding", killed_dir, *args), env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from the checkpoint of step" in out.stdout
    assert full.wait(timeout=300) == 0
    resumed, uninterrupted = _check_outputs(killed_dir, 30), _check_outputs(tmp_path / "full", 30)
    assert resumed["resumed_from_step"] >= 2
    assert resumed["params_sha256"] == uninterrupted["params_sha256"]
    assert resumed["final"][0]["eval_mse"] == uninterrupted["final"][0]["eval_mse"]
    # running the finished command once more changes nothing
    again = subprocess.run(_cmd("adding", killed_dir, *args), env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and _results(killed_dir)["params_sha256"] == uninterrupted["params_sha256"]


def test_resume_from_checkpoints_in_process_is_bitwise_identical(tmp_path, capsys):
    """Fast version of the SIGKILL test: drop or damage the newest checkpoints, rerun, compare."""
    import shutil

    adding = _script("adding")
    wd = tmp_path / "a"
    args = ["--workdir", str(wd), *ADDING, "--steps", "6", "--ckpt-every", "2", "--chunk", "2",
            "--max-to-keep", "5"]
    full = adding.main(args)
    ck = wd / "checkpoints"
    assert sorted(int(p.name) for p in ck.iterdir()) == [2, 4, 6]
    # as if killed after the save of step 2
    shutil.rmtree(ck / "4"), shutil.rmtree(ck / "6"), (wd / "results.json").unlink()
    again = adding.main(args)
    assert "resumed from the checkpoint of step 2" in capsys.readouterr().out
    assert again["resumed_from_step"] == 2 and again["params_sha256"] == full["params_sha256"]
    # a damaged newest checkpoint: warned about by name, the one before is used
    for root, _, files in os.walk(ck / "6" / "state"):
        for f in files:
            Path(root, f).write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match=r"checkpoints[/\\]6 \(step 6\)"):
        third = adding.main(args)
    assert third["resumed_from_step"] == 4 and third["params_sha256"] == full["params_sha256"]
    # a workdir made with another config is refused, naming the flag; cadence flags may change
    with pytest.raises(SystemExit, match=r"different config \(differing keys \['lr'\]"):
        adding.main([*args, "--lr", "0.05"])


def test_nonfinite_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    from rnnjax.checkpoint import Checkpointer

    adding = _script("adding")
    common = [*ADDING, "--steps", "12", "--ckpt-every", "2", "--chunk", "2", "--max-to-keep", "10"]
    with pytest.raises(SystemExit) as e:
        adding.main(["--workdir", str(tmp_path / "nan"), *common, "--nan-at-step", "5",
                     "--max-nonfinite", "3"])
    assert e.value.code == 3
    err = capsys.readouterr().err
    assert "stopped at step 8" in err and "steps 6..8 were skipped" in err
    assert "last good checkpoint (step 4" in err
    assert not (tmp_path / "nan" / "results.json").exists()
    ck = Checkpointer(tmp_path / "nan" / "checkpoints")
    assert ck.steps() == [2, 4]  # nothing saved once the bad steps began
    # the checkpoint of step 4 holds exactly the state of a clean run at step 4
    adding.main(["--workdir", str(tmp_path / "clean"), *common])
    clean = Checkpointer(tmp_path / "clean" / "checkpoints")
    sha = lambda c: json.loads((c.path(4) / "meta" / "metadata").read_text())["user"]["state_sha256"]  # noqa: E731
    assert sha(ck) == sha(clean)


TINY = {
    "copy": ["--delay", "4", "--hidden", "6", "--batch", "4", "--eval-batch", "8"],
    "seq_digits": ["--permuted", "--hidden", "6", "--batch", "8"],
    "mnist1d": ["--hidden", "4", "--batch", "16", "--warmup", "1"],
    "forecast": ["--series", "sines", "--hidden", "6", "--window", "12", "--horizon", "4"],
    "charlm": ["--modules", "textwrap", "--hidden", "8", "--seq-len", "16", "--batch", "4",
               "--eval-streams", "64", "--sample-len", "20"],
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_script_end_to_end_tiny(name, tmp_path, capsys):
    mod = _script(name)
    res = mod.main(["--workdir", str(tmp_path / name), *RUN, "--steps", "4", "--ckpt-every", "2",
                    "--eval-every", "2", "--chunk", "2", *TINY[name]])
    _check_outputs(tmp_path / name, 4)
    assert sorted(int(p.name) for p in (tmp_path / name / "checkpoints").iterdir()) == [2, 4]
    final = res["final"][0]
    if name in ("mnist1d", "seq_digits"):
        assert 0.0 <= final["eval_accuracy"] <= 1.0
        assert "parameters" in capsys.readouterr().out
    if name == "mnist1d":  # the evaluation set is the 1000 test sequences
        saved = json.loads((tmp_path / name / "results.json").read_text())["final"][0]
        assert saved["test_accuracy"] == pytest.approx(final["eval_accuracy"], abs=1e-6)
    if name == "forecast":
        for k in ("model_mae", "model_rmse", "naive_mae", "naive_rmse"):
            assert final[k] > 0
        assert len(final["model_mae_per_horizon"]) == 4
    if name == "charlm":
        assert 0 < final["eval_bits_per_char"] < 8
        assert all(s.startswith("def ") and len(s) == 24 for s in final["samples"])
    if name == "copy":
        assert 0 <= final["eval_recall_accuracy"] <= 1


def test_forecast_sunspots_data():
    pytest.importorskip("statsmodels")
    series, origin = _script("forecast").sunspots()
    assert origin.endswith("sunspots.csv") and series.shape == (309,)
    assert series[0] == 5.0 and series[-1] == 2.9  # 1700 and 2008


@pytest.mark.parametrize("name", ["adding", "copy", "seq_digits", "mnist1d", "forecast", "charlm"])
def test_help_prints_defaults(name):
    out = subprocess.run([sys.executable, str(EXP / f"{name}.py"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--workdir", "--seed", "--steps", "--ckpt-every", "--max-nonfinite"):
        assert flag in out.stdout
    assert "(default:" in out.stdout


def test_smnist_sweeps_seeds_and_writes_the_table(tmp_path):
    smnist = _script("smnist")
    recs = smnist.main(["--cells", "gru", "--tasks", "permuted", "--seeds", "2", "--steps", "2",
                        "--hidden", "4", "--batch", "8", "--eval-every", "1", "--cpu-devices", "1",
                        "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "w"), "--no-progress"])
    (r,) = recs
    assert r["task"] == "permuted" and r["T"] == 784 and len(r["test_accuracy"]) == 2
    assert r["median"] == pytest.approx(float(np.median(r["test_accuracy"])))
    assert all(0.0 <= a <= 1.0 for a in r["test_accuracy"])
    saved = json.loads((tmp_path / "w" / "permuted-gru" / "results.json").read_text())
    assert [f["eval_accuracy"] for f in saved["final"]] == pytest.approx(r["test_accuracy"])
    assert r["wall_time_s"] == pytest.approx(saved["wall_time_s"])  # every process's time on the row
    assert "| permuted | gru |" in (tmp_path / "out" / "results.md").read_text()


def test_smnist_cells_follow_their_papers_setups():
    import jax
    import jax.numpy as jnp

    import rnnjax

    smnist = _script("smnist")
    cell, project = smnist.make_cell("indrnn", 4, 784)
    params = cell.init(jax.random.key(0), 1)
    assert len(params) == 2  # two layers
    bound = rnnjax.indrnn_max_abs(784)
    big = tuple({**q, "u": q["u"] + 5.0} for q in params)
    assert all(float(jnp.max(jnp.abs(q["u"]))) == pytest.approx(bound) for q in project(big))
    for task, consts in smnist.CORNN.items():
        cell, project = smnist.make_cell("cornn", 3, 784, task)
        ref = rnnjax.cornn(3, **consts)
        p = ref.init(jax.random.key(1), 1)
        x = jnp.ones((5, 2, 1))
        np.testing.assert_array_equal(rnnjax.unroll(cell, p, x)[1], rnnjax.unroll(ref, p, x)[1])
        assert project is None
    other = rnnjax.unroll(rnnjax.cornn(3), p, x)[1]  # the adding task's defaults differ
    assert not np.allclose(other, rnnjax.unroll(ref, p, x)[1])
    for name in ("lru", "mingru"):
        cell, _ = smnist.make_cell(name, 4, 784)
        assert len(cell.init(jax.random.key(0), 1)) == 2


def test_common_projection_is_indrnn_projection_for_indrnn_only():
    import jax
    import jax.numpy as jnp

    import rnnjax

    _common = _script("_common")
    assert _common.projection("lstm", 100) is None
    with pytest.raises(ValueError, match="seq_len"):
        _common.projection("indrnn", None)
    ind = {"w_x": jnp.ones((1, 3)), "u": jnp.array([-3.0, 0.5, 7.0]), "b": jnp.zeros(3)}
    params = {"cell": (ind, ind), "readout": {"w": jnp.ones((3, 1)), "b": jnp.zeros(1)}}
    got, want = _common.projection("indrnn", 100)(params), rnnjax.indrnn_projection(100)(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(got["cell"][1]["u"]))) == pytest.approx(rnnjax.indrnn_max_abs(100))


def test_experiment_scripts_apply_indrnn_projection_after_every_step(tmp_path, monkeypatch):
    import jax
    import jax.numpy as jnp

    import rnnjax

    adding = _script("adding")
    seen = {}

    def fake_fit(state, step_fn, batch_fn, **kw):  # one step from a state with |u| far out of range
        state = state.replace(params={**state.params, "cell": {**state.params["cell"],
                                                               "u": jnp.full_like(state.params["cell"]["u"], 5.0)}})
        seen["after"], _ = jax.jit(step_fn)(state, batch_fn(jnp.int32(0)))
        raise KeyboardInterrupt

    monkeypatch.setattr(rnnjax, "fit", fake_fit)
    args = [*ADDING, "--workdir", str(tmp_path / "w"), "--steps", "1"]
    args[args.index("elman")] = "indrnn"
    with pytest.raises(KeyboardInterrupt):
        adding.main(args)
    u = np.asarray(seen["after"].params["cell"]["u"])
    np.testing.assert_allclose(np.abs(u), rnnjax.indrnn_max_abs(8), rtol=1e-6)


def test_smnist_refuses_a_workdir_of_another_model_setup(tmp_path, monkeypatch):
    smnist = _script("smnist")
    args = ["--cells", "cornn", "--tasks", "sequential", "--seeds", "1", "--steps", "1", "--hidden", "3",
            "--batch", "4", "--eval-every", "1", "--cpu-devices", "1", "--out", str(tmp_path / "o"),
            "--workdir", str(tmp_path / "w"), "--no-progress"]
    smnist.main(args)
    monkeypatch.setitem(smnist.CORNN, "sequential", {"dt": 0.06, "gamma": 66.0, "epsilon": 15.0})
    with pytest.raises(Exception, match="model"):
        smnist.main(args)


# ----------------------------------------------------------------------------- adding.py --cell

FACTORY = '''
import jax.numpy as jnp
import rnnjax

CALLS = []


def make(hidden_size, T):
    CALLS.append((hidden_size, T))
    project = lambda p: {**p, "cell": {**p["cell"], "b": jnp.full_like(p["cell"]["b"], 0.25)}}
    return rnnjax.elman(hidden_size), project


def bare(hidden_size, T):
    return rnnjax.elman(hidden_size)


def wrong(hidden_size, T):
    return 3
'''


def _one_step(monkeypatch, seen):
    """Replace ``rnnjax.fit`` by one jitted step from the script's state (then stop)."""
    import jax
    import jax.numpy as jnp

    import rnnjax

    def fake_fit(state, step_fn, batch_fn, **kw):
        seen["before"] = state
        seen["after"], seen["metrics"] = jax.jit(step_fn)(state, batch_fn(jnp.int32(0)))
        raise KeyboardInterrupt

    monkeypatch.setattr(rnnjax, "fit", fake_fit)


def test_adding_accepts_every_registry_cell(tmp_path, monkeypatch):
    import jax

    import rnnjax

    adding = _script("adding")
    common = sys.modules["_common"]
    assert [common.cell_arg(n) for n in rnnjax.registry.names()] == list(rnnjax.registry.names())
    assert len(rnnjax.registry.names()) >= 20
    seen = {}
    _one_step(monkeypatch, seen)
    args = [*ADDING, "--workdir", str(tmp_path / "w"), "--steps", "1"]
    args[args.index("elman")] = "antisymmetric"  # not among --cell's 10 fixed choices before
    with pytest.raises(KeyboardInterrupt):
        adding.main(args)
    before = seen["before"].params["cell"]
    expected = rnnjax.registry.cell("antisymmetric", 6).init(jax.random.key(0), 2)
    assert jax.tree.map(np.shape, before) == jax.tree.map(np.shape, expected)
    assert np.isfinite(float(seen["metrics"]["loss"]))
    assert not np.array_equal(seen["after"].params["cell"]["w_h"], before["w_h"])


def test_adding_takes_a_factory_and_applies_its_projection(tmp_path, monkeypatch):
    import jax

    import rnnjax

    (tmp_path / "my_cells_29.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    adding = _script("adding")
    seen = {}
    _one_step(monkeypatch, seen)
    args = [*ADDING, "--workdir", str(tmp_path / "w"), "--steps", "1"]
    args[args.index("elman")] = "my_cells_29:make"
    with pytest.raises(KeyboardInterrupt):
        adding.main(args)
    import my_cells_29

    assert my_cells_29.CALLS == [(6, 8)]  # make(hidden_size, T), once
    before, after = seen["before"].params["cell"], seen["after"].params["cell"]
    assert before["w_h"].shape == (6, 6) and set(before) == set(rnnjax.elman(6).init(jax.random.key(0), 2))
    np.testing.assert_array_equal(after["b"], np.full((6,), 0.25, np.float32))  # projected
    assert not np.array_equal(after["w_h"], before["w_h"])  # and trained
    # a bare Cell (no projection), given as path/to/file.py:function; a factory of another form
    common = sys.modules["_common"]
    cell, project = common.build_cell(f"{tmp_path / 'my_cells_29.py'}:bare", 6, seq_len=8)
    assert isinstance(cell, rnnjax.Cell) and project is None
    with pytest.raises(SystemExit, match=r"returned int; expected make\(hidden_size, T\)"):
        common.build_cell("my_cells_29:wrong", 6, seq_len=8)


@pytest.mark.parametrize("value, message", [
    ("nosuchcell", r"unknown cell 'nosuchcell'.*deltanet.*module:function"),
    ("no_such_module_29:make", r"factory 'no_such_module_29:make': cannot import 'no_such_module_29' "
                               r"\(ModuleNotFoundError"),
    ("json:no_such_function", r"module 'json' has no function 'no_such_function'"),
])
def test_adding_cell_errors_name_the_problem(tmp_path, capsys, value, message):
    import re

    adding = _script("adding")
    args = [*ADDING, "--workdir", str(tmp_path / "w"), "--steps", "1"]
    args[args.index("elman")] = value
    with pytest.raises(SystemExit) as e:
        adding.main(args)
    assert e.value.code == 2  # argparse's usage error, before anything is built
    err = capsys.readouterr().err
    assert "argument --cell" in err and re.search(message, err.replace("\n", " ")), err
