"""The documentation site builds strictly and covers the package: every public name of ``rnnjax``
has an API entry, every cell factory a page with its rendered API entry and its rows of the
gradient-vanishing study, every committed result a page; the pages' examples run.

mkdocs, mkdocs-material and mkdocstrings are in the ``dev`` extra (as well as in ``docs``), so
``make test`` installs them and this test never skips.
"""

import html
import inspect
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from helpers import loop_unroll

ROOT = pathlib.Path(__file__).parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))
import _hooks  # noqa: E402  (docs/_hooks.py: the mkdocs hooks)


def cell_factories() -> list[str]:
    """Public functions of ``rnnjax`` defined in ``rnnjax.cells`` that return a ``Cell``."""
    out = []
    for name, obj in _hooks.public_names().items():
        if (callable(obj) and not isinstance(obj, type)
                and getattr(obj, "__module__", "").startswith("rnnjax.cells.")
                and inspect.signature(obj).return_annotation in ("Cell", rnnjax.Cell)):
            out.append(name)
    return sorted(out)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + proc.stderr[-6000:]
    return out


def _page(site, path: str) -> str:
    f = site / path / "index.html"
    assert f.exists(), f"the site has no page {path}/"
    return f.read_text()


def test_cell_factories_found():
    cells = cell_factories()
    assert {"elman", "lstm", "gru", "lru", "mingru", "orthogonal"} <= set(cells)
    assert "lru_eigenvalues" not in cells and "indrnn_constrain" not in cells


def test_every_public_name_has_an_api_entry(site):
    table = _page(site, "api")
    linked = set(re.findall(r"<code>rnnjax\.(\w+)</code>", table))
    public = {n for n, o in _hooks.public_names().items()
              if isinstance(o, types.ModuleType) or (callable(o) and n != "__version__")}
    assert public, "rnnjax exports nothing?"
    assert public <= linked, f"public names missing from the API index: {sorted(public - linked)}"
    # each link lands on a rendered entry (an element with the documented identifier as its id)
    for href in re.findall(r'<a[^>]*href="([^"]+#[^"]+)"[^>]*><code>rnnjax\.', table):
        page, anchor = href.split("#")
        target = (site / "api" / page / "index.html").resolve() if page else site / "api" / "index.html"
        assert f'id="{anchor}"' in target.read_text(), f"{href} has no entry"


def test_every_cell_has_a_page_with_its_api_entry_and_study_rows(site):
    study = json.loads((ROOT / "benchmarks/results/vanishing/results.json").read_text())
    for name in cell_factories():
        md = (DOCS / "cells" / f"{name}.md")
        assert md.exists(), f"no docs/cells/{name}.md"
        text = md.read_text()
        assert f"::: rnnjax.{name}" in text
        page = _page(site, f"cells/{name}")
        assert f'id="rnnjax.{name}"' in page, f"the {name} page does not render rnnjax.{name}"
        assert "Pending" not in page
        assert f"[`{name}`]({name}.md)" in (DOCS / "cells" / "index.md").read_text()
        m = re.search(r"<!-- vanishing: *([\w\-, ]+?) *-->", text)
        assert m, f"docs/cells/{name}.md has no study rows"
        keys = [c.strip() for c in m.group(1).split(",")]
        flows = [f for f in study["flows"] if f["cell"] in keys]
        for f in flows:  # each of the cell's rows, with its figure
            assert f"<code>{f['name']}</code>" in page and _hooks._fmt(f["rate"]) in page, f["name"]
        if not flows:
            assert "pending" in page


def test_results_pages_cover_every_committed_result(site):
    index = (DOCS / "results" / "index.md").read_text()
    more = _page(site, "results/more")
    dirs = _hooks.result_dirs()
    assert {d.name for _, d in dirs} >= {"vanishing", "speed", "sweep", "lr_sweep"}
    for group, d in dirs:
        # a page of its own (listed in the index), or a section on "More results"
        assert f"{group}/results/{d.name}/" in index or f"<code>{group}/results/{d.name}/</code>" in more, d
        for png in d.glob("*.png"):
            assert (site / "assets" / "results" / group / d.name / png.name).exists(), png
            if f"{group}/results/{d.name}/" not in index:
                assert f"{group}/{d.name}/{png.name}" in more, png
    vanishing = _page(site, "results/vanishing")
    assert "gradient_flow.png" in vanishing and "Gradient flow at initialisation" in vanishing


