"""Tests of rnnjax.sweep: each configuration of a sweep equals training it alone; sharding and
grouping by shape keep the values and the order."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import sweep

D, T, B = 2, 8, 4


def make_tx(config):
    return rnnjax.optimizer("adam", config["learning_rate"], clip_norm=config["clip_norm"],
                            weight_decay=config["weight_decay"])


def init_fn(config):
    H = config.get("hidden_size", 6)
    cell = rnnjax.lstm(H, forget_bias=0.0, recurrent_init=rnnjax.initializers.glorot_uniform)
    k_cell, k_out, k_run = jax.random.split(jax.random.key(config["seed"]), 3)
    params = {"cell": cell.init(k_cell, D), "readout": rnnjax.dense(1).init(k_out, H)}
    params["cell"]["w_h"] = params["cell"]["w_h"] * config["init_scale"]          # init scale
    params["cell"]["b"] = params["cell"]["b"].at[H:2 * H].add(config["forget_bias"])  # forget bias
    return rnnjax.TrainState.create(params, make_tx(config), key=k_run)


def loss_fn(params, batch, key, config):
    xs, ys = batch
    H = params["cell"]["w_h"].shape[0]
    _, hs = rnnjax.unroll(rnnjax.lstm(H), params["cell"], xs)
    h = rnnjax.dropout(hs[-1], config["dropout"], key=key)
    return rnnjax.losses.mse(rnnjax.dense(1).apply(params["readout"], h), ys)


def batch_fn(config, step):  # data order from the seed
    return rnnjax.tasks.adding(jax.random.fold_in(jax.random.key(config["seed"] + 100), step), B, T)


BASE = dict(clip_norm=1.0, weight_decay=0.0, init_scale=1.0, forget_bias=1.0, dropout=0.0, seed=0)


def configs_4():
    return [
        {**BASE, "learning_rate": 1e-2},
        {**BASE, "learning_rate": 3e-2, "clip_norm": float("inf"), "seed": 1, "dropout": 0.2},
        {**BASE, "learning_rate": 5e-3, "weight_decay": 1e-3, "init_scale": 0.5, "seed": 2},
        {**BASE, "learning_rate": 2e-2, "forget_bias": 0.0, "seed": 3, "dropout": 0.1},
    ]


STEPS = 4
_ALONE = {}


def alone(config, steps=STEPS):
    """Train one configuration with rnnjax.fit (Python values, no vmap); cached."""
    key = (tuple(sorted(config.items())), steps)
    if key not in _ALONE:
        _ALONE[key] = _alone(config, steps)
    return _ALONE[key]


def _alone(config, steps):
    step = rnnjax.train_step(lambda p, b, k: loss_fn(p, b, k, config), make_tx(config))
    state, hist = rnnjax.fit(init_fn(config), step, lambda t: batch_fn(config, t), steps=steps,
                             progress=False)
    return state, np.asarray(hist["loss"])


def close(a, b, rtol=2e-4, atol=2e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                                                         atol=atol), a, b)


def test_grid_is_the_cartesian_product():
    g = sweep.grid(lr=np.array([1e-3, 1e-2]), clip=[1.0, float("inf")], cell=["lstm"])
    assert g == [{"lr": 1e-3, "clip": 1.0, "cell": "lstm"}, {"lr": 1e-3, "clip": float("inf"), "cell": "lstm"},
                 {"lr": 1e-2, "clip": 1.0, "cell": "lstm"}, {"lr": 1e-2, "clip": float("inf"), "cell": "lstm"}]
    assert type(g[0]["lr"]) is float
    with pytest.raises(ValueError):
        sweep.grid(lr=[])


def run(cfgs, **kw):
    kw.setdefault("devices", jax.devices()[:1])
    return sweep.run_sweep(cfgs, init_fn, sweep.sweep_step(loss_fn, make_tx), batch_fn, steps=STEPS, **kw)


@pytest.fixture(scope="module")
def swept():
    return run(configs_4(), vmap_size=1)


def test_each_configuration_equals_training_it_alone(swept):
    cfgs = configs_4()
    others = {None: run(cfgs, vmap_size=None)}  # one vmap of all (the GPU default); 2: sharded test
    for res in (swept, *others.values()):
        assert res.metrics["loss"].shape == (4, STEPS)
        for i, c in enumerate(cfgs):
            state, losses = alone(c)
            close(res.metrics["loss"][i], losses)
            close(res.state(i).params, state.params)
            # the optimizer state holds this configuration's own hyperparameters
            hp = res.state(i).opt_state.hyperparams
            np.testing.assert_allclose(float(hp["learning_rate"]), c["learning_rate"], rtol=1e-6)
            assert float(hp["clip_norm"]) == np.float32(c["clip_norm"])
            assert int(res.state(i).step) == STEPS
        # stacked states: leading sweep axis, in the given order
        np.testing.assert_allclose(np.asarray(res.states.opt_state.hyperparams["learning_rate"]),
                                   [c["learning_rate"] for c in cfgs], rtol=1e-6)
    # configurations differ (seeds, rates): the sweep did not train one configuration 4 times
    assert len({round(float(v), 6) for v in swept.metrics["loss"][:, -1]}) == 4


def test_group_by_shape_keeps_the_order_and_values():
    cfgs = [dict(c, hidden_size=h) for c, h in zip(configs_4(), [6, 3, 6, 3])]
    res = run(cfgs, static=("hidden_size",))
    assert [g.indices for g in res.groups] == [[0, 2], [1, 3]]
    assert [g.static for g in res.groups] == [{"hidden_size": 6}, {"hidden_size": 3}]
    for i, c in enumerate(cfgs):
        state, losses = alone(c)
        assert res.state(i).params["cell"]["w_h"].shape == (c["hidden_size"], 4 * c["hidden_size"])
        close(res.metrics["loss"][i], losses)
        close(res.state(i).params, state.params)
    with pytest.raises(ValueError, match="groups"):
        res.states


def test_chunk_and_results_table(swept, tmp_path):
    chunked = run(configs_4(), vmap_size=1, chunk=2)
    timeless = lambda m: {k: v for k, v in m.items() if k != "sec_per_step"}  # noqa: E731
    close(timeless(swept.metrics), timeless(chunked.metrics))
    close(swept.states.params, chunked.states.params)
    one = swept
    cfgs = configs_4()
    final = one.final_values("loss")
    np.testing.assert_allclose(final, one.metrics["loss"][:, -1])
    np.testing.assert_allclose(one.final_values("loss", last=2), one.metrics["loss"][:, -2:].mean(1))
    assert one.best("loss") == int(np.argmin(final))
    assert one.best("loss", mode="max") == int(np.argmax(final))
    rows = one.table()
    assert [r["learning_rate"] for r in rows] == [c["learning_rate"] for c in cfgs]
    assert [r["final_loss"] for r in rows] == pytest.approx(list(final))
    assert all(r["nonfinite_steps"] == 0 for r in rows)
    md = one.markdown()
    assert md.count("\n") == 5 and f"| {one.best()}* |" in md
    fig = one.plot(str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert len(fig.axes[0].lines) == 4
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), one.metrics["loss"][1])


def test_best_ignores_nonfinite():
    history = rnnjax.engine.History(np.array([1]), {"loss": np.array([[np.nan], [0.5], [0.2]])},
                                    np.zeros(0, np.int64), {})
    res = sweep.SweepResult(configs=[{"a": 1}, {"a": 2}, {"a": 3}], history=history, groups=[], steps=1)
    assert res.best() == 2
    res.metrics["loss"][2, 0] = np.inf
    assert res.best() == 1


def test_a_traced_size_asks_for_static():
    cfgs = [{**BASE, "learning_rate": 1e-2, "hidden_size": 4}]
    with pytest.raises(TypeError, match="static"):
        sweep.run_sweep(cfgs, init_fn, sweep.sweep_step(loss_fn, make_tx), batch_fn, steps=1,
                        devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="same keys"):
        sweep.run_sweep([{"a": 1.0}, {"b": 1.0}], init_fn, sweep.sweep_step(loss_fn, make_tx),
                        batch_fn, steps=1)


SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    import test_sweep as ts
    from rnnjax import sweep
    assert len(jax.devices()) == 4, jax.devices()
    cfgs = ts.configs_4() + [dict(ts.configs_4()[0], learning_rate=7e-3, seed=5),
                             dict(ts.configs_4()[1], learning_rate=4e-2, seed=6)]   # 6: padded to 8
    step = sweep.sweep_step(ts.loss_fn, ts.make_tx)
    out = {{}}
    for vs in (2,):  # 2 configurations per device (vmap) when sharded; lax.map of pairs unsharded
        sh = sweep.run_sweep(cfgs, ts.init_fn, step, ts.batch_fn, steps=ts.STEPS, vmap_size=vs)
        un = sweep.run_sweep(cfgs, ts.init_fn, step, ts.batch_fn, steps=ts.STEPS, vmap_size=vs,
                             devices=jax.devices()[:1])
        w = sh.states.params["cell"]["w_h"]
        out[str(vs)] = dict(
            n_devices=len(w.sharding.device_set), n=int(w.shape[0]),
            loss_sharded=sh.metrics["loss"].tolist(), loss=un.metrics["loss"].tolist(),
            w_sharded=np.asarray(w).tolist(), w=np.asarray(un.states.params["cell"]["w_h"]).tolist())
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow  # keeps the default suite under 10 minutes on 2 cores; make test-slow
def test_sharded_sweep_equals_unsharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    code = SHARDED.format(tests=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=240, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    for vs, r in out.items():
        assert r["n_devices"] == 4 and r["n"] == 6, (vs, r["n_devices"], r["n"])
        close(np.array(r["loss_sharded"]), np.array(r["loss"]))
        close(np.array(r["w_sharded"]), np.array(r["w"]))
