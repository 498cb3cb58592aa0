# Two commands for a new user: `make demo` (set up + run the main job offline) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint validate dev bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/python -m data_puller_dagster.demo

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

validate: venv
	$(BIN)/dagster definitions validate -m data_puller_dagster.definitions

dev: venv
	$(BIN)/dagster dev

bench: venv
	$(BIN)/python -m benchmarks

clean:
	rm -rf data demo_data .pytest_cache .ruff_cache
