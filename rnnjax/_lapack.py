"""LAPACK-backed JAX functions made safe to ``vmap`` on a CPU with few cores.

On the CPU, XLA runs a *batched* LAPACK call (LU, QR, triangular solve ... over a leading batch
axis, e.g. the configurations of a vmapped sweep) by splitting its batch over the intra-op thread
pool and blocking a pool thread until the pieces finish. When two such calls run at once (the
forward and backward ones of a training step, or two initialisers) on a pool of two threads (a
2-core machine), both threads wait for work no thread is left to run, and the program hangs with
the CPU idle (seen with jax 0.10.2: the stack ends in ``ParallelBatchMap`` ->
``BlockingCounter::Wait``). `one_matrix_at_a_time` keeps a function's calls unbatched: under
``vmap`` its members run one after another (``lax.map``), in the forward pass and in its VJP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from rnnjax.types import Array


def one_matrix_at_a_time(f: Callable[[Array], Any]) -> Callable[[Array], Any]:
    """``f`` (one array in, an array or a pytree of them out, e.g. ``jnp.linalg.qr``'s ``(q, r)``;
    differentiable in reverse mode) whose ``vmap`` runs the members sequentially, its VJP too;
    unbatched, the same values as ``f``. Forward-mode derivatives of the result are not defined
    (a ``jax.custom_vjp``)."""
    primal = jax.custom_batching.sequential_vmap(f)
    pullback = jax.custom_batching.sequential_vmap(lambda a, g: jax.vjp(f, a)[1](g)[0])

    @jax.custom_vjp
    def safe(a: Array) -> Any:
        return primal(a)

    def fwd(a: Array) -> tuple[Any, Array]:
        return primal(a), a

    def bwd(a: Array, g: Any) -> tuple[Array]:
        return (pullback(a, g),)

    safe.defvjp(fwd, bwd)
    return safe
