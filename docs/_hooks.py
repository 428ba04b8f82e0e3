"""mkdocs hooks for the rnnjax documentation site (``hooks:`` in ``mkdocs.yml``).

They keep the site in step with the code and the committed results, so a strict build fails
instead of going stale:

- ``on_files``: copies the committed plots (``benchmarks/results/*/*.png``,
  ``experiments/results/*/*.png``) into the site as ``assets/results/<group>/<study>/<file>``.
- ``on_page_markdown``:
  - ``<!-- rnnjax-public-names -->`` becomes a table of every public name of ``rnnjax`` with a
    link to the entry that documents it; a name that no page documents fails the build.
  - ``<!-- other-results -->`` becomes the markdown files and plots of every committed result
    folder that ``docs/results/index.md`` does not list (so a new study is on the site at once).
  - ``<!-- vanishing: lstm, lstm-peephole -->`` becomes the rows of the gradient-vanishing study
    whose ``cell`` is one of those names: the gradient flow at initialisation in log space
    (``benchmarks/results/vanishing-flow/results.json``: ``rate``, ``log10_norms``) and the
    multi-seed training rows (``benchmarks/results/vanishing-multiseed/results.json``: ``runs``
    with ``per_seed``, ``solved_seeds``, ``final_loss_median``, ``steps_to_solve_median``).
  - ``--8<-- "path"`` (a committed result file) is replaced by the file, its headings demoted
    below the section that includes it, so the page's table of contents lists every section.
  - ``::: rnnjax.<name>`` for a name that ``rnnjax`` does not (yet) export becomes a "pending" note
    when the page's front matter lists it under ``pending:``; otherwise mkdocstrings fails on it.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import types
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
# The gradient-vanishing study on the cell pages: the multi-seed training study and the gradient
# flow at initialisation, measured in log space (the single-seed study they replaced is not shown).
MULTISEED = ROOT / "benchmarks" / "results" / "vanishing-multiseed" / "results.json"
FLOW = ROOT / "benchmarks" / "results" / "vanishing-flow" / "results.json"
RESULT_GROUPS = ("benchmarks", "experiments")
DIRECTIVE = re.compile(r"^::: *([\w.]+) *$", re.M)
# Modules documented by a page of their own that is not a ``::: rnnjax.<module>`` directive.
MODULE_PAGES = {"cells": "cells/index.md"}


def _rnnjax():
    return importlib.import_module("rnnjax")


def public_names(module=None) -> dict[str, object]:
    """Public attributes of ``rnnjax`` (``__all__`` when it defines one), lazy submodules included."""
    module = module or _rnnjax()
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    return {n: getattr(module, n) for n in names}


def documented(docs_dir: Path) -> dict[str, str]:
    """Every ``::: identifier`` directive in the pages -> the page (relative to docs_dir) holding it."""
    out: dict[str, str] = {}
    for page in sorted(docs_dir.rglob("*.md")):
        for ident in DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            out.setdefault(ident, page.relative_to(docs_dir).as_posix())
    return out


def _anchor(name: str, obj: object, docs: dict[str, str]) -> str | None:
    """The identifier of the entry that documents ``rnnjax.<name>``, or None."""
    if f"rnnjax.{name}" in docs:
        return f"rnnjax.{name}"
    module = getattr(obj, "__module__", None)
    if module and (f"{module}.{name}" in docs or module in docs):
        return f"{module}.{name}"  # on the page of its module
    return None


def public_table(docs_dir: Path) -> str:
    docs = documented(docs_dir)
    rows, missing = [], []
    for name, obj in sorted(public_names().items(), key=lambda kv: kv[0].lower()):
        if isinstance(obj, types.ModuleType):
            if name in MODULE_PAGES:
                target = MODULE_PAGES[name]
                rows.append(f"| [`rnnjax.{name}`](../{target}) | module |")
            elif f"rnnjax.{name}" in docs:
                rows.append(f"| [`rnnjax.{name}`][rnnjax.{name}] | module |")
            else:
                missing.append(f"rnnjax.{name} (module: add docs/api/{name}.md with "
                               f"'::: rnnjax.{name}')")
            continue
        if name == "__version__" or not callable(obj):
            continue
        ident = _anchor(name, obj, docs)
        if ident is None:
            missing.append(f"rnnjax.{name} (defined in {getattr(obj, '__module__', '?')})")
            continue
        kind = "class" if isinstance(obj, type) else "function"
        rows.append(f"| [`rnnjax.{name}`][{ident}] | {kind} |")
    if missing:
        raise PluginError("public names of rnnjax that no documentation page documents:\n  "
                          + "\n  ".join(missing))
    return "| name | kind |\n|---|---|\n" + "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- the study's rows


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if v == 0:
        return "0"
    return f"{v:.4f}" if 1e-3 <= abs(v) < 1e3 else f"{v:.2e}"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _rel(path: Path) -> str:
    try:
        return path.parent.relative_to(ROOT).as_posix() + "/"
    except ValueError:
        return path.parent.as_posix() + "/"


def flow_rows(cells: list[str]) -> list[str]:
    """The table of the log-space gradient flow at initialisation (``FLOW``) for ``cells``."""
    study = _load(FLOW)
    flows = [f for f in (study or {}).get("flows", []) if f.get("cell") in cells]
    if not flows:
        return ["Gradient flow at initialisation: *pending* (the study has no row for this cell "
                "yet).", ""]
    out = [f"Gradient flow at initialisation (`{_rel(FLOW)}`: T={flows[0].get('T')}, "
           f"H={study.get('meta', {}).get('H')}, loss on the last output), computed in log space: "
           "`rate` is the per-step factor of `||dL/dcarry_t||`; the next columns are "
           "`log10 ||dL/dcarry_t||` at the first and the last step (the last finite value: where the "
           "last output does not read the last carry, its norm is 0) and their difference (how many "
           "decades the gradient loses, or gains when positive, on its way back to the first step).",
           "",
           "| row | init | rate per step | log10 first | log10 last | decades first − last |",
           "|---|---|---|---|---|---|"]
    for f in flows:
        first, last = log10_ends(f.get("log10_norms") or [])
        diff = None if first is None or last is None else first - last
        out.append(f"| `{f['name']}` | {f.get('init', '')} | {_fmt(f.get('rate'))} | "
                   f"{_log(first)} | {_log(last)} | {_log(diff)} |")
    return out + [""]


def log10_ends(log10_norms: list) -> tuple[float | None, float | None]:
    """The first and the last finite values of ``log10_norms`` (``None`` stands for ``-inf``)."""
    finite = [v for v in log10_norms if v is not None and math.isfinite(v)]
    return (finite[0], finite[-1]) if finite else (None, None)


def _log(v) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:+.2f}"


def _per_seed(r: dict) -> str:
    """Each seed's final test loss, ✓ where the seed solved the task (with its steps to solve)."""
    out = []
    for s in r.get("per_seed", []):
        text = _fmt(s.get("final_test_loss"))
        if s.get("steps_to_solve") is not None:
            text += f" ✓{s['steps_to_solve']}"
        out.append(text)
    return ", ".join(out)


