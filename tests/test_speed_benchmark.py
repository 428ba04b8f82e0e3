"""benchmarks/speed.py (a tiny run end to end in a subprocess; its report pieces in-process) and
benchmarks/profile_fused.py."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import rnnjax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # keeps the default suite under 10 minutes on 2 cores; make test-slow
def test_speed_benchmark_smoke(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "speed.py"), "--quick",
           "--cells", "lstm", "--sizes", "2x4x3x5", "--impls", "rnnjax,rnnjax_plain,hoisted_scan", "--repeats", "1",
           "--gemm-n", "64", "--long", "--long-T", "16", "--long-H", "8", "--long-repeats", "1",
           "--long-variants", "default,remat_chunk", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| implementation |" in proc.stdout
    for name in ("speed.json", "speed.md", "speed.png"):
        assert (tmp_path / name).is_file(), name
    result = json.loads((tmp_path / "speed.json").read_text())
    rows = result["results"]
    assert {(r["cell"], r["impl"], r["mode"]) for r in rows} == {
        ("lstm", i, m) for i in ("rnnjax", "rnnjax_plain", "hoisted_scan")
        for m in ("train", "forward")}
    for r in rows:
        assert "error" not in r, r
        assert r["median_ms"] > 0 and len(r["times_ms"]) == 1
        assert r["fastest_peer"] == "hoisted_scan" and r["x_fastest_peer"] > 0
        assert r["flops"] > 0 and r["x_floor"] > 0
    assert result["machine"]["gemm"]["gflops"] > 0
    long = result["long"]["variants"]
    assert long["default"]["median_ms"] > 0
    assert "median_ms" in long["remat_chunk"] or "skipped" in long["remat_chunk"]


# ------------------------------------------------------------- fast, in-process: the report pieces

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def _row(impl, family, mode, ms, size=(2, 4, 3, 5), cell="lstm"):
    return {"size": dict(zip("BTDH", size)), "cell": cell, "impl": impl, "label": impl,
            "family": family, "mode": mode, "flops": 1.0, "floor_ms": 1.0, "median_ms": ms,
            "times_ms": [ms], "x_floor": ms, "compile_s": 0.1}


def test_ratios_to_the_fastest_peer_and_jax_peer_and_rerender(tmp_path):
    import speed

    rows = [_row("rnnjax", "rnnjax", "train", 90.0), _row("flax", "peer", "train", 100.0),
            _row("equinox", "peer", "train", 120.0), _row("torch", "peer", "train", 60.0),
            _row("rnnjax", "rnnjax", "forward", 30.0), _row("flax", "peer", "forward", 20.0)]
    speed.add_ratios(rows)
    tr = rows[0]
    assert tr["fastest_peer"] == "torch" and tr["x_fastest_peer"] == 1.5
    assert tr["fastest_jax_peer"] == "flax" and tr["x_fastest_jax_peer"] == 0.9  # torch excluded
    assert rows[4]["x_fastest_jax_peer"] == 1.5 and rows[4]["x_fastest_peer"] == 1.5
    info = {"backend": "cpu", "devices": ["cpu"], "cpu_model": "X", "cpu_isa": "avx2 fma",
            "cpu_count": 2, "versions": {"jax": "j", "flax": "f", "torch": "t"},
            "gemm": {"gflops": 1.0, "n": 8}, "repeats": 1}
    result = {"machine": info, "results": rows, "long": None,
              "config": {"sizes": [dict(zip("BTDH", (2, 4, 3, 5)))], "cells": ["lstm"]}}
    (tmp_path / "speed.json").write_text(json.dumps(result))
    speed.main(["--rerender", "--out", str(tmp_path)])
    md = (tmp_path / "speed.md").read_text()
    assert "x2 (avx2 fma)" in md and "train x JAX peer" in md
    assert "| lstm | **rnnjax** | 90.00 | 30.00 | 0.90 | 1.50 | 1.50 | 1.50 |" in md


def test_the_default_row_names_the_path_auto_chose(monkeypatch):
    import speed

    from rnnjax.cells import fused

    native = not fused.native_unavailable(jnp.float32)
    assert speed.path_note("rnnjax", "lstm", speed.Size(32, 256, 32, 256)) == (" [native]" if native else " [xla, step]")
    # where the kernel cannot run, the XLA path's arrangement
    monkeypatch.setattr(fused, "native_unavailable", lambda dtype: "not built")
    assert speed.path_note("rnnjax", "lstm", speed.Size(32, 256, 32, 256)) == " [xla, step]"
    assert speed.path_note("rnnjax", "gru", speed.Size(8, 10, 512, 128)) == " [xla, hoisted]"
    assert speed.path_note("flax", "lstm", speed.Size(8, 10, 512, 128)) == ""


def test_profile_fused_runs_and_reports_every_part(capsys):
    import profile_fused

    profile_fused.main(["--sizes", "2x3x2x3", "--cells", "lstm,gru", "--repeats", "1"])
    out = capsys.readouterr().out
    for part in ("forward (inference)", "forward (saving residuals)", "backward",
                 "weight-gradient matmuls", "recurrent matmuls alone", "train step"):
        assert out.count(part) == 2, part  # once per cell
    with pytest.raises(SystemExit):
        profile_fused.main(["--cells", "rnn"])


def test_xla_cpu_options_reports_each_variant_and_names_a_failed_flag(tmp_path, monkeypatch):
    import xla_cpu_options as xo

    # the default and a flag no XLA knows (its child aborts): one figure each, the failure named
    monkeypatch.setattr(xo, "VARIANTS", [("default", ""), ("bogus", "--xla_cpu_no_such_flag_rnnjax=1")])
    out = tmp_path / "x.md"
    assert xo.main(["--sizes", "2x3x2x4", "--cells", "lstm,gru", "--rounds", "1", "--repeats", "1",
                    "--out", str(out)]) == 0
    md = out.read_text()
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| 2, 3, 2, 4 |")]
    assert len(rows) == 4  # both cells, in both tables
    for cells in rows[:2]:  # the rate is the matmul FLOPs over the time shown next to it
        ms, gflops = float(cells[2]), float(cells[3])
        G = 4 if cells[1] == "lstm" else 3
        assert ms > 0 and gflops == pytest.approx(2 * 2 * 3 * (2 + 4) * G * 4 / (ms * 1e-3) / 1e9, rel=0.06)
    assert all(cells[2].strip() == "n/a · n/a |" for cells in rows[2:])
    assert "Variants that failed: bogus:" in md and "GFLOP/s" in md
    with pytest.raises(SystemExit):
        xo.main(["--sizes", "2x3x2"])
    with pytest.raises(SystemExit):
        xo.main(["--cells", "rnn"])


def test_native_row_forces_each_path():
    """benchmarks/native_row.py trains one study row twice: its factories force the XLA path and
    the native kernel whatever ``backend="auto"`` would pick."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import native_row
    import vanishing

    from rnnjax import _native

    make = vanishing.factory(vanishing.spec_by_name("lstm-fb1"))
    for path in ("xla", "native"):
        cell, _ = native_row.forced(make, path)(4, 5)
        params = cell.init(jax.random.key(0), 2)
        xs = jnp.ones((5, 3, 2))
        run = lambda p, c=cell: rnnjax.unroll(c, p, xs)[1]
        if path == "native" and not _native.available():
            with pytest.raises(ValueError, match="backend='native' cannot run"):
                jax.make_jaxpr(run)(params)
            continue
        assert ("rnnjax_lstm_fwd" in str(jax.make_jaxpr(run)(params))) == (path == "native")


def test_native_vmap_times_both_paths_and_refuses_bad_arguments(capsys):
    """benchmarks/native_vmap.py: one row per (cell, K) with both paths' medians and their ratio;
    bad --K / --size / --repeats are argument errors."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import native_vmap

    native_vmap.main(["--size", "2x3x2x4", "--K", "1,2", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| lstm") or line.startswith("| gru")]
    assert [r.split("|")[1:3] for r in rows] == [[" lstm ", " 1 "], [" lstm ", " 2 "], [" gru ", " 1 "], [" gru ", " 2 "]]
    for r in rows:
        xla, native, ratio = (float(v) for v in r.split("|")[3:6])
        assert xla >= 0 and native >= 0 and ratio > 0  # the table rounds ms to 0.1
    for bad in (["--K", "0"], ["--K", "a"], ["--size", "2x3x2"], ["--repeats", "0"], ["--cells", "elman"]):
        with pytest.raises(SystemExit):
            native_vmap.main(bad)
