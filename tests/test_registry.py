"""rnnjax.registry: every entry is its factory with the documented arguments, runs through unroll,
projects where its paper does; unknown names are refused naming the known ones; and every script
that picks cells by name (experiments/_common.py, benchmarks/vanishing.py, speed.py, parallel.py)
takes its list from the registry."""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax.bench import core as bench_core
from rnnjax import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

H, T, B, D = 4, 5, 2, 3

# The documented construction of every entry: the factory called directly (T = the horizon).
DIRECT = {
    "elman": lambda: rnnjax.elman(H),
    "irnn": lambda: rnnjax.irnn(H),
    "jordan": lambda: rnnjax.jordan(H, H, activation=jnp.tanh),
    "lstm": lambda: rnnjax.lstm(H, forget_bias=1.0),
    "gru": lambda: rnnjax.gru(H),
    "mgu": lambda: rnnjax.mgu(H),
    "indrnn": lambda: rnnjax.indrnn(H, max_timescale=T),
    "lru": lambda: rnnjax.lru(H, H, r_min=0.9, r_max=0.999),
    "mingru": lambda: rnnjax.mingru(H),
    "minlstm": lambda: rnnjax.minlstm(H),
    "orthogonal": lambda: rnnjax.orthogonal(H),
    "cornn": lambda: rnnjax.cornn(H, dt=0.06, gamma=66.0, epsilon=15.0),
    "lem": lambda: rnnjax.lem(H, dt=0.0242),
    "linoss": lambda: rnnjax.linoss(H, state_size=H),
    "rglru": lambda: rnnjax.rglru(H),
    "slstm": lambda: rnnjax.slstm(H),
    "mlstm": lambda: rnnjax.mlstm(H),
    "antisymmetric": lambda: rnnjax.antisymmetric(H),
    "lipschitz": lambda: rnnjax.lipschitz(H),
    "deltanet": lambda: rnnjax.deltanet(H),
    "gated_deltanet": lambda: rnnjax.gated_deltanet(H),
    "s6": lambda: rnnjax.s6(H),
}


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_every_entry_is_its_factory_and_runs_through_unroll():
    assert registry.names() == tuple(DIRECT)  # every sequence cell rnnjax exports, convlstm aside
    xs = jax.random.normal(jax.random.key(1), (T, B, D), jnp.float32)
    pairs = {name: (registry.cell(name, H, T), direct()) for name, direct in DIRECT.items()}

    @jax.jit
    def run_all(key):  # one compiled program for every cell
        out = {}
        for name, (cell, ref) in pairs.items():
            params, ref_params = cell.init(key, D), ref.init(key, D)
            _, y0 = ref.apply(params, ref.initial_carry(params, (B,)), xs[0])
            out[name] = params, ref_params, rnnjax.unroll(cell, params, xs)[1], y0
        return out

    for name, (params, ref_params, ys, y0) in run_all(jax.random.key(7)).items():
        spec, cell = registry.CELLS[name], pairs[name][0]
        _equal(params, ref_params)  # the same params for the same key
        assert ys.shape == (T, B, H) and np.all(np.isfinite(ys)), name
        # the same function: one step of the direct factory's cell gives the first output
        np.testing.assert_allclose(ys[0], y0, rtol=1e-5, atol=1e-6, err_msg=name)
        assert spec.name == name and spec.paper and spec.setup
        assert spec.parallel == (cell.linear is not None), name
        assert isinstance(spec(H, T), rnnjax.Cell) == (spec.projection is None), name


def test_the_jordan_entry_uses_tanh_units():  # params alone cannot tell the activation apart
    cell, sig = registry.cell("jordan", H, T), rnnjax.jordan(H, H)
    p = cell.init(jax.random.key(0), D)
    x = jnp.full((B, D), 2.0)
    y_tanh = cell.apply(p, cell.initial_carry(p, (B,)), x)[0].h
    y_sig = sig.apply(p, sig.initial_carry(p, (B,)), x)[0].h
    assert float(jnp.min(y_tanh)) < 0.0 <= float(jnp.min(y_sig))


