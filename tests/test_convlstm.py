"""ConvLSTM (Shi et al. 2015): a float64 NumPy reference with an explicit convolution loop, flax's
ConvLSTMCell with converted weights, a per-sequence Python loop over apply through unroll with
lengths / resets / reverse (values and gradients), and the LSTM per pixel for 1x1 kernels."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import initializers as inits
from rnnjax.cells.convlstm import convlstm
from helpers import tree_allclose

T, B, S, C, CH = 4, 2, 5, 2, 3  # steps, batch, image side, input channels, hidden channels


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_conv(z, w):
    """'SAME' stride-1 cross-correlation, channels last, float64: ``out[p] = Σ_k zpad[p + k] w[k]``
    over every kernel offset ``k`` (an explicit loop), for any number of spatial dims."""
    n = w.ndim - 2
    z, w = np.asarray(z, np.float64), np.asarray(w, np.float64)
    spatial = z.shape[z.ndim - n - 1:-1]
    lead = z.ndim - n - 1
    zp = np.pad(z, [(0, 0)] * lead + [((k - 1) // 2, (k - 1) // 2) for k in w.shape[:n]] + [(0, 0)])
    out = np.zeros(z.shape[:-1] + (w.shape[-1],))
    for off in itertools.product(*(range(k) for k in w.shape[:n])):
        window = zp[(Ellipsis,) + tuple(slice(o, o + s) for o, s in zip(off, spatial)) + (slice(None),)]
        out += window @ w[off]
    return out


def np_convlstm(p, xs, h, c, peephole):
    """Shi et al.'s equation (3) in float64 over time-major ``xs [T, ..., C]``; gates (i, f, g, o)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    h, c, ys = np.asarray(h, np.float64), np.asarray(c, np.float64), []
    for x in np.asarray(xs, np.float64):
        zi, zf, zg, zo = np.split(np_conv(x, p["w_x"]) + np_conv(h, p["w_h"]) + p["b"], 4, axis=-1)
        if peephole:
            zi, zf = zi + p["w_ci"] * c, zf + p["w_cf"] * c
        c = _sig(zf) * c + _sig(zi) * np.tanh(zg)
        if peephole:
            zo = zo + p["w_co"] * c
        h = _sig(zo) * np.tanh(c)
        ys.append(h)
    return h, c, np.stack(ys)


