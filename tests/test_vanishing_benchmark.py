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
