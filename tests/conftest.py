"""Fixtures: a freshly migrated database per test, on SQLite and on PostgreSQL.

The PostgreSQL server is ``$CAMPAIGNS_TEST_DATABASE_URL``, or a throwaway one that
``tests/servers.py`` starts for the run (see ``harness.databases`` for the older variables).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from campaigns.db import get_engine, make_engine, session_factory
from campaigns.settings import get_settings
from harness.databases import (
    drop_postgres,
    migrated_postgres_template,
    scratch_postgres,
    scratch_sqlite,
)

_TEMPLATE_DB = f"campaigns_tpl_{os.getpid()}"


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on PostgreSQL through ``pg_database_url`` is marked ``postgres`` like the others."""
    for item in items:
        uses = getattr(item, "fixturenames", ())
        if "pg_database_url" in uses and item.get_closest_marker("postgres") is None:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    scratch_sqlite(path)
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    yield migrated_postgres_template(_TEMPLATE_DB)
    drop_postgres(_TEMPLATE_DB)


def fresh_database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of the given kind; dropped after the test."""
    if kind == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        yield scratch_sqlite(tmp_path / "campaigns.db", template=template)
        return
    template_name: str = request.getfixturevalue("postgres_template")
    try:
        with scratch_postgres("campaigns_t", template=template_name) as url:
            yield url
    finally:
        get_engine.cache_clear()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database(request.param, request, tmp_path)


@pytest.fixture
def pg_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database("postgresql", request, tmp_path)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with session_factory(engine)() as session:
        yield session


@pytest.fixture
def app_env(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Point the engine's settings (and so the CLI) at the test database."""
    monkeypatch.setenv("CAMPAIGNS_DATABASE_URL", database_url)
    monkeypatch.setenv("CAMPAIGNS_BROKER_URL", f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    get_settings.cache_clear()
    get_engine.cache_clear()
    yield database_url
    get_engine().dispose()  # the CLI's pooled connections, before the database is dropped
    get_engine.cache_clear()
    get_settings.cache_clear()
