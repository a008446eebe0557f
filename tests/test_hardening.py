"""Secrets, logs and files: what an attacker on the same machine or with the logs would look for."""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from campaigns.cli import app
from campaigns.db import make_engine, session_factory
from campaigns.models import AttemptState, CallAttempt
from campaigns.settings import InsecureSecretError, Settings, get_settings, require_secrets
from tests.conftest import add_appointment, add_clinic
from tests.pipeline_harness import CAMPAIGNS

runner = CliRunner()
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/campaigns_production"
GOOD = "0123456789abcdef0123456789abcdef"  # 32 bytes
SECRET_VARIABLES = ("CAMPAIGNS_REPORT_SECRET", "LIVEKIT_API_SECRET", "CAMPAIGNS_AUDIT_KEY")


# --------------------------------------------------------------------------- secrets


def _settings(database_url: str, **secrets: str) -> Settings:
    """Settings with these values and the built-in defaults, whatever the environment says."""
    values: dict[str, Any] = {name: SecretStr(value) for name, value in secrets.items()}
    return Settings.model_construct(database_url=database_url, **values)


def test_the_embedded_default_runs_with_the_built_in_secrets() -> None:
    require_secrets(_settings("sqlite:///campaigns.db"))


def test_outside_the_embedded_default_every_built_in_secret_is_refused() -> None:
    with pytest.raises(InsecureSecretError) as refused:
        require_secrets(_settings(POSTGRES_URL))
    message = str(refused.value)
    assert "\n" not in message
    for variable in SECRET_VARIABLES:
        assert f"{variable} is the built-in default" in message


@pytest.mark.parametrize(
    ("field", "variable"),
    [
        ("report_secret", "CAMPAIGNS_REPORT_SECRET"),
        ("livekit_api_secret", "LIVEKIT_API_SECRET"),
        ("audit_key", "CAMPAIGNS_AUDIT_KEY"),
    ],
)
def test_a_short_secret_is_refused_by_name(field: str, variable: str) -> None:
    secrets = {"report_secret": GOOD, "livekit_api_secret": GOOD, "audit_key": GOOD}
    require_secrets(_settings(POSTGRES_URL, **secrets))
    secrets[field] = GOOD[:-1]
    with pytest.raises(InsecureSecretError, match=f"^{variable} is shorter than 32 bytes"):
        require_secrets(_settings(POSTGRES_URL, **secrets))


@pytest.fixture
def production_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CAMPAIGNS_DATABASE_URL", POSTGRES_URL)
    for variable in SECRET_VARIABLES:
        monkeypatch.setenv(variable, GOOD)
    monkeypatch.setenv("CAMPAIGNS_REPORT_SECRET", "change-me")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_worker_and_beat_refuse_to_start_with_one_line_and_exit_2(
    production_env: None, command: str
) -> None:
    result = runner.invoke(app, [command])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: CAMPAIGNS_REPORT_SECRET is shorter than 32 bytes")
    assert "LIVEKIT_API_SECRET" not in result.stderr
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- SQL parameters

PHONE = "+12125550163"


def test_a_failing_statement_puts_no_number_in_logs_or_its_traceback(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # logs every statement
    with session_factory(engine)() as session:
        clinic = add_clinic(session)
        appointment = add_appointment(session, clinic, phone_e164=PHONE)
        assert appointment.id is not None and clinic.id is not None
        for _ in range(2):  # the same attempt number twice: a unique-constraint violation
            session.add(
                CallAttempt(
                    appointment_id=appointment.id,
                    clinic_id=clinic.id,
                    attempt_number=1,
                    state=AttemptState.COMPLETED,
                    due_at=datetime.now(UTC),
                    number_called=PHONE,
                )
            )
        with pytest.raises(IntegrityError) as failure:
            session.flush()
        logging.getLogger("campaigns.test").exception("the flush failed")
    formatted = "".join(traceback.format_exception(failure.value))
    assert "call_attempt" in formatted  # the statement is there, its parameters are not
    assert PHONE not in formatted
    assert PHONE not in caplog.text
    assert "INSERT INTO" in caplog.text


# --------------------------------------------------------------------------- files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_engine_creates_its_sqlite_database_owner_only(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'campaigns.db'}")
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x)")
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
            created = sorted((tmp_path / "data").iterdir())
            engine.dispose()
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "data") == 0o700
    assert [p.name for p in created][:2] == ["campaigns.db", "campaigns.db-shm"]
    for path in created:  # the database and its WAL files
        assert _mode(path) == 0o600, path.name


def test_the_cli_creates_its_data_folder_and_files_owner_only(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    subprocess.run(
        [CAMPAIGNS, "db", "upgrade"], cwd=tmp_path, env=env, check=True, capture_output=True
    )
    data = tmp_path / ".campaigns"
    assert _mode(data) == 0o700
    files = list(data.iterdir())
    assert files
    for path in files:
        assert _mode(path) == 0o600, path.name


# --------------------------------------------------------------------------- the simulator


def test_the_simulator_is_reachable_from_this_host_only() -> None:
    help_text = runner.invoke(app, ["simulator", "--help"], env={"COLUMNS": "200"}).output
    assert "127.0.0.1" in help_text
    compose = (Path(__file__).parent.parent / "docker-compose.yml").read_text()
    published = [
        port.strip().strip("\"'")
        for ports in re.findall(r"^\s*ports:\s*\[(.*)\]", compose, re.MULTILINE)
        for port in ports.split(",")
    ]
    assert published and "ports:" not in re.sub(r"ports:\s*\[", "", compose)
    assert all(str(port).startswith("127.0.0.1:") for port in published), published
