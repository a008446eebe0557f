"""Driving the ``campaigns`` command line in tests: invoke it, read its JSON, check its errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.orm import Session
from sqlmodel import col, select
from typer.testing import CliRunner, Result

from campaigns.cli import app
from campaigns.db import make_engine, session_factory
from campaigns.models import Appointment, Clinic
from tests.factories import add_appointment

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
CLINIC = "Lakeside"
APPOINTMENT_START = datetime(2026, 5, 14, 15, 0, tzinfo=UTC)  # Thursday 11:00 EDT

runner = CliRunner()


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


def cli_json(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """Exit 1, no traceback, exactly one ``error: ...`` line on stderr; returns that line."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@contextmanager
def database(url: str) -> Iterator[Session]:
    """Direct access to the test database, committed at the end."""
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            yield session
            session.commit()
    finally:
        engine.dispose()


def stored_appointments(url: str) -> int:
    with database(url) as session:
        return len(session.execute(select(Appointment.id)).all())


def add_clinic_cli(*extra: str) -> dict[str, Any]:
    document: dict[str, Any] = cli_json(
        "clinic", "add", CLINIC, "--timezone", "America/New_York", *extra
    )
    return document


def add_patient(url: str, external_id: str = "A-1", **overrides: Any) -> None:
    with database(url) as session:
        clinic = session.execute(select(Clinic).where(col(Clinic.name) == CLINIC)).scalar_one()
        values: dict[str, Any] = {
            "external_id": external_id,
            "phone_e164": "+12125550100",
            "starts_at": APPOINTMENT_START,
            "patient_timezone": "America/New_York",
        }
        values.update(overrides)
        add_appointment(session, clinic, **values)
