"""rnnjax.attention: additive and scaled dot-product attention pooling over a cell's outputs,
against a step-by-step NumPy reference (float64), with lengths, NaN-padding and gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rnnjax


def _ref_scores(kind, p, h):
    """Score of one output vector h [H], in float64 NumPy."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    if kind == "additive":
        return float(np.tanh(h @ p["w"] + p["b"]) @ p["v"])
    k = h @ p["w_k"] if "w_k" in p else h
    return float(k @ p["q"] / math.sqrt(p["q"].shape[0]))


def _reference(kind, p, ys, lengths):
    """Step-by-step loops over the batch and the time steps: softmax over the valid steps only."""
    ys = np.asarray(ys, np.float64)
    T, B, H = ys.shape
    pooled, weights = np.zeros((B, H)), np.zeros((T, B))
    for b in range(B):
        n = int(lengths[b])
        if n == 0:
            continue
        e = np.array([_ref_scores(kind, p, ys[t, b]) for t in range(n)])
        a = np.exp(e - e.max())
        a /= a.sum()
        for t in range(n):
            weights[t, b] = a[t]
            pooled[b] += a[t] * ys[t, b]
    return pooled, weights


LAYERS = [
    ("additive", lambda: rnnjax.additive_attention(5)),
    ("additive_default", lambda: rnnjax.additive_attention()),
    ("dot", lambda: rnnjax.dot_product_attention(4, query_init=rnnjax.initializers.normal(1.0))),
    ("dot_nokey", lambda: rnnjax.dot_product_attention(query_init=rnnjax.initializers.normal(1.0))),
]


