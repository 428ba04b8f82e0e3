"""Hostile inputs to the non-engine public API (issue 28): each mistake fails where it is made, with
a message naming the argument and what was expected; nothing non-finite is reported as finite."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import rnnjax
from rnnjax import initializers as inits
from rnnjax import losses
from rnnjax.diagnostics import log10_decay_rate
from rnnjax.layers import masked_softmax, variational_dropout
from rnnjax.pruning import prune

K = jax.random.key(0)
H, D, T, B = 3, 2, 4, 2


# --------------------------------------------------------------------- diagnostics: NaN stays NaN

def _sum(ys):
    return jnp.sum(ys)


def test_gradient_flow_keeps_a_nan_gradient_nan_in_log_space():
    cell = rnnjax.elman(H)
    params = cell.init(K, D)
    xs = jax.random.normal(jax.random.key(1), (T, B, D)).at[1, 0, 0].set(jnp.nan)  # a valid step
    gf = rnnjax.gradient_flow(cell, params, xs, _sum, readout=None)
    norms, logs = np.asarray(gf.norms), np.asarray(gf.log10_norms)
    assert np.isnan(norms).all()  # the NaN carries poison every Jacobian
    assert np.isnan(logs).all()  # was -inf ("exactly zero gradient")
    assert np.isnan(np.asarray(gf.log10_leaf_norms)).all()
    # finite inputs: log10_norms is log10(norms), and an exactly zero gradient is still -inf
    clean = rnnjax.gradient_flow(cell, params, jnp.nan_to_num(xs), _sum, readout=None)  # same program
    n = np.asarray(clean.norms)
    assert n[T - 1] == 0 and clean.log10_norms[T - 1] == -np.inf and (n[:T - 1] > 0).all()
    np.testing.assert_allclose(clean.log10_norms[:T - 1], np.log10(n[:T - 1]), rtol=1e-5)


def test_log10_decay_rate_does_not_fit_around_a_nan():
    y = jnp.array([-3.0, -2.0, -1.0, 0.0])  # log10 norm -k at distance k = T-1-t: slope -1
    np.testing.assert_allclose(log10_decay_rate(y), -1.0, rtol=1e-6)
    np.testing.assert_allclose(log10_decay_rate(y.at[1].set(-jnp.inf)), -1.0, rtol=1e-6)  # zero: left out
    assert np.isnan(log10_decay_rate(y.at[1].set(jnp.nan)))  # was -1: the NaN step silently dropped
    assert np.isnan(log10_decay_rate(y.at[1].set(jnp.inf)))
    np.testing.assert_allclose(log10_decay_rate(y.at[3].set(jnp.nan)), -1.0, rtol=1e-6)  # k=0 not fitted


def test_gate_saturation_reports_nan_at_a_nan_step():
    cell = rnnjax.lstm(H, forget_bias=8.0)  # f = σ(8 + ...) saturates high
    params = cell.init(K, D)
    xs = jax.random.normal(jax.random.key(2), (T, D))
    clean = rnnjax.gate_saturation(cell, params, xs, kind="lstm")
    bad = rnnjax.gate_saturation(cell, params, xs.at[2, 0].set(jnp.nan), kind="lstm")
    for g in ("i", "f", "o"):
        np.testing.assert_array_equal(bad.high[g][:2], clean.high[g][:2])
        assert np.isnan(bad.high[g][2:]).all() and np.isnan(bad.low[g][2:]).all()  # were 0.0
    assert float(clean.high["f"][0]) > 0.5


# --------------------------------------------------------------------- cell and layer factories

FACTORIES = {
    "elman": lambda **kw: rnnjax.elman(kw.pop("hidden_size", H), **kw),
    "jordan": lambda **kw: rnnjax.jordan(kw.pop("hidden_size", H), 2, **kw),
    "lstm": lambda **kw: rnnjax.lstm(kw.pop("hidden_size", H), **kw),
    "gru": lambda **kw: rnnjax.gru(kw.pop("hidden_size", H), **kw),
    "mgu": lambda **kw: rnnjax.mgu(kw.pop("hidden_size", H), **kw),
    "indrnn": lambda **kw: rnnjax.indrnn(kw.pop("hidden_size", H), **kw),
    "lru": lambda **kw: rnnjax.lru(kw.pop("hidden_size", H), 2, **kw),
    "orthogonal": lambda **kw: rnnjax.orthogonal(kw.pop("hidden_size", H), **kw),
    "antisymmetric": lambda **kw: rnnjax.antisymmetric(kw.pop("hidden_size", H), **kw),
    "lipschitz": lambda **kw: rnnjax.lipschitz(kw.pop("hidden_size", H), **kw),
    "cornn": lambda **kw: rnnjax.cornn(kw.pop("hidden_size", H), **kw),
    "lem": lambda **kw: rnnjax.lem(kw.pop("hidden_size", H), **kw),
    "linoss": lambda **kw: rnnjax.linoss(kw.pop("hidden_size", H), 2, **kw),
    "dense": lambda **kw: rnnjax.dense(kw.pop("hidden_size", H), **kw),
    "additive_attention": lambda **kw: rnnjax.additive_attention(kw.pop("hidden_size", H), **kw),
    "dot_product_attention": lambda **kw: rnnjax.dot_product_attention(kw.pop("hidden_size", H), **kw),
}


def test_every_factory_refuses_a_bad_size_and_a_non_float_dtype_at_the_call():
    for name, make in FACTORIES.items():
        for bad, exc in ((0, ValueError), (-2, ValueError), (3.0, TypeError), (True, TypeError)):
            with pytest.raises(exc, match=r"(hidden_size|output_size|attention_size|key_size) must be "
                                          r"a positive int"):
                make(hidden_size=bad)
        for dt in (jnp.int32, jnp.bool_, jnp.complex64, "no-such-dtype"):
            with pytest.raises(TypeError, match="dtype must be a real floating dtype"):
                make(dtype=dt)


def test_factories_name_the_argument_and_what_was_expected():
    cases = [
        (lambda: rnnjax.lstm(H, forget_bias="big"), TypeError, "forget_bias must be a finite number, got 'big'"),
        (lambda: rnnjax.lstm(H, forget_bias=float("nan")), TypeError, "forget_bias must be a finite number"),
        (lambda: rnnjax.mgu(H, forget_bias="x"), TypeError, "forget_bias must be a finite number"),
        (lambda: rnnjax.lstm(H, peephole="yes"), TypeError, "peephole must be a bool, got str 'yes'"),
        (lambda: rnnjax.lstm(H, chrono=2), ValueError, "chrono must be > 2"),
        (lambda: rnnjax.elman(H, activation="tanh"), TypeError,
         "activation must be a callable .*got the string 'tanh'; pass the function itself"),
        (lambda: rnnjax.gru(H, candidate_activation="relu"), TypeError, "candidate_activation must be a callable"),
        (lambda: rnnjax.indrnn(H, activation=None), TypeError, "activation must be a callable"),
        (lambda: rnnjax.jordan(H, 2, activation=3), TypeError, "activation must be a callable"),
        (lambda: rnnjax.orthogonal(H, activation="tanh"), ValueError, "'modrelu' or a callable"),
        (lambda: rnnjax.elman(H, input_init="glorot"), TypeError,
         "input_init must be an initialiser .*got the string 'glorot'"),
        (lambda: rnnjax.lstm(H, recurrent_init=None), TypeError, "recurrent_init must be a callable"),
        (lambda: rnnjax.orthogonal(H, skew_init=3), TypeError, "skew_init must be a callable"),
        (lambda: rnnjax.lipschitz(H, input_init=1.0), TypeError, "input_init must be a callable"),
        (lambda: rnnjax.dense(H, kernel_init=None), TypeError, "kernel_init must be a callable"),
        (lambda: rnnjax.additive_attention(H, query_init="x"), TypeError, "query_init must be an initialiser"),
        (lambda: rnnjax.irnn(H, input_stddev="x"), TypeError, "input_stddev must be a finite number"),
        (lambda: rnnjax.irnn(H, scale=-1.0), ValueError, "scale must be > 0"),
        (lambda: rnnjax.antisymmetric(H, gated=1), TypeError, "gated must be a bool"),
        (lambda: rnnjax.recurrent_dropout(3, 0.5, key=K), TypeError, "cell must be an rnnjax.Cell"),
    ]
    for make, exc, match in cases:
        with pytest.raises(exc, match=match):
            make()


def test_numpy_scalars_and_float_dtype_names_are_accepted_with_the_same_result():
    a = rnnjax.lstm(H, forget_bias=np.float32(2.0), dtype="float32").init(K, D)
    b = rnnjax.lstm(H, forget_bias=2.0).init(K, D)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    np.testing.assert_array_equal(a["b"][H:2 * H], np.full(H, 2.0, np.float32))  # the forget bias
    # were refused ("must be a positive finite number, got np.float32(0.5)")
    np.testing.assert_array_equal(inits.uniform(np.float32(0.5))(K, (2, 3)), inits.uniform(0.5)(K, (2, 3)))
    np.testing.assert_array_equal(inits.chrono(np.float32(10.0))(K, (3,)), inits.chrono(10.0)(K, (3,)))
    np.testing.assert_array_equal(inits.pytorch_uniform(np.int64(4))(K, (2, 2)),
                                  inits.uniform(0.5)(K, (2, 2)))


def test_initializers_refuse_bad_arguments_by_name():
    cases = [
        (lambda: inits.uniform(float("inf")), TypeError, "scale must be a finite number"),
        (lambda: inits.constant("a"), TypeError, "value must be a finite number"),
        (lambda: inits.chrono(float("inf")), TypeError, "max_timescale must be a finite number"),
        (lambda: inits.pytorch_uniform(True), TypeError, "hidden_size must be an int"),
        (lambda: inits.blockwise(inits.glorot_uniform, 0), ValueError, "n_blocks must be an int >= 1"),
        (lambda: inits.blockwise("x", 2), TypeError, "init must be a callable"),
        (lambda: inits.spectral_radius(0.9, base="x"), TypeError, "base must be a callable"),
        (lambda: inits.rescale_spectral_radius(jnp.full((2, 2), jnp.nan), 1.0), ValueError, "w must be finite"),
    ]
    for make, exc, match in cases:
        with pytest.raises(exc, match=match):
            make()
    assert inits.glorot_uniform(K, (0, 0)).shape == (0, 0)  # was a ZeroDivisionError


def test_apply_refuses_a_carry_of_the_wrong_hidden_size_or_kind():
    for name in ("elman", "lstm", "gru", "indrnn", "lipschitz", "cornn", "lru"):
        cell = FACTORIES[name]()
        params = cell.init(K, D)
        good = cell.initial_carry(params, (B,))
        wider = jax.tree.map(lambda c: jnp.zeros((*c.shape[:-1], c.shape[-1] + 1), c.dtype), good)
        with pytest.raises(ValueError, match=r"carry(\.\w)? must have shape \[\.\.\., \d\] \(the cell's hidden size"):
            cell.apply(params, wider, jnp.ones((B, D)))  # was a dot_general error from inside the cell
    lstm = rnnjax.lstm(H)
    p = lstm.init(K, D)
    with pytest.raises(TypeError, match=r"carry must be an LSTMState\(h, c\)"):
        lstm.apply(p, jnp.zeros((B, H)), jnp.ones((B, D)))  # was AttributeError: no attribute 'h'


def test_dropout_refuses_wrong_types_by_name():
    x = jnp.ones((3, 2))
    with pytest.raises(TypeError, match="rate must be a float scalar in \\[0, 1\\), got str"):
        rnnjax.dropout(x, "x", key=K)
    with pytest.raises(TypeError, match="key must be a jax PRNG key"):
        rnnjax.dropout(x, 0.5, key=0)
    with pytest.raises(TypeError, match="x must be a floating-point array, got int32"):
        rnnjax.dropout(jnp.ones(3, jnp.int32), 0.5, key=K)
    with pytest.raises(TypeError, match="time_axis must be an int"):
        variational_dropout(x, 0.5, key=K, time_axis="a")


# --------------------------------------------------------------------- learned initial carry of an LRU

def test_learned_initial_carry_of_a_complex_carry_trains_with_rnnjax_optimizer():
    inner = rnnjax.lru(H, 2)
    cell = rnnjax.learned_initial_carry(inner)
    params = cell.init(K, D)
    c0 = params["carry0"]
    assert c0.dtype == jnp.float32 and c0.shape == (2, 2)  # [N, (re, im)]: every param is real
    params["carry0"] = c0 + jnp.array([[0.3, -0.2], [0.1, 0.4]])
    carry = cell.initial_carry(params, (B,))
    expect = jnp.broadcast_to(jnp.array([0.3 - 0.2j, 0.1 + 0.4j], jnp.complex64), (B, 2))
    np.testing.assert_array_equal(carry, expect)
    xs = jax.random.normal(jax.random.key(3), (T, B, D))

    def loss(p, batch, key=None):
        return jnp.mean(jnp.square(rnnjax.unroll(cell, p, batch, parallel=False)[1]))

    f = jax.jit(loss)
    explicit = jnp.mean(jnp.square(rnnjax.unroll(inner, params["cell"], xs, expect, parallel=False)[1]))
    np.testing.assert_allclose(f(params, xs), explicit, rtol=1e-6)
    # the gradient with respect to the stored parts is the true one (not conjugated)
    check_grads(lambda c: f({**params, "carry0": c}, xs), (params["carry0"],), order=1,
                modes=("rev",), atol=1e-2, rtol=1e-2)
    tx = rnnjax.optimizer("sgd", 0.05)  # clips the global norm: failed on a complex leaf
    state = rnnjax.TrainState.create(params, tx, key=K)
    new, metrics = jax.jit(rnnjax.train_step(loss, tx))(state, xs)
    assert int(metrics["nonfinite"]) == 0
    g = jax.grad(f)(params, xs)
    scale = jnp.minimum(1.0, 1.0 / optax.tree.norm(g))
    np.testing.assert_allclose(new.params["carry0"], params["carry0"] - 0.05 * scale * g["carry0"], atol=1e-6)
    assert float(f(new.params, xs)) < float(metrics["loss"])


# --------------------------------------------------------------------- pruning

def test_prune_refuses_a_concrete_array_sparsity_out_of_range():
    for bad in (jnp.array(1.5), jnp.array(-0.1), jnp.array(jnp.nan), jnp.array([0.2, 1.5])):
        with pytest.raises(ValueError, match=r"sparsity must be in \[0.0, 1.0\]"):
            prune(bad)
    with pytest.raises(ValueError, match="frequency must be an integer >= 1"):
        prune(0.5, frequency=jnp.array(0))
    with pytest.raises(ValueError, match="end_step .* must be >= begin_step"):
        prune(0.5, begin_step=jnp.array(5), end_step=jnp.array(2))
    # a concrete array in range prunes exactly that fraction (the smallest magnitudes)
    params = {"w": jnp.array([[0.4, -0.1], [0.3, 0.2]])}
    tx = optax.chain(optax.sgd(0.0), prune(jnp.array(0.5)))
    u, _ = tx.update(params, tx.init(params), params)
    np.testing.assert_array_equal(optax.apply_updates(params, u)["w"], np.float32([[0.4, 0.0], [0.3, 0.0]]))


# --------------------------------------------------------------------- attention

def test_attention_refuses_zero_steps_and_flags_traced_lengths_out_of_range():
    att = rnnjax.additive_attention(4)
    p = att.init(K, H)
    with pytest.raises(ValueError, match="ys has T=0 steps"):
        att.apply(p, jnp.ones((0, B, H)))  # was "zero-size array to reduction operation max"
    ys = jax.random.normal(jax.random.key(4), (T, 3, H))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=4\]"):
        att.apply(p, ys, lengths=jnp.array([5, 2, 4]))
    pooled, w = jax.jit(lambda L: att.apply(p, ys, lengths=L))(jnp.array([5, 2, -1]))
    ref, ref_w = att.apply(p, ys, lengths=jnp.array([4, 2, 0]))
    assert np.isnan(pooled[0]).all() and np.isnan(pooled[2]).all()  # were clamped to 4 and 0
    assert np.isnan(w[:, 0]).all() and np.isnan(w[:, 2]).all()
    np.testing.assert_allclose(pooled[1], ref[1], atol=1e-6)
    np.testing.assert_allclose(w[:, 1], ref_w[:, 1], atol=1e-6)
    with pytest.raises(ValueError, match="valid must have the shape of scores"):
        masked_softmax(jnp.ones((3, 2)), jnp.ones((3,), bool))
    with pytest.raises(TypeError, match="valid must be a bool array"):
        masked_softmax(jnp.ones((3, 2)), jnp.ones((3, 2), jnp.int32))


# --------------------------------------------------------------------- losses and batching

def test_losses_refuse_targets_and_weights_out_of_range_outside_jit():
    logits = jnp.array([0.5, -1.0, 2.0])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\].*\[0.0, 2.0\]"):
        losses.binary_cross_entropy(logits, jnp.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="and NaN"):
        losses.binary_cross_entropy(logits, jnp.array([0.0, 1.0, jnp.nan]))
    # a masked-out label is not looked at; the valid ones give the closed form
    got = losses.binary_cross_entropy(logits, jnp.array([0.0, 1.0, 7.0]), mask=jnp.array([True, True, False]))
    expect = np.mean([np.log1p(np.exp(0.5)), np.log1p(np.exp(1.0))])
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    with pytest.raises(ValueError, match="mask weights must be finite and >= 0"):
        losses.mse(logits, logits, mask=jnp.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]"):
        losses.categorical_cross_entropy_probs(jnp.ones((1, 3)), jnp.array([[1.5, -0.5, 0.0]]))


def test_batch_indices_refuses_a_concrete_step_out_of_range():
    for bad in (jnp.array(-1), np.int64(-3), 2**40):
        with pytest.raises(ValueError, match=r"step must be in \[0, 2\*\*31\)"):
            rnnjax.tasks.batch_indices(K, bad, 10, 2)
    np.testing.assert_array_equal(rnnjax.tasks.batch_indices(K, jnp.array(3), 10, 2),
                                  rnnjax.tasks.batch_indices(K, 3, 10, 2))
