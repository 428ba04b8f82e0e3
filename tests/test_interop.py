"""rnnjax.interop: converted weights reproduce flax.linen and PyTorch cells.

Every check compares outputs at every step, the final carry, and gradients of a scalar loss (wrt
inputs, initial carry and the *original* framework's weights, mapped through the differentiable
converters) with random, non-default weights. flax tests always run; torch tests skip without
torch. The largest differences are collected in ``MAX_DIFF`` and printed at the end of the module
(run with ``-s`` to see them).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import interop
from rnnjax.types import LSTMState

TOL = 1e-5
D, H, T, B = 4, 6, 7, 3
MAX_DIFF: dict[str, float] = {}


def _diff(label: str, a, b) -> float:
    """Max abs difference of two pytrees (same structure), recorded under ``label``."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb), (label, len(la), len(lb))
    d = 0.0
    for x, y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape, (label, x.shape, y.shape)
        d = max(d, float(np.max(np.abs(x - y))) if x.size else 0.0)
    MAX_DIFF[label] = max(MAX_DIFF.get(label, 0.0), d)
    return d


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if MAX_DIFF:
        print("\n[interop] largest |difference| per check:")
        for k in sorted(MAX_DIFF):
            print(f"  {k:40s} {MAX_DIFF[k]:.3e}")
        for fw in ("flax", "torch"):
            for what in ("fwd", "grad"):
                vals = [v for k, v in MAX_DIFF.items()
                        if k.startswith(f"{fw}/") and k.endswith(what)]
                if vals:
                    print(f"  MAX {fw} {what}: {max(vals):.3e}")


def _randomize(tree, key, scale=0.5):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([scale * jax.random.normal(k, jnp.shape(l), jnp.float32)
                              for k, l in zip(keys, leaves)])


def _weights(key, ys_shape, carry):
    """Random readout weights for the scalar loss: one for ys, one per carry leaf."""
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, ys_shape), _randomize(carry, k2, 1.0)


def _loss(ys, carry, w):
    wy, wc = w
    out = jnp.sum(ys * wy)
    for c, v in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(wc)):
        out = out + jnp.sum(c * v)
    return out


# ------------------------------------------------------------------------------------------------
# flax.linen
# ------------------------------------------------------------------------------------------------

FLAX_CELLS = [
    ("lstm", nn.LSTMCell),
    ("optimized_lstm", nn.OptimizedLSTMCell),
    ("gru", nn.GRUCell),
    ("simple", nn.SimpleCell),
]


def _flax_setup(cls, key, **kw):
    kp, kx, kc = jax.random.split(key, 3)
    fcell = cls(features=H, **kw)
    xs = jax.random.normal(kx, (B, T, D))
    carry0 = fcell.initialize_carry(kc, (B, D))
    carry0 = _randomize(carry0, kc, 1.0)  # a non-zero initial carry
    fparams = _randomize(fcell.init(kp, carry0, xs[:, 0])["params"], kp)
    return fcell, fparams, xs, carry0


def _to_rnnjax_carry(name, carry):
    return LSTMState(h=carry[1], c=carry[0]) if "lstm" in name else carry


def _from_rnnjax_carry(name, carry):
    return (carry.c, carry.h) if "lstm" in name else carry


