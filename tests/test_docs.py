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
    """The built page of ``docs/<path>.md`` (``use_directory_urls: false``: ``site/<path>.html``)."""
    f = site / f"{path}.html"
    assert f.exists(), f"the site has no page {path}.html"
    return f.read_text()


def test_cell_factories_found():
    cells = cell_factories()
    assert {"elman", "lstm", "gru", "lru", "mingru", "orthogonal"} <= set(cells)
    assert "lru_eigenvalues" not in cells and "indrnn_constrain" not in cells


def test_every_public_name_has_an_api_entry(site):
    table = _page(site, "api/index")
    linked = set(re.findall(r"<code>rnnjax\.(\w+)</code>", table))
    public = {n for n, o in _hooks.public_names().items()
              if isinstance(o, types.ModuleType) or (callable(o) and n != "__version__")}
    assert public, "rnnjax exports nothing?"
    assert public <= linked, f"public names missing from the API index: {sorted(public - linked)}"
    # each link lands on a rendered entry (an element with the documented identifier as its id)
    for href in re.findall(r'<a[^>]*href="([^"]+#[^"]+)"[^>]*><code>rnnjax\.', table):
        page, anchor = href.split("#")
        assert not page or page.endswith(".html"), f"{href}: a directory URL (file:// cannot open it)"
        target = (site / "api" / page).resolve() if page else site / "api" / "index.html"
        assert f'id="{anchor}"' in target.read_text(), f"{href} has no entry"


def test_every_cell_has_a_page_with_its_api_entry_and_study_rows(site):
    """Each cell page shows the multi-seed study's rows (per-seed losses, seeds solved, medians) and
    the log-space gradient flow of its cell, with the values of the committed results.json files."""
    multiseed = json.loads(_hooks.MULTISEED.read_text())
    flow = json.loads(_hooks.FLOW.read_text())
    assert _hooks.MULTISEED.parent.name == "vanishing-multiseed" and _hooks.FLOW.parent.name == "vanishing-flow"
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
        flows = [f for f in flow["flows"] if f["cell"] in keys]
        for f in flows:  # each of the cell's rows: its rate and its log10 decades, first - last
            lg = [v for v in f["log10_norms"] if v is not None]  # None: -inf (a zero norm)
            assert f"<code>{f['name']}</code>" in page and _hooks._fmt(f["rate"]) in page, f["name"]
            assert f"<td>{lg[0] - lg[-1]:+.2f}</td>" in page, f["name"]
        runs = [r for r in multiseed["runs"] if r["cell"] in keys]
        for r in runs:
            assert f"<td>{_hooks._fmt(r['final_loss_median'])}</td>" in page, (name, r["name"], r["T"])
            assert f"<td>{r['solved_seeds']}/{r['seeds']}" in page
            assert html.escape(_hooks._per_seed(r), quote=False) in page, (name, r["name"], r["T"])
        if not flows:
            assert "initialisation: <em>pending</em>" in page
        if not runs:
            assert "Trained rows: <em>pending</em>" in page
        assert "ratio first/last" not in page  # the single-seed study's column is gone


def test_cell_page_rows_hold_the_committed_values():
    """The hook's markdown for the LSTM rows carries the multi-seed study's figures verbatim."""
    text = _hooks.vanishing_rows(["lstm"])
    run = next(r for r in json.loads(_hooks.MULTISEED.read_text())["runs"]
               if r["cell"] == "lstm" and r["task"] == "adding" and r["per_seed"])
    per_seed = ", ".join(_hooks._fmt(s["final_test_loss"]) + ("" if s["steps_to_solve"] is None
                                                              else f" ✓{s['steps_to_solve']}")
                         for s in run["per_seed"])
    steps = "n/a" if run["steps_to_solve_median"] is None else f"{run['steps_to_solve_median']:.0f}"
    row = (f"| `{run['name']}` | {run['T']} | {run['solved_seeds']}/{run['seeds']}"
           f"{' ✓' if run['solved'] else ''} | {_hooks._fmt(run['final_loss_median'])} | "
           f"{_hooks._fmt(run['ratio_median'])} | {steps} | {per_seed} |")
    assert row in text


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