@pytest.mark.parametrize("name,make", LAYERS)
def test_matches_step_by_step_reference_with_lengths_and_nan_padding(name, make):
    kind = "additive" if name.startswith("additive") else "dot"
    layer = make()
    T, B, H = 7, 3, 3
    p = layer.init(jax.random.key(1), H)
    ys = 2.0 * jax.random.normal(jax.random.key(2), (T, B, H))
    lengths = np.array([7, 4, 0])
    ref_pooled, ref_w = _reference(kind, p, ys, lengths)
    # padded steps hold NaN and inf: they must not matter
    bad = ys.at[4:, 1].set(jnp.nan).at[:, 2].set(jnp.inf)
    pooled, w = jax.jit(layer.apply)(p, bad, lengths=jnp.asarray(lengths))
    assert pooled.shape == (B, H) and w.shape == (T, B)
    np.testing.assert_allclose(pooled, ref_pooled, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(w, ref_w, rtol=2e-5, atol=2e-7)
    w = np.asarray(w)
    assert np.all(w[4:, 1] == 0.0) and np.all(w[:, 2] == 0.0)  # exactly zero
    np.testing.assert_allclose(w[:, :2].sum(0), 1.0, rtol=1e-6)
    assert np.all(np.asarray(pooled)[2] == 0.0)  # length 0: the zero vector, no NaN
    # without lengths: every step counts, as lengths = T
    pooled_all, w_all = layer.apply(p, ys)
    ref_pooled_all, ref_w_all = _reference(kind, p, ys, [T] * B)
    np.testing.assert_allclose(pooled_all, ref_pooled_all, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(w_all).sum(0), 1.0, rtol=1e-6)


def test_unbatched_and_multi_batch_dims_agree_with_batched():
    layer = rnnjax.additive_attention(4)
    p = layer.init(jax.random.key(0), 3)
    ys = jax.random.normal(jax.random.key(1), (6, 2, 2, 3))
    lengths = jnp.array([[6, 1], [3, 0]])
    apply = jax.jit(layer.apply)
    pooled, w = apply(p, ys, lengths=lengths)
    for i in range(2):
        for j in range(2):
            p1, w1 = apply(p, ys[:, i, j], lengths=lengths[i, j])
            np.testing.assert_allclose(p1, pooled[i, j], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(w1, w[:, i, j], rtol=1e-6, atol=1e-7)


def test_zero_query_dot_product_starts_as_mean_pooling():
    layer = rnnjax.dot_product_attention()
    p = layer.init(jax.random.key(0), 3)
    ys = jax.random.normal(jax.random.key(1), (5, 2, 3))
    pooled, w = layer.apply(p, ys, lengths=jnp.array([5, 2]))
    np.testing.assert_allclose(pooled[0], ys[:, 0].mean(0), rtol=1e-6)
    np.testing.assert_allclose(pooled[1], ys[:2, 1].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(w[:, 1], [0.5, 0.5, 0, 0, 0])


@pytest.mark.parametrize("name,make", LAYERS[::2])
def test_check_grads(name, make):
    layer = make()
    with jax.enable_x64(True):
        p = jax.tree.map(lambda x: x.astype(jnp.float64), layer.init(jax.random.key(3), 3))
        ys = jax.random.normal(jax.random.key(4), (5, 2, 3), jnp.float64)
        lengths = jnp.array([5, 3])

        def f(p, ys):
            pooled, w = layer.apply(p, ys, lengths=lengths)
            return jnp.sum(jnp.sin(pooled)) + jnp.sum(w ** 2)

        check_grads(f, (p, ys), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_gradients_are_zero_at_padded_steps_and_finite_at_length_zero():
    layer = rnnjax.additive_attention(4)
    p = layer.init(jax.random.key(0), 3)
    ys = jax.random.normal(jax.random.key(1), (5, 2, 3)).at[2:, 0].set(jnp.nan)
    lengths = jnp.array([2, 0])

    def f(p, ys):
        pooled, w = layer.apply(p, ys, lengths=lengths)
        return jnp.sum(pooled ** 2) + jnp.sum(w)

    gp, gy = jax.grad(f, argnums=(0, 1))(p, ys)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(gp))
    gy = np.asarray(gy)
    assert np.all(gy[2:, 0] == 0.0) and np.all(gy[:, 1] == 0.0)
    assert np.any(gy[:2, 0] != 0.0)


def test_attention_shortens_the_gradient_path_of_gradient_flow():
    """With last-state readout dL/dh_0 decays through the recurrence; attention reaches h_0 directly."""
    cell = rnnjax.elman(6)
    T = 20
    p = cell.init(jax.random.key(0), 2)
    p = {**p, "w_h": 0.3 * p["w_h"]}  # contractive: vanishing gradients
    xs = jax.random.normal(jax.random.key(1), (T, 2, 2))
    att = rnnjax.dot_product_attention()
    pa = att.init(jax.random.key(2), 6)
    last = rnnjax.gradient_flow(cell, p, xs, lambda ys: jnp.sum(ys[-1]))
    pooled = rnnjax.gradient_flow(cell, p, xs, lambda ys: jnp.sum(att.apply(pa, ys)[0]))
    ratio_last = float(last.norms[0] / last.norms[-1])
    ratio_att = float(pooled.norms[0] / pooled.norms[-1])
    assert ratio_last < 1e-4
    assert ratio_att > 0.1


def test_bad_input_errors():
    layer = rnnjax.additive_attention(4)
    p = layer.init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match="last axis of size 3"):
        layer.apply(p, jnp.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match="rank >= 2"):
        layer.apply(p, jnp.zeros((3,)))
    with pytest.raises(ValueError, match="lengths must have shape"):
        layer.apply(p, jnp.zeros((5, 2, 3)), lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="lengths must lie in"):
        layer.apply(p, jnp.zeros((5, 2, 3)), lengths=jnp.array([1, 6]))
    with pytest.raises(ValueError, match="attention_size"):
        rnnjax.additive_attention(0)
    with pytest.raises(TypeError, match="key_size"):
        rnnjax.dot_product_attention(2.5)
    assert rnnjax.layers.additive_attention is rnnjax.additive_attention


# ----------------------------------------------------------------------------- experiment script


def _script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY = ["--seeds", "1", "--steps", "2", "--hidden", "4", "--attention-size", "3", "--batch", "4",
        "--adding-T", "6", "--copy-delay", "2", "--eval-batch", "16", "--flow-batch", "4",
        "--eval-every", "1", "--no-progress"]


def _check_outputs(out, tasks, T):
    import json

    res = json.loads((out / "results.json").read_text())
    assert sorted(res["tasks"]) == sorted(tasks)
    for task in tasks:
        r = res["tasks"][task]
        for readout in ("last", "attention"):
            flow = r["gradient_flow"][readout]
            assert len(flow["init"]) == len(flow["trained"]) == T[task]
            assert np.all(np.isfinite(flow["trained"]))
            assert flow["drop_trained"] == pytest.approx(flow["trained"][0] - flow["trained"][-1])
            fin = r["final"][readout]
            assert np.isfinite(fin["loss"]["median"])
            if "accuracy" in fin:
                assert 0.0 <= fin["accuracy"]["median"] <= 1.0
            assert len(r["train_loss"][readout][0]) == 2
    for name in ("attention.png", "gradient_flow.png", "results.md"):
        assert (out / name).stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "| task | readout |" in md and "python experiments/attention.py" in md


@pytest.mark.slow
def test_attention_script_end_to_end_tiny(tmp_path, capsys):
    """The adding task end to end (the slow test below runs copy and MNIST-1D too)."""
    _script("attention").main(["--tasks", "adding", "--out", str(tmp_path), "--workdir", str(tmp_path / "runs"), *TINY])
    _check_outputs(tmp_path, ["adding"], {"adding": 6})


@pytest.mark.slow
def test_attention_script_all_tasks_tiny(tmp_path, capsys):
    _script("attention").main(["--out", str(tmp_path), "--workdir", str(tmp_path / "runs"), *TINY])
    _check_outputs(tmp_path, ["adding", "copy", "mnist1d"], {"adding": 6, "copy": 22, "mnist1d": 40})
    assert (tmp_path / "attention_weights.png").stat().st_size > 0


def test_attention_script_help_prints_defaults(capsys):
    with pytest.raises(SystemExit):
        _script("attention").main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # help wraps long lines
    for flag, default in (("--out", "experiments/results/attention"), ("--seeds", "3"), ("--steps", "1500"),
                          ("--workdir", "runs/attention")):
        assert flag in out and f"(default: {default})" in out
