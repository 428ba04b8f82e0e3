"""Data for recurrent-network experiments; each task documents its no-memory baseline.

* [`adding`][rnnjax.tasks.adding], [`copy_memory`][rnnjax.tasks.copy_memory] — synthetic long-memory problems
  (Arjovsky et al. 2016), deterministic given a key; baselines
  [`ADDING_BASELINE_MSE`][rnnjax.tasks.ADDING_BASELINE_MSE] and [`copy_baseline`][rnnjax.tasks.copy_baseline].
* [`sequential_digits`][rnnjax.tasks.sequential_digits], [`sequential_mnist`][rnnjax.tasks.sequential_mnist],
  [`mnist1d`][rnnjax.tasks.mnist1d] — sequence classification, time-major ``[T, N, 1]``; baseline
  [`CHANCE_ACCURACY`][rnnjax.tasks.CHANCE_ACCURACY].
* [`parity`][rnnjax.tasks.parity], [`modular_counting`][rnnjax.tasks.modular_counting],
  [`word_problem`][rnnjax.tasks.word_problem] (S3, S5, A5 ...), [`listops`][rnnjax.tasks.listops] — state
  tracking (Delétang et al. 2023; Merrill et al. 2024; Nangia & Bowman 2018); [`mqar`][rnnjax.tasks.mqar],
  [`selective_copy`][rnnjax.tasks.selective_copy], [`induction_heads`][rnnjax.tasks.induction_heads],
  [`flip_flop`][rnnjax.tasks.flip_flop] — recall (Arora et al. 2023; Gu & Dao 2023; Olsson et al. 2022; Liu et
  al. 2023). Each returns token ids ``[T, B]``, targets ``[T, B]`` and the mask of scored steps
  ([`listops`][rnnjax.tasks.listops]: padded tokens, values and lengths, host-side;
  [`listops_task`][rnnjax.tasks.listops_task] the common form), with a ``*_baseline``: the accuracy of the
  best predictor without memory. [`TASKS`][rnnjax.tasks.TASKS] registers them (vocabulary, classes, baseline,
  solved threshold, training length); [`held_out`][rnnjax.tasks.held_out] draws a fixed held-out set.
* [`batch_indices`][rnnjax.tasks.batch_indices] — mini-batch indices as a pure function of ``(key, step)``.
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
from rnnjax.tasks.recall import (
    FLIP_FLOP_BASELINE,
    FLIP_FLOP_DENSE,
    FLIP_FLOP_IGNORE,
    FLIP_FLOP_READ,
    FLIP_FLOP_SPARSE,
    FLIP_FLOP_VOCAB,
    FLIP_FLOP_WRITE,
    MQAR_BLANK,
    flip_flop,
    induction_heads,
    induction_heads_baseline,
    mqar,
    mqar_baseline,
    selective_copy,
    selective_copy_baseline,
)
from rnnjax.tasks.state_tracking import (
    GROUPS,
    HELD_OUT_FOLD,
    LISTOPS_PAD,
    LISTOPS_TOKENS,
    LISTOPS_VOCAB,
    SOLVED_ACCURACY,
    TASKS,
    TaskSpec,
    held_out,
    listops,
    listops_baseline,
    listops_task,
    modular_counting,
    modular_counting_baseline,
    parity,
    parity_baseline,
    permutation_group,
    word_problem,
    word_problem_baseline,
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
    # state tracking
    "parity",
    "parity_baseline",
    "modular_counting",
    "modular_counting_baseline",
    "word_problem",
    "word_problem_baseline",
    "permutation_group",
    "GROUPS",
    "listops",
    "listops_task",
    "listops_baseline",
    "LISTOPS_TOKENS",
    "LISTOPS_PAD",
    "LISTOPS_VOCAB",
    # recall
    "mqar",
    "mqar_baseline",
    "MQAR_BLANK",
    "selective_copy",
    "selective_copy_baseline",
    "induction_heads",
    "induction_heads_baseline",
    "flip_flop",
    "FLIP_FLOP_BASELINE",
    "FLIP_FLOP_SPARSE",
    "FLIP_FLOP_DENSE",
    "FLIP_FLOP_WRITE",
    "FLIP_FLOP_READ",
    "FLIP_FLOP_IGNORE",
    "FLIP_FLOP_VOCAB",
    # registry
    "TASKS",
    "TaskSpec",
    "SOLVED_ACCURACY",
    "held_out",
    "HELD_OUT_FOLD",
]
