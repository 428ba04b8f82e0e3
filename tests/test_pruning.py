"""rnnjax.pruning: magnitude pruning as an Optax transformation (one-shot and Zhu & Gupta's
gradual schedule), masks in the optimizer state, exact zeros through Adam, checkpoints, vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax
from rnnjax.checkpoint import Checkpointer
from rnnjax.pruning import (current_sparsity, leaf_sparsity, masks, prune, pruned, sparsity,
                            sparsity_schedule)


def _params(seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    return {"cell": {"w_x": jax.random.normal(k[0], (3, 8)), "w_h": jax.random.normal(k[1], (8, 8)),
                     "b": jax.random.normal(k[2], (8,))},
            "readout": {"w": jax.random.normal(k[3], (8, 2)), "b": jnp.ones((2,))}}


def _grads(t, params):
    return jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(jax.random.key(7), t), p.shape),
                        params)


def _run(tx, params, n):
    """n updates with random gradients; the params and the state after each."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for t in range(n):
        u, state = update(_grads(t, params), state, params)
        params = optax.apply_updates(params, u)
        out.append((params, state))
    return out


def test_one_shot_per_leaf_prunes_the_smallest_magnitudes_of_the_updated_weights():
    params = _params()
    s = 0.7
    plain = rnnjax.optimizer("adam", 0.1)
    tx = optax.chain(rnnjax.optimizer("adam", 0.1), prune(s))
    g = _grads(0, params)
    u0, _ = jax.jit(plain.update)(g, plain.init(params), params)
    w = optax.apply_updates(params, u0)  # what the optimizer alone would produce
    u, state = jax.jit(tx.update)(g, tx.init(params), params)
    new = optax.apply_updates(params, u)
    for path in (("cell", "w_x"), ("cell", "w_h"), ("readout", "w")):
        ref = np.asarray(w[path[0]][path[1]]).ravel()
        got = np.asarray(new[path[0]][path[1]]).ravel()
        k = int(round(s * ref.size))
        pruned_idx = np.argsort(np.abs(ref), kind="stable")[:k]
        expect = ref.copy()
        expect[pruned_idx] = 0.0
        np.testing.assert_array_equal(got, expect)  # exact: kept entries as Adam made them
        assert np.sum(got == 0) == k
        np.testing.assert_array_equal(np.asarray(masks(state)[path[0]][path[1]]).ravel(), expect != 0)
    for path in (("cell", "b"), ("readout", "b")):  # biases are not weights: untouched
        np.testing.assert_array_equal(new[path[0]][path[1]], w[path[0]][path[1]])
        assert isinstance(masks(state)[path[0]][path[1]], optax.MaskedNode)
    ls = leaf_sparsity(new)
    assert set(ls) == {"cell/w_x", "cell/w_h", "readout/w"}
    np.testing.assert_allclose(ls["cell/w_h"], round(0.7 * 64) / 64)
    np.testing.assert_allclose(current_sparsity(state), (17 + 45 + 11) / (24 + 64 + 16))


def test_global_scope_reaches_the_target_over_all_selected_leaves_with_one_threshold():
    params = _params(1)
    tx = optax.chain(optax.sgd(0.0), prune(0.8, scope="global"))  # zero lr: prunes params as they are
    u, state = jax.jit(tx.update)(_grads(0, params), tx.init(params), params)
    new = optax.apply_updates(params, u)
    n = 24 + 64 + 16
    assert float(sparsity(new)) == pytest.approx(round(0.8 * n) / n, abs=1e-7)
    assert float(current_sparsity(state)) == pytest.approx(round(0.8 * n) / n, abs=1e-7)
    mags_kept = np.concatenate([np.abs(np.asarray(new["cell"][k])).ravel() for k in ("w_x", "w_h")]
                               + [np.abs(np.asarray(new["readout"]["w"])).ravel()])
    mags_old = np.concatenate([np.abs(np.asarray(params["cell"][k])).ravel() for k in ("w_x", "w_h")]
                              + [np.abs(np.asarray(params["readout"]["w"])).ravel()])
    threshold = np.sort(mags_old)[round(0.8 * n) - 1]
    np.testing.assert_array_equal(mags_kept == 0, mags_old <= threshold)
    # the leaves differ: one global threshold, not a per-leaf quota
    per_leaf = leaf_sparsity(new)
    assert len({round(float(v), 6) for v in per_leaf.values()}) > 1


