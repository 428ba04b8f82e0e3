"""Data for recurrent-network experiments; each task documents its no-memory baseline.

* :func:`adding`, :func:`copy_memory` — synthetic long-memory problems (Arjovsky et al. 2016),
  deterministic given a key; baselines :data:`ADDING_BASELINE_MSE` and :func:`copy_baseline`.
* :func:`sequential_digits`, :func:`sequential_mnist`, :func:`mnist1d` — sequence
  classification, time-major ``[T, N, 1]``; baseline :data:`CHANCE_ACCURACY`.
* :func:`batch_indices` — mini-batch indices as a pure function of ``(key, step)``.
"""

from rnnjax.tasks.batching import batch_indices
from rnnjax.tasks.digits import (
    CHANCE_ACCURACY,
    SequenceDataset,
    digits_permutation,
    mnist1d,
    mnist_permutation,
    sequential_digits,
    sequential_mnist,
)
from rnnjax.tasks.synthetic import (
    ADDING_BASELINE_MSE,
    COPY_BLANK,
    COPY_DELIMITER,
    COPY_LENGTH,
    COPY_NUM_SYMBOLS,
    COPY_VOCAB,
    adding,
    adding_baseline,
    copy_baseline,
    copy_memory,
)

__all__ = [
    "adding",
    "adding_baseline",
    "ADDING_BASELINE_MSE",
    "copy_memory",
    "copy_baseline",
    "COPY_BLANK",
    "COPY_DELIMITER",
    "COPY_LENGTH",
    "COPY_NUM_SYMBOLS",
    "COPY_VOCAB",
    "sequential_digits",
    "digits_permutation",
    "mnist1d",
    "sequential_mnist",
    "mnist_permutation",
    "SequenceDataset",
    "CHANCE_ACCURACY",
    "batch_indices",
]