@pytest.mark.parametrize("name,cls", FLAX_CELLS, ids=[n for n, _ in FLAX_CELLS])
def test_flax_forward_and_gradients(name, cls, key):
    fcell, fparams, xs, carry0 = _flax_setup(cls, key)
    cell, params = interop.cell_from_flax(fparams, cls)
    assert set(params) == ({"w_x", "w_h", "b", "b_hn"} if name == "gru" else {"w_x", "w_h", "b"})

    # reference 1: nn.RNN; reference 2: an explicit loop over the flax cell
    rnn = nn.RNN(fcell, return_carry=True)
    f_carry, f_ys = rnn.apply({"params": {"cell": fparams}}, xs, initial_carry=carry0)
    c, loop_ys = carry0, []
    for t in range(T):
        c, y = fcell.apply({"params": fparams}, c, xs[:, t])
        loop_ys.append(y)
    assert _diff("flax/nn.RNN-vs-loop", jnp.stack(loop_ys, 1), f_ys) < TOL

    def run(p, x, c0):  # rnnjax, batch-major, flax-shaped carries in and out
        c, ys = rnnjax.unroll(cell, p, x, _to_rnnjax_carry(name, c0), time_major=False)
        return _from_rnnjax_carry(name, c), ys

    r_carry, r_ys = run(params, xs, carry0)
    assert _diff(f"flax/{name}/fwd", r_ys, f_ys) < TOL
    assert _diff(f"flax/{name}/fwd", r_carry, f_carry) < TOL
    assert _diff(f"flax/{name}/fwd", r_ys, jnp.stack(loop_ys, 1)) < TOL
    assert float(jnp.max(jnp.abs(f_ys))) > 0.1  # not a trivially small signal

    w = _weights(jax.random.fold_in(key, 1), f_ys.shape, carry0)

    def flax_loss(fp, x, c0):
        c, ys = rnn.apply({"params": {"cell": fp}}, x, initial_carry=c0)
        return _loss(ys, c, w)

    def rnnjax_loss(fp, x, c0):  # same loss, through from_flax (so grads are wrt flax's weights)
        return _loss(*run(interop.from_flax(fp, cls), x, c0)[::-1], w)

    lf, gf = jax.value_and_grad(flax_loss, argnums=(0, 1, 2))(fparams, xs, carry0)
    lr, gr = jax.value_and_grad(rnnjax_loss, argnums=(0, 1, 2))(fparams, xs, carry0)
    assert abs(float(lf - lr)) < TOL * max(1.0, abs(float(lf)))
    assert _diff(f"flax/{name}/grad", gr[1], gf[1]) < TOL  # wrt inputs
    assert _diff(f"flax/{name}/grad", gr[2], gf[2]) < TOL  # wrt initial carry
    assert _diff(f"flax/{name}/grad", gr[0], gf[0]) < TOL  # wrt flax weights

    # the mapping is a signed permutation, so rnnjax grads mapped back with to_flax are flax grads
    g_params = jax.grad(lambda p: _loss(*run(p, xs, carry0)[::-1], w))(params)
    assert _diff(f"flax/{name}/grad", interop.to_flax(g_params, cls), gf[0]) < TOL


@pytest.mark.parametrize("name,cls", FLAX_CELLS, ids=[n for n, _ in FLAX_CELLS])
def test_flax_round_trip(name, cls, key):
    _, fparams, xs, carry0 = _flax_setup(cls, key)
    back = interop.to_flax(interop.from_flax(fparams, name), name)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(
        jax.tree_util.tree_map(lambda a: a, dict(fparams)))
    assert _diff("flax/round-trip", back, fparams) == 0.0

    # rnnjax-initialised params -> flax -> rnnjax is exact, and flax runs them identically
    kind = {"lstm": "lstm", "optimized_lstm": "lstm", "gru": "gru", "simple": "elman"}[name]
    cell = {"lstm": rnnjax.lstm(H), "gru": rnnjax.gru(H, reset="after"),
            "elman": rnnjax.elman(H)}[kind]
    params = _randomize(cell.init(key, D), jax.random.fold_in(key, 7))
    fp = interop.to_flax(params, cls)
    assert _diff("flax/round-trip", interop.from_flax(fp, cls), params) == 0.0
    f_carry, f_ys = nn.RNN(cls(features=H), return_carry=True).apply(
        {"params": {"cell": fp}}, xs, initial_carry=carry0)
    r_carry, r_ys = rnnjax.unroll(cell, params, xs, _to_rnnjax_carry(name, carry0),
                                  time_major=False)
    assert _diff(f"flax/{name}/fwd", r_ys, f_ys) < TOL
    assert _diff(f"flax/{name}/fwd", _from_rnnjax_carry(name, r_carry), f_carry) < TOL


def test_flax_simple_relu_and_wrappers(key):
    fcell, fparams, xs, carry0 = _flax_setup(nn.SimpleCell, key, activation_fn=nn.relu)
    cell, params = interop.cell_from_flax({"params": {"cell": fparams}}, fcell)  # wrappers unwrap
    f_carry, f_ys = nn.RNN(fcell, return_carry=True).apply(
        {"params": {"cell": fparams}}, xs, initial_carry=carry0)
    r_carry, r_ys = rnnjax.unroll(cell, params, xs, carry0, time_major=False)
    assert float(jnp.mean(f_ys == 0)) > 0.1  # relu is active
    assert _diff("flax/simple-relu/fwd", r_ys, f_ys) < TOL
    assert _diff("flax/simple-relu/fwd", r_carry, f_carry) < TOL


