"""Tests for rnnjax.losses: values against closed forms and NumPy references, and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import losses


def _rng(seed=0):
    return np.random.default_rng(seed)


def _log_softmax_np(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- mse


def test_mse_matches_numpy():
    r = _rng()
    p, t = r.normal(size=(5, 3, 2)).astype(np.float32), r.normal(size=(5, 3, 2)).astype(np.float32)
    np.testing.assert_allclose(losses.mse(jnp.asarray(p), jnp.asarray(t)), np.mean((p - t) ** 2), rtol=1e-6)


def test_mse_mask_over_leading_dims():
    r = _rng(1)
    p, t = r.normal(size=(4, 3, 2)).astype(np.float32), r.normal(size=(4, 3, 2)).astype(np.float32)
    mask = r.random((4, 3)) > 0.4
    expected = np.mean(((p - t) ** 2)[mask])  # every valid [t, b] counts its 2 outputs
    np.testing.assert_allclose(losses.mse(jnp.asarray(p), jnp.asarray(t), mask=jnp.asarray(mask)),
                               expected, rtol=1e-6)


def test_mse_rejects_broadcast_between_b1_and_b():
    with pytest.raises(ValueError, match="targets.*shape"):
        losses.mse(jnp.zeros((4, 1)), jnp.zeros((4,)))


def test_mse_type_errors():
    with pytest.raises(TypeError, match="predictions"):
        losses.mse([1.0, 2.0], jnp.zeros(2))
    with pytest.raises(TypeError, match="predictions.*floating"):
        losses.mse(jnp.zeros(2, jnp.int32), jnp.zeros(2))
    with pytest.raises(ValueError, match="mask"):
        losses.mse(jnp.zeros((4, 3)), jnp.zeros((4, 3)), mask=jnp.ones((3,), bool))


# ----------------------------------------------------------------------------- binary


def test_bce_matches_closed_form():
    r = _rng(2)
    x = r.normal(size=(6, 4)).astype(np.float32) * 3
    z = (r.random((6, 4)) > 0.5).astype(np.float32)
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    ref = np.mean(-z * np.log(s) - (1 - z) * np.log(1 - s))
    np.testing.assert_allclose(losses.binary_cross_entropy(jnp.asarray(x), jnp.asarray(z)), ref, rtol=1e-5)


def test_bce_stable_at_extreme_logits():
    x = jnp.array([100.0, -100.0, 100.0, -100.0])
    z = jnp.array([1.0, 0.0, 0.0, 1.0])
    per = [losses.binary_cross_entropy(x[i:i + 1], z[i:i + 1]) for i in range(4)]
    # correct and confident: ~exp(-100); wrong and confident: 100 (+ log1p(e^-100)).
    np.testing.assert_allclose(per, [0.0, 0.0, 100.0, 100.0], atol=1e-30, rtol=1e-6)
    g = jax.grad(losses.binary_cross_entropy)(x, z)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, np.array([0.0, 0.0, 1.0, -1.0]) / 4, atol=1e-7)


def test_bce_soft_labels_and_mask():
    x = jnp.array([0.0, 2.0, -1.0])
    z = jnp.array([0.5, 0.25, 1.0])
    mask = jnp.array([True, True, False])
    s = 1 / (1 + np.exp(-np.array([0.0, 2.0])))
    ref = np.mean(-np.array([0.5, 0.25]) * np.log(s) - np.array([0.5, 0.75]) * np.log(1 - s))
    np.testing.assert_allclose(losses.binary_cross_entropy(x, z, mask=mask), ref, rtol=1e-6)


def test_bce_shape_mismatch_names_labels():
    with pytest.raises(ValueError, match="labels must have shape \\(4,\\)"):
        losses.binary_cross_entropy(jnp.zeros((4,)), jnp.zeros((4, 1)))


def test_binary_accuracy():
    x = jnp.array([1.0, -2.0, 0.5, -0.1])
    z = jnp.array([1, 0, 0, 1])
    np.testing.assert_allclose(losses.binary_accuracy(x, z), 0.5)


# ----------------------------------------------------------------------------- categorical


def test_categorical_ce_matches_numpy():
    r = _rng(3)
    logits = r.normal(size=(5, 7)).astype(np.float32) * 4
    labels = r.integers(0, 7, size=(5,))
    ref = -np.mean(_log_softmax_np(logits)[np.arange(5), labels])
    out = losses.categorical_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_categorical_ce_stable_with_huge_logits():
    logits = jnp.array([[1000.0, 0.0, -1000.0], [1000.0, 0.0, -1000.0]])
    out = losses.categorical_cross_entropy(logits, jnp.array([0, 2]))
    np.testing.assert_allclose(out, 1000.0, rtol=1e-6)  # (0 + 2000) / 2


def test_probs_version_agrees_with_int_labels_and_handles_soft_targets():
    r = _rng(4)
    logits = jnp.asarray(r.normal(size=(3, 4, 5)).astype(np.float32))
    labels = jnp.asarray(r.integers(0, 5, size=(3, 4)))
    onehot = jax.nn.one_hot(labels, 5)
    np.testing.assert_allclose(losses.categorical_cross_entropy_probs(logits, onehot),
                               losses.categorical_cross_entropy(logits, labels), rtol=1e-6)
    probs = np.full((3, 4, 5), 0.2, np.float32)
    ref = -np.mean(np.sum(0.2 * _log_softmax_np(logits), -1))
    np.testing.assert_allclose(losses.categorical_cross_entropy_probs(logits, jnp.asarray(probs)), ref, rtol=1e-5)


def test_probs_zero_target_times_minus_inf_logprob_is_zero():
    logits = jnp.array([[0.0, -jnp.inf]])
    out = losses.categorical_cross_entropy_probs(logits, jnp.array([[1.0, 0.0]]))
    np.testing.assert_allclose(out, 0.0)


def test_categorical_errors_name_the_argument():
    with pytest.raises(TypeError, match="labels.*integer"):
        losses.categorical_cross_entropy(jnp.zeros((4, 3)), jnp.zeros((4,)))
    with pytest.raises(ValueError, match="labels must have shape \\(4,\\)"):
        losses.categorical_cross_entropy(jnp.zeros((4, 3)), jnp.zeros((4, 1), jnp.int32))
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\)"):
        losses.categorical_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3]))
    with pytest.raises(ValueError, match="probs"):
        losses.categorical_cross_entropy_probs(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_categorical_ce_under_jit_matches_eager():
    logits = jnp.arange(12.0).reshape(4, 3) / 5
    labels = jnp.array([0, 1, 2, 1])
    np.testing.assert_allclose(jax.jit(losses.categorical_cross_entropy)(logits, labels),
                               losses.categorical_cross_entropy(logits, labels), rtol=1e-6)


# ----------------------------------------------------------------------------- sequences


def _seq_data(T=6, B=4, C=5, seed=5):
    r = _rng(seed)
    logits = r.normal(size=(T, B, C)).astype(np.float32) * 2
    labels = r.integers(0, C, size=(T, B))
    lengths = np.array([6, 1, 3, 0])[:B]
    return logits, labels, lengths


def test_sequence_ce_equals_manual_loop_over_valid_positions():
    logits, labels, lengths = _seq_data()
    padded = labels.copy()
    for b, n in enumerate(lengths):
        padded[n:, b] = -1  # padding labels are ignored
    terms = []
    for b in range(logits.shape[1]):
        for t in range(lengths[b]):
            terms.append(-_log_softmax_np(logits[t, b])[labels[t, b]])
    ref = np.mean(terms)
    out = losses.sequence_cross_entropy(jnp.asarray(logits), jnp.asarray(padded), lengths=jnp.asarray(lengths))
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    mask = np.arange(6)[:, None] < lengths[None, :]
    out_mask = losses.sequence_cross_entropy(jnp.asarray(logits), jnp.asarray(padded), mask=jnp.asarray(mask))
    np.testing.assert_allclose(out_mask, ref, rtol=1e-5)
    # batch-major layout gives the same value
    out_bm = losses.sequence_cross_entropy(jnp.asarray(logits.transpose(1, 0, 2)), jnp.asarray(padded.T),
                                           lengths=jnp.asarray(lengths), time_major=False)
    np.testing.assert_allclose(out_bm, ref, rtol=1e-5)


def test_sequence_ce_jit_and_empty_mask_is_zero():
    logits, labels, lengths = _seq_data()
    f = jax.jit(lambda lg, lb, n: losses.sequence_cross_entropy(lg, lb, lengths=n))
    np.testing.assert_allclose(f(logits, labels, lengths),
                               losses.sequence_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                                             lengths=jnp.asarray(lengths)), rtol=1e-6)
    zero = losses.sequence_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), mask=jnp.zeros((6, 4), bool))
    assert float(zero) == 0.0


def test_sequence_ce_errors():
    logits, labels, lengths = _seq_data()
    lg, lb = jnp.asarray(logits), jnp.asarray(labels)
    with pytest.raises(ValueError, match="mask or lengths"):
        losses.sequence_cross_entropy(lg, lb, mask=jnp.ones((6, 4), bool), lengths=jnp.asarray(lengths))
    with pytest.raises(ValueError, match="lengths must have shape \\(4,\\)"):
        losses.sequence_cross_entropy(lg, lb, lengths=jnp.array([1, 2]))
    with pytest.raises(ValueError, match="lengths must lie in \\[0, T=6\\]"):
        losses.sequence_cross_entropy(lg, lb, lengths=jnp.array([1, 2, 7, 0]))
    with pytest.raises(TypeError, match="lengths.*integer"):
        losses.sequence_cross_entropy(lg, lb, lengths=jnp.ones((4,)))
    with pytest.raises(ValueError, match="mask must have shape \\(6, 4\\)"):
        losses.sequence_cross_entropy(lg, lb, mask=jnp.ones((4, 6), bool))


# ----------------------------------------------------------------------------- accuracy


def test_accuracy_plain_and_masked():
    logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [9.0, 0.0, 0.0]])
    labels = jnp.array([0, 1, 1, 2])
    np.testing.assert_allclose(losses.accuracy(logits, labels), 0.5)
    np.testing.assert_allclose(losses.accuracy(logits, labels, mask=jnp.array([1, 1, 0, 0], bool)), 1.0)
    np.testing.assert_allclose(losses.accuracy(logits, labels, mask=jnp.array([0, 0, 1, 1], bool)), 0.0)


# ----------------------------------------------------------------------------- penalties


def _params():
    r = _rng(6)
    f = lambda *s: jnp.asarray(r.normal(size=s).astype(np.float32))  # noqa: E731
    return {"cell": {"w_x": f(3, 4), "w_h": f(4, 4), "b": f(4)}, "readout": {"w": f(4, 2), "b": f(2)}}


def test_l2_and_l1_default_select_weights_not_biases():
    p = _params()
    ws = [p["cell"]["w_x"], p["cell"]["w_h"], p["readout"]["w"]]
    np.testing.assert_allclose(losses.l2_penalty(p), sum(float(np.sum(np.square(w))) for w in ws), rtol=1e-5)
    np.testing.assert_allclose(losses.l1_penalty(p), sum(float(np.sum(np.abs(w))) for w in ws), rtol=1e-5)


def test_penalty_custom_predicate_on_path_name():
    p = _params()
    only_recurrent = losses.l2_penalty(p, include=lambda name, leaf: name == "cell/w_h")
    np.testing.assert_allclose(only_recurrent, np.sum(np.square(p["cell"]["w_h"])), rtol=1e-5)
    biases = losses.l1_penalty(p, include=lambda name, leaf: name.endswith("/b"))
    np.testing.assert_allclose(biases, np.sum(np.abs(p["cell"]["b"])) + np.sum(np.abs(p["readout"]["b"])),
                               rtol=1e-5)
    assert float(losses.l2_penalty(p, include=lambda name, leaf: False)) == 0.0
    g = jax.grad(lambda q: losses.l2_penalty(q))(p)
    np.testing.assert_allclose(g["cell"]["w_h"], 2 * p["cell"]["w_h"], rtol=1e-6)
    np.testing.assert_array_equal(g["cell"]["b"], 0.0)


def test_penalty_include_must_be_callable():
    with pytest.raises(TypeError, match="include"):
        losses.l2_penalty(_params(), include="w")