def test_vanishing_rows_both_formats(tmp_path, monkeypatch):
    one_seed = {"meta": {"H": 8}, "flows": [{"name": "x-a", "cell": "x", "init": "i", "T": 10,
                                             "rate": 0.5, "ratio": 1e-4}],
                "runs": [{"task": "adding", "cell": "x", "name": "x-a", "T": 10, "relative": 0.05,
                          "solved": True, "diverged": False},
                         {"task": "adding", "cell": "x", "name": "x-a", "T": 20, "relative": 2.0,
                          "solved": False, "diverged": True}]}
    seeds = {"meta": {"H": 8}, "flows": [],
             "runs": [{"task": "copy", "cell": "x", "name": "x-b", "T": 10, "ratio_median": 0.5,
                       "seeds": 3, "solved_seeds": 1, "solved": False}]}
    path = tmp_path / "results.json"
    monkeypatch.setattr(_hooks, "STUDY", path)
    path.write_text(json.dumps(one_seed))
    text = _hooks.vanishing_rows(["x"])
    assert "| `x-a` | i | 0.5000 | 1.00e-04 |" in text
    assert "| `x-a` | 0.0500 ✓ | diverged |" in text
    assert _hooks.vanishing_rows(["y"]).count("pending") == 2
    path.write_text(json.dumps(seeds))
    text = _hooks.vanishing_rows(["x"])
    assert "| `x-b` | 0.5000 (1/3 seeds solved) |" in text and "initialisation: *pending*" in text


def _python_block(md: pathlib.Path, after: str) -> str:
    m = re.search(re.escape(after) + r".*?```python\n(.*?)```", md.read_text(), re.S)
    assert m, f"no python block after {after!r} in {md}"
    return m.group(1)


def test_writing_a_cell_example_matches_a_loop():
    code = _python_block(DOCS / "concepts" / "cells.md", "## Writing a cell")
    scope = {}
    exec(compile(code, "docs/concepts/cells.md", "exec"), scope)
    cell = scope["leaky"](4, alpha=0.3)
    params = cell.init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (7, 2, 3))
    with jax.numpy_rank_promotion("allow"):  # JAX's default; the example adds a bias [H] to [B, H]
        _, ys = rnnjax.unroll(cell, params, xs)
        _, ys_loop = loop_unroll(cell, params, xs)
    h = np.zeros((2, 4))
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for t in range(7):  # the docstring's equation, in float64
        h = 0.7 * h + 0.3 * np.tanh(np.asarray(xs[t]) @ p["w_x"] + h @ p["w_h"] + p["b"])
        np.testing.assert_allclose(ys[t], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ys, ys_loop, rtol=1e-6, atol=1e-6)


# The first script of "Getting started", with smaller sizes and a temporary work directory.
GETTING_STARTED_SUBSTITUTIONS = {
    "T, B, H = 100, 32, 64": "T, B, H = 12, 3, 4",
    "steps=1000": "steps=4",
    "eval_every=100": "eval_every=2",
    "500, T)": "8, T)",
}


def test_getting_started_script_runs(tmp_path):
    code = _python_block(DOCS / "getting-started.md", "## The first script")
    for old, new in GETTING_STARTED_SUBSTITUTIONS.items():
        assert code.count(old) == 1, f"the getting-started script no longer contains {old!r}"
        code = code.replace(old, new)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope = {}
        exec(compile(code, "docs/getting-started.md", "exec"), scope)
    finally:
        os.chdir(cwd)
    run = tmp_path / "runs" / "first"
    history = scope["history"]
    assert history["eval_step"] == [2, 4] and len(history["eval_test_loss"]) == 2
    assert int(scope["state"].step) == 4
    for name in ("results.json", "metrics.jsonl", "loss.png", "gradient_flow.png", "config.json"):
        assert (run / name).exists(), name
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["cell"] == "lstm-chrono"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "eval"}
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]
    flow = scope["flow"]
    assert flow.log10_norms.shape == (12,) and bool(jnp.all(jnp.isfinite(flow.log10_norms)))


def test_other_results_lists_unlisted_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(_hooks, "ROOT", tmp_path)
    listed, new, empty = (tmp_path / "benchmarks/results/old", tmp_path / "experiments/results/new",
                          tmp_path / "experiments/results/empty")
    for d in (listed, new, empty):
        d.mkdir(parents=True)
    (listed / "a.md").write_text("# old\n")
    (new / "COMMAND.md").write_text("# How\n\n    python make_it.py\n")
    (new / "table.md").write_text("## Table\n\n| a |\n|---|\n| 1 |\n")
    (new / "plot.png").write_bytes(b"png")
    docs = tmp_path / "docs"
    (docs / "results").mkdir(parents=True)
    (docs / "results" / "index.md").write_text("| `benchmarks/results/old/` |\n")
    text = _hooks.other_results(docs)
    assert "old" not in text and "empty" not in text
    assert text.index("## `experiments/results/new/`") < text.index("### How") < text.index("#### Table")
    assert "![plot.png](../assets/results/experiments/new/plot.png)" in text
    (docs / "results" / "index.md").write_text("`benchmarks/results/old/` `experiments/results/new/`")
    assert "own" in _hooks.other_results(docs)
