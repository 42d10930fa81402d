# Tidings: two commands do all the set-up. `make run` serves the embedded default;
# `make test` runs lint, types, layer contracts and tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: run test lint typecheck contracts pytest migrate bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

run: $(STAMP)
	mkdir -p var
	$(BIN)/tidings migrate
	$(BIN)/tidings serve

migrate: $(STAMP)
	mkdir -p var
	$(BIN)/tidings migrate

lint: $(DEVSTAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(DEVSTAMP)
	$(BIN)/mypy src

contracts: $(DEVSTAMP)
	$(BIN)/lint-imports

pytest: $(DEVSTAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck contracts pytest

clean:
	rm -rf $(VENV) var/*.db var/*.db-wal var/*.db-shm
