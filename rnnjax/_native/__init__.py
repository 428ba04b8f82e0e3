"""Native CPU kernels: the fused LSTM / GRU sequence in C++, called from JAX through the XLA FFI.

The extension ``rnnjax/_native/_kernels*.so`` is built by ``pip install`` (``setup.py``; optional,
so a failed compile never fails the install). This module loads it once, registers its FFI targets
for the CPU and sets OpenBLAS's thread count to the machine's cores (``RNNJAX_NATIVE_THREADS``
overrides it). `available` says whether the kernels can be used and `reason` why not.
"""

from __future__ import annotations

import ctypes
import os
import threading

_lock = threading.Lock()
_state: dict = {}

TARGETS = ("rnnjax_lstm_fwd", "rnnjax_lstm_bwd", "rnnjax_gru_fwd", "rnnjax_gru_bwd")


def _preload_blas() -> None:
    """Load scipy-openblas32's library by path, so the extension finds it in an editable install
    (the rpath covers a regular one, where both sit in the same site-packages)."""
    import scipy_openblas32

    lib = os.path.join(scipy_openblas32.get_lib_dir(), f"lib{scipy_openblas32.get_library()}.so")
    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)


def _threads() -> int:
    """OpenBLAS threads for the large per-step GEMMs: ``RNNJAX_NATIVE_THREADS`` if set, else the
    cores this process may run on. (Per-step GEMMs under 2^22 multiply-adds always run on one
    thread: splitting them costs more in synchronisation than it gains.)"""
    env = os.environ.get("RNNJAX_NATIVE_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"RNNJAX_NATIVE_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"RNNJAX_NATIVE_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load() -> dict:
    with _lock:
        if _state:
            return _state
        try:
            _preload_blas()
        except Exception as e:  # any failure means "not available", with the reason
            _state.update(ok=False, reason=f"scipy-openblas32 could not be loaded ({type(e).__name__}: {e}); "
                                           f"pip install scipy-openblas32")
            return _state
        try:
            from rnnjax._native import _kernels  # type: ignore[attr-defined]
        except ImportError as e:
            _state.update(ok=False, reason=f"the native extension rnnjax._native._kernels is not built "
                                           f"({e}); reinstall with `pip install -e .` and a C++17 "
                                           f"compiler")
            return _state
        try:
            import jax

            for name, capsule in _kernels.registrations().items():
                jax.ffi.register_ffi_target(name, capsule, platform="cpu")
            threads = _kernels.set_num_threads(_threads())
        except Exception as e:
            _state.update(ok=False, reason=f"registering the FFI targets failed ({type(e).__name__}: {e})")
            return _state
        _state.update(ok=True, reason="", threads=threads, module=_kernels)
        return _state


def available() -> bool:
    """Whether the native kernels are built, loaded and registered (CPU only)."""
    return bool(_load()["ok"])


def reason() -> str:
    """Why `available` is False (empty when it is True)."""
    return str(_load()["reason"])


def describe() -> str:
    """What runs a float32 LSTM / GRU unroll on the CPU with ``backend="auto"``, for run records:
    ``"native kernel (avx2+fma gate math, 2 OpenBLAS threads)"`` or ``"XLA path (<reason>)"``."""
    import jax

    if jax.default_backend() != "cpu":
        return f"XLA path (JAX's default backend is {jax.default_backend()!r}; the kernel is CPU-only)"
    state = _load()
    if not state["ok"]:
        return f"XLA path ({state['reason']})"
    return f"native kernel ({state['module'].isa()} gate math, {state['threads']} OpenBLAS threads)"


def num_threads() -> int:
    """OpenBLAS threads the kernels' large GEMMs use (the machine's cores), 0 when not available."""
    return int(_load().get("threads", 0))
