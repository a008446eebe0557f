"""Fixtures: a freshly migrated database per test, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from campaigns import migrate
from campaigns.db import get_engine, make_engine, session_factory
from campaigns.models import Appointment, Clinic
from campaigns.settings import get_settings

PG_ADMIN_DSN = os.environ.get(
    "CAMPAIGNS_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test"
)
PG_HOST_URL = os.environ.get(
    "CAMPAIGNS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432"
)
_TEMPLATE_DB = f"campaigns_tpl_{os.getpid()}"


def _pg_admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.encode())


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    _pg_admin(f'DROP DATABASE IF EXISTS "{_TEMPLATE_DB}"')
    _pg_admin(f'CREATE DATABASE "{_TEMPLATE_DB}"')
    migrate.upgrade(f"{PG_HOST_URL}/{_TEMPLATE_DB}")
    yield _TEMPLATE_DB
    _pg_admin(f'DROP DATABASE IF EXISTS "{_TEMPLATE_DB}" WITH (FORCE)')


def fresh_database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of the given kind; dropped after the test."""
    if kind == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "campaigns.db"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"
        return
    template_name: str = request.getfixturevalue("postgres_template")
    name = f"campaigns_t_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
    try:
        yield f"{PG_HOST_URL}/{name}"
    finally:
        get_engine.cache_clear()
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


def add_clinic(session: Session, **overrides: Any) -> Clinic:
    values: dict[str, Any] = {
        "name": "Lakeside Clinic",
        "timezone": "America/New_York",
        "country": "US",
    }
    values.update(overrides)
    clinic = Clinic(**values)
    session.add(clinic)
    session.flush()
    return clinic


def add_appointment(session: Session, clinic: Clinic, **overrides: Any) -> Appointment:
    assert clinic.id is not None
    values: dict[str, Any] = {
        "clinic_id": clinic.id,
        "external_id": f"A-{uuid.uuid4().hex[:8]}",
        "patient_name": "Ada Lovelace",
        "phone_e164": "+12125550100",
        "starts_at": datetime.now(UTC) + timedelta(days=2),
    }
    values.update(overrides)
    appointment = Appointment(**values)
    session.add(appointment)
    session.flush()
    return appointment
