# tickcast: the two commands are `make up` and `make test`; everything else is a step of them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tickcast-installed

.PHONY: setup venv up down status test test-unit test-integration test-e2e lint typecheck bench bench-gpu clean-state

## setup: create .venv, install tickcast with every extra, Kafka jars, MinIO, Chromium, the Go tools (idempotent)
setup:
	@MAKE="$(MAKE)" PYTHON="$(PYTHON)" bash scripts/setup.sh

## venv: the Python environment alone (a step of setup)
venv: $(STAMP)

# pip prints each package as it goes (no -q): the first install downloads torch, Ray and the
# rest, minutes of work that must not look like a hang.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "setup: creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "setup: updating pip in $(VENV)"
	@$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	@echo "setup: installing tickcast and its Python packages into $(VENV) (first time: several minutes, torch and Ray are large)"
	@$(BIN)/pip install --disable-pip-version-check -e '.[all,dev]'
	@touch $(STAMP)
	@echo "setup: Python packages installed"

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

## bench-gpu: on a machine with an NVIDIA GPU, install what is needed and run bench/gpu.py (exit 3: no GPU)
bench-gpu:
	@bash scripts/bench-gpu.sh
