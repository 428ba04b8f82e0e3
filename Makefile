# The README's two commands: `make demo` and `make test`. Each creates .venv when missing and
# installs what it needs; nothing else is required on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
JOBS ?= 2

.PHONY: demo test test-slow clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.core
	$(PY) benchmarks/vanishing.py --quick --out out/demo

test: $(VENV)/.dev
	$(PY) -m pytest -n $(JOBS)

test-slow: $(VENV)/.dev
	$(PY) -m pytest -m slow

clean:
	rm -rf $(VENV) out
