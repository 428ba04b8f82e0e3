"""Deterministic mini-batch indices as a pure function of ``(key, step)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.tasks._common import check_int, check_key
from rnnjax.types import Array, PRNGKey


def batch_indices(key: PRNGKey, step: int | Array, n: int, batch_size: int) -> Array:
    """Indices of the mini-batch for training step ``step``, a pure function of ``(key, step)``.

    Epoch ``e = step // (n // batch_size)`` uses the permutation
    ``jax.random.permutation(jax.random.fold_in(key, e), n)``; step ``step`` takes its slice
    ``[k * batch_size, (k + 1) * batch_size)`` with ``k = step % (n // batch_size)``. Within an
    epoch every example appears at most once (the last ``n % batch_size`` of each permutation are
    dropped). Nothing is carried between steps, so a resumed run from step ``s`` draws exactly the
    batches of an uninterrupted one. ``step`` may be a traced int (jit-safe); ``n`` and
    ``batch_size`` are static.

    Args:
      key: PRNG key of the data stream.
      step: training step >= 0 (int or int array scalar; a concrete negative step is refused, a
        traced one is not checked).
      n: dataset size >= 1.
      batch_size: 1 <= batch_size <= n.

    Returns:
      int32 ``[batch_size]`` indices into ``0..n-1``.
    """
    key = check_key(key)
    n = check_int("n", n)
    batch_size = check_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(f"batch_size must be <= n = {n}, got {batch_size}")
    if isinstance(step, (bool, np.bool_)):
        raise TypeError("step must be an int, got bool")
    if not isinstance(step, int) and not (hasattr(step, "dtype") and jnp.issubdtype(step.dtype, jnp.integer)
                                          and jnp.ndim(step) == 0):
        raise TypeError(f"step must be an int or a scalar int array, got {type(step).__name__} "
                        f"{getattr(step, 'dtype', '')}")
    if not isinstance(step, jax.core.Tracer) and not 0 <= int(step) < 2**31:  # concrete: checked
        raise ValueError(f"step must be in [0, 2**31) (an int32 step counter), got {int(step)}")
    per_epoch = n // batch_size
    step = jnp.asarray(step, jnp.int32)
    epoch, k = step // per_epoch, step % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    return jax.lax.dynamic_slice_in_dim(perm, k * batch_size, batch_size).astype(jnp.int32)