def trained_rows(cells: list[str]) -> list[str]:
    """The tables of the multi-seed study (``MULTISEED``) for ``cells``: one line per row and ``T``."""
    study = _load(MULTISEED)
    runs = [r for r in (study or {}).get("runs", []) if r.get("cell") in cells]
    if not runs:
        return ["Trained rows: *pending* (the multi-seed study has not trained this cell yet).", ""]
    out = []
    for task in sorted({r["task"] for r in runs}):
        rows = [r for r in runs if r["task"] == task]
        out += [f"Trained on the {task} task (`{_rel(MULTISEED)}`; the seeds of a row train at once "
                "as one sweep): the median over seeds of the final test loss and of that loss "
                "divided by the no-memory baseline, the seeds that solved the task (an evaluation "
                "below 0.1 × the baseline; ✓: at least half of them), the median steps to solve "
                "(n/a: not within the budget for half the seeds), and each seed's final test loss "
                "(✓N: solved at step N). Rows marked *paper* use the paper's own recipe.", "",
                "| row | T | seeds solved | final loss (median) | loss / baseline (median) | "
                "steps to solve (median) | final loss per seed |",
                "|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (list(dict.fromkeys(x["name"] for x in rows)).index(r["name"]),
                                             r["T"])):
            name = f"`{r['name']}`" + (" *paper*" if r.get("paper") else "")
            solved = f"{r.get('solved_seeds')}/{r.get('seeds')}" + (" ✓" if r.get("solved") else "")
            if r.get("diverged_seeds"):
                solved += f" ({r['diverged_seeds']} diverged)"
            steps = r.get("steps_to_solve_median")
            out.append(f"| {name} | {r['T']} | {solved} | {_fmt(r.get('final_loss_median'))} | "
                       f"{_fmt(r.get('ratio_median'))} | {'n/a' if steps is None else f'{steps:.0f}'} | "
                       f"{_per_seed(r)} |")
        out.append("")
    return out


STATE = ROOT / "benchmarks" / "results" / "state-tracking" / "results.json"


def state_rows(cells: list[str]) -> list[str]:
    """The state-tracking study's rows (``STATE``) of ``cells``: per task, the best learning rate's
    median accuracy and solved seeds, and the robustness over the learning-rate grid."""
    data = _load(STATE)
    if data is None:
        return []
    by: dict = {}
    for r in data["rows"]:
        if r["row"] in cells:
            by.setdefault((r["row"], r["task"], r["T"]), []).append(r)
    if not by:
        return []
    out = ["### State tracking and recall", "",
           "From the [state-tracking study](../results/state-tracking.md): the best of 5 learning rates "
           "(median held-out accuracy, seeds solved) and the robustness (learning rates whose row is "
           "solved).", "", "| cell | task | T | best lr | accuracy (solved) | robustness |", "|---|---|---|---|---|---|"]
    for (row, task, T), rs in by.items():
        best = max(rs, key=lambda r: -1.0 if r["final_loss_median"] is None else r["final_loss_median"])
        out.append(f"| {row} | {task} | {T} | {best['recipe']['lr']:g} | {_fmt(best['final_loss_median'])} "
                   f"({best['solved_seeds']}/{best['seeds']}) | {sum(r['solved'] for r in rs)}/{len(rs)} |")
    out.append("")
    return out


