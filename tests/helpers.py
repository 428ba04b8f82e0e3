"""Shared test helpers: the step-by-step reference loop and the cells under test."""

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax


def loop_unroll(cell, params, xs, carry=None):
    """Reference: a Python loop over ``cell.apply``, time-major."""
    if carry is None:
        carry = cell.initial_carry(params, xs.shape[1:-1])
    ys = []
    for t in range(xs.shape[0]):
        carry, y = cell.apply(params, carry, xs[t])
        ys.append(y)
    return carry, jnp.stack(ys)


def all_cells():
    """(name, cell) pairs covering every core cell and its main options."""
    return [
        ("elman_tanh", rnnjax.elman(6)),
        ("elman_relu", rnnjax.elman(6, activation=jax.nn.relu)),
        ("irnn", rnnjax.irnn(6)),
        ("jordan", rnnjax.jordan(6, 3)),
        ("lstm", rnnjax.lstm(6)),
        ("lstm_peephole", rnnjax.lstm(6, peephole=True, peephole_init=rnnjax.initializers.normal(0.5))),
        ("lstm_chrono", rnnjax.lstm(6, chrono=50)),
        ("gru_before", rnnjax.gru(6)),
        ("gru_after", rnnjax.gru(6, reset="after", bias_init=rnnjax.initializers.normal(0.3))),
        ("gru_relu", rnnjax.gru(6, candidate_activation=jax.nn.relu)),
        ("mgu", rnnjax.mgu(6)),
    ]


def tree_allclose(a, b, atol=1e-5, rtol=1e-5):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)
