# reach: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install up down status run observe observe-down demo test test-unit test-integration chaos bench bench-policies bench-api lint fmt clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required (reach runs on Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create the virtualenv and install reach with its dev tools
	bash deploy/stack.sh install

up: ## install and start the local stack (Kafka, MariaDB, Redis); reuses running services
	bash deploy/stack.sh up

down: ## stop the local stack services this project started
	bash deploy/stack.sh down

status: ## show which stack services answer
	bash deploy/stack.sh status

run: $(STAMP) up ## run the pipeline (worker + API + local SMTP sink) with the example rules, until Ctrl-C
	bash deploy/run-local.sh

observe: up ## start Prometheus (:9090, /alerts) and Alertmanager (:9094) with reach's rules, beside make run
	bash deploy/stack.sh observe

observe-down: ## stop the Prometheus and Alertmanager of make observe
	bash deploy/stack.sh observe-down

demo: $(STAMP) ## send sample profiles and events to a running `make run`, then show what they caused
	bash deploy/demo.sh

test: $(STAMP) up ## run the whole suite against the real local stack
	$(BIN)/pytest -q

test-unit: $(STAMP) ## only the tests that need no services
	$(BIN)/pytest -q tests/unit

test-integration: $(STAMP) up ## only the tests through Kafka, MariaDB and Redis
	$(BIN)/pytest -q tests/integration

chaos: $(STAMP) up ## crash harness: 20 random kill -9 runs, then Redis paused, MariaDB and Kafka restarted (CHAOS_ARGS=--help)
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

bench: $(STAMP) up ## end-to-end pipeline throughput; last line is JSON
	$(BIN)/python -m bench.pipeline

bench-policies: $(STAMP) up ## the pipeline with and without caps and quiet hours (BENCH_POLICY_ROUNDS, 3) and the bare ceiling; last line is JSON
	BENCH_POLICY_ROUNDS=$${BENCH_POLICY_ROUNDS:-3} BENCH_TWO_WORKERS=0 BENCH_SUSTAIN_SECONDS=0 BENCH_TASK_MEMBERS=0 $(BIN)/python -m bench.pipeline

bench-api: $(STAMP) up ## HTTP API under wrk at 100 and 1,000 connections vs a bare FastAPI endpoint; last line is JSON
	bash deploy/stack.sh wrk
	$(BIN)/python -m bench.api

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy reach models rules streams agents channels api

fmt: $(STAMP) ## format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## remove the virtualenv and local state (not the stack's data; see `make down`)
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
