# `make repro`: install, then run the whole pipeline on the built-in sample data.
# `make test`:  install with dev extras, then run the test suite.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install install-dev repro test lint format bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed infra/scripts/requirements-checkov.txt
	$(BIN)/pip install -q -e '.[dev]'
	bash infra/scripts/install-checkov.sh >/dev/null  # own venv: its pins clash with ours
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

repro: install
	$(BIN)/dvc repro
	$(BIN)/cyclegan results

test: install-dev
	$(BIN)/pytest

# Benchmarks vs their baselines (bench/), table -> docs/BENCHMARKS.md; ~15 min on 2 cores.
# BENCH_ARGS=--full for longer runs at more settings, BENCH_ARGS=--gpu on a GPU machine.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf out mlflow.db mlruns