def test_include_recurrent_weights_only_and_pytree_include():
    params = _params(2)
    only_wh = prune(0.5, include=lambda name, _: name.endswith("w_h"))
    tree = jax.tree.map(lambda _: False, params)
    tree["cell"]["w_h"] = True
    by_tree = prune(0.5, include=tree)
    for tx in (only_wh, by_tree):
        u, st = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        new = optax.apply_updates(params, u)
        assert float(leaf_sparsity(new)["cell/w_h"]) == 0.5
        assert float(leaf_sparsity(new)["cell/w_x"]) == 0.0
        assert len(jax.tree.leaves(masks(st))) == 1


def test_masked_entries_are_exactly_zero_and_never_change_over_adam_steps():
    params = _params(3)
    tx = pruned(rnnjax.optimizer("adam", 0.05, weight_decay=1e-3), 0.6, begin_step=2)
    run = _run(tx, params, 12)
    m_after = masks(run[2][1])  # pruned at step t=2 (the third update)
    assert float(current_sparsity(run[1][1])) == 0.0  # nothing pruned before begin_step
    for p, st in run[2:]:
        for leaf_p, leaf_m, leaf_m0 in zip(jax.tree.leaves(p["cell"]["w_h"]), jax.tree.leaves(masks(st)["cell"]["w_h"]),
                                           jax.tree.leaves(m_after["cell"]["w_h"])):
            np.testing.assert_array_equal(leaf_m, leaf_m0)  # one-shot: the mask never changes
            assert np.all(np.asarray(leaf_p)[~np.asarray(leaf_m)] == 0.0)
            assert np.all(np.asarray(leaf_p)[np.asarray(leaf_m)] != 0.0)
    # the kept weights do train
    assert not np.array_equal(run[-1][0]["cell"]["w_h"], run[2][0]["cell"]["w_h"])


