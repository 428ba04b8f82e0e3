"""Speed of rnnjax's LSTM and GRU against other recurrent-network implementations.

Measured in one run on one machine, for each size ``BxTxDxH`` (batch, steps, inputs, hidden),
each cell (``lstm``, ``gru``) and each implementation:

- ``train``: one training step, forward + backward + ``optax.chain(clip_by_global_norm(1.0),
  adam(1e-3))`` (PyTorch: ``clip_grad_norm_`` + ``torch.optim.Adam``); the loss is
  ``mean(hs ** 2)`` over every step's hidden state ``hs [T, B, H]``, the same for all;
- ``forward``: the hidden states ``hs`` of the whole sequence (inference only).

Implementations (a peer is used only when its package imports; the run prints which were found):

- ``rnnjax``: ``rnnjax.unroll(rnnjax.lstm(H), params, xs)`` (and ``rnnjax.gru(H)``), exactly what
  a user gets by default, whichever path ``unroll`` picks (the label names the arrangement of
  the input projection that ``projection="auto"`` chose at that size);
- ``rnnjax_step``, ``rnnjax_hoisted``: the fused path with ``projection="step"`` (the input
  projection inside each step's matmul) and ``projection="hoisted"`` (for all steps before the
  scan), whatever ``"auto"`` would pick;
- ``rnnjax_after`` (GRU only): ``rnnjax.gru(H, reset="after")``, the GRU the peers implement (see
  below), with the default arrangement;
- ``rnnjax_plain``: ``rnnjax.unroll`` of ``rnnjax.Cell(cell.init, cell.initial_carry,
  cell.apply)``, a cell rebuilt from its three functions, i.e. ``lax.scan`` over ``apply``;
- ``flax``, ``flax_optimized``: linen ``nn.RNN(nn.LSTMCell(H))``, ``nn.RNN(nn.OptimizedLSTMCell(H))``
  (LSTM only) and ``nn.RNN(nn.GRUCell(H))``;
- ``equinox``: ``eqx.nn.LSTMCell`` / ``eqx.nn.GRUCell``, ``jax.lax.scan`` over time and
  ``jax.vmap`` over the batch;
- ``haiku``: ``hk.LSTM`` / ``hk.GRU`` with ``hk.dynamic_unroll``;
- ``torch``: ``torch.nn.LSTM`` / ``torch.nn.GRU`` (CPU when JAX runs on CPU, with
  ``torch.set_num_threads(os.cpu_count())``; CUDA when JAX runs on a GPU and torch has CUDA);
- ``hoisted_scan``: a hand-written JAX LSTM/GRU, the input projection ``xs @ W_x`` for all steps
  at once, then ``lax.scan`` over ``h @ W_h`` only;
- ``cudnn`` (JAX on GPU only, LSTM only): ``jax.experimental.rnn.lstm``.

The default rnnjax GRU is Cho et al.'s ``reset="before"`` form; the peers' GRUs apply the reset
after the recurrent matmul (``rnnjax_after`` is that form). Both do the same matmul FLOPs, but
``reset="before"`` needs two dependent matmuls per step (``h W_hrz``, then ``(r⊙h) W_hn``) where
``reset="after"`` needs one, so only ``rnnjax_after`` compares like with like.

Every JAX function is ``jax.jit``-ed; each is called twice to compile and warm up (the first
call's time is kept as ``compile_s``); then, in each of ``--repeats`` rounds, every
implementation and mode of the same size and cell is called once (interleaved, so a slow phase of
a shared machine affects all alike), each call waited for with ``jax.block_until_ready`` (torch:
``torch.cuda.synchronize`` on CUDA) and timed with ``time.perf_counter``; the median over the
rounds is reported. Train steps feed the new params and optimizer
state back in. The columns "x fastest peer" divide by the fastest non-rnnjax implementation of the
same size, cell and mode. The FLOP floor counts the matmul FLOPs (forward ``2 B T (D + H) G H``,
``G = 4`` for LSTM, 3 for GRU; a train step 3x that) at the machine's GEMM rate, measured in the
same run (a jitted square float32 matmul), so ``x floor`` is how far from matmul-bound a step is.

``--long`` adds the long-sequence study: an LSTM training step at ``T = 65536`` (``B = 8``,
``D = 32``, ``H = 256``; loss ``mean(h_T ** 2)`` on the final hidden state, so only the
recurrence's own activations are stored) for the variants in ``LONG_VARIANTS``, each in a fresh
subprocess. Memory: on CPU, the peak resident set (``VmHWM``) above the resident set after
imports, data creation and compilation; the high-water mark is reset after compiling
(``/proc/self/clear_refs``), so compiler memory does not count. On GPU, the device's
``peak_bytes_in_use`` above ``bytes_in_use`` after data creation. The target: chunked
rematerialisation with at most 10% of the plain scan's memory at at most 1.5x its time.

``--long`` also runs the million-step study of ``benchmarks/long_memory.py`` (its functions, each
case in a fresh process) at each ``T`` of ``--long-steps`` (default 100000 1000000; 256 with
``--quick``; none when the flag is given without values): an LSTM training step (``B = 8``,
``D = 32``, ``H = 128``, the gradient of a per-step loss summed over T) on the materialised path
(``xs`` an array, ``unroll(..., remat_chunk="sqrt")``, the loss on the stacked outputs) and on
``unroll_reduce`` with streamed inputs (``x_t`` a function of ``t``, the loss folded in
``reduce_fn``), both ``remat_chunk="sqrt"``: peak resident memory of the whole process and above
its baseline, compile time and step time. ``--long-skip-materialised-above T`` skips the
materialised path above T (it needs ~13 GB at T = 1e6). Targets at T = 1e6: the streamed process
peaks at <= 2 GiB, in <= 1.2x the materialised path's step time.

    python benchmarks/speed.py --out out/speed                 # the default grid, 10 repeats
    python benchmarks/speed.py --long --out out/speed          # plus the T=65536 study
    python benchmarks/speed.py --long-only --long-variants remat_chunk --long-steps 10000 100000 \
        --out out/speed-long                                    # the million-step study, small T
    python benchmarks/speed.py --quick --out out/speed-quick   # a smoke run (tiny sizes)

``--cells`` takes any cell of ``rnnjax.registry`` (default: lstm, gru). The peers implement
LSTM and GRU only (``PEER_CELLS``); every other cell is timed by ``rnnjax`` and ``rnnjax_plain``
alone, built as ``rnnjax.registry.cell(name, H, T)``, with no FLOP floor (the matmul count above
is LSTM's and GRU's).

Writes ``speed.json``, ``speed.md`` (also printed) and ``speed.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import rnnjax  # noqa: E402
from rnnjax import machine as rnnjax_machine  # noqa: E402
from rnnjax import registry  # noqa: E402

CELLS = registry.names()  # what --cells accepts: every registered cell
PEER_CELLS = ("lstm", "gru")  # the cells the peers implement, and the default of --cells
GATES = {"lstm": 4, "gru": 3}
MODES = ("train", "forward")
DEFAULT_SIZES = "32x256x32x256,8x1000x32x128,128x64x32x512"
QUICK_SIZES = "4x8x4x16,2x16x4x8"
CLIP_NORM, LEARNING_RATE = 1.0, 1e-3

# Implementation key -> (family, label per cell). Family "rnnjax" entries are excluded from
# "fastest peer". A missing cell means that implementation has no such cell.
IMPLS: dict[str, tuple[str, dict[str, str]]] = {
    "rnnjax": ("rnnjax", {"lstm": "rnnjax unroll(lstm) (default)",
                          "gru": "rnnjax unroll(gru) (default)"}),
    "rnnjax_plain": ("rnnjax", {"lstm": "rnnjax (plain scan over apply)",
                                "gru": "rnnjax (plain scan over apply)"}),
    "rnnjax_step": ("rnnjax", {"lstm": "rnnjax lstm(projection='step'), backend='xla'",
                               "gru": "rnnjax gru(projection='step'), backend='xla'"}),
    "rnnjax_hoisted": ("rnnjax", {"lstm": "rnnjax lstm(projection='hoisted'), backend='xla'",
                                  "gru": "rnnjax gru(projection='hoisted'), backend='xla'"}),
    "rnnjax_after": ("rnnjax", {"gru": "rnnjax gru(reset='after') (the peers' GRU)"}),
    "rnnjax_xla": ("rnnjax", {"lstm": "rnnjax unroll(lstm, backend='xla')",
                              "gru": "rnnjax unroll(gru, backend='xla')"}),
    "rnnjax_native": ("rnnjax", {"lstm": "rnnjax unroll(lstm, backend='native') (C++ FFI)",
                                 "gru": "rnnjax unroll(gru, backend='native') (C++ FFI)"}),
    "flax": ("peer", {"lstm": "flax nn.RNN(LSTMCell)", "gru": "flax nn.RNN(GRUCell)"}),
    "flax_optimized": ("peer", {"lstm": "flax nn.RNN(OptimizedLSTMCell)"}),
    "equinox": ("peer", {"lstm": "equinox LSTMCell + scan + vmap",
                         "gru": "equinox GRUCell + scan + vmap"}),
    "haiku": ("peer", {"lstm": "haiku LSTM + dynamic_unroll", "gru": "haiku GRU + dynamic_unroll"}),
    "torch": ("peer", {"lstm": "torch nn.LSTM", "gru": "torch nn.GRU"}),
    "hoisted_scan": ("peer", {"lstm": "plain lax.scan, input projection hoisted",
                              "gru": "plain lax.scan, input projection hoisted"}),
    "cudnn": ("peer", {"lstm": "jax.experimental.rnn (cuDNN)"}),
}
for _name in CELLS:  # every registered cell has the default and the plain rnnjax rows
    IMPLS["rnnjax"][1].setdefault(_name, f"rnnjax unroll({_name}) (default)")
    IMPLS["rnnjax_plain"][1].setdefault(_name, "rnnjax (plain scan over apply)")

# ----------------------------------------------------------------------------- helpers


class Size(NamedTuple):
    B: int
    T: int
    D: int
    H: int

    def __str__(self) -> str:
        return f"B={self.B}, T={self.T}, D={self.D}, H={self.H}"


def parse_sizes(text: str) -> list[Size]:
    sizes = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.lower().split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"a size is BxTxDxH with positive ints, got {item!r}")
        sizes.append(Size(*map(int, parts)))
    if not sizes:
        raise argparse.ArgumentTypeError("--sizes is empty")
    return sizes


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what} must be a comma list of {allowed}, got {text!r}")
    return items


def checked_args(ap: argparse.ArgumentParser, args: argparse.Namespace, sizes: str, cells: str,
                 allowed: tuple[str, ...] = ("lstm", "gru")) -> tuple[list[Size], list[str]]:
    """``(sizes, cells)`` parsed from the texts ``sizes`` and ``cells`` of the profiling scripts,
    with ``args.repeats >= 1``; anything else is ``ap.error`` (exit 2, naming the argument)."""
    if args.repeats < 1:
        ap.error(f"--repeats must be positive, got {args.repeats}")
    try:
        return parse_sizes(sizes), parse_list(cells, allowed, "--cells")
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
        raise  # ap.error exits; this keeps the type checker informed


def make_tx() -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(CLIP_NORM), optax.adam(LEARNING_RATE))


def forward_flops(cell: str, s: Size) -> float | None:
    """Matmul FLOPs of one forward pass: ``2 B T (D + H) G H`` (LSTM, GRU); None for other cells."""
    if cell not in GATES:
        return None
    return 2.0 * s.B * s.T * (s.D + s.H) * GATES[cell] * s.H


def step_flops(cell: str, s: Size, mode: str) -> float | None:
    flops = forward_flops(cell, s)
    return None if flops is None else flops * (3.0 if mode == "train" else 1.0)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(dist: str) -> str | None:
    """An installed distribution's version, without importing it."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def on_gpu() -> bool:
    return jax.default_backend() in ("gpu", "cuda", "rocm")


