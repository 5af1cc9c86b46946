# The two commands: `make run` and `make test`.  Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The model system's own clients (SciDx Rexec), at the versions they pin (dill 0.4.0,
# pyzmq 26.4.0, ...), apart from ours: tests run them unmodified against rexec.
LEGACY_VENV := .venv-legacy
LEGACY_STAMP := $(LEGACY_VENV)/.installed-stamp
LEGACY_CLIENTS := scidx-rexec==0.1.0 ndp-ep==0.9.0

.PHONY: run test lint format install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lab]'
	touch $(STAMP)

$(LEGACY_STAMP): Makefile
	test -x $(LEGACY_VENV)/bin/python || $(PYTHON) -m venv $(LEGACY_VENV)
	$(LEGACY_VENV)/bin/python -m pip install -q $(LEGACY_CLIENTS)
	touch $(LEGACY_STAMP)

install: $(STAMP) $(LEGACY_STAMP)

## Start rexec (broker + spawner on 127.0.0.1) and JupyterLab with notebooks/ open.
run: $(STAMP)
	$(VENV)/bin/rexec up --lab notebooks

## Lint, then every test.
test: $(STAMP) $(LEGACY_STAMP) lint
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) bench/roundtrip.py

clean:
	rm -rf $(VENV) $(LEGACY_VENV) .pytest_cache .ruff_cache test-artifacts