def test_flax_bad_inputs(key):
    _, fparams, _, _ = _flax_setup(nn.LSTMCell, key)
    with pytest.raises(ValueError, match="kind"):
        interop.from_flax(fparams, "transformer")
    with pytest.raises(ValueError, match="kind"):
        interop.from_flax(fparams, nn.Dense)
    with pytest.raises(TypeError, match="params"):
        interop.from_flax([1, 2], "lstm")
    with pytest.raises(ValueError, match="'hi'"):
        interop.from_flax({k: v for k, v in fparams.items() if k != "hi"}, "lstm")
    with pytest.raises(ValueError, match="'ir'"):  # LSTM params given as a GRU
        interop.from_flax(fparams, "gru")
    bad = dict(fparams, hf={"kernel": jnp.zeros((H + 1, H)), "bias": jnp.zeros(H)})
    with pytest.raises(ValueError, match=r"params\['hf'\]\['kernel'\]"):
        interop.from_flax(bad, "lstm")
    with pytest.raises(ValueError, match="residual"):
        interop.from_flax({}, nn.SimpleCell(features=H, residual=True))
    with pytest.raises(ValueError, match="gate_fn"):
        interop.from_flax(fparams, nn.LSTMCell(features=H, gate_fn=nn.hard_sigmoid))
    with pytest.raises(ValueError, match="activation_fn"):
        interop.from_flax(fparams, nn.LSTMCell(features=H, activation_fn=nn.relu))
    # to_flax: params that flax cannot represent
    with pytest.raises(ValueError, match="peephole"):
        interop.to_flax(rnnjax.lstm(H, peephole=True).init(key, D), "lstm")
    with pytest.raises(ValueError, match="reset='before'"):
        interop.to_flax(rnnjax.gru(H).init(key, D), "gru")
    with pytest.raises(ValueError, match=r"params\['w_h'\]"):
        interop.to_flax(rnnjax.elman(H).init(key, D), "gru")
    with pytest.raises(TypeError, match="params"):
        interop.to_flax("weights", "lstm")


# ------------------------------------------------------------------------------------------------
# PyTorch
# ------------------------------------------------------------------------------------------------

TORCH_CASES = [("lstm", "tanh"), ("gru", "tanh"), ("elman", "tanh"), ("elman", "relu")]
TORCH_IDS = ["lstm", "gru", "rnn-tanh", "rnn-relu"]


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def _torch_module(torch, kind, nonlin="tanh", dtype=None, seed=0, scale=0.5, **kw):
    dtype = dtype or torch.float64
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}[kind]
    if kind == "elman":
        kw["nonlinearity"] = nonlin
    m = cls(D, H, dtype=dtype, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=dtype))
    return m


def _torch_run(torch, m, kind, xs, carry0):
    """Torch forward on time-major xs [T, B, D]; carry0 is rnnjax-shaped (LSTMState or h)."""
    if kind == "lstm":
        out, (hn, cn) = m(xs, (carry0.h[None], carry0.c[None]))
        return out, LSTMState(hn[0], cn[0])
    out, hn = m(xs, carry0[None])
    return out, hn[0]


