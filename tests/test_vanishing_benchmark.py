"""The gradient-vanishing study's pieces, end to end in a tiny configuration."""

import json
import os
import sys
import warnings

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import vanishing  # noqa: E402


def test_decay_rate_recovers_a_geometric_series():
    T = 50
    norms = 0.8 ** (T - 1 - np.arange(T)) * 3.0
    assert vanishing.decay_rate(norms) == pytest.approx(0.8, rel=1e-9)
    norms[:10] = 0.0  # underflowed steps are ignored
    assert vanishing.decay_rate(norms) == pytest.approx(0.8, rel=1e-9)


def test_every_spec_builds_and_flows():
    for spec in vanishing.SPECS:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. complex norms cast to real (LRU)
            f = vanishing.flow_at_init(spec, T=12, H=8, B=2, seed=0)
        n = np.asarray(f["norms"])
        assert n.shape == (12,) and np.all(np.isfinite(n)) and n[:-1].max() > 0, spec.name


def test_elman_flow_decays_no_slower_than_its_spectral_radius():
    # dh_t/dh_{t-1} = diag(tanh') W_h with |tanh'| <= 1: asymptotically at most rho per step
    f = vanishing.flow_at_init(vanishing.SPEC_BY_NAME["elman-rho0.9"], T=120, H=16, B=4, seed=0)
    assert f["rate"] < 0.9 + 0.02
    # the orthogonal expRNN with modReLU keeps the norm (rate 1 up to the bias's effect)
    g = vanishing.flow_at_init(vanishing.SPEC_BY_NAME["exprnn"], T=60, H=16, B=4, seed=0)
    assert g["rate"] == pytest.approx(1.0, abs=0.02)


def test_train_and_report(tmp_path):
    runs = [vanishing.train_run(name, vanishing.TrainConfig(task=task, T=T, steps=20, H=8, batch=8,
                                                            chunk=10, test_size=16))
            for name, task, T in [("lstm-fb1", "adding", 10), ("gru-before", "copy", 5),
                                  ("indrnn", "adding", 10)]]
    flows = [vanishing.flow_at_init(vanishing.SPEC_BY_NAME["lstm-fb1"], T=12, H=8, B=2, seed=0)]
    meta = {"command": "test", "machine": "test", "jax": "x", "backend": "cpu", "H": 8, "seconds": 0.0}
    text = vanishing.write_outputs(str(tmp_path), flows, runs, meta)
    data = json.loads((tmp_path / "results.json").read_text())
    for rec in data["records"]:
        assert {"task", "cell", "init", "T", "metric", "value", "baseline", "solved"} <= set(rec)
    adding = [r for r in data["records"] if r["task"] == "adding"]
    assert adding[0]["baseline"] == pytest.approx(1 / 6)
    assert adding[0]["solved"] == (adding[0]["value"] < 0.1 / 6)
    copy = [r for r in data["records"] if r["task"] == "copy"][0]
    assert copy["baseline"] == pytest.approx(10 * np.log(8) / 25)
    assert "| lstm-fb1 |" in text and (tmp_path / "gradient_flow.png").exists()
    assert (tmp_path / "curves_adding.png").exists() and (tmp_path / "curves_copy.png").exists()
    # IndRNN's projection keeps |u| within the paper's bound for the horizon
    assert all(r["nonfinite_steps"] == 0 for r in runs)


def test_a_diverged_run_is_reported_in_strict_json(tmp_path):
    r = vanishing.train_run("jordan", vanishing.TrainConfig(task="adding", T=300, steps=20, H=8, batch=8,
                                                            chunk=10, test_size=16, lr=1.0))
    assert r["diverged"] and r["value"] is None and not r["solved"]
    meta = {"command": "test", "machine": "test", "jax": "x", "backend": "cpu", "H": 8, "seconds": 0.0}
    vanishing.write_outputs(str(tmp_path), [], [r], meta)
    json.loads((tmp_path / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert vanishing.main(["--replot", "--out", str(tmp_path)]) == 0
    assert "| jordan | diverged |" in (tmp_path / "results.md").read_text()


def test_lr_factors_scale_one_leaf_of_the_update():
    import jax
    import jax.numpy as jnp
    import optax

    import rnnjax

    params = {"cell": {"a": jnp.ones((3, 3)), "w_x": jnp.ones((2, 3))}, "readout": {"w": jnp.ones(3)}}
    grads = jax.tree.map(lambda p: jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape) - 2.0, params)
    base = rnnjax.optimizer("rmsprop", 1e-3, clip_norm=1.0)
    tx = optax.chain(base, vanishing.scale_cell_leaves({"a": 0.1}))
    u_base, _ = base.update(grads, base.init(params), params)
    u, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(u["cell"]["a"], 0.1 * u_base["cell"]["a"], rtol=1e-6)
    np.testing.assert_array_equal(u["cell"]["w_x"], u_base["cell"]["w_x"])
    np.testing.assert_array_equal(u["readout"]["w"], u_base["readout"]["w"])


def test_recipe_rows_and_extend(tmp_path, monkeypatch):
    # a committed study with one run; --extend adds a row with its own recipe and keeps the rest
    old = vanishing.train_run("lstm-fb1", vanishing.TrainConfig(task="copy", T=3, steps=10, H=4,
                                                                batch=4, chunk=10, test_size=8))
    flows = [vanishing.flow_at_init(vanishing.SPEC_BY_NAME["lstm-fb1"], T=6, H=4, B=2, seed=0)]
    meta = {"command": "first", "machine": "m", "jax": "x", "backend": "cpu", "H": 4, "seconds": 1.0}
    vanishing.write_outputs(str(tmp_path), flows, [old], meta)
    grid = dict(vanishing.GRIDS["quick"], adding=[], copy=[], extra=[("copy", 3, "exprnn-paper")])
    monkeypatch.setitem(vanishing.GRIDS, "quick", grid)
    monkeypatch.setattr(vanishing.TrainConfig, "__init__", _small_config(vanishing.TrainConfig.__init__))
    assert vanishing.main(["--extend", "--cells", "exprnn-paper", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    names = [(r["name"], r["T"]) for r in data["runs"]]
    assert names == [("lstm-fb1", 3), ("exprnn-paper", 3)]
    new = data["runs"][1]
    recipe = vanishing.SPEC_BY_NAME["exprnn-paper"].recipe
    assert new["optimizer"] == "rmsprop" and new["lr"] == recipe["lr"] and new["lr_factors"] == {"a": 0.1}
    assert data["meta"]["command"].startswith("first && python benchmarks/vanishing.py --extend")
    assert len(data["flows"]) == 1
    md = (tmp_path / "results.md").read_text()
    assert "- exprnn-paper at T=3: rmsprop lr 0.001, lr of a x0.1" in md
    with pytest.raises(SystemExit):  # nothing to extend
        vanishing.main(["--extend", "--cells", "exprnn-paper", "--out", str(tmp_path / "none")])


def _small_config(init):
    def small(self, *args, **kwargs):  # the recipe's H=128, batch 64 made tiny for the test
        init(self, *args, **kwargs)
        self.H, self.batch, self.steps, self.chunk, self.test_size = 4, 4, 10, 10, 8

    return small
