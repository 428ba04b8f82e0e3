"""The work directory of a training run (private): used by the engine ([`rnnjax.engine`][rnnjax.engine]).

A work directory holds everything a run needs to be continued and read::

    workdir/
      .lock              held (an OS file lock) by the process that trains; names it (pid, host)
      config.json        the run's config; a resumed run must present the same one
      sessions.json      one entry per process that worked on the run: start, wall time, steps
      checkpoints/       orbax checkpoints: the state(s), the history, the guard's counters
      metrics.jsonl      one JSON object a line: {"kind": "train"|"eval", "step": ..., metrics}
                         (rebuilt from the checkpoint's history on resume)
      events.out.tfevents.*   the same metrics for TensorBoard (a sweep: tb/config_<i>/; written
                         by rnnjax._events, no TensorBoard package needed)
      loss.png           the loss curves
      results.json       config, final metrics, params_sha256, total wall time, machine

Every file is written atomically (a temporary file and ``os.replace``) or appended line by line,
so a process killed at any moment leaves a directory that the next call resumes from. The lock
is released by the OS when its process dies, so a killed run's lock is taken over at once.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rnnjax.checkpoint import json_default, write_json_atomic

# Settings that change no result: they may differ between a run and its continuation.
RESUME_FREE = frozenset({
    "steps", "workdir", "progress", "no_progress", "log_every", "eval_every", "ckpt_every",
    "max_to_keep", "chunk", "steps_per_call", "max_nonfinite", "max_consecutive_nonfinite",
    "tensorboard", "out", "jobs",
})


class WorkdirError(ValueError):
    """A work directory that cannot be used (a file, not writable, or holding another run)."""


def jsonable(obj: Any, where: str = "config") -> Any:
    """``obj`` as plain JSON values, to store a run's config and compare it on resume.

    Arrays become lists, tuples lists, sets sorted lists; a function or class becomes its
    ``module.qualname`` (so a function whose body changed under the same name is NOT detected on
    resume). What cannot be recorded faithfully is refused with a ``TypeError`` naming its key: a
    lambda or a function defined inside another (no stable name), any other object.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float, np.generic, np.ndarray, jax.Array, Path)):
        return json_default(obj) if not isinstance(obj, (int, float)) else obj
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        try:
            return [jsonable(v, where) for v in sorted(obj)]
        except TypeError:
            raise TypeError(f"{where} is a set of values that cannot be ordered ({obj!r}); use a "
                            f"list") from None
    qualname = getattr(obj, "__qualname__", None)
    if callable(obj) and isinstance(qualname, str):
        if "<" in qualname:
            raise TypeError(f"{where} is {qualname!r} (a lambda or a function defined inside "
                            f"another), which a work directory cannot record and compare on "
                            f"resume; use a function defined at module level, or a string")
        return f"{getattr(obj, '__module__', '?')}.{qualname}"
    raise TypeError(f"{where} is a {type(obj).__name__}, which is not JSON; a work directory "
                    f"records its config as JSON: use numbers, strings, lists and dicts")


def same_json(a: Any, b: Any) -> bool:
    """Equality of JSON values, NaN equal to NaN (``json.dumps`` writes both as ``NaN``)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# the vector instruction sets that decide CPU matmul and elementwise speed, widest first
_ISA_FLAGS = ("amx_tile", "avx512f", "avx512_bf16", "avx512_vnni", "avx2", "fma", "avx", "asimd",
              "sve")


def cpu_isa() -> str | None:
    """The CPU's vector instruction sets among `_ISA_FLAGS` (from /proc/cpuinfo), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return " ".join(f for f in _ISA_FLAGS if f in flags) or None
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """The machine a run worked on: CPU model and instruction sets, cores, platform, versions,
    devices, and what runs the LSTM / GRU unrolls on the CPU (``lstm_gru_cpu``: the native kernel
    or the XLA path, see ``rnnjax.unroll``'s ``backend``)."""
    from rnnjax import _native

    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or platform.machine(), "cpu_isa": cpu_isa(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count(),
            "lstm_gru_cpu": _native.describe()}