def test_indrnn_entry_projects_u_to_its_bound():
    cell, project = registry.CELLS["indrnn"](H, T)
    bound = rnnjax.indrnn_max_abs(T)  # 2^(1/T)
    params = cell.init(jax.random.key(0), D)
    assert float(jnp.max(jnp.abs(params["u"]))) <= bound  # u ~ U[0, 2^(1/T)]
    model = {"cell": {**params, "u": jnp.array([-3.0, 0.5, 7.0, -0.25])}, "readout": {"w": jnp.ones((H, 1))}}
    got = project(model)
    np.testing.assert_allclose(np.asarray(got["cell"]["u"]), [-bound, 0.5, bound, -0.25], rtol=1e-6)
    _equal(got["readout"], model["readout"])
    _equal(registry.projection("indrnn", T)(model), rnnjax.indrnn_projection(T)(model))
    assert all(registry.projection(n, T) is None for n in registry.names() if n != "indrnn")
    with pytest.raises(ValueError, match="needs T"):
        registry.cell("indrnn", H)
    with pytest.raises(ValueError, match="needs T"):
        registry.projection("indrnn")


def test_unknown_names_and_bad_T_are_refused():
    with pytest.raises(ValueError) as e:
        registry.cell("lstn", H, T)
    assert "'lstn'" in str(e.value) and all(n in str(e.value) for n in registry.names())
    with pytest.raises(ValueError, match="unknown cell"):
        registry.projection("convlstm", T)  # image-only: not registered
    for bad in (0, -3, 2.5, True, "5"):
        with pytest.raises(ValueError, match="T must be a positive int"):
            registry.cell("lstm", H, bad)
    assert isinstance(registry.cell("indrnn", H, np.int64(T)), rnnjax.Cell)


def test_every_script_takes_its_cells_from_the_registry():
    names = registry.names()
    common = _load("_registry_test_common", os.path.join(ROOT, "experiments", "_common.py"))
    assert tuple(common.CELLS) == names
    import parallel
    import speed
    import vanishing

    assert tuple(speed.CELLS) == names and set(speed.PEER_CELLS) <= set(names)
    assert all(n in speed.IMPLS["rnnjax"][1] and n in speed.IMPLS["rnnjax_plain"][1] for n in names)
    assert speed.parse_list("mlstm,lstm", speed.CELLS, "--cells") == ["mlstm", "lstm"]
    assert tuple(parallel.CELLS) == tuple(n for n in names if registry.CELLS[n].parallel)
    assert set(parallel.CELLS) == {"lru", "mingru", "minlstm", "linoss", "rglru", "s6"}
    with pytest.raises(Exception, match="no associative-scan path"):
        parallel.cell_name("lstm")
    # vanishing: every registered cell has a row that is the registry's cell, as built there, but
    # the cells that joined after the committed study (NO_ROW_YET, named)
    assert set(vanishing.REGISTRY_ROWS.values()) | set(vanishing.NO_ROW_YET) == set(names)
    assert not set(vanishing.REGISTRY_ROWS.values()) & set(vanishing.NO_ROW_YET)
    for row, name in vanishing.REGISTRY_ROWS.items():
        spec = vanishing.spec_by_name(row)
        assert spec.cell == name
        if name in ("lstm", "indrnn", "lru"):  # one layer, with a projection, two layers
            cell, project = vanishing.make_model(spec, H, T)
            params = cell.init(jax.random.key(2), D)
            ref = registry.cell(name, H, T).init(jax.random.key(2), D)
            if name in bench_core.TWO_LAYERS:
                assert len(params) == 2
                assert jax.tree.structure(params[0]) == jax.tree.structure(ref)
            else:
                _equal(params, ref)
            assert (project is None) == (registry.projection(name, T) is None)
