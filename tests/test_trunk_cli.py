"""`campaigns trunk create|list` against the simulator, through the real client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit.api import ListSIPOutboundTrunkRequest, LiveKitAPI
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


# --- the SIP password stays off the command line ------------------------------------

CREATE = [
    "trunk",
    "create",
    "--name",
    "carrier",
    "--address",
    "sip.carrier.example",
    "--numbers",
    "+12125550199",
    "--auth-username",
    "clinic",
    "--json",
]


def _password_at_livekit(sim: SimulatorHandle, trunk_id: str) -> str:
    async def listing() -> str:
        lk = LiveKitAPI(sim.url, sim.api_key, sim.api_secret)
        try:
            found = await lk.sip.list_outbound_trunk(
                ListSIPOutboundTrunkRequest(trunk_ids=[trunk_id])
            )
        finally:
            await lk.aclose()
        [trunk] = found.items
        return str(trunk.auth_password)

    return asyncio.run(listing())


@pytest.mark.parametrize("source", ["file", "environment", "prompt"])
def test_the_password_comes_from_a_file_the_environment_or_a_hidden_prompt(
    simulator: SimulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    source: str,
) -> None:
    password = "pw-from-" + source
    args, typed = list(CREATE), None
    if source == "file":
        secret_file = tmp_path / "sip-password"
        secret_file.write_text(password + "\n")
        args += ["--auth-password-file", str(secret_file)]
    elif source == "environment":
        monkeypatch.setenv("CAMPAIGNS_TRUNK_AUTH_PASSWORD", password)
    else:
        typed = password + "\n"

    result = runner.invoke(app, args, input=typed)

    assert result.exit_code == 0, result.output
    assert password not in result.output  # the prompt does not echo it
    assert ("SIP password for clinic" in result.stderr) == (source == "prompt")
    trunk_id = json.loads(result.stdout)["sip_trunk_id"]
    assert _password_at_livekit(simulator, trunk_id) == password


def test_an_unreadable_password_file_is_one_line(
    simulator: SimulatorHandle, tmp_path: Path
) -> None:
    result = runner.invoke(app, [*CREATE, "--auth-password-file", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --auth-password-file: cannot read")
    assert result.stderr.count("\n") == 1
