"""Convert recurrent-cell weights between rnnjax and PyTorch / flax.linen.

rnnjax multiplies on the right (``x @ W`` with ``W [in, out]``) and fuses the gates of a cell into
one matrix. The conversions here are exact (a transpose, a re-grouping, a sum of biases and, for
the GRU, a sign flip), so a converted cell computes the same function as the original to float
rounding; ``tests/test_interop.py`` checks outputs, final carries and gradients.

PyTorch (``torch`` is optional; it is imported only inside the ``*_torch`` functions):

- ``torch.nn.LSTM`` -> ``rnnjax.lstm(H)``
- ``torch.nn.GRU`` -> ``rnnjax.gru(H, reset="after")``
- ``torch.nn.RNN(nonlinearity="tanh")`` -> ``rnnjax.elman(H)``
- ``torch.nn.RNN(nonlinearity="relu")`` -> ``rnnjax.elman(H, activation=jax.nn.relu)``

flax.linen (``variables["params"]`` of a cell, as returned by ``cell.init``):

- ``nn.LSTMCell`` and ``nn.OptimizedLSTMCell`` (same param names) -> ``rnnjax.lstm(H)``
- ``nn.GRUCell`` -> ``rnnjax.gru(H, reset="after")``
- ``nn.SimpleCell`` (``residual=False``) -> ``rnnjax.elman(H)`` with the cell's activation

The mappings, with torch's ``W_* [out, in]`` and flax's ``kernel [in, out]``:

- LSTM, gates ``(i, f, g, o)`` in both torch and rnnjax: ``w_x = W_ih.T``, ``w_h = W_hh.T``,
  ``b = b_ih + b_hh``; flax: ``w_x = [ii|if|ig|io].kernel``, ``w_h = [hi|hf|hg|ho].kernel``,
  ``b = [hi|hf|hg|ho].bias`` (flax's input kernels have no bias).
- GRU, gates ``(r, z, n)``, reset applied after the recurrent product (``reset="after"``).
  rnnjax updates ``h_t = (1 - z)⊙h + z⊙h̃`` (``z`` weights the candidate, Cho et al. 2014) while
  torch and flax update ``h_t = (1 - z')⊙n + z'⊙h``; so ``z = 1 - z' = σ(-a')``: the ``z``
  blocks of the weights and of the bias are negated. ``b = [b_ir + b_hr, -(b_iz + b_hz), b_in]``,
  ``b_hn = b_hn`` (flax: ``b = [ir.bias, -iz.bias, in.bias]``, ``b_hn = hn.bias``).
- Elman: ``w_x = W_ih.T``, ``w_h = W_hh.T``, ``b = b_ih + b_hh``; flax: ``w_x = i.kernel``,
  ``w_h = h.kernel``, ``b = i.bias``.

Carries are not converted: torch's ``(h_0, c_0)`` have shape ``[num_layers=1, B, H]`` (take
``[0]``), flax's LSTM carry is ``(c, h)`` whereas rnnjax's is ``LSTMState(h, c)``.

Going back (``to_torch``, ``to_flax``) the summed biases cannot be split again: torch gets the sum
in ``bias_ih`` and zeros in ``bias_hh`` (except the GRU's ``bias_hh`` n block, which is ``b_hn``).
The function computed is the same, and ``from_torch(to_torch(p)) == p`` exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cells.elman import elman
from rnnjax.cells.gru import gru
from rnnjax.cells.lstm import lstm
from rnnjax.types import Cell, Params

__all__ = [
    "from_torch",
    "cell_from_torch",
    "to_torch",
    "from_torch_state_dict",
    "to_torch_state_dict",
    "from_flax",
    "cell_from_flax",
    "to_flax",
]

_GATES = {"lstm": 4, "gru": 3, "elman": 1}
_TORCH_KINDS = {"lstm": "lstm", "gru": "gru", "elman": "elman", "rnn": "elman"}
_NONLINEARITIES = ("tanh", "relu")
_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}
_FLAX_KINDS = {
    "lstm": "lstm", "lstmcell": "lstm", "optimizedlstm": "lstm", "optimizedlstmcell": "lstm",
    "gru": "gru", "grucell": "gru",
    "simple": "elman", "simplecell": "elman", "elman": "elman",
}
_LSTM_FLAX = ("i", "f", "g", "o")
_GRU_FLAX = ("r", "z", "n")


def _import_torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rnnjax.interop's torch functions need PyTorch, which is an optional dependency; "
            "install it (e.g. `pip install torch`) to convert torch modules") from e
    return torch


def _as_array(value: Any, name: str) -> jax.Array:
    """A torch tensor, numpy or jax array as a jax array (differentiable for jax inputs)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    if not isinstance(value, (jax.Array, np.ndarray)):
        raise TypeError(f"{name} must be an array or tensor, got {type(value).__name__}")
    return jnp.asarray(value)


