# pixelfleet: `make up` starts everything on embedded defaults; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup up test lint bench bench-e2e bench-zip bench-worker bench-ingest bench-pages bench-lists bench-stragglers bench-submit bench-watch clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

up: setup
	$(BIN)/pixelfleet up

# Two test processes (each with its own MariaDB database): the tests mostly wait on sockets.
test: setup
	$(BIN)/pytest -n 2 --durations=15

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: bench-e2e bench-zip bench-worker bench-ingest bench-pages bench-lists bench-stragglers bench-submit bench-watch

bench-e2e: setup
	$(BIN)/python -m bench.e2e

bench-zip: setup
	$(BIN)/python -m bench.zip

bench-worker: setup
	$(BIN)/python -m bench.worker

bench-ingest: setup
	$(BIN)/python -m bench.ingest

bench-pages: setup
	$(BIN)/python -m bench.pages

bench-lists: setup
	$(BIN)/python -m bench.lists

bench-stragglers: setup
	$(BIN)/python -m bench.stragglers

bench-submit: setup
	$(BIN)/python -m bench.submit

bench-watch: setup
	$(BIN)/python -m bench.watch

clean:
	rm -rf $(VENV) pixelfleet-data .pytest_cache .mypy_cache .ruff_cache
