# The README's commands. `.ci/run` calls the same targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_CHECK_DB ?= campaigns_migration_check

.PHONY: install test lint check-migrations demo demo-livekit livekit bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The whole pipeline on the embedded default (SQLite, no server), against the LiveKit simulator.
demo: $(STAMP)
	$(BIN)/campaigns demo

# The pinned livekit-server and LiveKit SIP bridge, built from the Go module proxy into
# .cache/livekit (minutes, once; nothing when they are there). The live tests need them.
livekit:
	harness/livekit/build.sh

# The demo through the real LiveKit on loopback: livekit-server, the SIP bridge, sipp phones.
demo-livekit: $(STAMP) livekit
	$(BIN)/campaigns demo --livekit local

# Starts throwaway PostgreSQL and Redis (Debian's `postgresql`, `redis-server`) on free loopback
# ports, unless CAMPAIGNS_TEST_DATABASE_URL / CAMPAIGNS_TEST_REDIS_URL name servers to use.
test: $(STAMP) livekit
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# `alembic check` against PostgreSQL: fails when models and migrations drift apart. On a
# throwaway server unless CAMPAIGNS_TEST_DATABASE_URL names one.
check-migrations: $(STAMP)
	$(BIN)/python -m harness.servers --postgres -- sh -ec '\
		url=$$($(BIN)/python -m harness.databases fresh $(PG_CHECK_DB)); \
		export CAMPAIGNS_DATABASE_URL=$$url; \
		$(BIN)/campaigns db upgrade; \
		$(BIN)/alembic check'

bench: $(STAMP)
	$(BIN)/python bench/import_bench.py
	$(BIN)/python bench/tick_bench.py
	$(BIN)/python bench/daily_bench.py
	$(BIN)/python bench/pacing_bench.py
	$(BIN)/python bench/audit_bench.py
	$(BIN)/python bench/agent_rehearsal.py
	$(BIN)/python bench/console_bench.py