def timed(run: Callable[[], Any], sync: Callable[[Any], Any], repeats: int,
          warmup: int = 2) -> dict:
    """Compile + warm up (``warmup`` calls), then ``repeats`` timed calls; times in ms."""
    compile_s = None
    for i in range(warmup):
        t0 = time.perf_counter()
        sync(run())
        if i == 0:
            compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sync(run())
        times.append(1e3 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(times) if times else None, "times_ms": times,
            "compile_s": compile_s}


def measure_gemm(n: int, repeats: int) -> dict:
    """GFLOP/s of a jitted ``n x n`` float32 matmul (default precision, like the RNN matmuls)."""
    a = jax.random.normal(jax.random.key(10), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(11), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    r = timed(lambda: f(a, b), jax.block_until_ready, max(repeats, 5))
    gflops = 2.0 * n ** 3 / (r["median_ms"] * 1e-3) / 1e9
    return {"n": n, "median_ms": r["median_ms"], "gflops": gflops}


# ----------------------------------------------------------------------------- JAX runners


class Runner(NamedTuple):
    """Zero-argument closures for each mode, and how to wait for their results."""

    train: Callable[[], Any]
    forward: Callable[[], Any]
    sync: Callable[[Any], Any]


def jax_runner(apply: Callable[[Any, Any], Any], params: Any, xs: Any) -> Runner:
    """``apply(params, xs) -> hs``; the train step minimises ``mean(hs ** 2)``."""
    tx = make_tx()

    def loss(p, x):
        return jnp.mean(jnp.square(apply(p, x)))

    @jax.jit
    def step(p, s, x):
        value, grads = jax.value_and_grad(loss)(p, x)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    forward = jax.jit(apply)
    state = [params, tx.init(params)]

    def train():
        p, s, value = step(state[0], state[1], xs)
        state[0], state[1] = p, s
        return p, s, value

    return Runner(train, lambda: forward(params, xs), jax.block_until_ready)


def path_note(impl: str, cell: str, s: Size) -> str:
    """For the default rnnjax row, the path ``backend="auto"`` takes: the native kernel, or the
    XLA path with the arrangement ``projection="auto"`` picks at this size."""
    if impl not in ("rnnjax", "rnnjax_after") or cell not in PEER_CELLS:
        return ""
    from rnnjax.cells.fused import native_unavailable, resolve_projection

    if not native_unavailable(jnp.float32):
        return " [native]"
    return f" [xla, {resolve_projection('auto', s.D, s.H)}]"


def build_rnnjax(cell_name: str, s: Size, key, plain: bool, projection: str = "auto",
                 backend: str = "auto", **kwargs) -> Runner:
    if cell_name in PEER_CELLS:
        cell = {"lstm": rnnjax.lstm, "gru": rnnjax.gru}[cell_name](s.H, projection=projection, **kwargs)
    else:  # only the default and plain rows exist for the other registered cells
        cell = registry.cell(cell_name, s.H, s.T)
    if plain:  # a Cell rebuilt from its three functions has no fast path: lax.scan over apply
        cell = rnnjax.Cell(cell.init, cell.initial_carry, cell.apply)
    params = cell.init(key, s.D)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (s.T, s.B, s.D), jnp.float32)
    return jax_runner(lambda p, x: rnnjax.unroll(cell, p, x, backend=backend)[1], params, xs)


