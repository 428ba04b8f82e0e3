"""Tests for rnnjax.train: the optimizer chain, schedules, the train step, evaluate and fit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax
from rnnjax import losses
from rnnjax import (NonFiniteError, TrainState, current_learning_rate, evaluate, fit, optimizer,
                          train_step)


def _tree_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


PARAMS = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(0.25)}
GRADS = {"w": jnp.array([0.3, 0.1, -0.2]), "b": jnp.array(0.05)}  # global norm ~0.378


# ----------------------------------------------------------------------------- optimizer


def test_sgd_update_is_minus_lr_times_grad():
    tx = optimizer("sgd", 0.1, clip_norm=None)
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    for k in GRADS:
        np.testing.assert_allclose(updates[k], -0.1 * GRADS[k], rtol=1e-6)


def test_clipping_bounds_global_norm_and_passes_small_gradients():
    big = jax.tree.map(lambda g: 100 * g, GRADS)
    tx = optimizer("sgd", 1.0, clip_norm=0.5)
    state = tx.init(PARAMS)
    up_big, _ = tx.update(big, state, PARAMS)
    np.testing.assert_allclose(optax.tree.norm(up_big), 0.5, rtol=1e-5)
    np.testing.assert_allclose(up_big["w"], -0.5 * big["w"] / optax.tree.norm(big), rtol=1e-5)
    up_small, _ = tx.update(GRADS, state, PARAMS)  # norm 0.378 < 0.5: unchanged
    for k in GRADS:
        np.testing.assert_array_equal(up_small[k], -GRADS[k])


def test_clip_norm_none_passes_gradients_and_keeps_structure():
    big = jax.tree.map(lambda g: 1e4 * g, GRADS)
    tx_none, tx_clip = optimizer("sgd", 1.0, clip_norm=None), optimizer("sgd", 1.0, clip_norm=1.0)
    s_none, s_clip = tx_none.init(PARAMS), tx_clip.init(PARAMS)
    up, _ = tx_none.update(big, s_none, PARAMS)
    for k in big:
        np.testing.assert_array_equal(up[k], -big[k])
    assert jax.tree_util.tree_structure(s_none) == jax.tree_util.tree_structure(s_clip)
    assert float(s_none.hyperparams["clip_norm"]) == np.inf


def test_hyperparams_are_array_leaves_and_changing_them_changes_the_update():
    tx = optimizer("adam", 1e-3, clip_norm=1.0, weight_decay=0.0)
    state = tx.init(PARAMS)
    hp = state.hyperparams
    assert set(hp) == {"learning_rate", "clip_norm", "b1", "b2", "eps", "weight_decay", "warmup_steps"}
    for v in hp.values():
        assert isinstance(v, jax.Array) and v.shape == ()
    leaves = jax.tree_util.tree_leaves(state)
    assert any(x is hp["learning_rate"] for x in leaves)
    up1, _ = tx.update(GRADS, state, PARAMS)
    state2 = state._replace(hyperparams={**hp, "learning_rate": jnp.asarray(2e-3, jnp.float32)})
    up2, _ = tx.update(GRADS, state2, PARAMS)
    np.testing.assert_allclose(up2["w"], 2 * up1["w"], rtol=1e-5)
    state3 = state._replace(hyperparams={**hp, "weight_decay": jnp.asarray(0.5, jnp.float32)})
    up3, _ = tx.update(GRADS, state3, PARAMS)
    assert not np.allclose(up3["w"], up1["w"])


def test_vmap_over_learning_rates():
    lrs = jnp.array([0.1, 0.2, 0.4])

    def one(lr):
        tx = optimizer("sgd", lr, clip_norm=None)
        return tx.update(GRADS, tx.init(PARAMS), PARAMS)[0]["w"]

    out = jax.vmap(one)(lrs)
    np.testing.assert_allclose(out, -lrs[:, None] * GRADS["w"][None, :], rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw", "rmsprop"])
def test_every_optimizer_matches_optax_reference(name):
    tx = optimizer(name, 0.01, clip_norm=None)
    ref = {"sgd": optax.sgd(0.01), "momentum": optax.sgd(0.01, momentum=0.9),
           "adam": optax.adam(0.01), "adamw": optax.adamw(0.01, weight_decay=0.0),
           "rmsprop": optax.rmsprop(0.01, decay=0.9, eps=1e-8)}[name]
    s, r = tx.init(PARAMS), ref.init(PARAMS)
    for i in range(3):
        g = jax.tree.map(lambda x: x * (i + 1), GRADS)
        u, s = tx.update(g, s, PARAMS)
        v, r = ref.update(g, r, PARAMS)
        for k in u:
            np.testing.assert_allclose(u[k], v[k], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("scale", [1.0, 1e-5])
def test_rmsprop_eps_outside_sqrt_matches_torch(scale):
    """``eps_in_sqrt=False`` is torch.optim.RMSprop (alpha = decay), step for step, also where the
    gradients are small enough (1e-5) that the two forms differ; the default form is optax's."""
    torch = pytest.importorskip("torch")
    w0 = np.array([1.0, -2.0, 0.5, 3.0], np.float64)
    grads = [scale * np.array([0.3, 0.1, -0.2, 1e-3], np.float64) * (1 + 0.5 * i) for i in range(4)]
    tw = torch.tensor(w0.copy(), requires_grad=True)
    topt = torch.optim.RMSprop([tw], lr=0.01, alpha=0.9, eps=1e-8)
    tx = optimizer("rmsprop", 0.01, clip_norm=None, decay=0.9, eps_in_sqrt=False)
    tx_in = optimizer("rmsprop", 0.01, clip_norm=None, decay=0.9)
    p = {"w": jnp.asarray(w0, jnp.float32)}
    p_in = dict(p)
    s, s_in = tx.init(p), tx_in.init(p_in)
    for g in grads:
        tw.grad = torch.tensor(g)
        topt.step()
        u, s = tx.update({"w": jnp.asarray(g, jnp.float32)}, s, p)
        p = optax.apply_updates(p, u)
        u, s_in = tx_in.update({"w": jnp.asarray(g, jnp.float32)}, s_in, p_in)
        p_in = optax.apply_updates(p_in, u)
    np.testing.assert_allclose(p["w"], tw.detach().numpy(), rtol=1e-6, atol=1e-7)
    moved, moved_in = np.abs(np.asarray(p["w"]) - w0), np.abs(np.asarray(p_in["w"]) - w0)
    if scale == 1.0:  # gradients ~0.1-1: eps is negligible either way; ~1e-3: 2% shorter inside
        np.testing.assert_allclose(moved_in[:3], moved[:3], rtol=1e-3)
        assert 0.95 < moved_in[3] / moved[3] < 0.99
    else:  # RMS gradient ~3e-6: eps inside the root shrinks the step to r / sqrt(r^2 + 1e-8) ~ 0.03
        assert np.all(moved_in < 0.1 * moved)


