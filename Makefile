# The two commands: `make run` and `make test`.  Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The JupyterLab extension: TypeScript in $(LAB), built once by jlpm into jupyter_ext/labextension,
# which the (editable) install copies into the venv's share/jupyter/labextensions.
LAB := jupyter_ext/lab
LABEXT := jupyter_ext/labextension/static/style.js
LAB_SOURCES := $(wildcard $(LAB)/src/*.ts $(LAB)/style/* $(LAB)/schema/*.json) \
	$(LAB)/package.json $(LAB)/yarn.lock $(LAB)/tsconfig.json
export PATH := $(abspath $(VENV))/bin:$(PATH)
export YARN_NPM_REGISTRY_SERVER ?= $(shell npm config get registry 2>/dev/null)

.PHONY: run test lint format install bench clean

$(VENV)/bin/jlpm:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q 'jupyterlab>=4.1,<5'

$(LABEXT): $(LAB_SOURCES) | $(VENV)/bin/jlpm
	cd $(LAB) && jlpm install --immutable && jlpm build:prod

$(STAMP): pyproject.toml $(LABEXT)
	$(PY) -m pip install -q -e '.[test,lab]'
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
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
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts jupyter_ext/labextension \
		$(LAB)/lib $(LAB)/node_modules $(LAB)/tsconfig.tsbuildinfo