def build_flax(cell_name: str, s: Size, key, optimized: bool = False) -> Runner:
    import flax.linen as nn

    if cell_name == "lstm":
        cell = nn.OptimizedLSTMCell(s.H) if optimized else nn.LSTMCell(s.H)
    else:
        cell = nn.GRUCell(s.H)
    model = nn.RNN(cell)  # batch-major [B, T, D]
    xs = jax.random.normal(jax.random.fold_in(key, 1), (s.B, s.T, s.D), jnp.float32)
    params = model.init(key, xs)
    return jax_runner(model.apply, params, xs)


def build_equinox(cell_name: str, s: Size, key) -> Runner:
    import equinox as eqx

    if cell_name == "lstm":
        module = eqx.nn.LSTMCell(s.D, s.H, key=key)
    else:
        module = eqx.nn.GRUCell(s.D, s.H, key=key)
    params, static = eqx.partition(module, eqx.is_array)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (s.T, s.B, s.D), jnp.float32)

    def apply(p, x):
        cell = jax.vmap(eqx.combine(p, static))  # over the batch
        h0 = jnp.zeros((x.shape[1], s.H), x.dtype)
        if cell_name == "lstm":
            def step(carry, xt):
                h, c = cell(xt, carry)
                return (h, c), h
            carry = (h0, h0)
        else:
            def step(carry, xt):
                h = cell(xt, carry)
                return h, h
            carry = h0
        return jax.lax.scan(step, carry, x)[1]

    return jax_runner(apply, params, xs)


def build_haiku(cell_name: str, s: Size, key) -> Runner:
    import haiku as hk

    def f(x):
        core = hk.LSTM(s.H) if cell_name == "lstm" else hk.GRU(s.H)
        hs, _ = hk.dynamic_unroll(core, x, core.initial_state(x.shape[1]), time_major=True)
        return hs

    model = hk.without_apply_rng(hk.transform(f))
    xs = jax.random.normal(jax.random.fold_in(key, 1), (s.T, s.B, s.D), jnp.float32)
    params = model.init(key, xs)
    return jax_runner(model.apply, params, xs)


def build_hoisted(cell_name: str, s: Size, key) -> Runner:
    """Hand-written: ``gx = xs @ W_x + b`` for all steps at once, then a scan over ``h @ W_h``."""
    G = GATES[cell_name]
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "w_x": jax.random.normal(k1, (s.D, G * s.H), jnp.float32) / math.sqrt(s.D),
        "w_h": jax.random.normal(k2, (s.H, G * s.H), jnp.float32) / math.sqrt(s.H),
        "b": jnp.zeros((G * s.H,), jnp.float32),
    }
    if cell_name == "gru":
        params["b_hn"] = jnp.zeros((s.H,), jnp.float32)
    xs = jax.random.normal(k3, (s.T, s.B, s.D), jnp.float32)

    def apply(p, x):
        T, B, D = x.shape
        gx = (x.reshape(T * B, D) @ p["w_x"] + p["b"][None, :]).reshape(T, B, G * s.H)
        h0 = jnp.zeros((B, s.H), x.dtype)
        if cell_name == "lstm":
            def step(carry, g):
                h, c = carry
                i, f, gg, o = jnp.split(g + h @ p["w_h"], 4, axis=-1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
                return (h, c), h
            carry = (h0, h0)
        else:  # reset after the recurrent matmul (cuDNN / PyTorch form)
            def step(h, g):
                xr, xz, xn = jnp.split(g, 3, axis=-1)
                hr, hz, hn = jnp.split(h @ p["w_h"], 3, axis=-1)
                r = jax.nn.sigmoid(xr + hr)
                z = jax.nn.sigmoid(xz + hz)
                n = jnp.tanh(xn + r * (hn + p["b_hn"][None, :]))
                h = n + z * (h - n)
                return h, h
            carry = h0
        return jax.lax.scan(step, carry, gx)[1]

    return jax_runner(apply, params, xs)


def build_cudnn(cell_name: str, s: Size, key) -> Runner:
    from jax.experimental import rnn as jrnn

    weights = jrnn.init_lstm_weight(key, s.D, s.H, 1, False)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (s.B, s.T, s.D), jnp.float32)
    h0 = jnp.zeros((1, s.B, s.H), jnp.float32)
    lengths = jnp.full((s.B,), s.T, jnp.int32)

    def apply(w, x):
        ys, _, _ = jrnn.lstm(x, h0, h0, w, lengths, input_size=s.D, hidden_size=s.H,
                             num_layers=1, dropout=0.0, bidirectional=False)
        return ys

    return jax_runner(apply, weights, xs)


# ----------------------------------------------------------------------------- torch


def torch_device() -> str | None:
    """``cpu`` when JAX runs on CPU, ``cuda`` when JAX runs on a GPU and torch has CUDA."""
    import torch

    if on_gpu():
        return "cuda" if torch.cuda.is_available() else None
    return "cpu"


def build_torch(cell_name: str, s: Size, key) -> Runner:
    import torch

    dev = torch_device()
    torch.manual_seed(int(jax.random.randint(key, (), 0, 2 ** 30)))
    cls = torch.nn.LSTM if cell_name == "lstm" else torch.nn.GRU
    model = cls(s.D, s.H).to(dev)  # time-major [T, B, D]
    xs = torch.randn(s.T, s.B, s.D, device=dev)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def train():
        hs, _ = model(xs)
        loss = hs.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        opt.step()
        return loss

    def forward():
        with torch.inference_mode():
            return model(xs)[0]

    sync = (lambda _: torch.cuda.synchronize()) if dev == "cuda" else (lambda _: None)
    return Runner(train, forward, sync)


BUILDERS: dict[str, Callable[[str, Size, Any], Runner]] = {
    "rnnjax": lambda c, s, k: build_rnnjax(c, s, k, plain=False),
    "rnnjax_plain": lambda c, s, k: build_rnnjax(c, s, k, plain=True),
    # the projection is an arrangement of the XLA path (the native kernel has its own)
    "rnnjax_step": lambda c, s, k: build_rnnjax(c, s, k, plain=False, projection="step", backend="xla"),
    "rnnjax_hoisted": lambda c, s, k: build_rnnjax(c, s, k, plain=False, projection="hoisted",
                                                   backend="xla"),
    "rnnjax_after": lambda c, s, k: build_rnnjax(c, s, k, plain=False, reset="after"),
    "rnnjax_xla": lambda c, s, k: build_rnnjax(c, s, k, plain=False, backend="xla"),
    "rnnjax_native": lambda c, s, k: build_rnnjax(c, s, k, plain=False, backend="native"),
    "flax": lambda c, s, k: build_flax(c, s, k),
    "flax_optimized": lambda c, s, k: build_flax(c, s, k, optimized=True),
    "equinox": build_equinox,
    "haiku": build_haiku,
    "torch": build_torch,
    "hoisted_scan": build_hoisted,
    "cudnn": build_cudnn,
}