def test_eps_in_sqrt_bad_arguments():
    with pytest.raises(TypeError, match="eps_in_sqrt must be a bool"):
        optimizer("rmsprop", eps_in_sqrt=0)
    with pytest.raises(ValueError, match="eps_in_sqrt=False applies to rmsprop only"):
        optimizer("adam", eps_in_sqrt=False)


def test_weight_decay_sgd_adds_decay_times_param():
    tx = optimizer("sgd", 0.1, clip_norm=None, weight_decay=0.01)
    u, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(u["w"], -0.1 * (GRADS["w"] + 0.01 * PARAMS["w"]), rtol=1e-6)


def _lrs(tx, n):
    state, out = tx.init(PARAMS), []
    for _ in range(n):
        _, state = tx.update(GRADS, state, PARAMS)
        out.append(float(current_learning_rate(state)))
    return np.array(out)


def test_schedules_give_expected_learning_rates():
    lr = 0.1
    np.testing.assert_allclose(_lrs(optimizer("sgd", lr, schedule="constant"), 3), [lr] * 3, rtol=1e-6)
    cos = _lrs(optimizer("sgd", lr, schedule="cosine", decay_steps=4, end_factor=0.1), 6)
    expected = [lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(t / 4, 1)))) for t in range(6)]
    np.testing.assert_allclose(cos, expected, rtol=1e-5)
    lin = _lrs(optimizer("sgd", lr, schedule="linear", decay_steps=4, warmup_steps=2), 8)
    np.testing.assert_allclose(lin, lr * np.array([0, 0.5, 1, 0.75, 0.5, 0.25, 0, 0]), atol=1e-7)
    exp = _lrs(optimizer("sgd", lr, schedule="exponential", decay_steps=2, decay_rate=0.5), 5)
    np.testing.assert_allclose(exp, lr * 0.5 ** (np.arange(5) / 2), rtol=1e-5)
    # the applied update uses the scheduled rate, and the peak stays an array leaf
    tx = optimizer("sgd", lr, clip_norm=None, schedule="cosine", decay_steps=4)
    s = tx.init(PARAMS)
    _, s = tx.update(GRADS, s, PARAMS)
    u, s = tx.update(GRADS, s, PARAMS)
    np.testing.assert_allclose(u["w"], -lr * 0.5 * (1 + np.cos(np.pi / 4)) * GRADS["w"], rtol=1e-5)
    assert float(s.hyperparams["learning_rate"]) == pytest.approx(lr)