def test_vanishing_rows_from_the_multiseed_and_flow_files(tmp_path, monkeypatch):
    flow = {"meta": {"H": 8}, "flows": [{"name": "x-a", "cell": "x", "init": "i", "T": 3, "rate": 0.5,
                                         "ratio": 0.0, "log10_norms": [-40.25, -20.0, -0.5, None]}]}
    multiseed = {"meta": {"H": 8}, "flows": [], "runs": [
        {"task": "copy", "cell": "x", "name": "x-b", "T": 10, "seeds": 2, "solved_seeds": 1,
         "solved": True, "paper": True, "diverged_seeds": 0, "final_loss_median": 0.25,
         "ratio_median": 0.5, "steps_to_solve_median": 150.0,
         "per_seed": [{"seed": 0, "final_test_loss": 0.0001, "steps_to_solve": 100},
                      {"seed": 1, "final_test_loss": 0.5, "steps_to_solve": None}]},
        {"task": "copy", "cell": "x", "name": "x-b", "T": 20, "seeds": 2, "solved_seeds": 0,
         "solved": False, "paper": False, "diverged_seeds": 1, "final_loss_median": None,
         "ratio_median": None, "steps_to_solve_median": None,
         "per_seed": [{"seed": 0, "final_test_loss": None, "steps_to_solve": None},
                      {"seed": 1, "final_test_loss": 2.0, "steps_to_solve": None}]}]}
    monkeypatch.setattr(_hooks, "FLOW", tmp_path / "flow" / "results.json")
    monkeypatch.setattr(_hooks, "MULTISEED", tmp_path / "multiseed" / "results.json")
    assert _hooks.vanishing_rows(["x"]).count("pending") == 2  # no files yet
    for path, study in ((_hooks.FLOW, flow), (_hooks.MULTISEED, multiseed)):
        path.parent.mkdir()
        path.write_text(json.dumps(study))
    text = _hooks.vanishing_rows(["x"])
    # log10 first, last finite and first - last = -40.25 - (-0.5): what a float32 ratio lost (0)
    assert "| `x-a` | i | 0.5000 | -40.25 | -0.50 | -39.75 |" in text
    assert "| `x-b` *paper* | 10 | 1/2 ✓ | 0.2500 | 0.5000 | 150 | 1.00e-04 ✓100, 0.5000 |" in text
    assert "| `x-b` | 20 | 0/2 (1 diverged) | n/a | n/a | n/a | n/a, 2.0000 |" in text
    assert _hooks.vanishing_rows(["y"]).count("pending") == 2


def test_included_results_files_nest_under_the_including_section(tmp_path, monkeypatch):
    monkeypatch.setattr(_hooks, "ROOT", tmp_path)
    (tmp_path / "r.md").write_text("# Study\n\n```sh\n# a shell comment\n```\n\n## Part\n\n### Sub\n")
    page = "# Page\n\n## Section\n\n--8<-- \"r.md\"\n\n## Next\n\n--8<-- \"r.md\"\n"
    out = _hooks.include_files(page)
    assert out == ("# Page\n\n## Section\n\n### Study\n\n```sh\n# a shell comment\n```\n\n#### Part\n\n"
                   "##### Sub\n\n## Next\n\n### Study\n\n```sh\n# a shell comment\n```\n\n"
                   "#### Part\n\n##### Sub\n")
    with pytest.raises(Exception, match="no file"):
        _hooks.include_files('--8<-- "missing.md"')


def test_results_page_has_one_title_and_a_toc_of_its_sections(site):
    page = _page(site, "results/vanishing")
    article = page[page.index('<article'):page.index('</article>')]
    assert article.count("<h1") == 1, "an included results file brought a second top-level heading"
    content = page.index('class="md-content"')
    toc = page[page.rindex('data-md-component="toc"', 0, content):content]  # the right-hand one
    for anchor in ("the-multi-seed-study", "pixel-mnist", "the-papers-claims-with-the-papers-recipes",
                   "the-earlier-single-seed-study-superseded"):
        assert f'href="#{anchor}"' in toc, anchor


def test_site_opens_from_file_urls(site):
    """``use_directory_urls: false``: every page is a file and every link names one, so the site
    works from ``file://`` (the home page says to open ``site/index.html``)."""
    assert re.search(r"^use_directory_urls: *false *$", (ROOT / "mkdocs.yml").read_text(), re.M)
    home = _page(site, "index")
    assert "site/index.html" in home and (site / "index.html").exists()
    for page in (home, _page(site, "cells/lstm"), _page(site, "api/train")):
        for href in re.findall(r'href="([^"#:]*)(?:#[^"]*)?"', page):
            if href and not href.startswith("/"):
                assert href.endswith((".html", ".css", ".js", ".png", ".svg", ".ico", ".xml", ".json", ".gz")), href
    assert 'href="getting-started.html"' in home and 'href="cells/index.html"' in home


