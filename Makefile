# trainflow: the commands. `make run` builds everything; `make test` checks everything.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect

.PHONY: install run test test-all ui ui-stop bench clean

# torch first, from the local CPU build: a bare `torch` requirement would pull a CUDA build (GBs).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q torch==2.13.0 -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@test -d .git || (git init -q && git add -A && git commit -qm "trainflow" )
	$(BIN)/dvc repro
	@echo
	@$(BIN)/dvc metrics show
	@echo
	@echo "Metrics: reports/evaluate/metrics.json   Report: reports/evaluate/report.md   Gate: reports/evaluate/gate.json   Figures: reports/evaluate/figures/"
	@echo "Models: models/   Runs in the Prefect UI: make ui, then open http://127.0.0.1:4200"

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

ui: $(STAMP)
	@echo "Prefect UI: http://127.0.0.1:4200  (runs of make run / dvc repro are in .prefect/)"
	$(BIN)/python -m flows._server stop >/dev/null
	$(BIN)/python -m flows._server serve --host 127.0.0.1 --port 4200

ui-stop:
	$(BIN)/python -m flows._server stop

bench: $(STAMP)
	$(BIN)/python benchmarks/orchestration.py

clean:
	rm -rf data models reports checkpoints .prefect dvc_plots

# ---- Deployments (prefect.yaml): `make ui` in one terminal, then `make deploy` and `make worker`.
.PHONY: deploy worker
POOL ?= trainflow
DVC_REMOTE ?= $(CURDIR)/.cache/dvc-remote
# The server `make ui` runs (found through .prefect/server.json), unless PREFECT_API_URL names another.
API_URL = $${PREFECT_API_URL:-$$($(BIN)/python -c 'from flows import _server; print(_server.running_url() or "")')}
NEED_API = api=$(API_URL); test -n "$$api" || { echo "No Prefect server: run 'make ui' first (or set PREFECT_API_URL)." >&2; exit 1; }; export PREFECT_API_URL=$$api

deploy: $(STAMP)
	@set -e; $(NEED_API); \
	$(BIN)/dvc remote default >/dev/null 2>&1 || { $(BIN)/dvc remote add --local -d local "$(DVC_REMOTE)" && echo "DVC remote 'local' (default, .dvc/config.local): $(DVC_REMOTE)"; }; \
	$(BIN)/prefect work-pool inspect $(POOL) >/dev/null 2>&1 || $(BIN)/prefect work-pool create $(POOL) --type process; \
	$(BIN)/prefect work-pool set-concurrency-limit $(POOL) 1; \
	$(BIN)/prefect --no-prompt deploy --all

worker: $(STAMP)
	@$(NEED_API); exec $(BIN)/prefect worker start --pool $(POOL)
