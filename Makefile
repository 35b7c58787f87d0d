# django-dataflows developer commands. `make help` lists them.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# PostgreSQL for the second half of the test run (trust auth on a local server).
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/dataflows
REDIS_URL ?= redis://127.0.0.1:6379/0

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
LINT_PATHS := $(wildcard src tests bench example_project docs/conf.py)
# This machine's pip configuration names extra local indexes that may be absent; say so once, not per package.
PIP_QUIET_FILTER := grep -v 'is ignored: it is neither a file nor a directory' || true

export PYTHONPATH := $(CURDIR)
export PYTHONDONTWRITEBYTECODE := 1

.DEFAULT_GOAL := help
.PHONY: help install demo demo-celery test lint typecheck migrations-check test-sqlite test-postgres coverage docs tox bench clean

help:  ## List the commands.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "==> Creating $(VENV) and installing django-dataflows with its test tools"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1" 2>&1 | { $(PIP_QUIET_FILTER); }
	@$(BIN)/python -m pip install --quiet --progress-bar off -e ".[celery,tasks,api,postgres,redis,metrics,otel]" \
		--group test --group lint --group docs 2>&1 | { $(PIP_QUIET_FILTER); }
	@touch $(STAMP)

install: $(STAMP)  ## Create .venv with the package, its extras and the test tools.

demo: $(STAMP)  ## Run the example project (SQLite, in-process backend).
	@$(BIN)/python -m example_project.demo

demo-celery: $(STAMP)  ## The example project on Celery with Redis ($$REDIS_URL): starts a worker too.
	@$(BIN)/python -c "import redis, sys; redis.Redis.from_url(sys.argv[1]).ping()" "$(REDIS_URL)" \
		2>/dev/null || { echo "Redis does not answer at $(REDIS_URL): start redis-server or set REDIS_URL=redis://HOST:PORT/DB."; exit 1; }
	@echo "==> Starting a Celery worker (queue 'default') and the demo; Ctrl+C stops both"
	@export CELERY_BROKER_URL="$(REDIS_URL)"; \
		$(BIN)/celery -A example_project worker -Q default --concurrency=2 --loglevel=INFO & \
		worker=$$!; trap 'kill $$worker 2>/dev/null; wait $$worker 2>/dev/null || true' EXIT; \
		$(BIN)/python -m example_project.demo

test: $(STAMP)  ## Run every check, build the docs, and run the whole suite (SQLite, then PostgreSQL).
	@$(MAKE) --no-print-directory lint typecheck migrations-check docs
	@rm -f .coverage .coverage.*
	@$(MAKE) --no-print-directory test-sqlite test-postgres
	@$(MAKE) --no-print-directory coverage

lint: $(STAMP)  ## ruff check and format check; no import circle in the package.
	@echo "==> ruff"
	@$(BIN)/ruff check $(LINT_PATHS)
	@$(BIN)/ruff format --check $(LINT_PATHS)
	@echo "==> import circles"
	@$(BIN)/python .ci/import_cycles.py src/django_dataflows

typecheck: $(STAMP)  ## mypy with django-stubs.
	@echo "==> mypy"
	@$(BIN)/mypy

migrations-check: $(STAMP)  ## Fail if a model change has no migration.
	@echo "==> makemigrations --check"
	@$(BIN)/django-admin makemigrations --check --dry-run --settings=tests.settings

test-sqlite: $(STAMP)  ## The suite on SQLite (PostgreSQL-only tests deselected).
	@echo "==> pytest on SQLite"
	@$(BIN)/coverage run -m pytest -m "not postgres" $(PYTEST_ARGS)

test-postgres: $(STAMP)  ## The suite on PostgreSQL ($$POSTGRES_URL).
	@echo "==> pytest on PostgreSQL"
	@# The example project runs on its own SQLite file whatever DATABASE_URL says: the SQLite
	@# run above ran it; here only its PostgreSQL test runs.
	@DATABASE_URL=$(POSTGRES_URL) $(BIN)/coverage run -m pytest -m "not example or postgres" $(PYTEST_ARGS)

coverage: $(STAMP)  ## Combine coverage of both runs; fail under 90 % (branches included).
	@echo "==> coverage"
	@$(BIN)/coverage combine --quiet
	@$(BIN)/coverage report --fail-under=90

# `make tox TOX_COMMAND=run-parallel TOX_ARGS='-p 2 -e …'` runs envs side by side.
TOX_COMMAND ?= run
# pyenv's interpreters for the matrix, put on PATH so tox finds python3.12 and python3.13.
PYENV_PATHS = $(shell for v in $$(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[123]\.'); do printf '%s:' "$$(pyenv root)/versions/$$v/bin"; done)

tox: $(STAMP)  ## The Django 5.2 / 6.0 / 6.1 matrix (SQLite, plus 5.2 on PostgreSQL).
	@$(BIN)/python -m pip install --quiet tox
	@PATH="$(PYENV_PATHS)$$PATH" $(BIN)/tox $(TOX_COMMAND) $(TOX_ARGS)

docs: $(STAMP)  ## Build the documentation into docs/_build/html (a warning fails the build).
	@echo "==> sphinx-build"
	@$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

bench: $(STAMP)  ## The benchmarks (PostgreSQL and Redis); figures are printed, never asserted.
	@DATABASE_URL=$(POSTGRES_URL)_bench $(BIN)/python bench/heartbeat.py
	@DATABASE_URL=$(POSTGRES_URL)_bench_celery $(BIN)/python bench/celery_throughput.py
	@DATABASE_URL=$(POSTGRES_URL)_bench_sync $(BIN)/python bench/sync_runs.py
	@DATABASE_URL=$(POSTGRES_URL)_bench_start $(BIN)/python bench/start_answer.py
	@DATABASE_URL=$(POSTGRES_URL)_bench_stats $(BIN)/python bench/stats.py
	@DATABASE_URL=$(POSTGRES_URL)_bench_history $(BIN)/python bench/history.py
	@DATABASE_URL=$(POSTGRES_URL)_bench_writes $(BIN)/python bench/run_writes.py
	@DATABASE_URL=$(POSTGRES_URL)_bench_faults $(BIN)/python bench/frozen_broker.py
	@DATABASE_URL=$(POSTGRES_URL)_bench_pipelines $(BIN)/python bench/pipelines.py
	@DATABASE_URL=$(POSTGRES_URL)_live_bench $(BIN)/python bench/live.py
	@DATABASE_URL=$(POSTGRES_URL)_limits_bench $(BIN)/python bench/live_limits.py
	@DATABASE_URL=$(POSTGRES_URL)_live_memory_bench $(BIN)/python bench/live_memory.py
	@DATABASE_URL=$(POSTGRES_URL)_bench_obs $(BIN)/python bench/observability.py
	@DATABASE_URL=$(POSTGRES_URL)_owners_bench $(BIN)/python bench/owners.py

clean:  ## Remove the virtualenv and build leftovers.
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache build dist docs/_build example_project/var test-artifacts
