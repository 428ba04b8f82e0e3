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
    (``benchmarks/results/vanishing/results.json``) whose ``cell`` is one of those names.
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
STUDY = ROOT / "benchmarks" / "results" / "vanishing" / "results.json"
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


def _relative(r: dict) -> str:
    """A trained row's cell in the table: loss / baseline (median over seeds when there are several)."""
    if r.get("diverged"):
        return "diverged"
    value = r.get("ratio_median", r.get("relative"))
    text = _fmt(value)
    if "seeds" in r and "solved_seeds" in r:
        text += f" ({r['solved_seeds']}/{r['seeds']} seeds solved)"
    return text + (" ✓" if r.get("solved") else "")


def vanishing_rows(cells: list[str]) -> str:
    """Markdown tables of the study's rows whose ``cell`` is in ``cells`` (both result formats:
    one seed per row with ``relative``, or several with ``ratio_median`` and ``solved_seeds``)."""
    if not STUDY.exists():
        return "*The gradient-vanishing study has no committed results yet.*\n"
    study = json.loads(STUDY.read_text())
    flows = [f for f in study.get("flows", []) if f.get("cell") in cells]
    runs = [r for r in study.get("runs", []) if r.get("cell") in cells]
    out = []
    if flows:
        out += [f"Gradient flow at initialisation (T={flows[0].get('T')}, "
                f"H={study.get('meta', {}).get('H')}, loss on the last output): `rate` is the "
                f"per-step factor of `||dL/dcarry_t||`, `ratio` is "
                f"`||dL/dcarry_0|| / ||dL/dcarry_T-1||`.", "",
                "| row | init | rate per step | ratio first/last |", "|---|---|---|---|"]
        out += [f"| `{f['name']}` | {f.get('init', '')} | {_fmt(f.get('rate'))} | "
                f"{_fmt(f.get('ratio'))} |" for f in flows]
        out.append("")
    else:
        out += ["Gradient flow at initialisation: *pending* (the study has no row for this cell "
                "yet).", ""]
    for task in sorted({r["task"] for r in runs}):
        rows = [r for r in runs if r["task"] == task]
        Ts = sorted({r["T"] for r in rows})
        out += [f"Trained on the {task} task: final test loss divided by the no-memory baseline "
                f"(✓: solved, below 0.1).", "",
                "| row | " + " | ".join(f"T={T}" for T in Ts) + " |",
                "|---|" + "---|" * len(Ts)]
        for name in dict.fromkeys(r["name"] for r in rows):
            by_T = {r["T"]: r for r in rows if r["name"] == name}
            out.append(f"| `{name}` | " + " | ".join(_relative(by_T[T]) if T in by_T else ""
                                                   for T in Ts) + " |")
        out.append("")
    if not runs:
        out += ["Trained rows: *pending* (the study has not trained this cell yet).", ""]
    return "\n".join(out) + "\n"


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


# ----------------------------------------------------------------------------- hooks


def on_files(files, config):
    for group in RESULT_GROUPS:
        for png in sorted((ROOT / group / "results").glob("*/*.png")):
            uri = f"assets/results/{group}/{png.parent.name}/{png.name}"
            files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    docs_dir = Path(config["docs_dir"])
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