def vanishing_rows(cells: list[str]) -> str:
    """Markdown for a cell page: the log-space gradient flow at initialisation (``FLOW``), the
    multi-seed training rows (``MULTISEED``) whose ``cell`` is in ``cells``, and their rows of the
    state-tracking study (``STATE``)."""
    return "\n".join(flow_rows(cells) + trained_rows(cells) + state_rows(cells)) + "\n"


# ----------------------------------------------------------------------------- other results


def result_dirs() -> list[tuple[str, Path]]:
    """Every committed result folder that holds files: ``(group, path)``."""
    return [(group, d) for group in RESULT_GROUPS
            for d in sorted((ROOT / group / "results").glob("*"))
            if d.is_dir() and any(f.is_file() for f in d.iterdir())]


def other_results(docs_dir: Path) -> str:
    """Sections for the result folders that ``results/index.md`` does not list (its table names
    each covered folder as ``<group>/results/<name>/``): their markdown files and plots."""
    index = (docs_dir / "results" / "index.md").read_text(encoding="utf-8")
    out = []
    for group, d in result_dirs():
        if f"{group}/results/{d.name}/" in index:
            continue
        out += [f"## `{group}/results/{d.name}/`", ""]
        mds = sorted(d.glob("*.md"), key=lambda f: (f.name != "COMMAND.md", f.name))
        for md in mds:
            text = md.read_text(encoding="utf-8")
            # the folder's own headings go below this page's section heading
            out += [re.sub(r"^(#{1,5}) ", r"#\1# ", text, flags=re.M), ""]
        for png in sorted(d.glob("*.png")):
            out += [f"![{png.name}](../assets/results/{group}/{d.name}/{png.name})", ""]
    return "\n".join(out) + "\n" if out else "*Every committed result has a page of its own.*\n"


# ----------------------------------------------------------------------------- included files

SNIPPET = re.compile(r'^--8<-- "([^"]+)"[ \t]*$')
HEADING = re.compile(r"^(#{1,6})[ \t]")
FENCE = re.compile(r"^[ \t]*(```|~~~)")


def _headings(lines: list[str]):
    """``(index, level)`` of every Markdown heading in ``lines`` outside fenced code blocks."""
    fence = None
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if m:
            fence = None if fence == m.group(1) else (fence or m.group(1))
            continue
        h = HEADING.match(line)
        if h and fence is None:
            yield i, len(h.group(1))


def include_files(markdown: str) -> str:
    """Expands each ``--8<-- "path"`` line (a committed result, relative to the repository) here,
    with the file's headings demoted below the section that includes it: a results file's own
    ``# Title`` becomes a subsection of the page, so the page's table of contents lists every
    section (pymdownx.snippets would keep it a second top-level heading)."""
    lines = markdown.split("\n")
    level_at = dict(_headings(lines))
    out, level = [], 1
    for i, line in enumerate(lines):
        level = level_at.get(i, level)
        m = SNIPPET.match(line)
        if not m:
            out.append(line)
            continue
        path = ROOT / m.group(1)
        if not path.is_file():
            raise PluginError(f"{line.strip()}: no file {path}")
        body = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
        heads = dict(_headings(body))
        shift = level + 1 - min(heads.values()) if heads else 0
        for j, level_j in heads.items():
            body[j] = "#" * min(6, level_j + shift) + body[j][level_j:]
        out += body
    return "\n".join(out)


# ----------------------------------------------------------------------------- hooks


def on_files(files, config):
    for group in RESULT_GROUPS:
        for png in sorted((ROOT / group / "results").glob("*/*.png")):
            uri = f"assets/results/{group}/{png.parent.name}/{png.name}"
            files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    docs_dir = Path(config["docs_dir"])
    markdown = include_files(markdown)
    if "<!-- rnnjax-public-names -->" in markdown:
        markdown = markdown.replace("<!-- rnnjax-public-names -->", public_table(docs_dir))
    if "<!-- other-results -->" in markdown:
        markdown = markdown.replace("<!-- other-results -->", other_results(docs_dir))

    def study(m):
        return vanishing_rows([c.strip() for c in m.group(1).split(",") if c.strip()])

    markdown = re.sub(r"<!-- vanishing: *([\w\-, ]+?) *-->", study, markdown)

    pending = page.meta.get("pending") or []
    if pending:
        module = _rnnjax()

        def directive(m):
            ident = m.group(1)
            name = ident.removeprefix("rnnjax.")
            if name in pending and not hasattr(module, name):
                return (f'!!! note "Pending"\n    `rnnjax.{name}` is being added; its API entry '
                        f"appears here once `rnnjax` exports it.\n")
            return m.group(0)

        markdown = DIRECTIVE.sub(directive, markdown)
    return markdown
