"""Params checked against the cell (once per unroll, from the shapes of cell.init), and the dtype
policy: a cell computes in its params' dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from helpers import all_cells, tree_allclose
from rnnjax.types import Cell

D = 3
XS = jax.random.normal(jax.random.key(1), (4, 2, D))


def _every_cell():
    return all_cells() + [
        ("indrnn", rnnjax.indrnn(5)),
        ("lru", rnnjax.lru(4, 3)),
        ("lru_square", rnnjax.lru(D, 2)),  # elementwise skip d [H]
        ("mingru", rnnjax.mingru(4)),
        ("minlstm", rnnjax.minlstm(4)),
        ("orthogonal", rnnjax.orthogonal(4)),
        ("stack", rnnjax.stack(rnnjax.lstm(4), rnnjax.gru(3))),
        ("learned_carry", rnnjax.learned_initial_carry(rnnjax.gru(4))),
    ]


CELLS = _every_cell()


def _first_leaf_path(params):
    path, leaf = jax.tree_util.tree_flatten_with_path(params)[0][0]
    return path, leaf


@pytest.mark.parametrize("name,cell", CELLS, ids=[n for n, _ in CELLS])
def test_every_cell_names_the_wrong_parameter(name, cell):
    params = cell.init(jax.random.key(0), D)
    path, leaf = _first_leaf_path(params)
    bad_shape = leaf.shape[:-1] + (leaf.shape[-1] + 1,) if leaf.ndim else (2,)
    bad = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.zeros(bad_shape, a.dtype) if p == path else a, params)
    where = "params" + jax.tree_util.keystr(path)
    msg = f"{where} has shape {tuple(bad_shape)}, expected {tuple(leaf.shape)}"
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        rnnjax.unroll(cell, bad, XS)


def test_gru_params_for_an_lstm():
    params = rnnjax.gru(8).init(jax.random.key(0), D)
    with pytest.raises(ValueError, match=r"params\['w_x'\] has shape \(3, 24\), expected \(3, 32\)"):
        rnnjax.unroll(rnnjax.lstm(8), params, XS)


def test_missing_and_extra_entries():
    cell = rnnjax.lstm(8)
    params = cell.init(jax.random.key(0), D)
    missing = {k: v for k, v in params.items() if k != "b"}
    with pytest.raises(ValueError, match=r"params\['b'\] is missing \(expected shape \(32,\)\)"):
        rnnjax.unroll(cell, missing, XS)
    extra = {**params, "w_ci": jnp.zeros(8)}
    with pytest.raises(ValueError, match=r"params\['w_ci'\] is not a parameter of this cell"):
        rnnjax.unroll(cell, extra, XS)
    with pytest.raises(ValueError, match=r"params must be a dict with keys"):
        rnnjax.unroll(cell, [params["w_x"], params["w_h"], params["b"]], XS)


def test_stack_names_the_layer():
    cell = rnnjax.stack(rnnjax.lstm(4), rnnjax.elman(3))
    params = cell.init(jax.random.key(0), D)
    bad = (params[0], {**params[1], "w_h": jnp.zeros((4, 3))})
    with pytest.raises(ValueError, match=r"params\[1\]\['w_h'\] has shape \(4, 3\), expected \(3, 3\)"):
        rnnjax.unroll(cell, bad, XS)
    with pytest.raises(ValueError, match="params must be a sequence of 2 entries, found 1"):
        rnnjax.unroll(cell, (params[0],), XS)


def test_params_from_another_input_size_blame_xs():
    cell = rnnjax.gru(5)
    params = cell.init(jax.random.key(0), 7)
    with pytest.raises(ValueError, match="xs has last dim 3 but the params expect input size 7"):
        rnnjax.unroll(cell, params, XS)


def test_prepared_params_are_accepted():
    cell = rnnjax.orthogonal(4)
    params = cell.init(jax.random.key(0), D)
    prepared = cell.prepare(params)
    assert "w_h" in prepared
    tree_allclose(rnnjax.unroll(cell, prepared, XS), rnnjax.unroll(cell, params, XS), atol=1e-6)


def test_check_traces_init_once_per_cell_and_input_size():
    base = rnnjax.elman(4)
    calls = []

    def init(key, input_size):
        calls.append(input_size)
        return base.init(key, input_size)

    cell = Cell(init, base.initial_carry, base.apply)
    params = base.init(jax.random.key(0), D)
    f = jax.jit(lambda p, x: rnnjax.unroll(cell, p, x)[1])
    y = f(params, XS)
    f(params, XS + 1.0)  # same shapes: no retrace, no check
    rnnjax.unroll(cell, params, XS[:2])  # another call: the expected shapes come from the cache
    assert calls == [D]
    np.testing.assert_allclose(y, rnnjax.unroll(base, params, XS)[1], atol=1e-6)


def test_an_init_that_needs_concrete_values_is_not_checked():
    base = rnnjax.elman(4)

    def init(key, input_size):
        params = base.init(key, input_size)
        scale = float(jnp.max(jnp.abs(params["w_h"])))  # concrete: cannot run under eval_shape
        return {**params, "w_h": params["w_h"] / scale}

    cell = Cell(init, base.initial_carry, base.apply)
    params = cell.init(jax.random.key(0), D)
    tree_allclose(rnnjax.unroll(cell, params, XS), rnnjax.unroll(base, params, XS))


# ------------------------------------------------------------------------------ dtype policy

def _cast(tree, dtype):
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


_SLOW = pytest.mark.slow  # the same policy on more cells: in the slow run
HALF = [
    pytest.param("lstm_fused-bf16", rnnjax.lstm(4), {}, jnp.bfloat16, id="lstm_fused-bf16"),
    pytest.param("lstm_fused-f16", rnnjax.lstm(4), {}, jnp.float16, id="lstm_fused-f16", marks=_SLOW),
    pytest.param("gru-bf16", rnnjax.gru(4, reset="after"), {}, jnp.bfloat16, id="gru-bf16", marks=_SLOW),
    pytest.param("elman_remat-f16", rnnjax.elman(4), dict(remat=True), jnp.float16, id="elman_remat-f16"),
    pytest.param("lru_parallel-bf16", rnnjax.lru(4, 3), dict(parallel=True), jnp.bfloat16,
                 id="lru_parallel-bf16", marks=_SLOW),
    pytest.param("mingru_parallel-bf16", rnnjax.mingru(4), dict(parallel=True), jnp.bfloat16,
                 id="mingru_parallel-bf16", marks=_SLOW),
    pytest.param("orthogonal-f16", rnnjax.orthogonal(4), {}, jnp.float16, id="orthogonal-f16", marks=_SLOW),
]


@pytest.mark.parametrize("name,cell,opts,dtype", HALF)
def test_half_precision_params_compute_end_to_end(name, cell, opts, dtype):
    params = cell.init(jax.random.key(0), D)
    half = _cast(params, dtype)
    lengths = jnp.array([4, 2])

    def loss(p, x):
        c, ys = rnnjax.unroll(cell, p, x, lengths=lengths, **opts)
        return jnp.sum(ys.astype(jnp.float32) ** 2), (c, ys)

    (_, (c, ys)), g = jax.value_and_grad(loss, has_aux=True)(half, XS.astype(dtype))
    (_, (c32, ys32)), g32 = jax.value_and_grad(loss, has_aux=True)(params, XS)
    assert ys.dtype == dtype
    for leaf, leaf32 in zip(jax.tree_util.tree_leaves(c), jax.tree_util.tree_leaves(c32)):
        # the LRU's complex state stays complex64 (there is no complex half type)
        assert leaf.dtype == (leaf32.dtype if jnp.iscomplexobj(leaf32) else dtype)
    tol = 0.06 if dtype == jnp.bfloat16 else 0.01
    np.testing.assert_allclose(np.asarray(ys, np.float32), ys32, atol=tol, rtol=tol)
    for a, a32 in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g32)):
        assert a.dtype == dtype
        scale = float(jnp.max(jnp.abs(a32))) + 1e-3
        np.testing.assert_allclose(np.asarray(a, np.float32) / scale, a32 / scale, atol=5 * tol)


def test_inputs_are_cast_to_the_params_dtype():
    cell = rnnjax.gru(4)
    params = cell.init(jax.random.key(0), D)
    x16 = XS.astype(jnp.float16)
    # float16 inputs, float32 params: computed and returned in float32, as if given float32 inputs
    c, ys = rnnjax.unroll(cell, params, x16)
    assert ys.dtype == jnp.float32 and c.dtype == jnp.float32
    tree_allclose((c, ys), rnnjax.unroll(cell, params, x16.astype(jnp.float32)), atol=0, rtol=0)
    # float32 inputs, bfloat16 params: computed in bfloat16
    half = _cast(params, jnp.bfloat16)
    c, ys = rnnjax.unroll(cell, half, XS)
    assert ys.dtype == jnp.bfloat16 and c.dtype == jnp.bfloat16
    tree_allclose((c, ys), rnnjax.unroll(cell, half, XS.astype(jnp.bfloat16)), atol=0, rtol=0)


def test_mixed_dtypes_are_refused_clearly():
    cell = rnnjax.lstm(4)
    params = cell.init(jax.random.key(0), D)
    mixed = {**params, "w_h": params["w_h"].astype(jnp.bfloat16)}
    with pytest.raises(ValueError, match=r"params mix floating dtypes .*params\['w_h'\] is bfloat16"):
        rnnjax.unroll(cell, mixed, XS)
    half = _cast(params, jnp.bfloat16)
    c32 = cell.initial_carry(params, (2,))
    with pytest.raises(TypeError, match=r"carry\.h has dtype float32 but the 'lstm' cell's carry is "
                                         r"bfloat16"):
        rnnjax.unroll(cell, half, XS, c32)
    with pytest.raises(TypeError, match="must have a floating dtype"):
        rnnjax.unroll(cell, params, jnp.ones((4, 2, D), jnp.int32))


@pytest.mark.parametrize("factory, arg", [
    (rnnjax.cornn, "dt"), (rnnjax.lem, "dt"), (rnnjax.antisymmetric, "epsilon"),
    (rnnjax.lipschitz, "beta"), (lambda H, **kw: rnnjax.lru(H, 4, **kw), "r_max"), (rnnjax.rglru, "c"),
])
def test_factory_numbers_accept_numpy_scalars_and_refuse_bools_and_nan(factory, arg):
    """Hyperparameters are finite real numbers: NumPy scalars work and give the same cell as the
    Python float; a bool, a string or NaN is refused with the argument's name."""
    value = {"dt": 0.05, "epsilon": 0.02, "beta": 0.5, "r_max": 0.95, "c": 4.0}[arg]
    key, x = jax.random.PRNGKey(0), jnp.ones((5, 2, 3))
    ys_py = rnnjax.unroll(factory(8, **{arg: value}), factory(8, **{arg: value}).init(key, 3), x)[0]
    cell_np = factory(8, **{arg: np.float32(value)})
    ys_np = rnnjax.unroll(cell_np, cell_np.init(key, 3), x)[0]
    np.testing.assert_allclose(np.asarray(ys_np), np.asarray(ys_py), rtol=1e-6, atol=1e-7)
    for bad in (True, "0.1", float("nan")):
        with pytest.raises(TypeError, match=f"{arg} must be a finite number, got {bad!r}"):
            factory(8, **{arg: bad})


def test_indrnn_max_abs_names_its_argument():
    assert rnnjax.indrnn_max_abs(np.float64(100.0)) == pytest.approx(2.0 ** 0.01)
    with pytest.raises(ValueError, match="max_timescale must be >= 1.0, got 0.5"):
        rnnjax.indrnn_max_abs(0.5)
    with pytest.raises(TypeError, match="max_timescale must be a finite number"):
        rnnjax.indrnn_max_abs(float("inf"))