def test_optimizer_bad_arguments():
    with pytest.raises(ValueError, match="sgd, momentum, adam, adamw, rmsprop"):
        optimizer("adamx")
    with pytest.raises(ValueError, match="valid schedules: constant"):
        optimizer("adam", schedule="step")
    with pytest.raises(ValueError, match="decay_steps"):
        optimizer("adam", schedule="cosine")
    with pytest.raises(TypeError, match="learning_rate.*callable"):
        optimizer("adam", optax.constant_schedule(0.1))
    with pytest.raises(ValueError, match="clip_norm"):
        optimizer("adam", clip_norm=0.0)
    with pytest.raises(ValueError, match="b2"):
        optimizer("adam", b2=1.0)
    with pytest.raises(TypeError, match="learning_rate"):
        optimizer("adam", "0.1")


# ----------------------------------------------------------------------------- train step


def _task(key, T=8, B=16, D=2):
    """Regression: predict the running mean of the input's first channel at the last step."""
    xs = jax.random.normal(key, (T, B, D))
    return {"x": xs, "y": jnp.mean(xs[..., :1], axis=0)}


def _model(cell, H=8, D=2, seed=0):
    kc, kr = jax.random.split(jax.random.key(seed))
    params = {"cell": cell.init(kc, D), "readout": {"w": 0.1 * jax.random.normal(kr, (H, 1)), "b": jnp.zeros(1)}}

    def predict(p, x):
        _, hs = rnnjax.unroll(cell, p["cell"], x)
        return hs[-1] @ p["readout"]["w"] + p["readout"]["b"][None, :]

    def loss_fn(p, batch, key):
        del key
        return losses.mse(predict(p, batch["x"]), batch["y"])

    return params, loss_fn


@pytest.mark.parametrize("factory", [rnnjax.elman, rnnjax.lstm])
def test_train_step_lowers_the_loss(factory):
    params, loss_fn = _model(factory(8))
    tx = optimizer("adam", 1e-2)
    state = TrainState.create(params, tx, key=jax.random.key(1))
    step = jax.jit(train_step(loss_fn, tx))
    eval_batch = _task(jax.random.key(123))
    before = float(loss_fn(state.params, eval_batch, None))
    for t in range(40):
        state, metrics = step(state, _task(jax.random.key(t)))
    after = float(loss_fn(state.params, eval_batch, None))
    assert after < 0.5 * before, (before, after)
    assert int(state.step) == 40 and int(metrics["nonfinite"]) == 0
    assert float(metrics["learning_rate"]) == pytest.approx(1e-2)


def test_train_step_traces_once_and_reports_pre_clip_grad_norm():
    params, loss_fn = _model(rnnjax.elman(4), H=4)
    tx = optimizer("sgd", 0.1, clip_norm=1e-3)
    state = TrainState.create(params, tx, key=jax.random.key(0))
    step = jax.jit(chex.assert_max_traces(train_step(loss_fn, tx), n=1))
    batch = _task(jax.random.key(0), B=4)
    raw = optax.tree.norm(jax.grad(loss_fn)(params, batch, None))
    s1, m = step(state, batch)
    np.testing.assert_allclose(m["grad_norm"], raw, rtol=1e-5)
    np.testing.assert_allclose(m["update_norm"], 0.1 * 1e-3, rtol=1e-4)  # lr * clip_norm
    for t in range(1, 4):
        s1, m = step(s1, _task(jax.random.key(t), B=4))
    assert int(s1.step) == 4


def test_step_key_is_fold_in_of_state_key_and_step():
    seen = []

    def loss_fn(p, batch, key):
        return jnp.sum(p["w"] * jax.random.normal(key, (3,)))

    tx = optimizer("sgd", 0.1)
    step = train_step(lambda p, b, k: (loss_fn(p, b, k), {"noise": jax.random.normal(k, (3,))}), tx, has_aux=True)
    state = TrainState.create(PARAMS, tx, key=jax.random.key(7))
    for t in range(3):
        state, m = step(state, None)
        seen.append(m["noise"])
    for t in range(3):
        np.testing.assert_array_equal(seen[t], jax.random.normal(jax.random.fold_in(jax.random.key(7), t), (3,)))


