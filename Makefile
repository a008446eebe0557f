# The README's commands. `.ci/run` calls the same targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PG_ADMIN ?= postgresql://postgres@127.0.0.1:5432/test
PG_CHECK_DB ?= campaigns_migration_check

.PHONY: install test lint check-migrations demo bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'

test:
	$(BIN)/pytest -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# `alembic check` against PostgreSQL: fails when models and migrations drift apart.
check-migrations:
	$(BIN)/python -c "import psycopg; c = psycopg.connect('$(PG_ADMIN)', autocommit=True); c.execute('DROP DATABASE IF EXISTS $(PG_CHECK_DB) WITH (FORCE)'); c.execute('CREATE DATABASE $(PG_CHECK_DB)')"
	CAMPAIGNS_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/$(PG_CHECK_DB) $(BIN)/campaigns db upgrade
	CAMPAIGNS_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/$(PG_CHECK_DB) $(BIN)/alembic check

demo:
	$(BIN)/campaigns demo

bench:
	$(BIN)/python bench/import_bench.py
