# Everything bootstraps its own virtual environment from pyproject.toml: a fresh machine
# needs only Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench-engine bench-sdk bench-state clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]' -e ./sdk
	touch $(STAMP)

## run: the service on 127.0.0.1:8420 with an embedded Valkey (data in ./data)
run: $(STAMP)
	$(BIN)/lockgate-server

## test: lint, type-check, then the whole default suite (real Valkey, no network)
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check service sdk tests loadtests
	$(BIN)/ruff format --check service sdk tests loadtests

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

## bench-engine: the engine against redis-py's Lock and limits, same Valkey, same run
bench-engine: $(STAMP)
	$(BIN)/python -m loadtests.bench_engine

## bench-sdk: AsyncClient through the HTTP server vs redis-py's Lock and limits, same Valkey
bench-sdk: $(STAMP)
	$(BIN)/python -m loadtests.bench_sdk

## bench-state: bytes per object, snapshot pause, recovery of 1.2 million objects
bench-state: $(STAMP)
	$(BIN)/python -m loadtests.bench_state

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