CONFIGS = {  # name: (factory kwargs, spatial dims of the inputs)
    "2d_peephole_per_position": (dict(kernel_size=(3, 5), spatial_shape=(S, 4), peephole=True, forget_bias=0.5,
                                      peephole_init=inits.normal(0.5), bias_init=inits.normal(0.3)), (S, 4)),
    "1d": (dict(kernel_size=(3,), bias_init=inits.normal(0.3)), (7,)),
    "3d_peephole_per_channel": (dict(kernel_size=(3, 1, 3), peephole=True, peephole_init=inits.normal(0.5)),
                                (3, 2, 3)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_float64_numpy_reference(name):
    kwargs, spatial = CONFIGS[name]
    cell = convlstm(CH, **kwargs)
    p = cell.init(jax.random.key(0), C)
    xs = jax.random.normal(jax.random.key(1), (T, B, *spatial, C))
    h0, c0 = (0.5 * jax.random.normal(k, (B, *spatial, CH)) for k in jax.random.split(jax.random.key(2)))
    carry, ys = rnnjax.unroll(cell, p, xs, rnnjax.LSTMState(h0, c0))
    h_ref, c_ref, ys_ref = np_convlstm(p, xs, h0, c0, kwargs.get("peephole", False))
    np.testing.assert_allclose(ys, ys_ref, atol=2e-5)
    np.testing.assert_allclose(carry.h, h_ref, atol=2e-5)
    np.testing.assert_allclose(carry.c, c_ref, atol=2e-5)
    assert float(np.std(ys_ref[-1])) > 0.05  # not trivially constant
    if kwargs.get("spatial_shape"):  # the peepholes are per position: the first two rows differ
        assert p["w_ci"].shape == (*spatial, CH) and float(jnp.abs(p["w_ci"][0] - p["w_ci"][1]).max()) > 0


def _segments(length, starts, reverse):
    """The index ranges a sequence of ``length`` valid steps splits into at reset ``starts``."""
    cuts = sorted({0, *[s for s in starts if 0 < s < length], length})
    segs = [list(range(a, b)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    return [s[::-1] for s in segs[::-1]] if reverse else segs


def _reference(cell, p, xs, carry0, lengths, resets, reverse):
    """Each sequence alone, unbatched ([H, W, C] steps), segment by segment from its initial
    carry, in the order the scan runs; padded steps output zeros."""
    hs, cs, ys = [], [], []
    for b in range(xs.shape[1]):
        start = jax.tree_util.tree_map(lambda a: a[b], carry0)
        carry, y_b = start, [jnp.zeros(xs.shape[2:-1] + (CH,))] * xs.shape[0]
        for seg in _segments(int(lengths[b]), np.flatnonzero(resets[:, b]), reverse):
            carry = start
            for t in seg:
                carry, y_b[t] = cell.apply(p, carry, xs[t, b])
        hs.append(carry.h), cs.append(carry.c), ys.append(jnp.stack(y_b))
    return rnnjax.LSTMState(jnp.stack(hs), jnp.stack(cs)), jnp.stack(ys, axis=1)


@pytest.mark.parametrize("reverse", [False, True])
def test_unroll_with_lengths_and_resets_matches_a_loop(reverse):
    """xs [T, B, H, W, C] through unroll: lengths and resets are given per pixel (the carry's batch
    shape is (B, H, W)), constant over each image; values and gradients equal the loop's."""
    cell = convlstm(CH, (3, 3), peephole=True, peephole_init=inits.normal(0.5))
    p = cell.init(jax.random.key(3), C)
    xs = jax.random.normal(jax.random.key(4), (T, B, S, S, C))
    carry0 = jax.tree_util.tree_map(lambda a: a + 0.2, cell.initial_carry(p, (B, S, S)))
    lengths_b = np.array([T, T - 1])
    resets_b = np.zeros((T, B), bool)
    resets_b[2, 0] = resets_b[1, 1] = resets_b[3, 1] = True  # the last one is at a padded step
    lengths = jnp.broadcast_to(jnp.asarray(lengths_b)[:, None, None], (B, S, S))
    resets = jnp.broadcast_to(jnp.asarray(resets_b)[:, :, None, None], (T, B, S, S))
    wy = jax.random.normal(jax.random.key(5), (T, B, S, S, CH))
    wc = jax.random.normal(jax.random.key(6), (B, S, S, CH))

    def loss(run, p, xs):
        carry, ys = run(p, xs)
        return jnp.sum(ys * wy) + jnp.sum(carry.c * wc) + jnp.sum(carry.h * wc), (carry, ys)

    run = lambda p, xs: rnnjax.unroll(cell, p, xs, carry0, lengths=lengths, resets=resets,  # noqa: E731
                                      reverse=reverse)
    ref = lambda p, xs: _reference(cell, p, xs, carry0, lengths_b, resets_b, reverse)  # noqa: E731
    (_, out), grads = jax.jit(jax.value_and_grad(lambda p, x: loss(run, p, x), (0, 1), has_aux=True))(p, xs)
    (_, out_ref), grads_ref = jax.jit(jax.value_and_grad(lambda p, x: loss(ref, p, x), (0, 1), has_aux=True))(p, xs)
    tree_allclose(out, out_ref)
    tree_allclose(grads, grads_ref, atol=1e-4)
    np.testing.assert_array_equal(out[1][T - 1, 1], 0)  # the padded step outputs zeros
    np.testing.assert_array_equal(grads[1][T - 1, 1], 0)  # ... and its input gets no gradient
    assert float(jnp.abs(grads[1][:, 0]).min()) > 0  # every valid pixel's input matters


def _order(a):
    """rnnjax's gate order (i, f, g, o) along the last axis -> flax's (i, g, f, o)."""
    return jnp.concatenate([a[..., k * CH:(k + 1) * CH] for k in (0, 2, 1, 3)], axis=-1)


def _to_flax(p):
    """rnnjax params -> flax ConvLSTMCell variables (two biases; its forget gate adds 1 itself)."""
    b = p["b"].at[CH:2 * CH].add(-1.0)
    return {"params": {"ih": {"kernel": _order(p["w_x"]), "bias": _order(b)},
                       "hh": {"kernel": _order(p["w_h"]), "bias": jnp.zeros_like(p["b"])}}}


def test_matches_flax_conv_lstm_cell():
    nn = pytest.importorskip("flax.linen")
    cell = convlstm(CH, (3, 3), forget_bias=1.0, bias_init=inits.normal(0.3))
    ref = nn.ConvLSTMCell(features=CH, kernel_size=(3, 3))
    p = cell.init(jax.random.key(7), C)
    xs = jax.random.normal(jax.random.key(8), (T, B, S, S, C))
    h0, c0 = (0.5 * jax.random.normal(k, (B, S, S, CH)) for k in jax.random.split(jax.random.key(9)))
    variables = _to_flax(p)
    flax_shapes = jax.tree_util.tree_map(jnp.shape, ref.init(jax.random.key(0), (c0, h0), xs[0]))
    assert jax.tree_util.tree_map(jnp.shape, variables) == flax_shapes

    def ours(p, xs):
        carry, ys = rnnjax.unroll(cell, p, xs, rnnjax.LSTMState(h0, c0))
        return jnp.sum(ys ** 2) + jnp.sum(carry.c), (carry, ys)

    def theirs(v, xs):
        carry, ys = (c0, h0), []
        for x in xs:
            carry, y = ref.apply(v, carry, x)
            ys.append(y)
        ys = jnp.stack(ys)
        return jnp.sum(ys ** 2) + jnp.sum(carry[0]), (rnnjax.LSTMState(carry[1], carry[0]), ys)

    (_, out), (g_p, g_x) = jax.jit(jax.value_and_grad(ours, (0, 1), has_aux=True))(p, xs)
    (_, out_ref), (g_v, g_x_ref) = jax.jit(jax.value_and_grad(theirs, (0, 1), has_aux=True))(variables, xs)
    tree_allclose(out, out_ref)
    np.testing.assert_allclose(g_x, g_x_ref, atol=1e-5)
    g_ref = g_v["params"]
    np.testing.assert_allclose(_order(g_p["w_x"]), g_ref["ih"]["kernel"], atol=1e-4)
    np.testing.assert_allclose(_order(g_p["w_h"]), g_ref["hh"]["kernel"], atol=1e-4)
    np.testing.assert_allclose(_order(g_p["b"]), g_ref["ih"]["bias"], atol=1e-4)
    np.testing.assert_allclose(_order(g_p["b"]), g_ref["hh"]["bias"], atol=1e-4)


def test_equals_lstm_per_pixel():
    """A 1x1 kernel is the LSTM at every pixel; on a 1x1 image a 3x3 kernel's centre tap is."""
    lstm = rnnjax.lstm(CH, peephole=True)
    xs = jax.random.normal(jax.random.key(10), (T, B, S, S, C))
    for kernel, image, tap in (((1, 1), (S, S), (0, 0)), ((3, 3), (1, 1), (1, 1))):
        cell = convlstm(CH, kernel, peephole=True, peephole_init=inits.normal(0.5), bias_init=inits.normal(0.3))
        p = cell.init(jax.random.key(11), C)
        q = dict(p, w_x=p["w_x"][tap], w_h=p["w_h"][tap])
        x = xs[:, :, :image[0], :image[1]]
        carry, ys = rnnjax.unroll(cell, p, x)
        carry_ref, ys_ref = rnnjax.unroll(lstm, q, x)  # the LSTM treats (B, H, W) as batch dims
        tree_allclose((carry, ys), (carry_ref, ys_ref))
        assert float(jnp.std(ys)) > 0.05


def test_init_and_initial_carry():
    cell = convlstm(CH, (3, 3), forget_bias=0.7)
    p = cell.init(jax.random.key(12), C)
    assert set(p) == {"w_x", "w_h", "b"}
    assert p["w_x"].shape == (3, 3, C, 4 * CH) and p["w_h"].shape == (3, 3, CH, 4 * CH)
    np.testing.assert_allclose(p["b"], np.r_[np.zeros(CH), np.full(CH, 0.7), np.zeros(2 * CH)])
    bound = np.sqrt(6 / (9 * C + 9 * CH))  # Glorot per gate, receptive field in the fans
    assert float(jnp.abs(p["w_x"]).max()) <= bound and float(jnp.abs(p["w_x"]).max()) > 0.5 * bound
    blocks = [p["w_h"][..., k * CH:(k + 1) * CH] for k in range(4)]
    assert all(float(jnp.abs(a - b).max()) > 0 for a, b in itertools.combinations(blocks, 2))
    carry = cell.initial_carry(p, (B, S, 4))
    assert isinstance(carry, rnnjax.LSTMState) and carry.h.shape == carry.c.shape == (B, S, 4, CH)
    np.testing.assert_array_equal(carry.c, 0)
    assert cell.initial_carry(p, (S, S)).h.shape == (S, S, CH)  # a single image sequence
    pe = convlstm(CH, (3,), spatial_shape=(6,), peephole=True, dtype=jnp.bfloat16).init(jax.random.key(0), C)
    assert pe["w_x"].dtype == jnp.bfloat16 and pe["w_cf"].shape == (6, CH)
    assert convlstm(CH, peephole=True).init(jax.random.key(0), C)["w_co"].shape == (CH,)


def test_bad_arguments_raise_clear_errors():
    for bad, exc, match in ((0, ValueError, "hidden_channels"), (2.5, TypeError, "hidden_channels"),
                            (True, TypeError, "hidden_channels")):
        with pytest.raises(exc, match=match):
            convlstm(bad)
    for bad, exc in ((3, TypeError), ((2, 3), ValueError), ((3, 0), ValueError), ((), TypeError),
                     ("3x3", TypeError), ((3.0, 3), ValueError)):
        with pytest.raises(exc, match="kernel_size"):
            convlstm(CH, bad)
    with pytest.raises(ValueError, match="spatial_shape.*one entry per spatial dim"):
        convlstm(CH, (3, 3), spatial_shape=(5,))
    with pytest.raises(ValueError, match="spatial_shape"):
        convlstm(CH, (3,), spatial_shape=(0,))
    with pytest.raises(TypeError, match="forget_bias"):
        convlstm(CH, forget_bias="1")
    with pytest.raises(TypeError, match="peephole"):
        convlstm(CH, peephole="yes")
    with pytest.raises(TypeError, match="input_init"):
        convlstm(CH, input_init="glorot_uniform")
    cell = convlstm(CH, (3, 3), spatial_shape=(S, S))
    p = cell.init(jax.random.key(0), C)
    with pytest.raises(ValueError, match="batch_shape must end with the 2 spatial"):
        cell.initial_carry(p, (B,))
    with pytest.raises(ValueError, match=r"spatial dims \(4, 4\).*spatial_shape=\(5, 5\)"):
        cell.initial_carry(p, (B, 4, 4))
    carry = cell.initial_carry(p, (B, S, S))
    with pytest.raises(ValueError, match="last dim 3 but the params expect input size 2"):
        cell.apply(p, carry, jnp.zeros((B, S, S, 3)))
    with pytest.raises(ValueError, match="must end with the 2 spatial dim"):
        cell.apply(p, carry, jnp.zeros((S, C)))
    with pytest.raises(ValueError, match="carry.h has batch shape"):
        cell.apply(p, carry, jnp.zeros((3, S, S, C)))
    with pytest.raises(TypeError, match="LSTMState"):
        cell.apply(p, carry.h, jnp.zeros((B, S, S, C)))
