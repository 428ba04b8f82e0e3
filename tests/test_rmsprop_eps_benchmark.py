"""benchmarks/rmsprop_eps.py: the step ratio of optax's RMSprop form to PyTorch's, per leaf."""

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import rmsprop_eps  # noqa: E402

import rnnjax  # noqa: E402


def test_step_ratio_is_the_ratio_of_the_two_optimizers_steps():
    grads = [np.array([1.0, 1e-3, 1e-5, 1e-7, 0.0]) * (1 + 0.3 * i) for i in range(3)]
    params = {"w": jnp.zeros(5)}
    txs = [rnnjax.optimizer("rmsprop", 0.01, clip_norm=None, decay=0.9, eps_in_sqrt=e) for e in (True, False)]
    states = [tx.init(params) for tx in txs]
    for g in grads:
        ups = []
        for i, tx in enumerate(txs):
            u, states[i] = tx.update({"w": jnp.asarray(g, jnp.float32)}, states[i], params)
            ups.append(np.asarray(u["w"], np.float64))
    nu = np.asarray(rmsprop_eps._nu(states[0])["w"], np.float64)
    ratio = rmsprop_eps.step_ratio(nu, 1e-8)
    np.testing.assert_allclose(ratio[:4], ups[0][:4] / ups[1][:4], rtol=2e-3)
    assert np.isnan(ratio[4]) and ratio[0] == pytest.approx(1.0, abs=1e-6) and ratio[2] < 0.2


def test_measure_reports_every_cell_leaf_and_refuses_rows_it_cannot_measure(capsys):
    rows = rmsprop_eps.measure("lstm-chrono-paper-eps-in-sqrt", "copy", 3, [1, 2])
    assert [(r["step"], r["leaf"]) for r in rows] == [(s, k) for s in (1, 2) for k in ("b", "w_h", "w_x")]
    assert all(0.0 < r["ratio_median"] <= 1.0 + 1e-6 and 0.0 <= r["frac_below_sqrt_eps"] <= 1.0 for r in rows)
    with pytest.raises(ValueError, match="already uses PyTorch's form"):
        rmsprop_eps.measure("lstm-chrono-paper", "copy", 3, [1])
    with pytest.raises(ValueError, match="not rmsprop"):
        rmsprop_eps.measure("lem-paper", "adding", 3, [1])
    with pytest.raises(SystemExit):
        rmsprop_eps.main(["--at", "x"])
    assert "--at must be comma-separated integers" in capsys.readouterr().err
