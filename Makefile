# The README's two commands: `make demo` and `make test`. Each creates .venv when missing and
# installs what it needs; nothing else is required on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
JOBS ?= 2

.PHONY: demo test test-slow docs clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[plot]'
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(VENV)/.docs: $(VENV)/.core
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

demo: $(VENV)/.core
	$(PY) benchmarks/vanishing.py --quick --out out/demo

# The linters first (configured in pyproject.toml): a finding fails the run, as a failing test does.
test: $(VENV)/.dev
	$(VENV)/bin/ruff check rnnjax
	$(VENV)/bin/mypy
	$(PY) -m pytest -n $(JOBS) --dist worksteal

test-slow: $(VENV)/.dev
	$(PY) -m pytest -m slow

# The documentation site (mkdocs-material + mkdocstrings): built into site/; --strict turns every
# warning (a broken link, a name mkdocstrings cannot find) into a failure.
docs: $(VENV)/.docs
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) out site
