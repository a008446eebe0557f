# The README's commands. `.ci/run` calls the same targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_ADMIN ?= postgresql://postgres@127.0.0.1:5432/test
PG_CHECK_DB ?= campaigns_migration_check
PG_CHECK_URL := postgresql+psycopg://postgres@127.0.0.1:5432/$(PG_CHECK_DB)

.PHONY: install test lint check-migrations demo bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The whole pipeline on the embedded default (SQLite, no server), against the LiveKit simulator.
demo: $(STAMP)
	$(BIN)/campaigns demo

# Needs PostgreSQL and Redis on 127.0.0.1 (`.ci/run` starts them when they are down).
test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# `alembic check` against PostgreSQL: fails when models and migrations drift apart.
check-migrations: $(STAMP)
	$(BIN)/python -c "import psycopg; c = psycopg.connect('$(PG_ADMIN)', autocommit=True); c.execute('DROP DATABASE IF EXISTS $(PG_CHECK_DB) WITH (FORCE)'); c.execute('CREATE DATABASE $(PG_CHECK_DB)')"
	CAMPAIGNS_DATABASE_URL=$(PG_CHECK_URL) $(BIN)/campaigns db upgrade
	CAMPAIGNS_DATABASE_URL=$(PG_CHECK_URL) $(BIN)/alembic check

bench: $(STAMP)
	$(BIN)/python bench/import_bench.py
	$(BIN)/python bench/tick_bench.py
	$(BIN)/python bench/daily_bench.py
	$(BIN)/python bench/pacing_bench.py
	$(BIN)/python bench/audit_bench.py
	$(BIN)/python bench/agent_rehearsal.py
	$(BIN)/python bench/console_bench.py
