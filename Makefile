# Everything installs itself: a fresh machine needs only Python 3.11+ and make.
SHELL := /bin/bash
PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
# checkov (tests/infra) in an environment of its own, locked in tools/checkov/: in .venv its
# dependencies would be imported by the services merely by being installed (aiohttp by nats-py).
CHECKOV := $(TOOLS)/checkov
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.PHONY: help install test lint format contracts nats-auth up reset bench chaos clean

help:
	@echo "make up       start the whole platform on http://localhost:8080 (PORT to change)"
	@echo "make test     run every test (real PostgreSQL and NATS, started from wheels)"
	@echo "make lint     ruff and mypy"
	@echo "make contracts  rewrite the event contracts and the docs made from them"
	@echo "make reset    delete local-mode data"
	@echo "make bench    measure the platform against its performance targets (docs/bench/)"
	@echo "make chaos    load the platform while killing its processes, then check every invariant (CHAOS_ARGS=--help)"

# uv itself, pinned, in .tools/ (no system-wide install, no curl | sh).
$(UV):
	$(PYTHON) tools/bootstrap_uv.py $(TOOLS)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml */pyproject.toml
	$(UV) sync --all-packages --locked --python $(PYTHON)
	@touch $@

$(CHECKOV)/.synced: $(UV) tools/checkov/uv.lock tools/checkov/pyproject.toml
	UV_PROJECT_ENVIRONMENT=$(abspath $(CHECKOV)) $(UV) sync --project tools/checkov --locked --python $(PYTHON)
	@touch $@

install: $(VENV)/.synced $(CHECKOV)/.synced

test: install
	UV=$(abspath $(UV)) $(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

up: install
	$(VENV)/bin/python -m ticketing_local up

reset: install
	$(VENV)/bin/python -m ticketing_local reset

bench: install
	$(VENV)/bin/python bench/run.py

# A few minutes by default; CHAOS_ARGS="--seed 42 --seconds 600" for a longer, repeatable run.
chaos: install
	$(VENV)/bin/python -m ticketing_chaos $(CHAOS_ARGS)

contracts: install
	$(VENV)/bin/ticketing-schemas

# The cluster's NATS users and their rights, from the event catalog.
nats-auth: install
	$(VENV)/bin/ticketing-nats-auth

clean:
	rm -rf $(VENV) $(TOOLS)