def available_impls(wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    """The implementations that can run here, and why the others are skipped."""
    found, skipped = [], {}
    modules = {"flax": "flax.linen", "flax_optimized": "flax.linen", "equinox": "equinox",
               "haiku": "haiku", "torch": "torch"}
    for name in wanted:
        mod = modules.get(name)
        if mod is not None:
            try:
                importlib.import_module(mod)
            except Exception as e:  # noqa: BLE001 - not installed or broken: skip the peer
                skipped[name] = f"cannot import {mod}: {type(e).__name__}: {e}"
                continue
        if name == "rnnjax_native":
            from rnnjax.cells.fused import native_unavailable

            why = native_unavailable(jnp.float32)
            if why:
                skipped[name] = why
                continue
        if name == "torch" and torch_device() is None:
            skipped[name] = "JAX runs on a GPU but torch has no CUDA (a CPU torch is no peer there)"
            continue
        if name == "cudnn":
            if not on_gpu():
                skipped[name] = f"jax.experimental.rnn (cuDNN) needs a GPU; backend is {jax.default_backend()}"
                continue
            try:
                importlib.import_module("jax.experimental.rnn")
            except Exception as e:  # noqa: BLE001
                skipped[name] = f"cannot import jax.experimental.rnn: {e}"
                continue
        found.append(name)
    return found, skipped


# ----------------------------------------------------------------------------- the grid


def run_grid(sizes: list[Size], cells: list[str], impls: list[str], modes: list[str],
             repeats: int, gemm_gflops: float) -> list[dict]:
    """Time every implementation of each (size, cell) in interleaved rounds.

    All runners of a (size, cell) are built and warmed up first; then each of ``repeats`` rounds
    calls every (implementation, mode) once, so a slow phase of a shared machine (another
    tenant, frequency scaling) falls on all of them alike instead of on whichever ran then.
    """
    rows = []
    for si, s in enumerate(sizes):
        print(f"\n== {s}", flush=True)
        for cell in cells:
            group = []  # (row, runner) for each implementation and mode
            for impl in impls:
                family, labels = IMPLS[impl]
                if cell not in labels:
                    continue
                key = jax.random.key(1000 * si + 7)
                try:
                    runner = BUILDERS[impl](cell, s, key)
                except Exception as e:  # noqa: BLE001 - record and go on
                    runner, build_error = None, f"{type(e).__name__}: {e}"
                    traceback.print_exc()
                for mode in modes:
                    row = {"size": s._asdict(), "cell": cell, "impl": impl,
                           "label": labels[cell] + path_note(impl, cell, s),
                           "family": family, "mode": mode, "flops": step_flops(cell, s, mode)}
                    row["floor_ms"] = (None if row["flops"] is None
                                       else 1e3 * row["flops"] / (gemm_gflops * 1e9))
                    if runner is None:
                        row["error"] = build_error
                    else:
                        try:  # compile and warm up
                            row.update(timed(getattr(runner, mode), runner.sync, 0))
                            row["times_ms"] = []
                        except Exception as e:  # noqa: BLE001
                            row["error"] = f"{type(e).__name__}: {e}"
                            traceback.print_exc()
                    group.append((row, runner))
            for _ in range(repeats):
                for row, runner in group:
                    if "error" not in row:
                        t0 = time.perf_counter()
                        runner.sync(getattr(runner, row["mode"])())
                        row["times_ms"].append(1e3 * (time.perf_counter() - t0))
            for row, _ in group:
                if "error" not in row:
                    row["median_ms"] = statistics.median(row["times_ms"])
                    row["x_floor"] = (None if row["floor_ms"] is None
                                      else row["median_ms"] / row["floor_ms"])
                rows.append(row)
                msg = (f"{row['median_ms']:10.3f} ms (compile {row['compile_s']:.2f} s)"
                       if "median_ms" in row else f"ERROR {row['error']}")
                print(f"  {cell:4s} {row['mode']:7s} {row['label']:52s} {msg}", flush=True)
            del group
    return add_ratios(rows)


def add_ratios(rows: list[dict]) -> list[dict]:
    """``x_fastest_peer`` (any peer) and ``x_fastest_jax_peer`` (flax, equinox, haiku, ...: the
    peers that are not torch) of every row, within its size, cell and mode."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((tuple(r["size"].values()), r["cell"], r["mode"]), []).append(r)
    for group in groups.values():
        for key, keep in (("", lambda r: True), ("_jax", lambda r: r["impl"] != "torch")):
            peers = [r for r in group if r["family"] == "peer" and "median_ms" in r and keep(r)]
            best = min(peers, key=lambda r: r["median_ms"]) if peers else None
            for r in group:
                r[f"fastest{key}_peer"] = best["impl"] if best else None
                r[f"x_fastest{key}_peer"] = (r["median_ms"] / best["median_ms"]
                                             if best and "median_ms" in r else None)
    return rows


# ----------------------------------------------------------------------------- long sequences

# Variant -> (use the plain cell rebuilt from its three functions, unroll keywords given the
# chunk). To adapt to the keyword rnnjax.unroll really has, edit the dicts here.
LONG_VARIANTS: dict[str, tuple[bool, Callable[[int], dict]]] = {
    "default": (False, lambda chunk: {}),                        # rnnjax.unroll(cell, params, xs)
    "remat_chunk": (False, lambda chunk: {"remat_chunk": chunk}),  # chunked rematerialisation
    "plain": (True, lambda chunk: {}),                           # lax.scan over apply, no remat
    "remat_step": (False, lambda chunk: {"remat": True}),        # jax.checkpoint on every step
}
LONG_REFERENCE = ("plain", "default")  # the target is measured against the first one present


def _proc_status() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process in bytes (empty where /proc is absent)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _reset_hwm() -> bool:
    """Reset this process's peak-RSS mark (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _device_memory() -> dict | None:
    try:
        return jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - CPU devices have none
        return None


def long_worker(spec: dict) -> dict:
    """One long-sequence variant, in this (fresh) process."""
    plain, kwargs_of = LONG_VARIANTS[spec["variant"]]
    kwargs = kwargs_of(spec["chunk"])
    accepted = inspect.signature(rnnjax.unroll).parameters
    missing = [k for k in kwargs if k not in accepted]
    if missing:
        return {"skipped": f"rnnjax.unroll has no keyword {missing} (adapt LONG_VARIANTS)",
                "kwargs": kwargs}
    B, T, D, H = spec["B"], spec["T"], spec["D"], spec["H"]
    cell = rnnjax.lstm(H)
    if plain:
        cell = rnnjax.Cell(cell.init, cell.initial_carry, cell.apply)
    key = jax.random.key(0)
    params = cell.init(key, D)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (T, B, D), jnp.float32)
    tx = make_tx()
    opt_state = tx.init(params)
    jax.block_until_ready((params, xs, opt_state))

    def loss(p, x):
        carry, _ = rnnjax.unroll(cell, p, x, **kwargs)
        return jnp.mean(jnp.square(carry.h))  # final hidden state only: ys is dead code

    def step(p, s, x):
        value, grads = jax.value_and_grad(loss)(p, x)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    host0, dev0 = _proc_status(), _device_memory()
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(params, opt_state, xs).compile()
    compile_s = time.perf_counter() - t0
    host_compiled = _proc_status()
    reset = _reset_hwm()
    host1 = _proc_status()
    state = [params, opt_state, None]

    def run():
        p, s, value = compiled(state[0], state[1], xs)
        state[:] = [p, s, value]
        return p, s, value

    r = timed(run, jax.block_until_ready, spec["repeats"])
    host2, dev2 = _proc_status(), _device_memory()
    out = {"kwargs": kwargs, "compile_only_s": compile_s, **r, "last_loss": float(state[2])}
    if host2:
        base = host1["VmRSS"] if reset else host0["VmRSS"]
        out["host_peak_above_baseline_bytes"] = host2["VmHWM"] - base
        out["host_baseline"] = ("VmRSS after imports, data and compilation (VmHWM reset)" if reset
                                else "VmRSS after imports and data (VmHWM not resettable: "
                                     "includes compilation)")
        out["host_compile_peak_above_data_bytes"] = host_compiled["VmHWM"] - host0["VmRSS"]
    else:  # no /proc: the process's lifetime peak (includes imports and compilation)
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        out["host_lifetime_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    if dev0 and dev2 and "peak_bytes_in_use" in dev2:
        out["device_peak_above_baseline_bytes"] = dev2["peak_bytes_in_use"] - dev0.get("bytes_in_use", 0)
    return out


def run_long_stream(steps: list[int], skip_materialised_above: int | None, timeout: float,
                    backend: str = "auto") -> dict:
    """The streamed-against-materialised study of ``benchmarks/long_memory.py`` at each ``T``."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import long_memory

    print(f"\n== long, streamed inputs: LSTM train step, B={long_memory.B}, D={long_memory.D}, "
          f"H={long_memory.H}, T in {steps}, remat_chunk='sqrt'", flush=True)
    rows = long_memory.study(steps, skip_materialised_above, timeout, backend)
    return {"config": {"B": long_memory.B, "D": long_memory.D, "H": long_memory.H, "steps": steps,
                       "remat_chunk": "sqrt", "skip_materialised_above": skip_materialised_above,
                       "backend": backend,
                       "loss": "sum_t ||y_t - target_t||^2 / T, per step"},
            "rows": rows, "targets": long_memory.targets(rows), "table": long_memory.table(rows)}


def run_long(T: int, B: int, D: int, H: int, chunk: int, variants: list[str], repeats: int,
             timeout: float) -> dict:
    print(f"\n== long: LSTM train step, B={B}, T={T}, D={D}, H={H}, chunk={chunk}", flush=True)
    results = {}
    for v in variants:
        spec = {"variant": v, "T": T, "B": B, "D": D, "H": H, "chunk": chunk, "repeats": repeats}
        cmd = [sys.executable, os.path.abspath(__file__), "--_long-worker", json.dumps(spec)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            results[v] = {"error": f"timed out after {timeout:.0f} s"}
            print(f"  {v:12s} timed out", flush=True)
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("LONG_RESULT ")]
        if proc.returncode != 0 or not lines:
            results[v] = {"error": f"worker exit code {proc.returncode} (-9: likely out of memory)",
                          "stderr_tail": proc.stderr[-2000:]}
            print(f"  {v:12s} failed: exit {proc.returncode}\n{proc.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(lines[-1][len("LONG_RESULT "):])
        results[v] = r
        if "skipped" in r:
            print(f"  {v:12s} skipped: {r['skipped']}", flush=True)
        else:
            mem = r.get("device_peak_above_baseline_bytes", r.get("host_peak_above_baseline_bytes"))
            mem_s = f"{mem / 2**20:10.1f} MiB" if mem is not None else "n/a"
            print(f"  {v:12s} {r['median_ms']:10.1f} ms  peak memory above baseline {mem_s}",
                  flush=True)
    ref_name = next((n for n in LONG_REFERENCE if "median_ms" in results.get(n, {})), None)
    target = {"reference": ref_name, "max_memory_fraction": 0.10, "max_time_ratio": 1.5}
    chunked = results.get("remat_chunk", {})
    if ref_name and "median_ms" in chunked:
        ref = results[ref_name]
        mkey = ("device_peak_above_baseline_bytes" if "device_peak_above_baseline_bytes" in ref
                else "host_peak_above_baseline_bytes")
        if mkey in ref and mkey in chunked and ref[mkey] > 0:
            target["memory_fraction"] = chunked[mkey] / ref[mkey]
        target["time_ratio"] = chunked["median_ms"] / ref["median_ms"]
        if "memory_fraction" in target:
            target["met"] = bool(target["memory_fraction"] <= 0.10 and target["time_ratio"] <= 1.5)
        print(f"  target (remat_chunk vs {ref_name}): memory x{target.get('memory_fraction', float('nan')):.3f}"
              f" (<= 0.10), time x{target['time_ratio']:.2f} (<= 1.5): "
              f"{'met' if target.get('met') else 'NOT met'}", flush=True)
    return {"config": {"B": B, "T": T, "D": D, "H": H, "chunk": chunk, "repeats": repeats,
                       "loss": "mean(h_T ** 2), final hidden state"},
            "variants": results, "target": target}


# ----------------------------------------------------------------------------- outputs


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(info: dict, rows: list[dict], sizes: list[Size], cells: list[str],
             long: dict | None) -> str:
    lines = ["# Speed: rnnjax against other RNN implementations", "",
             f"Backend `{info['backend']}` ({', '.join(info['devices'])}); CPU {info['cpu_model']} "
             f"x{info['cpu_count']} ({info.get('cpu_isa') or 'instruction sets unknown'}); jax {info['versions']['jax']}, flax {info['versions']['flax']}, "
             f"torch {info['versions']['torch']}; GEMM {info['gemm']['gflops']:.1f} GFLOP/s "
             f"(float32 {info['gemm']['n']}x{info['gemm']['n']}). Median of {info['repeats']} "
             f"interleaved rounds after 2 warm-up calls. Train: forward + backward + clip + Adam, loss "
             f"mean(hs^2). x JAX peer: time / fastest of flax, equinox, haiku and the hand-written "
             f"scan (same size, cell, mode); x peer: the same with torch included. x floor: time / "
             f"(matmul FLOPs at the GEMM rate).", ""]
    lone = [c for c in cells if c not in PEER_CELLS]
    if lone:
        lines += [f"The peers implement {' and '.join(PEER_CELLS)} only: {', '.join(lone)} "
                  f"{'is' if len(lone) == 1 else 'are'} timed by rnnjax alone (no FLOP floor).", ""]
    by = {(tuple(r["size"].values()), r["cell"], r["impl"], r["mode"]): r for r in rows}
    for s in sizes:
        lines += [f"## {s}", "",
                  "| cell | implementation | train ms | forward ms | train x JAX peer | "
                  "forward x JAX peer | train x peer | forward x peer | train x floor | "
                  "forward x floor |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for cell in cells:
            for impl, (_, labels) in IMPLS.items():
                tr, fw = by.get((tuple(s), cell, impl, "train")), by.get((tuple(s), cell, impl, "forward"))
                if tr is None and fw is None:
                    continue
                label = (tr or fw).get("label", labels[cell])  # with the arrangement auto chose
                cols = []
                for r in (tr, fw):
                    cols.append("–" if r is None else
                                ("error" if "error" in r else _fmt(r["median_ms"], ".2f")))
                for r in (tr, fw):
                    cols.append(_fmt(None if r is None else r.get("x_fastest_jax_peer")))
                for r in (tr, fw):
                    cols.append(_fmt(None if r is None else r.get("x_fastest_peer")))
                for r in (tr, fw):
                    cols.append(_fmt(None if r is None else r.get("x_floor"), ".1f"))
                name = f"**{label}**" if impl.startswith("rnnjax") else label
                lines.append(f"| {cell} | {name} | " + " | ".join(cols) + " |")
        lines.append("")
    if long is not None:
        c = long["config"]
        lines += [f"## Long sequences: LSTM train step, B={c['B']}, T={c['T']}, D={c['D']}, "
                  f"H={c['H']}, chunk={c['chunk']}", "",
                  "| variant | unroll keywords | train ms | peak memory above baseline (MiB) |",
                  "|---|---|---:|---:|"]
        for v, r in long["variants"].items():
            if "median_ms" not in r:
                lines.append(f"| {v} | {r.get('kwargs', '')} | {r.get('skipped') or r.get('error')} | – |")
                continue
            mem = r.get("device_peak_above_baseline_bytes", r.get("host_peak_above_baseline_bytes"))
            lines.append(f"| {v} | `{r['kwargs']}` | {r['median_ms']:.1f} | "
                         f"{_fmt(None if mem is None else mem / 2**20, '.1f')} |")
        t = long["target"]
        if "time_ratio" in t:
            lines += ["", f"Target (remat_chunk against {t['reference']}): memory "
                          f"x{_fmt(t.get('memory_fraction'), '.3f')} (at most 0.10), time "
                          f"x{t['time_ratio']:.2f} (at most 1.5): "
                          f"{'met' if t.get('met') else 'not met'}."]
        lines.append("")
        if long.get("stream") and long["stream"]["rows"]:
            c = long["stream"]["config"]
            lines += [f"## Long sequences, streamed inputs: LSTM train step, B={c['B']}, D={c['D']}, "
                      f"H={c['H']}, per-step loss, remat_chunk=\"sqrt\", backend="
                      f"{c.get('backend', 'auto')!r}", "",
                      *long["stream"]["table"], ""]
    return "\n".join(lines)


def plot(path: str, rows: list[dict], sizes: list[Size], cells: list[str], backend: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG written")
        return False
    fig, axes = plt.subplots(len(sizes), len(cells), squeeze=False,
                             figsize=(6.5 * len(cells), 0.5 + 2.6 * len(sizes)))
    for i, s in enumerate(sizes):
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            sel = [r for r in rows if tuple(r["size"].values()) == tuple(s) and r["cell"] == cell]
            impls = [k for k in IMPLS if any(r["impl"] == k for r in sel)]
            y = np.arange(len(impls))
            for off, mode, color in ((-0.2, "train", "tab:blue"), (0.2, "forward", "tab:orange")):
                vals = [next((r.get("median_ms", np.nan) for r in sel
                              if r["impl"] == k and r["mode"] == mode), np.nan) for k in impls]
                ax.barh(y + off, vals, height=0.4, color=color, label=mode)
            ax.set_yticks(y, [IMPLS[k][1][cell] for k in impls], fontsize=7)
            for tick, k in zip(ax.get_yticklabels(), impls):
                if k.startswith("rnnjax"):
                    tick.set_fontweight("bold")
            ax.invert_yaxis()
            if any(r.get("median_ms", 0) > 0 for r in sel):  # (a cell whose every row failed: none)
                ax.set_xscale("log")
            ax.set_xlabel("median ms (log)")
            ax.set_title(f"{cell}, {s} ({backend})", fontsize=9)
            ax.grid(True, axis="x", which="both", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- main


def machine(gemm: dict, repeats: int) -> dict:
    return {
        "cpu_model": cpu_model(),
        "cpu_isa": rnnjax_machine()["cpu_isa"],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": [getattr(d, "device_kind", str(d)) for d in jax.devices()],
        "versions": {m: version(d) for m, d in (("jax", "jax"), ("jaxlib", "jaxlib"),
                                                 ("flax", "flax"), ("optax", "optax"),
                                                 ("equinox", "equinox"), ("haiku", "dm-haiku"),
                                                 ("torch", "torch"), ("rnnjax", "rnnjax"))},
        "torch_threads": _torch_threads(),
        "gemm": gemm,
        "repeats": repeats,
    }


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")  # only if a torch peer was imported
    return None if torch is None else torch.get_num_threads()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default="out/speed", help="output folder")
    ap.add_argument("--sizes", default=None,
                    help=f"comma list of BxTxDxH; None: {DEFAULT_SIZES} ({QUICK_SIZES} with --quick)")
    ap.add_argument("--cells", default=",".join(PEER_CELLS),
                    help=f"comma list of rnnjax.registry cells ({', '.join(CELLS)}); the peers "
                         f"implement {' and '.join(PEER_CELLS)} only: the other cells are timed by "
                         f"rnnjax and rnnjax_plain alone")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of train, forward")
    ap.add_argument("--impls", default=",".join(IMPLS),
                    help="comma list of implementations to try (those not installed are skipped)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed rounds after 2 warm-up calls (each round calls every implementation "
                         "and mode of a size and cell once); None: 10 (2 with --quick)")
    ap.add_argument("--gemm-n", type=int, default=None,
                    help="size of the square GEMM-rate matmul; None: 2048 (256 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: sizes {QUICK_SIZES}, 2 repeats, 256 GEMM, long T=64 B=2 "
                         f"D=4 H=16 with 2 repeats (explicit flags still win)")
    ap.add_argument("--long", action="store_true", help="add the long-sequence (remat) study")
    ap.add_argument("--long-only", action="store_true", help="run only the long-sequence study")
    ap.add_argument("--long-T", type=int, default=None, help="None: 65536 (64 with --quick)")
    ap.add_argument("--long-B", type=int, default=None, help="None: 8 (2 with --quick)")
    ap.add_argument("--long-D", type=int, default=None, help="None: 32 (4 with --quick)")
    ap.add_argument("--long-H", type=int, default=None, help="None: 256 (16 with --quick)")
    ap.add_argument("--long-chunk", type=int, default=None, help="remat chunk; None: round(sqrt(T))")
    ap.add_argument("--long-variants", default="default,plain,remat_chunk",
                    help=f"comma list of {', '.join(LONG_VARIANTS)}")
    ap.add_argument("--long-repeats", type=int, default=None, help="None: 3 (2 with --quick)")
    ap.add_argument("--long-timeout", type=float, default=3600.0, help="seconds per variant")
    ap.add_argument("--long-steps", type=int, nargs="*", default=None,
                    help="T of the streamed-inputs study (benchmarks/long_memory.py); None: 100000 "
                         "1000000 (256 with --quick); the flag without values: none")
    ap.add_argument("--long-skip-materialised-above", type=int, default=None,
                    help="streamed-inputs study: no materialised path above this T")
    ap.add_argument("--long-backend", choices=("auto", "xla", "native"), default="auto",
                    help="streamed-inputs study: unroll's backend= for the fused LSTM")
    ap.add_argument("--rerender", action="store_true",
                    help="measure nothing: rewrite speed.md and speed.png from --out/speed.json")
    ap.add_argument("--_long-worker", dest="long_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.rerender:
        path = os.path.join(args.out, "speed.json")
        if not os.path.exists(path):
            ap.error(f"--rerender: no {path}")
        with open(path) as f:
            result = json.load(f)
        rows = add_ratios(result["results"])
        sizes = [Size(**d) for d in result["config"]["sizes"]]
        cells = result["config"]["cells"]
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(args.out, "speed.md"), "w") as f:
            f.write(markdown(result["machine"], rows, sizes, cells, result.get("long")))
        if rows:
            plot(os.path.join(args.out, "speed.png"), rows, sizes, cells, result["machine"]["backend"])
        print(f"rewrote {args.out}/speed.md from {path}")
        return result

    if args.long_worker is not None:  # a subprocess of run_long
        print("LONG_RESULT " + json.dumps(long_worker(json.loads(args.long_worker))), flush=True)
        return {}

    try:
        defaults = {"sizes": (DEFAULT_SIZES, QUICK_SIZES), "repeats": (10, 2), "gemm_n": (2048, 256),
                    "long_T": (65536, 64), "long_B": (8, 2), "long_D": (32, 4),
                    "long_H": (256, 16), "long_repeats": (3, 2),
                    "long_steps": ([100_000, 1_000_000], [256])}
        for name, (full, quick) in defaults.items():
            if getattr(args, name) is None:
                setattr(args, name, quick if args.quick else full)
        sizes = parse_sizes(args.sizes)
        cells = parse_list(args.cells, CELLS, "--cells")
        modes = parse_list(args.modes, MODES, "--modes")
        wanted = parse_list(args.impls, tuple(IMPLS), "--impls")
        long_variants = parse_list(args.long_variants, tuple(LONG_VARIANTS), "--long-variants")
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    for name in ("repeats", "gemm_n", "long_T", "long_B", "long_D", "long_H", "long_repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be a positive int")
    chunk = args.long_chunk or max(1, round(math.sqrt(args.long_T)))

    impls, skipped = available_impls(wanted)
    if "torch" in impls:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    print("flags:", vars(args))
    print("implementations found:", ", ".join(impls) or "none")
    lone = [c for c in cells if c not in PEER_CELLS]
    if lone and not args.long_only:
        print(f"cells without peer implementations (timed by rnnjax and rnnjax_plain only, no FLOP "
              f"floor): {', '.join(lone)}")
    for name, why in skipped.items():
        print(f"implementation skipped: {name}: {why}")
    gemm = measure_gemm(args.gemm_n, args.repeats)
    info = machine(gemm, args.repeats)
    info["impls_found"], info["impls_skipped"] = impls, skipped
    print("machine:", json.dumps(info))

    rows = [] if args.long_only else run_grid(sizes, cells, impls, modes, args.repeats,
                                              gemm["gflops"])
    long = None
    if args.long or args.long_only:
        long = run_long(args.long_T, args.long_B, args.long_D, args.long_H, chunk, long_variants,
                        args.long_repeats, args.long_timeout)
        if any(T < 1 for T in args.long_steps):
            ap.error(f"--long-steps must be positive ints, got {args.long_steps}")
        long["stream"] = run_long_stream(args.long_steps, args.long_skip_materialised_above,
                                         args.long_timeout, args.long_backend)
    if args.long_only:
        sizes = []

    os.makedirs(args.out, exist_ok=True)
    result = {"machine": info, "config": {"sizes": [s._asdict() for s in sizes], "cells": cells,
                                          "modes": modes, "repeats": args.repeats,
                                          "optimizer": f"clip_by_global_norm({CLIP_NORM}) -> "
                                                       f"adam({LEARNING_RATE})",
                                          "loss": "mean(hs ** 2) over all steps"},
              "results": rows, "long": long}
    with open(os.path.join(args.out, "speed.json"), "w") as f:
        json.dump(result, f, indent=2)
    md = markdown(info, rows, sizes, cells, long)
    with open(os.path.join(args.out, "speed.md"), "w") as f:
        f.write(md)
    print()
    print(md)
    written = ["speed.json", "speed.md"]
    if rows and plot(os.path.join(args.out, "speed.png"), rows, sizes, cells, info["backend"]):
        written.append("speed.png")
    print(f"wrote {', '.join(os.path.join(args.out, w) for w in written)}")
    return result


if __name__ == "__main__":
    main()
