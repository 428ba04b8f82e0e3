"""The work directory of a training run (private): shared by :func:`rnnjax.fit` and
:func:`rnnjax.sweep.run_sweep`.

A work directory holds everything a run needs to be continued and read::

    workdir/
      config.json        the run's config; a resumed run must present the same one
      sessions.json      one entry per process that worked on the run: start, wall time, steps
      checkpoints/       orbax checkpoints of the whole state (rnnjax.checkpoint.Checkpointer)
      metrics.jsonl      one JSON object a line: {"kind": "train"|"eval", "step": ..., metrics}
      events.out.tfevents.*   the same metrics for TensorBoard (when tensorboardX is installed)
      loss.png           the loss curves
      results.json       config, final metrics, params_sha256, total wall time, machine

Every file is written atomically (a temporary file and ``os.replace``) or appended line by line
(``metrics.jsonl``, whose records after the restored step are dropped on resume), so a process
killed at any moment leaves a directory that the next call resumes from.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np

from rnnjax.checkpoint import _json_default, write_json_atomic

# Settings that change no result: they may differ between a run and its continuation.
RESUME_FREE = frozenset({
    "steps", "workdir", "progress", "no_progress", "log_every", "eval_every", "ckpt_every",
    "max_to_keep", "chunk", "steps_per_call", "max_nonfinite", "max_consecutive_nonfinite",
    "tensorboard", "out", "jobs",
})


class WorkdirError(ValueError):
    """A work directory that cannot be used (a file, not writable, or holding another run)."""


def _jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values (arrays as lists, callables and other objects by name)."""
    return json.loads(json.dumps(obj, default=_lenient_default))


def _lenient_default(o: Any) -> Any:
    try:
        return _json_default(o)
    except TypeError:
        return getattr(o, "__qualname__", None) or getattr(o, "__name__", None) or repr(o)


# the vector instruction sets that decide CPU matmul and elementwise speed, widest first
_ISA_FLAGS = ("amx_tile", "avx512f", "avx512_bf16", "avx512_vnni", "avx2", "fma", "avx", "asimd",
              "sve")


def cpu_isa() -> str | None:
    """The CPU's vector instruction sets among :data:`_ISA_FLAGS` (from /proc/cpuinfo), or None."""
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
    devices."""
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
            "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count()}


class Workdir:
    """A run's work directory: checked, configured, and timed across the processes that use it.

    Args:
      path: the directory (created with its parents if missing).
      config: the run's JSON-able config; compared with the stored one on resume.
      steps: the run's total steps (recorded; a larger value extends a finished run).
      resume_free: config keys that may differ on resume (default :data:`RESUME_FREE`).
      write: whether this process writes files (False on all but process 0 of a multi-host run).

    Raises:
      WorkdirError: ``path`` is a file, cannot be created or written, or holds a run with a
        different config (the message names the differing keys).
    """

    def __init__(self, path: str | os.PathLike, *, config: Mapping[str, Any] | None, steps: int,
                 resume_free: Iterable[str] = RESUME_FREE, write: bool = True):
        self.path = Path(path).absolute()
        self.write = write
        self._check_path()
        self.config = _jsonable(dict(config or {}))
        self._check_config(self.config, frozenset(resume_free), steps)
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

    def _read_json(self, name: str, default: Any) -> Any:
        path = self.path / name
        if not path.exists():
            return default
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return default

    def _check_config(self, config: dict, free: frozenset, steps: int) -> None:
        stored = self._read_json("config.json", None)
        if stored is not None:
            old = stored.get("config", {})
            diff = sorted(k for k in set(old) | set(config)
                          if k not in free and old.get(k, "<missing>") != config.get(k, "<missing>"))
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

    def open_metrics(self, upto: int) -> list[dict]:
        """Keep the records of ``metrics.jsonl`` up to step ``upto``; return them."""
        path = self.path / "metrics.jsonl"
        records = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                if rec.get("step", 0) <= upto:
                    records.append(rec)
        if self.write:
            tmp = path.with_name("metrics.jsonl.tmp")
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
            os.replace(tmp, path)
        return records

    def results(self, results: dict) -> None:
        if self.write:
            write_json_atomic(self.path / "results.json", results)


# ----------------------------------------------------------------------------- TensorBoard


class EventLog:
    """Scalars to TensorBoard event files (tensorboardX), one directory per run.

    On resume (``purge_step``), events at and after the restored step that a killed process wrote
    are discarded by TensorBoard.
    """

    def __init__(self, logdir: Path, *, purge_step: int | None):
        from tensorboardX import SummaryWriter

        self._w = SummaryWriter(str(logdir), purge_step=purge_step, flush_secs=10)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._w.add_scalar(prefix + k, float(v), global_step=int(step))

    def flush(self) -> None:
        self._w.flush()

    def close(self) -> None:
        self._w.close()


def tensorboard_available() -> bool:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def read_events(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the TensorBoard event files in ``logdir``: ``tag -> [(step, value), ...]``.

    Reads the TFRecord framing (length, CRC, an ``Event`` protobuf, CRC) with tensorboardX's
    protobuf definitions; later records of a step replace earlier ones (a resumed run re-logs the
    steps after its checkpoint), and a purge event drops the steps at and after it.
    """
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    files = sorted(Path(logdir).glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            body = data[pos + 12:pos + 12 + n]
            pos += 12 + n + 4
            if len(body) < n:
                break  # a record cut by a kill
            ev = event_pb2.Event()
            ev.ParseFromString(body)
            if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
                for tag in out:
                    out[tag] = {s: v for s, v in out[tag].items() if s < ev.step}
            for val in ev.summary.value:
                out.setdefault(val.tag, {})[int(ev.step)] = float(val.simple_value)
    return {tag: sorted(d.items()) for tag, d in out.items()}


# ----------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

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


def host_scalars(metrics: Mapping[str, Any], i: int) -> dict[str, float]:
    """Row ``i`` of stacked per-step metrics as Python floats (scalar metrics only)."""
    return {k: float(v[i]) for k, v in metrics.items() if np.ndim(v) == 1}