class Workdir:
    """A run's work directory: checked, configured, and timed across the processes that use it.

    Args:
      path: the directory (created with its parents if missing).
      config: the run's JSON-able config; compared with the stored one on resume.
      steps: the run's total steps (recorded; a larger value extends a finished run).
      resume_free: config keys that may differ on resume (default `RESUME_FREE`).
      write: whether this process writes files (False on all but process 0 of a multi-host run).

    Raises:
      WorkdirError: ``path`` is a file, cannot be created or written, or holds a run with a
        different config (the message names the differing keys).
    """

    def __init__(self, path: str | os.PathLike, *, config: Mapping[str, Any] | None, steps: int,
                 resume_free: Iterable[str] = RESUME_FREE, write: bool = True):
        self.path = Path(path).absolute()
        self.write = write
        self._lock_fd: int | None = None
        self.config = jsonable(dict(config or {}))
        self._check_path()
        self._lock()
        try:
            self._check_config(self.config, frozenset(resume_free), steps)
        except BaseException:
            self.close()
            raise
        self._t0 = time.time()
        self._sessions = self._read_json("sessions.json", {"sessions": []}).get("sessions", [])
        self._me = {"pid": os.getpid(), "started": self._t0, "wall_time_s": 0.0,
                    "from_step": None, "to_step": None, "machine": machine()}

    # -- checks

    def _check_path(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise WorkdirError(f"workdir {p} is an existing file, not a directory; pass a "
                               f"directory path (it is created if missing)")
        if not self.write:
            return
        try:
            p.mkdir(parents=True, exist_ok=True)
            probe = p / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise WorkdirError(f"workdir {p} cannot be written: {e.strerror or e}") from None

    def _lock(self) -> None:
        """Take the directory's lock (``.lock``), or refuse naming the process that holds it."""
        if not self.write:
            return
        import fcntl

        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise WorkdirError(f"workdir {self.path} is in use by another process ({holder}); two "
                               f"processes on one workdir would both write to it. Wait for that "
                               f"one to finish or stop it, or use another workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (the OS releases it too when the process dies)."""
        if self._lock_fd is not None:
            import fcntl

            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _read_json(self, name: str, default: Any, *, required: bool = False) -> Any:
        path = self.path / name
        if not path.exists():
            return default
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            if required:
                raise WorkdirError(f"{path} cannot be read ({e}): the run's config is unknown, so "
                                   f"the run cannot be checked before it is continued. Restore the "
                                   f"file, or delete it to continue with the config given now") from None
            return default

    def _check_config(self, config: dict, free: frozenset, steps: int) -> None:
        stored = self._read_json("config.json", None, required=True)
        if stored is not None:
            old = stored.get("config", {}) if isinstance(stored, dict) else None
            if not isinstance(old, dict):
                raise WorkdirError(f"{self.path / 'config.json'} holds no config dict; restore the "
                                   f"file, or delete it to continue with the config given now")
            diff = sorted(k for k in set(old) | set(config)
                          if k not in free
                          and not same_json(old.get(k, "<missing>"), config.get(k, "<missing>")))
            if diff:
                detail = "; ".join(f"{k}: saved {old.get(k, '<missing>')!r}, now "
                                   f"{config.get(k, '<missing>')!r}" for k in diff[:8])
                raise WorkdirError(f"workdir {self.path} holds a run with a different config "
                                   f"(differing keys {diff}: {detail}); use another workdir to "
                                   f"start a new run")
        if self.write:
            write_json_atomic(self.path / "config.json", {"config": config, "steps": int(steps)})

    # -- time across processes

    def progress(self, from_step: int, to_step: int) -> None:
        """Record that this process has worked from ``from_step`` to ``to_step`` so far."""
        if self._me["from_step"] is None:
            self._me["from_step"] = int(from_step)
        self._me["to_step"] = int(to_step)
        self._me["wall_time_s"] = time.time() - self._t0
        if self.write:
            write_json_atomic(self.path / "sessions.json", {"sessions": self._sessions + [self._me]})

    def sessions(self) -> list[dict]:
        self._me["wall_time_s"] = time.time() - self._t0
        return self._sessions + [self._me]

    def total_wall_time(self, sessions: list[dict] | None = None) -> float:
        """Seconds summed over ``sessions`` (default: every process that worked on the run, this
        one until now)."""
        return float(sum(s.get("wall_time_s", 0.0) for s in (sessions or self.sessions())))

    # -- metrics log

    def write_records(self, records: Iterable[dict]) -> None:
        """Rewrite ``metrics.jsonl`` with ``records`` (the history restored from a checkpoint)."""
        if self.write:
            path = self.path / "metrics.jsonl"
            tmp = path.with_name("metrics.jsonl.tmp")
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
            os.replace(tmp, path)

    def results(self, results: dict) -> None:
        if self.write:
            write_json_atomic(self.path / "results.json", results)


# ----------------------------------------------------------------------------- TensorBoard


class EventLog:
    """Scalars to TensorBoard event files, one directory per run (`rnnjax._events`).

    On resume (``purge_step``), events at and after the restored step that a killed process wrote
    are discarded by TensorBoard.
    """

    def __init__(self, logdir: Path, *, purge_step: int | None):
        from rnnjax._events import EventWriter

        self._w = EventWriter(logdir, purge_step=purge_step)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        kept = {prefix + k: float(v) for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if kept:
            self._w.scalars(int(step), kept)
            self._w.flush()

    def close(self) -> None:
        self._w.close()


def event_logs(path: Path, n: int, *, per_config: bool, purge_step: int | None) -> list[EventLog]:
    """One `EventLog` per configuration: ``path`` itself for a fit, ``path/tb/config_<i>``
    for each configuration of a sweep (``per_config``)."""
    if not per_config:
        return [EventLog(path, purge_step=purge_step)]
    return [EventLog(path / "tb" / f"config_{i:03d}", purge_step=purge_step) for i in range(n)]


def read_events(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the TensorBoard event files in ``logdir``: ``tag -> [(step, value), ...]``.

    Later records of a step replace earlier ones (a resumed run re-logs the steps after its
    checkpoint), and a session-start (purge) event drops the steps at and after it.
    """
    from rnnjax._events import parse_event, records

    out: dict[str, dict[int, float]] = {}
    files = sorted(Path(logdir).glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name))
    for path in files:
        for body in records(path.read_bytes()):
            ev = parse_event(body)
            if ev["session_start"]:
                for tag in out:
                    out[tag] = {s: v for s, v in out[tag].items() if s < ev["step"]}
            for tag, v in ev["scalars"].items():
                out.setdefault(tag, {})[int(ev["step"])] = float(v)
    return {tag: sorted(d.items()) for tag, d in out.items()}


# ----------------------------------------------------------------------------- plots


def _plt():
    from rnnjax._checks import require

    matplotlib = require("matplotlib", "plot", "drawing loss.png and other plots")

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_run(records: Sequence[dict], path: Path, *, title: str,
             baseline: float | None = None) -> None:
    """``loss.png``: training loss and every eval loss on one panel (log scale), each other eval
    metric on its own labelled panel; the baseline drawn and named when given."""
    plt = _plt()
    train = [r for r in records if r.get("kind") == "train" and _finite(r.get("loss"))]
    evals = [r for r in records if r.get("kind") == "eval"]
    keys = sorted({k for r in evals for k in r if k.startswith("eval_")})
    loss_keys = [k for k in keys if "loss" in k]
    other = [k for k in keys if k not in loss_keys]
    n = 1 + len(other)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.8), squeeze=False)
    ax = axes[0, 0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, color="C0",
                label="train loss")
    styles = ["o-", "s--", "^-.", "d:"]
    for i, k in enumerate(loss_keys):
        pts = [(r["step"], r[k]) for r in evals if _finite(r.get(k))]
        if pts:
            ax.plot(*zip(*pts), styles[i % 4], ms=3, color=f"C{i + 1}", label=k.replace("_", " "))
    if baseline is not None:
        ax.axhline(baseline, color="k", ls=":", lw=1, label=f"baseline {baseline:.3g}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    vals = [r["loss"] for r in train] + [r[k] for r in evals for k in loss_keys if _finite(r.get(k))]
    if vals and min(vals) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    for ax, k in zip(axes[0, 1:], other):
        pts = [(r["step"], r[k]) for r in evals if _finite(r.get(k))]
        if pts:
            ax.plot(*zip(*pts), "o-", ms=3, color="C3")
        ax.set_xlabel("step")
        ax.set_ylabel(k[5:].replace("_", " "))
        ax.set_title(f"evaluation: {k[5:]}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def plot_history(history: Any, configs: Sequence[dict], path: Path, *, title: str,
                 baseline: float | None = None) -> None:
    """``loss.png`` of a run: `plot_run` for one configuration; for several, the training
    loss of each (the legend names the values that vary)."""
    if len(configs) == 1:
        plot_run(history.records(0), path, title=title, baseline=baseline)
        return
    loss = history.train.get("loss")
    if loss is None or loss.ndim != 2:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    vary = [k for k in configs[0] if len({repr(c.get(k)) for c in configs}) > 1] or list(configs[0])
    colors = plt.cm.viridis(np.linspace(0, 0.95, len(configs)))
    styles = ("-", "--", "-.", ":")
    for i, c in enumerate(configs):
        label = ", ".join(f"{k}={c[k]:.3g}" if isinstance(c[k], float) else f"{k}={c[k]}" for k in vary)
        ax.plot(history.train_steps, loss[i], color=colors[i], lw=1.2, ls=styles[i % 4], label=label)
    if baseline is not None:
        ax.axhline(baseline, color="k", ls=":", lw=1, label=f"baseline {baseline:.3g}")
    finite = loss[np.isfinite(loss)]
    if finite.size and finite.min() > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if len(configs) <= 20:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
