"""`campaigns trunk create|list` against the simulator, through the real client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from campaigns.cli import app
from campaigns.db import make_engine, session_factory
from campaigns.models import Trunk
from campaigns.settings import get_settings
from simulator.testing import SimulatorHandle, running_simulator

runner = CliRunner()


@pytest.fixture
def simulator(app_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatorHandle]:
    with running_simulator(speed=100) as sim:
        monkeypatch.setenv("LIVEKIT_URL", sim.url)
        monkeypatch.setenv("LIVEKIT_API_KEY", sim.api_key)
        monkeypatch.setenv("LIVEKIT_API_SECRET", sim.api_secret)
        get_settings.cache_clear()
        yield sim
    get_settings.cache_clear()


@pytest.fixture
def engine(app_env: str) -> Iterator[Engine]:
    engine = make_engine(app_env)
    yield engine
    engine.dispose()


def test_create_stores_limits_and_list_shows_them_without_the_password(
    simulator: SimulatorHandle, engine: Engine
) -> None:
    created = runner.invoke(
        app,
        [
            "trunk",
            "create",
            "--name",
            "carrier",
            "--address",
            "sip.carrier.example",
            "--numbers",
            "+12125550199,+12125550198",
            "--auth-username",
            "clinic",
            "--auth-password",
            "s3cret-pass",
            "--destination-country",
            "us",
            "--cps",
            "2.5",
            "--max-concurrent",
            "7",
            "--json",
        ],
    )
    assert created.exit_code == 0, created.output
    trunk_id = json.loads(created.stdout)["sip_trunk_id"]
    assert trunk_id.startswith("ST_")
    assert "s3cret-pass" not in created.output
    with session_factory(engine)() as session:
        stored = session.get(Trunk, trunk_id)
        assert stored is not None
        assert (stored.calls_per_second, stored.max_concurrent) == (2.5, 7)

    listed = runner.invoke(app, ["trunk", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["sip_trunk_id"]: row for row in json.loads(listed.stdout)}
    assert rows[trunk_id]["numbers"] == ["+12125550199", "+12125550198"]
    assert rows[trunk_id]["cps"] == 2.5
    assert rows[trunk_id]["destination_country"] == "US"
    assert "s3cret-pass" not in listed.output


def test_bad_credentials_are_one_clear_line(
    simulator: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEKIT_API_SECRET", "a-wrong-secret-that-is-long-enough-for-hs256")
    get_settings.cache_clear()
    result = runner.invoke(app, ["trunk", "list"])
    assert result.exit_code == 1
    assert "LIVEKIT_API" in result.stderr
    assert "Traceback" not in result.output


def test_invalid_trunk_input_is_refused_before_calling_livekit(simulator: SimulatorHandle) -> None:
    result = runner.invoke(
        app,
        ["trunk", "create", "--name", "x", "--address", "sip.example", "--numbers", "12", "--json"],
    )
    assert result.exit_code == 1
    assert "phone" in result.stderr or "number" in result.stderr
