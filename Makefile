# citystream — the two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CITYSTREAM := $(BIN)/citystream

.DEFAULT_GOAL := help
.PHONY: help install demo test unit lint format typecheck bench stack-up stack-down stack-status clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install citystream with dev tools

demo: $(STAMP) ## the whole pipeline on one day of real Aarhus traffic, KPIs printed
	$(CITYSTREAM) demo

test: $(STAMP) ## lint, then every test on the real stack (started and stopped here)
	$(BIN)/ruff check .
	$(BIN)/mypy citystream schemas streams connectors infra
	$(CITYSTREAM) stack up
	set -o pipefail; status=0; \
	  $(BIN)/pytest $(PYTEST_ARGS) || status=$$?; \
	  $(CITYSTREAM) stack down; exit $$status

unit: $(STAMP) ## unit tests only (no services)
	$(BIN)/pytest tests/unit -q

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy citystream schemas streams connectors infra

format: $(STAMP) ## apply ruff formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## throughput and latency on the real stack (7-day Aarhus file)
	$(CITYSTREAM) stack up
	status=0; $(CITYSTREAM) bench || status=$$?; $(CITYSTREAM) stack down; exit $$status

stack-up: $(STAMP) ## start Kafka and the schema registry
	$(CITYSTREAM) stack up

stack-down: $(STAMP) ## stop them
	$(CITYSTREAM) stack down

stack-status: $(STAMP) ## are they up?
	$(CITYSTREAM) stack status

clean: ## remove runtime state (not the download cache)
	-$(CITYSTREAM) stack down
	rm -rf .citystream
