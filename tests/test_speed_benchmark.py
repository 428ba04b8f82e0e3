"""Smoke test of benchmarks/speed.py: a tiny run end to end (seconds), in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

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