def test_nonfinite_guard_leaves_params_and_opt_state_bitwise_unchanged():
    params, loss_fn = _model(rnnjax.elman(4), H=4)
    tx = optimizer("adam", 1e-2)
    step = jax.jit(train_step(loss_fn, tx))
    state = TrainState.create(params, tx, key=jax.random.key(0))
    state, _ = step(state, _task(jax.random.key(0), B=4))  # a real step first: nonzero moments
    bad = _task(jax.random.key(1), B=4)
    bad["x"] = bad["x"].at[3, 0, 1].set(jnp.nan)
    new, m = step(state, bad)
    assert int(m["nonfinite"]) == 1 and int(new.step) == int(state.step) + 1
    assert float(m["update_norm"]) == 0.0
    assert _tree_equal(new.params, state.params)
    assert _tree_equal(new.opt_state, state.opt_state)
    good, m2 = step(new, _task(jax.random.key(2), B=4))
    assert int(m2["nonfinite"]) == 0 and not _tree_equal(good.params, state.params)


def test_project_is_applied_after_the_update_and_inside_the_nonfinite_guard():
    """Projected SGD onto the box [-0.1, 0.1] (optax.projections): params = clip(params - lr g);
    update_norm stays the optimizer's; a non-finite step still leaves params bitwise unchanged."""
    tx = optimizer("sgd", 0.1, clip_norm=None)

    def loss_fn(p, batch, key):
        return jnp.sum(p["w"] * batch) + p["b"] * jnp.sum(batch)

    box = lambda p: optax.projections.projection_box(p, jax.tree.map(lambda x: -0.1, p), jax.tree.map(lambda x: 0.1, p))  # noqa: E731,E501
    step = jax.jit(train_step(loss_fn, tx, project=box))
    state = TrainState.create(PARAMS, tx, key=jax.random.key(0))
    x = jnp.array([1.0, -2.0, 3.0])
    new, m = step(state, x)
    np.testing.assert_allclose(new.params["w"], np.clip(np.asarray(PARAMS["w"]) - 0.1 * np.asarray(x), -0.1, 0.1))
    np.testing.assert_allclose(new.params["b"], np.clip(0.25 - 0.1 * 2.0, -0.1, 0.1), rtol=1e-6)
    np.testing.assert_allclose(m["update_norm"], 0.1 * np.linalg.norm([1.0, -2.0, 3.0, 2.0]), rtol=1e-6)
    bad, m = step(new, jnp.array([1.0, jnp.nan, 0.0]))
    assert int(m["nonfinite"]) == 1 and _tree_equal(bad.params, new.params)
    with pytest.raises(TypeError, match="project"):
        train_step(loss_fn, tx, project="box")
    with pytest.raises(ValueError, match="same structure"):
        train_step(loss_fn, tx, project=lambda p: p["w"])(state, x)


def test_has_aux_metrics_and_bad_arguments():
    tx = optimizer("sgd", 0.1)

    def loss_fn(p, batch, key):
        return jnp.sum(p["w"] ** 2), {"wsum": jnp.sum(p["w"])}

    state = TrainState.create(PARAMS, tx, key=jax.random.key(0))
    _, m = train_step(loss_fn, tx, has_aux=True)(state, None)
    np.testing.assert_allclose(m["wsum"], -0.5)
    with pytest.raises(ValueError, match="clash"):
        train_step(lambda p, b, k: (jnp.sum(p["w"]), {"loss": 0.0}), tx, has_aux=True)(state, None)
    with pytest.raises(TypeError, match="loss_fn"):
        train_step("mse", tx)
    with pytest.raises(TypeError, match="tx"):
        train_step(loss_fn, optax.sgd)
    with pytest.raises(TypeError, match="key"):
        TrainState.create(PARAMS, tx, key=0)


# ----------------------------------------------------------------------------- evaluate / fit


def test_evaluate_weighted_mean():
    batches = [jnp.ones(2) * 1.0, jnp.ones(4) * 4.0]

    def eval_fn(p, b):
        return {"m": jnp.mean(b)}

    assert evaluate(eval_fn, None, batches)["m"] == pytest.approx(2.5)
    assert evaluate(eval_fn, None, batches, weight_fn=lambda b: b.shape[0])["m"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="batches"):
        evaluate(eval_fn, None, [])
    with pytest.raises(ValueError, match="scalar"):
        evaluate(lambda p, b: {"m": b}, None, batches)


