# trainflow: the commands. `make run` builds everything; `make test` checks everything.
SHELL := /bin/bash
# The interpreter that makes the virtualenv: the first of these on PATH (trainflow needs 3.11 or 3.12).
PYTHON ?= $(firstword $(foreach p,python3.11 python3.12 python3,$(shell command -v $(p) 2>/dev/null)))
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Everything make runs finds the virtualenv's python3, dvc and prefect first. DVC runs each stage's
# `python3 -m flows.<stage>` through the shell with this PATH: it activates no virtualenv itself.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Prefect's client state (result storage, profiles) stays in the project; the server is shared by every
# project of this user (flows/_server.py: ~/.trainflow/prefect unless TRAINFLOW_PREFECT_HOME says).
export PREFECT_HOME := $(CURDIR)/.prefect
# `make ui DB=postgres`: the shared server on a PostgreSQL cluster of its own (docs/orchestration.md).
DB ?=

.PHONY: install run test test-all ui ui-stop bench clean

# torch first, from the local CPU build: a bare `torch` requirement would pull a CUDA build (GBs).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python3 || $(PYTHON) -m venv $(VENV) || { echo "error: could not make $(VENV) with '$(PYTHON)'; on Debian/Ubuntu: apt-get install python3-venv (Python 3.11 or 3.12)" >&2; exit 2; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q torch==2.13.0 -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@test -d .git || (git init -q && git add -A && git commit -qm "trainflow" )
	dvc repro
	@python3 -m flows.summary

test: $(STAMP)
	ruff check .
	python3 -m pytest -m "not slow" -q

test-all: $(STAMP)
	ruff check .
	python3 -m pytest -q

ui: $(STAMP)
	@$(if $(DB),TRAINFLOW_PREFECT_DB=$(DB)) python3 -m flows._server ui

ui-stop:
	python3 -m flows._server stop

bench: $(STAMP)
	python3 benchmarks/orchestration.py

# Stops this project's warm runner first: deleting .prefect/ under it orphans it. The Prefect server is
# shared with other projects: `make ui-stop` stops it.
clean:
	-@test -x $(BIN)/python3 && python3 -c 'import flows._warm as w; w.stop()' >/dev/null 2>&1 || true
	rm -rf data models reports checkpoints .prefect dvc_plots

# ---- Deployments (prefect.yaml): `make ui` in one terminal, then `make deploy` and `make worker`.
.PHONY: deploy worker
POOL ?= trainflow
DVC_REMOTE ?= $(CURDIR)/.cache/dvc-remote
# The shared server `make ui` runs (found through its server.json), unless PREFECT_API_URL names another.
API_URL = $${PREFECT_API_URL:-$$(python3 -c 'from flows import _server; print(_server.running_url() or "")')}
NEED_API = api=$(API_URL); test -n "$$api" || { echo "No Prefect server: run 'make ui' first (or set PREFECT_API_URL)." >&2; exit 1; }; export PREFECT_API_URL=$$api

deploy: $(STAMP)
	@set -e; $(NEED_API); \
	dvc remote default >/dev/null 2>&1 || { dvc remote add --local -d local "$(DVC_REMOTE)" && echo "DVC remote 'local' (default, .dvc/config.local): $(DVC_REMOTE)"; }; \
	prefect work-pool inspect $(POOL) >/dev/null 2>&1 || prefect work-pool create $(POOL) --type process; \
	prefect work-pool set-concurrency-limit $(POOL) 1; \
	prefect --no-prompt deploy --all

# First marks Crashed the runs whose process died without reporting (they would hold the pool's slot).
worker: $(STAMP)
	@$(NEED_API); python3 -m flows._runs reap; exec prefect worker start --pool $(POOL)