@pytest.mark.parametrize("kind,nonlin", TORCH_CASES, ids=TORCH_IDS)
def test_torch_forward_and_gradients(torch, kind, nonlin, key):
    m = _torch_module(torch, kind, nonlin)  # float64 reference
    cell, params = interop.cell_from_torch(m)
    assert params["w_x"].dtype == jnp.float32  # x64 is off: jax keeps float32
    kx, kc, kw = jax.random.split(key, 3)
    xs = jax.random.normal(kx, (T, B, D))
    carry0 = _randomize(cell.initial_carry(params, (B,)), kc, 1.0)

    # torch, float64, with grads wrt inputs, initial carry and weights
    t_x = torch.tensor(np.asarray(xs, np.float64), requires_grad=True)
    t_c0 = jax.tree_util.tree_map(
        lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True), carry0)
    t_out, t_carry = _torch_run(torch, m, kind, t_x, t_c0)
    w = _weights(kw, t_out.shape, carry0)
    t_w = jax.tree_util.tree_map(lambda a: torch.tensor(np.asarray(a, np.float64)), w)
    t_loss = (t_out * t_w[0]).sum() + sum(
        (c * v).sum() for c, v in zip(jax.tree_util.tree_leaves(t_carry),
                                      jax.tree_util.tree_leaves(t_w[1])))
    t_loss.backward()
    t_grads = {k: p.grad.numpy() for k, p in m.named_parameters()}

    r_carry, r_ys = rnnjax.unroll(cell, params, xs, carry0)
    assert _diff(f"torch/{kind}-{nonlin}/fwd", r_ys, t_out.detach().numpy()) < TOL
    assert _diff(f"torch/{kind}-{nonlin}/fwd", r_carry,
                 jax.tree_util.tree_map(lambda a: a.detach().numpy(), t_carry)) < TOL
    assert float(np.max(np.abs(t_out.detach().numpy()))) > 0.1

    sd = {k: jnp.asarray(v.detach().numpy(), jnp.float32) for k, v in m.state_dict().items()}

    def loss(sd, x, c0):  # gradients wrt torch's own weights through from_torch_state_dict
        c, ys = rnnjax.unroll(cell, interop.from_torch_state_dict(sd, kind), x, c0)
        return _loss(ys, c, w)

    lj, (g_sd, g_x, g_c0) = jax.value_and_grad(loss, argnums=(0, 1, 2))(sd, xs, carry0)
    assert abs(float(lj) - t_loss.item()) < TOL * max(1.0, abs(t_loss.item()))
    assert _diff(f"torch/{kind}-{nonlin}/grad", g_x, t_x.grad.numpy()) < TOL
    assert _diff(f"torch/{kind}-{nonlin}/grad", g_c0,
                 jax.tree_util.tree_map(lambda a: a.grad.numpy(), t_c0)) < TOL
    assert set(g_sd) == set(t_grads)
    for k in t_grads:
        assert _diff(f"torch/{kind}-{nonlin}/grad", g_sd[k], t_grads[k]) < TOL, k


@pytest.mark.parametrize("kind,nonlin", TORCH_CASES, ids=TORCH_IDS)
def test_torch_round_trip(torch, kind, nonlin, key):
    m = _torch_module(torch, kind, nonlin, dtype=torch.float32, seed=1)
    m2 = interop.to_torch(interop.from_torch(m), kind, nonlinearity=nonlin)
    assert type(m2) is type(m) and m2.hidden_size == H and m2.input_size == D
    assert m2.weight_ih_l0.dtype == torch.float32
    sd, sd2 = m.state_dict(), m2.state_dict()
    for k in ("weight_ih_l0", "weight_hh_l0"):
        assert torch.equal(sd[k], sd2[k]), k
    # the bias split is not recoverable, but the function is the same: compare sums
    b, b2 = sd["bias_ih_l0"] + sd["bias_hh_l0"], sd2["bias_ih_l0"] + sd2["bias_hh_l0"]
    if kind == "gru":  # the n gate's two biases are separate parameters; the n block keeps both
        assert torch.equal(sd["bias_hh_l0"][2 * H:], sd2["bias_hh_l0"][2 * H:])
        assert torch.equal(sd["bias_ih_l0"][2 * H:], sd2["bias_ih_l0"][2 * H:])
    assert _diff("torch/round-trip-bias", b.numpy(), b2.numpy()) < 1e-6
    xs = torch.randn(T, B, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert _diff("torch/round-trip-fwd", m(xs)[0].numpy(), m2(xs)[0].numpy()) < 1e-6

    # rnnjax params -> torch -> rnnjax is exact
    cell = {"lstm": rnnjax.lstm(H), "gru": rnnjax.gru(H, reset="after"),
            "elman": rnnjax.elman(H, activation={"relu": jax.nn.relu, "tanh": jnp.tanh}[nonlin])
            }[kind]
    params = _randomize(cell.init(key, D), jax.random.fold_in(key, 5))
    m3 = interop.to_torch(params, kind, nonlinearity=nonlin)
    assert _diff("torch/round-trip", interop.from_torch(m3), params) == 0.0
    cell3, p3 = interop.cell_from_torch(m3)
    x = jax.random.normal(key, (T, B, D))
    with torch.no_grad():
        t_out = m3(torch.tensor(np.asarray(x)))[0].numpy()
    # float32 through two different matmul kernels: relative to the outputs' scale (an unbounded
    # ReLU RNN's outputs reach ~10 here, where 1e-5 absolute is below the float32 spacing)
    scale = max(1.0, float(np.max(np.abs(t_out))))
    assert _diff(f"torch/{kind}-{nonlin}/fwd", rnnjax.unroll(cell3, p3, x)[1], t_out) < TOL * scale


def test_torch_no_bias_and_batch_first(torch, key):
    m = _torch_module(torch, "gru", bias=False, batch_first=True, dtype=torch.float32)
    cell, params = interop.cell_from_torch(m)
    assert float(jnp.max(jnp.abs(params["b"]))) == 0.0
    assert float(jnp.max(jnp.abs(params["b_hn"]))) == 0.0
    x = jax.random.normal(key, (B, T, D))  # batch-first
    with torch.no_grad():
        t_out, t_h = m(torch.tensor(np.asarray(x)))
    r_h, r_ys = rnnjax.unroll(cell, params, x, time_major=False)
    assert _diff("torch/gru-nobias/fwd", r_ys, t_out.numpy()) < TOL
    assert _diff("torch/gru-nobias/fwd", r_h, t_h[0].numpy()) < TOL
    m2 = interop.to_torch(params, "gru", bias=False, batch_first=True)
    assert m2.bias is False and m2.batch_first is True
    with torch.no_grad():
        t_out2 = m2(torch.tensor(np.asarray(x)))[0]
    assert _diff("torch/gru-nobias/fwd", t_out2.numpy(), t_out.numpy()) == 0.0


def test_torch_bad_inputs(torch, key):
    with pytest.raises(TypeError, match="module"):
        interop.from_torch(torch.nn.LSTMCell(D, H))
    with pytest.raises(TypeError, match="module"):
        interop.from_torch("lstm")
    with pytest.raises(ValueError, match="num_layers=2"):
        interop.from_torch(torch.nn.LSTM(D, H, num_layers=2))
    with pytest.raises(ValueError, match="bidirectional"):
        interop.cell_from_torch(torch.nn.GRU(D, H, bidirectional=True))
    with pytest.raises(ValueError, match="proj_size=2"):
        interop.from_torch(torch.nn.LSTM(D, H, proj_size=2))
    p = rnnjax.lstm(H).init(key, D)
    with pytest.raises(ValueError, match="kind"):
        interop.to_torch(p, "transformer")
    with pytest.raises(ValueError, match="nonlinearity"):
        interop.to_torch(rnnjax.elman(H).init(key, D), "elman", nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="nonlinearity"):
        interop.to_torch(p, "lstm", nonlinearity="relu")
    with pytest.raises(ValueError, match="peephole"):
        interop.to_torch(rnnjax.lstm(H, peephole=True).init(key, D), "lstm")
    with pytest.raises(ValueError, match="reset='before'"):
        interop.to_torch(rnnjax.gru(H).init(key, D), "gru")
    with pytest.raises(ValueError, match=r"params\['w_h'\]"):
        interop.to_torch(p, "gru")
    with pytest.raises(ValueError, match="bias=False"):  # lstm's forget bias is 1
        interop.to_torch(p, "lstm", bias=False)
    with pytest.raises(ValueError, match="weight_hh_l0"):
        interop.from_torch_state_dict({"weight_ih_l0": np.zeros((4 * H, D))}, "lstm")
    with pytest.raises(ValueError, match="weight_hh_l0"):
        interop.from_torch_state_dict(
            {"weight_ih_l0": np.zeros((3 * H, D)), "weight_hh_l0": np.zeros((3 * H, H))}, "lstm")
    with pytest.raises(ValueError, match="weight_ih_l0_reverse"):
        sd = dict(torch.nn.GRU(D, H, bidirectional=True).state_dict())
        interop.from_torch_state_dict(sd, "gru")


def test_state_dict_without_torch(key):
    """The state-dict converters need no torch: numpy in, numpy out, exact round trip."""
    rng = np.random.default_rng(0)
    for kind, G in (("lstm", 4), ("gru", 3), ("rnn", 1)):
        sd = {"weight_ih_l0": rng.normal(size=(G * H, D)).astype(np.float32),
              "weight_hh_l0": rng.normal(size=(G * H, H)).astype(np.float32),
              "bias_ih_l0": rng.normal(size=(G * H,)).astype(np.float32),
              "bias_hh_l0": np.zeros(G * H, np.float32)}
        if kind == "gru":
            sd["bias_hh_l0"][2 * H:] = rng.normal(size=H)
        params = interop.from_torch_state_dict(sd, kind)
        back = interop.to_torch_state_dict(params, kind)
        assert all(isinstance(v, np.ndarray) for v in back.values())
        assert _diff("state-dict-round-trip", back, sd) == 0.0
