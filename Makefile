# nightly-etl. `make` lists the targets; `make test` and `make demo` set everything up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ROWS   ?= 100000
BENCH_ROWS ?= 1000000
BENCH_SCALE_ROWS ?= 0

.DEFAULT_GOAL := help
.PHONY: help install test test-unit test-integration test-e2e lint format audit bench bench-backfill demo clean up down

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv and install the project with its dev tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Two sessions (one per core), each with its own vhost, database and S3; a file's tests
# stay together so its module fixtures are built once.
test: install ## Run the whole suite (unit, integration, e2e) on the local services
	$(BIN)/pytest -n 2 --dist loadfile

test-unit: install ## Only the unit tests (no services needed)
	$(BIN)/pytest tests/unit

test-integration: install ## Only the integration tests (PostgreSQL, RabbitMQ, Redis, moto)
	$(BIN)/pytest tests/integration

test-e2e: install ## Only the end-to-end tests (worker subprocesses, API, CLI)
	$(BIN)/pytest tests/e2e

lint: install ## ruff (lint and format check) and mypy on the product code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy etl api beat

# pip-audit --strict: a dependency that could not be checked fails the audit.
audit: install ## Security: bandit on the code, pip-audit on the dependencies (needs pypi.org)
	$(BIN)/bandit -q -r etl api beat
	$(BIN)/pip-audit --strict --progress-spinner off

bench: install ## Benchmark: naive script, honest limits, pool-of-2 peer, the pipelines, a 10,000-chunk run (BENCH_ROWS=1000000; BENCH_SCALE_ROWS=10000000 adds a 10x run; BENCH_ARGS for more)
	$(BIN)/python -m bench --rows $(BENCH_ROWS) --scale-rows $(BENCH_SCALE_ROWS) $(BENCH_ARGS)

bench-backfill: install ## Benchmark: a backfill of 30 Berlin days x 100,000 rows, 2 workers; checks each run's rows
	$(BIN)/python -m bench.backfill

format: install ## Format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: install ## Seed $(ROWS) orders, run orders_daily once, print a summary
	$(BIN)/etl demo --rows $(ROWS)

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

up: ## Build the image and start the whole stack with docker compose (needs .env)
	@test -f .env || { echo "make up: no .env; copy .env.example to .env and fill in the secrets" >&2; exit 2; }
	docker compose up -d --build --wait

down: ## Stop the stack (volumes are kept; `docker compose down -v` deletes them)
	docker compose down
