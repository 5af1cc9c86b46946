# The two commands: `make run` and `make test`.  Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint format install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lab]'
	touch $(STAMP)

install: $(STAMP)

## Start rexec (broker + spawner on 127.0.0.1) and JupyterLab with notebooks/ open.
run: $(STAMP)
	$(VENV)/bin/rexec up --lab notebooks

## Lint, then every test.
test: $(STAMP) lint
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
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts
