# tickcast: the two commands are `make up` and `make test`; everything else is a step of them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tickcast-installed

.PHONY: setup up down status test test-unit test-integration test-e2e lint typecheck bench clean-state

## setup: create .venv, install tickcast with every extra, Kafka jars, MinIO, Chromium (idempotent)
setup: $(STAMP)
	@bash scripts/install-system-deps.sh
	@$(BIN)/tickcast infra install
	@bash scripts/setup-chart-tools.sh
	@bash pulumi/setup.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[all,dev]'
	@touch $(STAMP)

## up: set everything up and run the whole platform on this machine (Ctrl-C stops it)
up: setup
	$(BIN)/tickcast up

## down: stop everything `make up` or `tickcast infra up` started
down:
	$(BIN)/tickcast down

status:
	$(BIN)/tickcast status

## test: set everything up and run the whole test suite
test: setup
	@bash scripts/run-tests.sh

test-unit: setup
	$(BIN)/python -m pytest tests/unit -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy tickcast producer consumer serving dashboard

bench: setup
	@bash scripts/run-benchmarks.sh