def _closed_form(t, s_f, s_i, t0, end, dt, power=3):
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 at the last pruning step."""
    if t < t0:
        return 0.0
    events = [e for e in range(t0, end + 1) if (e - t0) % dt == 0 or e == end]
    te = max(e for e in events if e <= t)
    if end == t0:
        return s_f
    return s_f + (s_i - s_f) * (1 - (te - t0) / (end - t0)) ** power


@pytest.mark.parametrize("t0,end,dt,s_i", [(1, 7, 2, 0.0), (0, 5, 2, 0.1), (3, 3, 1, 0.0)])
def test_schedule_against_its_closed_form_and_the_masks_follow_it(t0, end, dt, s_i):
    s_f = 0.9
    steps = np.arange(12)
    got = np.asarray(sparsity_schedule(steps, sparsity=s_f, initial_sparsity=s_i, begin_step=t0,
                                       end_step=end, frequency=dt))
    np.testing.assert_allclose(got, [_closed_form(t, s_f, s_i, t0, end, dt) for t in steps], rtol=1e-6,
                               atol=1e-7)
    params = {"w_h": jax.random.normal(jax.random.key(0), (10, 10))}
    tx = pruned(rnnjax.optimizer("adam", 0.01), s_f, begin_step=t0, end_step=end, frequency=dt,
                initial_sparsity=s_i)
    prev = 0.0
    for t, (p, st) in enumerate(_run(tx, params, 10)):
        want = round(_closed_form(t, s_f, s_i, t0, end, dt) * 100) / 100
        assert float(current_sparsity(st)) == pytest.approx(want, abs=1e-7)
        assert float(sparsity(p)) == pytest.approx(want, abs=1e-7)
        assert want >= prev
        prev = want
    assert prev == pytest.approx(s_f)  # the end of the schedule reaches the target


def test_sparsity_is_a_traced_array_leaf_under_vmap():
    params = {"w_h": jax.random.normal(jax.random.key(0), (10, 10)), "b": jnp.zeros((10,))}
    levels = jnp.array([0.0, 0.5, 0.9, 0.95])

    def one(s):
        tx = pruned(rnnjax.optimizer("adam", 0.01), s)
        st = tx.init(params)
        u, st = tx.update(_grads(0, params), st, params)
        p = optax.apply_updates(params, u)
        return current_sparsity(st), sparsity(p), rnnjax.pruning.find_prune_state(st).hyperparams["sparsity"]

    cur, zeros, hp = jax.jit(jax.vmap(one))(levels)
    np.testing.assert_allclose(cur, [0.0, 0.5, 0.9, 0.95], rtol=1e-6)
    np.testing.assert_allclose(zeros, [0.0, 0.5, 0.9, 0.95], rtol=1e-6)
    np.testing.assert_allclose(hp, levels)


@functools.lru_cache(maxsize=None)
def _model():
    cell = rnnjax.elman(4)

    def loss_fn(p, batch, key):
        del key
        _, hs = rnnjax.unroll(cell, p["cell"], batch)
        return jnp.mean((hs[-1] @ p["w"] - 1.0) ** 2)

    tx = pruned(rnnjax.optimizer("adam", 1e-2), 0.75, end_step=4, frequency=2)
    return cell, tx, jax.jit(rnnjax.train_step(loss_fn, tx))


def test_masks_survive_a_checkpoint_round_trip_and_training_resumes_with_them(tmp_path):
    cell, tx, step = _model()
    params = {"cell": cell.init(jax.random.key(0), 2), "w": jnp.ones((4, 1))}
    template = rnnjax.TrainState.create(params, tx, key=jax.random.key(1))

    def batch(t):
        return jax.random.normal(jax.random.key(100 + t), (5, 3, 2))

    state = template
    for t in range(3):  # in the middle of the gradual schedule (pruning steps 0, 2, 4)
        state, _ = step(state, batch(t))
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(state)
        restored = ckpt.restore_latest(template)
    for a, b in zip(jax.tree.leaves(masks(state.opt_state)), jax.tree.leaves(masks(restored.opt_state))):
        assert b.dtype == jnp.bool_
        np.testing.assert_array_equal(a, b)
    assert float(current_sparsity(restored.opt_state)) == float(current_sparsity(state.opt_state)) > 0
    a, b = state, restored
    for t in range(3, 8):
        a, _ = step(a, batch(t))
        b, _ = step(b, batch(t))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            continue
        np.testing.assert_array_equal(x, y)  # bitwise the same run
    w_h = np.asarray(b.params["cell"]["w_h"])
    m = np.asarray(masks(b.opt_state)["cell"]["w_h"])
    assert np.all(w_h[~m] == 0.0) and np.mean(~m) == 0.75


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sparsity must be"):
        prune(1.5)
    with pytest.raises(ValueError, match="scope must be"):
        prune(0.5, scope="layer")
    with pytest.raises(ValueError, match="end_step"):
        prune(0.5, begin_step=5, end_step=2)
    with pytest.raises(ValueError, match="frequency must be"):
        prune(0.5, frequency=0)
    with pytest.raises(ValueError, match="include"):
        prune(0.5, include={"a": True}).init({"w": jnp.ones(3), "v": jnp.ones(3)})
    tx = prune(0.5)
    st = tx.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"w": jnp.ones(3)}, st)
    with pytest.raises(ValueError, match="no PruneState"):
        current_sparsity(rnnjax.optimizer().init({"w": jnp.ones(3)}))


# ----------------------------------------------------------------------------- experiment script


def _script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # keeps the default suite under 10 minutes on 2 cores; make test-slow
def test_pruning_script_end_to_end_tiny(tmp_path, capsys):
    import json

    _script("pruning").main(["--out", str(tmp_path), "--workdir", str(tmp_path / "runs"), "--cells", "gru", "--sparsities", "0,0.5",
                             "--seeds", "1", "--steps", "4", "--hidden", "4", "--prune-every", "1",
                             "--batch", "8", "--eval-every", "2", "--no-progress"])
    res = json.loads((tmp_path / "results.json").read_text())
    rows = {r["sparsity"]: r for r in res["table"]}
    # GRU H=4 on one channel: w_x [1, 12] and w_h [4, 12]; half of each is pruned, exactly
    assert rows[0.0]["zero_fraction"]["median"] == 0.0
    assert rows[0.5]["zero_fraction"]["median"] == 0.5
    assert rows[0.5]["mask_sparsity_seed0"] == 0.5 and rows[0.5]["pruned_weights_total"] == 60
    assert all(0.0 <= r["accuracy"]["median"] <= 1.0 for r in rows.values())
    assert (tmp_path / "pruning.png").stat().st_size > 0
    assert "| gru | 50% | 50.0% |" in (tmp_path / "results.md").read_text()


def test_pruning_script_help_prints_defaults(capsys):
    with pytest.raises(SystemExit):
        _script("pruning").main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # help wraps long lines
    for flag, default in (("--out", "experiments/results/pruning"), ("--seeds", "2"), ("--steps", "1500"),
                          ("--sparsities", "0,0.5,0.8,0.9,0.95")):
        assert flag in out and f"(default: {default})" in out