def _check_shape(a: jax.Array, shape: tuple[int, ...], name: str) -> jax.Array:
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    return a


def _negate_block(a: jax.Array, k: int, H: int) -> jax.Array:
    """``a`` with its ``k``-th block of ``H`` columns (last axis) negated."""
    return jnp.concatenate([a[..., : k * H], -a[..., k * H:(k + 1) * H], a[..., (k + 1) * H:]],
                           axis=-1)


def _check_params(params: Any, kind: str, name: str = "params") -> tuple[int, int]:
    """Validate rnnjax params for ``kind``; returns ``(D, H)``."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{name} must be a dict of arrays (rnnjax params), got "
                        f"{type(params).__name__}")
    missing = sorted({"w_x", "w_h", "b"} - set(params))
    if missing:
        raise ValueError(f"{name} is missing {missing} for kind={kind!r}; got keys "
                         f"{sorted(params)}")
    G = _GATES[kind]
    w_x, w_h = params["w_x"], params["w_h"]
    if getattr(w_h, "ndim", None) != 2 or w_h.shape[1] != G * w_h.shape[0]:
        raise ValueError(f"{name}['w_h'] must have shape [H, {G}H] for kind={kind!r}, got "
                         f"{getattr(w_h, 'shape', None)}")
    H = w_h.shape[0]
    if getattr(w_x, "ndim", None) != 2 or w_x.shape[1] != G * H:
        raise ValueError(f"{name}['w_x'] must have shape [D, {G * H}] for kind={kind!r}, got "
                         f"{getattr(w_x, 'shape', None)}")
    _check_shape(params["b"], (G * H,), f"{name}['b']")
    need = {"w_x", "w_h", "b"} | ({"b_hn"} if kind == "gru" else set())
    if kind == "gru":
        if "b_hn" not in params:
            raise ValueError(f"{name} has no 'b_hn': these are rnnjax.gru(reset='before') "
                             "params, which torch and flax cannot represent; only "
                             "reset='after' converts")
        _check_shape(params["b_hn"], (H,), f"{name}['b_hn']")
    extra = sorted(set(params) - need)
    if extra:
        what = (" (peephole weights: torch and flax LSTMs have no peepholes)"
                if kind == "lstm" and set(extra) & {"w_ci", "w_cf", "w_co"} else "")
        raise ValueError(f"{name} has keys {extra} that kind={kind!r} cannot represent{what}")
    return int(w_x.shape[0]), int(H)


def _cell(kind: str, H: int, nonlinearity: str = "tanh") -> Cell:
    if kind == "lstm":
        return lstm(H)
    if kind == "gru":
        return gru(H, reset="after")
    return elman(H, activation=_ACTIVATIONS[nonlinearity])


# ----------------------------------------------------------------------------------------------
# PyTorch
# ----------------------------------------------------------------------------------------------

def _torch_kind(kind: Any) -> str:
    if not isinstance(kind, str) or kind.lower() not in _TORCH_KINDS:
        raise ValueError(f"kind must be one of {sorted(_TORCH_KINDS)} ('rnn' = 'elman'), got "
                         f"{kind!r}")
    return _TORCH_KINDS[kind.lower()]


def from_torch_state_dict(state_dict: Mapping[str, Any], kind: str) -> Params:
    """rnnjax params from the ``state_dict`` of a one-layer torch ``LSTM`` / ``GRU`` / ``RNN``.

    ``state_dict`` maps ``weight_ih_l0 [G*H, D]``, ``weight_hh_l0 [G*H, H]`` and optionally
    ``bias_ih_l0``, ``bias_hh_l0 [G*H]`` (missing biases are zeros) to torch tensors, numpy or jax
    arrays. Works without torch for numpy / jax values, and is differentiable in jax values (the
    tests use it to map gradients). See the module docstring for the equations.

    Args:
      state_dict: the tensors, keyed by torch's names.
      kind: ``"lstm"``, ``"gru"`` or ``"elman"`` (alias ``"rnn"``).

    Returns:
      params for ``rnnjax.lstm(H)``, ``rnnjax.gru(H, reset="after")`` or ``rnnjax.elman(H, ...)``.
    """
    kind = _torch_kind(kind)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of torch parameter names to tensors, got "
                        f"{type(state_dict).__name__}")
    allowed = {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
    extra = sorted(set(state_dict) - allowed)
    if extra:
        raise ValueError(f"state_dict has entries {extra}: only a single-layer, unidirectional "
                         f"module without projections converts (expected {sorted(allowed)})")
    for k in ("weight_ih_l0", "weight_hh_l0"):
        if k not in state_dict:
            raise ValueError(f"state_dict is missing {k!r}; got {sorted(state_dict)}")
    G = _GATES[kind]
    w_ih = _as_array(state_dict["weight_ih_l0"], "state_dict['weight_ih_l0']")
    w_hh = _as_array(state_dict["weight_hh_l0"], "state_dict['weight_hh_l0']")
    if w_hh.ndim != 2 or w_hh.shape[0] != G * w_hh.shape[1]:
        raise ValueError(f"state_dict['weight_hh_l0'] must have shape [{G}H, H] for "
                         f"kind={kind!r}, got {tuple(w_hh.shape)}")
    H = w_hh.shape[1]
    if w_ih.ndim != 2 or w_ih.shape[0] != G * H:
        raise ValueError(f"state_dict['weight_ih_l0'] must have shape [{G * H}, D] for "
                         f"kind={kind!r}, got {tuple(w_ih.shape)}")
    dtype = jnp.result_type(w_ih, w_hh)
    b_ih, b_hh = (
        _check_shape(_as_array(state_dict[k], f"state_dict[{k!r}]"), (G * H,), f"state_dict[{k!r}]")
        if k in state_dict else jnp.zeros((G * H,), dtype)
        for k in ("bias_ih_l0", "bias_hh_l0"))
    w_x, w_h = w_ih.T, w_hh.T
    if kind != "gru":
        return {"w_x": w_x, "w_h": w_h, "b": b_ih + b_hh}
    b = jnp.concatenate([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H:]])
    return {
        "w_x": _negate_block(w_x, 1, H),
        "w_h": _negate_block(w_h, 1, H),
        "b": _negate_block(b, 1, H),
        "b_hn": b_hh[2 * H:],
    }


def to_torch_state_dict(params: Params, kind: str) -> dict[str, np.ndarray]:
    """numpy arrays keyed by torch's names, for a one-layer ``LSTM`` / ``GRU`` / ``RNN``.

    The inverse of [`from_torch_state_dict`][rnnjax.interop.from_torch_state_dict] up to the bias split:
    ``bias_ih_l0`` gets the summed bias and ``bias_hh_l0`` zeros (the GRU's ``bias_hh_l0`` n block gets
    ``b_hn``).

    Args:
      params: rnnjax params of ``lstm`` (no peepholes), ``gru(reset="after")`` or ``elman``.
      kind: ``"lstm"``, ``"gru"`` or ``"elman"`` (alias ``"rnn"``).
    """
    kind = _torch_kind(kind)
    _, H = _check_params(params, kind)
    w_x, w_h, b = (np.asarray(params[k]) for k in ("w_x", "w_h", "b"))
    b_hh = np.zeros_like(b)
    if kind == "gru":
        w_x, w_h, b = (np.concatenate([a[..., :H], -a[..., H:2 * H], a[..., 2 * H:]], axis=-1)
                       for a in (w_x, w_h, b))
        b_hh[2 * H:] = np.asarray(params["b_hn"])
    return {"weight_ih_l0": np.array(w_x.T), "weight_hh_l0": np.array(w_h.T),
            "bias_ih_l0": np.array(b), "bias_hh_l0": b_hh}


def _check_torch_module(module: Any, torch) -> tuple[str, str]:
    """``(kind, nonlinearity)`` of a supported torch module, else an error naming the problem."""
    nn = torch.nn
    if isinstance(module, nn.LSTM):
        kind, nonlin = "lstm", "tanh"
    elif isinstance(module, nn.GRU):
        kind, nonlin = "gru", "tanh"
    elif isinstance(module, nn.RNN):
        kind, nonlin = "elman", module.nonlinearity
    else:
        raise TypeError(f"module must be a torch.nn.LSTM, torch.nn.GRU or torch.nn.RNN, got "
                        f"{type(module).__name__} (cells such as torch.nn.LSTMCell are not "
                        f"supported; wrap their weights in a state_dict and use "
                        f"from_torch_state_dict)")
    if module.num_layers != 1:
        raise ValueError(f"module has num_layers={module.num_layers}; only single-layer modules "
                         f"convert (convert each layer's weights separately)")
    if module.bidirectional:
        raise ValueError("module is bidirectional; only unidirectional modules convert")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"module has proj_size={module.proj_size}; LSTMs with projections do "
                         f"not convert")
    if nonlin not in _NONLINEARITIES:  # pragma: no cover - torch only allows tanh / relu
        raise ValueError(f"module has nonlinearity={nonlin!r}; expected one of {_NONLINEARITIES}")
    return kind, nonlin


def from_torch(module: Any) -> Params:
    """rnnjax params from a one-layer, unidirectional ``torch.nn.LSTM`` / ``GRU`` / ``RNN``.

    Use the params with the matching cell (or call [`cell_from_torch`][rnnjax.interop.cell_from_torch] to get
    both): ``LSTM -> rnnjax.lstm(H)``, ``GRU -> rnnjax.gru(H, reset="after")``,
    ``RNN -> rnnjax.elman(H, activation=jnp.tanh or jax.nn.relu)`` per ``module.nonlinearity``.
    ``batch_first`` and ``dropout`` do not affect the weights (give ``unroll`` ``time_major=False``
    for batch-first data); ``bias=False`` gives zero biases. Params keep the module's dtype (as jax
    allows: float64 needs ``jax_enable_x64``).

    Raises:
      TypeError: ``module`` is not one of the three module types.
      ValueError: ``num_layers > 1``, ``bidirectional=True`` or ``proj_size > 0``.
      ImportError: torch is not installed.
    """
    torch = _import_torch()
    kind, _ = _check_torch_module(module, torch)
    return from_torch_state_dict(dict(module.state_dict()), kind)


def cell_from_torch(module: Any) -> tuple[Cell, Params]:
    """``(cell, params)`` reproducing a torch module: [`from_torch`][rnnjax.interop.from_torch] plus the right
    factory.

    ``cell`` is ``rnnjax.lstm(H)``, ``rnnjax.gru(H, reset="after")`` or ``rnnjax.elman(H,
    activation=...)`` with ``tanh`` or ``relu`` as in ``module.nonlinearity``.
    """
    torch = _import_torch()
    kind, nonlin = _check_torch_module(module, torch)
    params = from_torch_state_dict(dict(module.state_dict()), kind)
    return _cell(kind, module.hidden_size, nonlin), params


def to_torch(params: Params, kind: str, *, nonlinearity: str = "tanh", bias: bool = True,
             batch_first: bool = False) -> Any:
    """A one-layer ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` with the weights of rnnjax ``params``.

    Args:
      params: params of ``rnnjax.lstm`` (without peepholes), ``rnnjax.gru(reset="after")`` or
        ``rnnjax.elman``.
      kind: ``"lstm"``, ``"gru"`` or ``"elman"`` (alias ``"rnn"``).
      nonlinearity: for ``"elman"``: ``"tanh"`` or ``"relu"`` (the elman cell's activation).
      bias: build the module with biases; ``False`` requires all biases of ``params`` to be zero.
      batch_first: passed to the torch module (it does not affect the weights).

    Returns:
      the module, in the dtype of ``params['w_x']``, with ``bias_ih`` holding the summed biases
      and ``bias_hh`` zeros (the GRU's n block of ``bias_hh`` holds ``b_hn``).
    """
    torch = _import_torch()
    kind = _torch_kind(kind)
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {_NONLINEARITIES}, got {nonlinearity!r}")
    if kind != "elman" and nonlinearity != "tanh":
        raise ValueError(f"nonlinearity={nonlinearity!r} applies only to kind='elman'")
    D, H = _check_params(params, kind)
    sd = to_torch_state_dict(params, kind)
    if not bias:
        if any(np.any(v != 0) for k, v in sd.items() if k.startswith("bias")):
            raise ValueError("bias=False but params has non-zero biases; use bias=True")
        sd = {k: v for k, v in sd.items() if not k.startswith("bias")}
    np_dtype = np.asarray(params["w_x"]).dtype
    torch_dtype = getattr(torch, np_dtype.name, None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise TypeError(f"params['w_x'] has dtype {np_dtype}, which has no torch float dtype")
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}[kind]
    kwargs = {"nonlinearity": nonlinearity} if kind == "elman" else {}
    module = cls(D, H, num_layers=1, bias=bias, batch_first=batch_first, dtype=torch_dtype,
                 **kwargs)
    tensors = {k: torch.from_numpy(np.asarray(v, np.float32) if np_dtype.name == "bfloat16"
                                   else np.array(v)).to(torch_dtype) for k, v in sd.items()}
    module.load_state_dict(tensors, strict=True)
    return module


# ----------------------------------------------------------------------------------------------
# flax.linen
# ----------------------------------------------------------------------------------------------

def _flax_kind(kind: Any) -> tuple[str, str]:
    """``(kind, nonlinearity)`` from a string, a flax cell class or a flax cell instance."""
    if isinstance(kind, str):
        key = kind.lower().replace("_", "")
        if key not in _FLAX_KINDS:
            raise ValueError(f"kind must be one of 'lstm' (LSTMCell, OptimizedLSTMCell), 'gru' "
                             f"(GRUCell) or 'simple' (SimpleCell), or a flax cell, got {kind!r}")
        return _FLAX_KINDS[key], "tanh"
    cls = kind if isinstance(kind, type) else type(kind)
    key = cls.__name__.lower()
    if key not in _FLAX_KINDS or not cls.__module__.startswith("flax"):
        raise ValueError(f"kind must be 'lstm', 'gru', 'simple' or a flax.linen LSTMCell, "
                         f"OptimizedLSTMCell, GRUCell or SimpleCell, got {cls.__name__}")
    out = _FLAX_KINDS[key]
    nonlin = "tanh"
    if not isinstance(kind, type):  # an instance: check its non-default options
        gate_fn = getattr(kind, "gate_fn", jax.nn.sigmoid)
        act = getattr(kind, "activation_fn", jnp.tanh)
        if gate_fn is not jax.nn.sigmoid:
            raise ValueError(f"kind has gate_fn={gate_fn!r}; only sigmoid gates convert")
        if out == "elman":
            if getattr(kind, "residual", False):
                raise ValueError("kind has residual=True; rnnjax.elman has no residual connection")
            names = {id(v): k for k, v in _ACTIVATIONS.items()}
            if id(act) not in names:
                raise ValueError(f"kind has activation_fn={act!r}; only tanh and relu convert")
            nonlin = names[id(act)]
        elif act is not jnp.tanh:
            raise ValueError(f"kind has activation_fn={act!r}; only tanh converts")
    return out, nonlin


def _unwrap(params: Any) -> Mapping:
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be the flax params dict (variables['params']), got "
                        f"{type(params).__name__}")
    # accept the whole variables dict, or nn.RNN's params ({'cell': ...}) as well
    while len(params) == 1 and next(iter(params)) in ("params", "cell"):
        params = params[next(iter(params))]
    return params


def _get(params: Mapping, sub: str, leaf: str) -> jax.Array:
    try:
        value = params[sub][leaf]
    except (KeyError, TypeError):
        raise ValueError(f"params has no {sub!r}/{leaf!r} entry; got submodules "
                         f"{sorted(params)}") from None
    return _as_array(value, f"params[{sub!r}][{leaf!r}]")


def from_flax(params: Any, kind: Any) -> Params:
    """rnnjax params from the params of a flax.linen ``LSTMCell``, ``OptimizedLSTMCell``,
    ``GRUCell`` or ``SimpleCell``.

    Args:
      params: ``variables["params"]`` from ``cell.init`` (the full ``variables`` and ``nn.RNN``'s
        ``{"cell": ...}`` wrapper are unwrapped too).
      kind: ``"lstm"`` (``LSTMCell`` and ``OptimizedLSTMCell``), ``"gru"`` (``GRUCell``) or
        ``"simple"`` (``SimpleCell``), or the flax cell class / instance itself. An instance is
        checked for options that do not convert (non-sigmoid gates, other activations,
        ``residual=True``).

    Returns:
      params for ``rnnjax.lstm(H)``, ``rnnjax.gru(H, reset="after")`` or ``rnnjax.elman(H)``
      (see [`cell_from_flax`][rnnjax.interop.cell_from_flax]). Differentiable in the flax params.
    """
    kind, _ = _flax_kind(kind)
    params = _unwrap(params)
    if kind == "elman":
        w_x, b = _get(params, "i", "kernel"), _get(params, "i", "bias")
        w_h = _get(params, "h", "kernel")
        H = w_h.shape[-1]
        _check_shape(w_h, (H, H), "params['h']['kernel']")
        _check_shape(w_x, (w_x.shape[0], H), "params['i']['kernel']")
        _check_shape(b, (H,), "params['i']['bias']")
        return {"w_x": w_x, "w_h": w_h, "b": b}
    gates = _LSTM_FLAX if kind == "lstm" else _GRU_FLAX
    wx = [_get(params, "i" + g, "kernel") for g in gates]
    wh = [_get(params, "h" + g, "kernel") for g in gates]
    H = wh[0].shape[-1]
    D = wx[0].shape[0]
    for g, a, c in zip(gates, wx, wh):
        _check_shape(a, (D, H), f"params['i{g}']['kernel']")
        _check_shape(c, (H, H), f"params['h{g}']['kernel']")
    if kind == "lstm":
        bs = [_check_shape(_get(params, "h" + g, "bias"), (H,), f"params['h{g}']['bias']")
              for g in gates]
        return {"w_x": jnp.concatenate(wx, axis=1), "w_h": jnp.concatenate(wh, axis=1),
                "b": jnp.concatenate(bs)}
    bs = [_check_shape(_get(params, "i" + g, "bias"), (H,), f"params['i{g}']['bias']")
          for g in gates]
    b_hn = _check_shape(_get(params, "hn", "bias"), (H,), "params['hn']['bias']")
    return {
        "w_x": jnp.concatenate([wx[0], -wx[1], wx[2]], axis=1),
        "w_h": jnp.concatenate([wh[0], -wh[1], wh[2]], axis=1),
        "b": jnp.concatenate([bs[0], -bs[1], bs[2]]),
        "b_hn": b_hn,
    }


def cell_from_flax(params: Any, kind: Any) -> tuple[Cell, Params]:
    """``(cell, params)`` reproducing a flax cell: [`from_flax`][rnnjax.interop.from_flax] plus the right
    factory.

    ``cell`` is ``rnnjax.lstm(H)``, ``rnnjax.gru(H, reset="after")`` or ``rnnjax.elman(H, ...)``
    (with ``relu`` when ``kind`` is a ``SimpleCell`` instance with ``activation_fn=nn.relu``).
    """
    kind_, nonlin = _flax_kind(kind)
    p = from_flax(params, kind)
    return _cell(kind_, int(p["w_h"].shape[0]), nonlin), p


def to_flax(params: Params, kind: Any) -> dict[str, dict[str, jax.Array]]:
    """flax.linen params (for ``variables = {"params": ...}``) from rnnjax params.

    The exact inverse of [`from_flax`][rnnjax.interop.from_flax].

    Args:
      params: params of ``rnnjax.lstm`` (no peepholes), ``rnnjax.gru(reset="after")`` or
        ``rnnjax.elman``.
      kind: ``"lstm"`` (for ``LSTMCell`` or ``OptimizedLSTMCell``), ``"gru"`` (``GRUCell``),
        ``"simple"`` (``SimpleCell``), or the flax cell class / instance.
    """
    kind, _ = _flax_kind(kind)
    _, H = _check_params(params, kind)
    w_x, w_h, b = (jnp.asarray(params[k]) for k in ("w_x", "w_h", "b"))
    if kind == "elman":
        return {"i": {"kernel": w_x, "bias": b}, "h": {"kernel": w_h}}
    gates = _LSTM_FLAX if kind == "lstm" else _GRU_FLAX
    sign = [1.0] * len(gates) if kind == "lstm" else [1.0, -1.0, 1.0]
    blk = lambda a, k: a[..., k * H:(k + 1) * H] * sign[k]
    out: dict[str, dict[str, jax.Array]] = {}
    for k, g in enumerate(gates):
        if kind == "lstm":
            out["i" + g] = {"kernel": blk(w_x, k)}
            out["h" + g] = {"kernel": blk(w_h, k), "bias": blk(b, k)}
        else:
            out["i" + g] = {"kernel": blk(w_x, k), "bias": blk(b, k)}
            out["h" + g] = {"kernel": blk(w_h, k)}
    if kind == "gru":
        out["hn"]["bias"] = jnp.asarray(params["b_hn"])
    return out