# A Sphinx role (:func:`x`, :class:`x`, :py:meth:`x` ...): mkdocstrings shows it as text.
SPHINX_ROLE = re.compile(r"(?<![\w:`]):(?:[a-z]+:)?[a-z]+:`[^`\n]+`")


def _docstrings(path: pathlib.Path):
    """``(line, text)`` of every docstring (module, class, function, attribute) in ``path``."""
    import ast

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            yield node.lineno, node.value.value


def raw_roles(root: pathlib.Path = ROOT) -> list[str]:
    """``file:line: role`` for each Sphinx role in rnnjax's docstrings and the docs' pages."""
    found = []
    for f in sorted((root / "rnnjax").rglob("*.py")):
        for line, text in sorted(_docstrings(f)):
            for m in SPHINX_ROLE.finditer(text):
                at = line + text.count("\n", 0, m.start())
                found.append(f"{f.relative_to(root)}:{at}: {m.group(0)}")
    for f in sorted((root / "docs").rglob("*.md")):
        for i, text in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            found += [f"{f.relative_to(root)}:{i}: {m.group(0)}" for m in SPHINX_ROLE.finditer(text)]
    return found


def test_raw_role_scanner_finds_roles(tmp_path):
    (tmp_path / "rnnjax").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "rnnjax" / "m.py").write_text(
        '"""Module.\n\nSee :func:`f`."""\n\n\ndef f():\n    """Uses [`g`][rnnjax.g] and ``a:b``."""\n\n'
        'x = 1\n"""The x of :py:class:`C`."""\n# a comment with :func:`f` is no docstring\n')
    (tmp_path / "docs" / "p.md").write_text("Text.\n\nA :meth:`C.m` here.\n")
    assert raw_roles(tmp_path) == ["rnnjax/m.py:3: :func:`f`", "rnnjax/m.py:10: :py:class:`C`",
                                   "docs/p.md:3: :meth:`C.m`"]


def test_no_raw_sphinx_roles():
    """Docstrings use mkdocstrings' cross references (``[`fit`][rnnjax.engine.fit]``), not Sphinx
    roles, which the API and cell pages would show as text."""
    found = raw_roles()
    assert not found, ("Sphinx roles (shown as text by mkdocstrings); write [`name`][rnnjax.full.path] "
                       "for a documented object, `name` otherwise:\n  " + "\n  ".join(found))


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


def _run_page_script(page: str, heading: str, substitutions: dict, cwd: pathlib.Path) -> dict:
    """Run the python block after ``heading`` on ``docs/<page>`` in ``cwd`` with ``substitutions``
    (each must occur once); its globals."""
    code = _python_block(DOCS / page, heading)
    for old, new in substitutions.items():
        assert code.count(old) == 1, f"the script of {page} no longer contains {old!r}"
        code = code.replace(old, new)
    before = os.getcwd()
    os.chdir(cwd)
    try:
        scope: dict = {}
        exec(compile(code, f"docs/{page}", "exec"), scope)
    finally:
        os.chdir(before)
    return scope


def test_getting_started_script_runs(tmp_path):
    scope = _run_page_script("getting-started.md", "## The first script", GETTING_STARTED_SUBSTITUTIONS, tmp_path)
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


BENCH_SUBSTITUTIONS = {
    "recipe = bench.Recipe()": "recipe = bench.Recipe(hidden_size=6, steps=10, eval_every=5, test_size=16, batch=4)",
    "seeds=4,": "seeds=2,",
    '["adding:50,100"]': '["adding:8"]',
    '{"leaky": leaky, "lstm": "lstm"}': '{"leaky": leaky}',  # one compile less; built-ins: test_bench.py
}


def test_benchmark_your_own_cell_script_runs(tmp_path):
    scope = _run_page_script("guides/bench.md", "## A complete script", BENCH_SUBSTITUTIONS, tmp_path)
    rows = scope["rows"]
    assert [r.name for r in rows] == ["leaky"] and all(r["seeds"] == 2 for r in rows)
    assert len(rows[0]["log10_flow_at_init"]) == 8 and len(rows[0]["trained_log10_flow"]) == 8
    md = (tmp_path / "out" / "bench" / "results.md").read_text()
    assert "| **leaky** |" in md
    assert "Reference rows on adding, T=8" not in md  # the study has no T=8 row: nothing to compare
    assert (tmp_path / "runs" / "bench" / "adding-T8-leaky" / "row.json").exists()