def test_fit_runs_evaluates_and_resumes_deterministically():
    params, loss_fn = _model(rnnjax.elman(4), H=4)
    tx = optimizer("adam", 1e-2, schedule="cosine", decay_steps=12, warmup_steps=2)
    step_fn = train_step(loss_fn, tx)
    batch_fn = lambda t: _task(jax.random.key(t), B=4)  # noqa: E731
    eval_batches = [_task(jax.random.key(1000 + i), B=4) for i in range(2)]
    eval_fn = lambda p, b: {"loss": loss_fn(p, b, None)}  # noqa: E731
    state0 = TrainState.create(params, tx, key=jax.random.key(0))
    seen = []
    state, hist = fit(state0, step_fn, batch_fn, steps=12, eval_fn=eval_fn, eval_batches=eval_batches,
                      eval_every=5, log_every=2, progress=False, callback=lambda s, r: seen.append(r["step"]))
    assert int(state.step) == 12 and seen == list(range(1, 13))
    assert hist["step"] == [2, 4, 6, 8, 10, 12] and len(hist["loss"]) == 6
    assert hist["eval_step"] == [5, 10, 12]
    assert hist["eval_loss"][-1] == pytest.approx(evaluate(eval_fn, state.params, eval_batches)["loss"], rel=1e-5)
    assert hist["eval_loss"][-1] < hist["eval_loss"][0]
    assert hist["learning_rate"][0] == pytest.approx(1e-2 * 1 / 2)  # step 2 used t=1: warmup 1/2
    # resume from step 6: same final params bitwise
    mid, _ = fit(state0, step_fn, batch_fn, steps=6, progress=False)
    resumed, h2 = fit(mid, step_fn, batch_fn, steps=12, progress=False)
    assert h2["step"][0] == 7
    assert _tree_equal(resumed.params, state.params)
    # steps is the total: a state already beyond it is refused, not returned as if it were that run
    with pytest.raises(ValueError, match=r"already at step 12, beyond steps=6"):
        fit(state, step_fn, batch_fn, steps=6, progress=False)


def test_fit_refuses_a_workdir_already_beyond_steps(tmp_path):
    params, loss_fn = _model(rnnjax.elman(4), H=4)
    tx = optimizer("adam", 1e-2)
    step_fn, batch_fn = train_step(loss_fn, tx), (lambda t: _task(jax.random.key(t), B=4))
    state0 = TrainState.create(params, tx, key=jax.random.key(0))
    done, _ = fit(state0, step_fn, batch_fn, steps=6, workdir=tmp_path / "run", progress=False)
    again, _ = fit(state0, step_fn, batch_fn, steps=6, workdir=tmp_path / "run", progress=False)
    assert _tree_equal(again.params, done.params)  # the same total reads the finished run back
    with pytest.raises(rnnjax.WorkdirError, match=r"holds a run already at step 6, beyond steps=4"):
        fit(state0, step_fn, batch_fn, steps=4, workdir=tmp_path / "run", progress=False)


def test_fit_stops_after_consecutive_nonfinite_steps():
    params, loss_fn = _model(rnnjax.elman(4), H=4)
    tx = optimizer("sgd", 0.1)

    def batch_fn(t):
        b = _task(jax.random.key(t), B=4)
        return b if t < 3 else {**b, "x": b["x"] * jnp.nan}

    state = TrainState.create(params, tx, key=jax.random.key(0))
    with pytest.raises(NonFiniteError, match="step 7: 4 consecutive") as info:
        fit(state, train_step(loss_fn, tx), batch_fn, steps=20, progress=False, max_consecutive_nonfinite=4)
    assert info.value.step == 7 and int(info.value.state.step) == 3
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(info.value.state.params))


def test_fit_bad_arguments():
    params, loss_fn = _model(rnnjax.elman(4), H=4)
    tx = optimizer("sgd", 0.1)
    state = TrainState.create(params, tx, key=jax.random.key(0))
    step_fn = train_step(loss_fn, tx)
    with pytest.raises(TypeError, match="steps"):
        fit(state, step_fn, lambda t: None, steps=1.5)
    with pytest.raises(ValueError, match="log_every"):
        fit(state, step_fn, lambda t: None, steps=2, log_every=0)
    with pytest.raises(ValueError, match="eval_fn and eval_batches"):
        fit(state, step_fn, lambda t: None, steps=2, eval_batches=[None])
    with pytest.raises(TypeError, match="state"):
        fit(params, step_fn, lambda t: None, steps=2)
