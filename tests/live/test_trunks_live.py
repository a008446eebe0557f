"""``campaigns trunk create|list`` against the real livekit-server on loopback.

The CLI is driven as in ``tests/e2e/test_trunk_cli.py``, with LIVEKIT_URL/KEY/SECRET
pointing at the session's stack: the trunk it creates is the one the server
itself lists, and the SIP password is never printed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit.api import ListSIPOutboundTrunkRequest, LiveKitAPI
from livekit.protocol.sip import SIPOutboundTrunkInfo
from sqlalchemy import Engine
from sqlmodel import select
from typer.testing import CliRunner

from campaigns.cli import app
from campaigns.db import make_engine, session_factory
from campaigns.models import AuditEvent, Trunk
from campaigns.settings import get_settings
from harness.livekit.stack import LiveKitStack

pytestmark = pytest.mark.live

runner = CliRunner()
PASSWORD = "s3cret-live-pass"


@pytest.fixture
def on_stack(
    app_env: str, livekit_stack: LiveKitStack, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LiveKitStack]:
    for name, value in livekit_stack.env().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield livekit_stack
    get_settings.cache_clear()


@pytest.fixture
def engine(app_env: str) -> Iterator[Engine]:
    engine = make_engine(app_env)
    yield engine
    engine.dispose()


def at_livekit(stack: LiveKitStack, trunk_id: str) -> SIPOutboundTrunkInfo:
    """The trunk as the server itself lists it."""

    async def listing() -> SIPOutboundTrunkInfo:
        lk = LiveKitAPI(stack.url, stack.api_key, stack.api_secret)
        try:
            found = await lk.sip.list_outbound_trunk(
                ListSIPOutboundTrunkRequest(trunk_ids=[trunk_id])
            )
        finally:
            await lk.aclose()
        [trunk] = found.items
        return trunk

    return asyncio.run(listing())


def test_a_created_trunk_is_listed_by_the_server_and_the_cli_without_its_password(
    on_stack: LiveKitStack, engine: Engine
) -> None:
    name = f"carrier-{uuid.uuid4().hex[:6]}"
    created = runner.invoke(
        app,
        [
            "trunk",
            "create",
            "--name",
            name,
            "--address",
            "sip.carrier.example",
            "--numbers",
            "+12125550199,+12125550198",
            "--auth-username",
            "clinic",
            "--auth-password",
            PASSWORD,
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
    assert PASSWORD not in created.output
    trunk_id = json.loads(created.stdout)["sip_trunk_id"]
    assert trunk_id.startswith("ST_")

    server = at_livekit(on_stack, trunk_id)
    assert server.name == name
    assert server.address == "sip.carrier.example"
    assert list(server.numbers) == ["+12125550199", "+12125550198"]
    assert server.auth_username == "clinic"
    assert server.destination_country == "US"

    listed = runner.invoke(app, ["trunk", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert PASSWORD not in listed.output
    rows = {row["sip_trunk_id"]: row for row in json.loads(listed.stdout)}
    assert rows[trunk_id] == {
        "sip_trunk_id": trunk_id,
        "name": name,
        "address": "sip.carrier.example",
        "numbers": ["+12125550199", "+12125550198"],
        "auth_username": "clinic",
        "destination_country": "US",
        "cps": 2.5,
        "max_concurrent": 7,
    }

    table = runner.invoke(app, ["trunk", "list"], env={"COLUMNS": "250"})  # no cell cut short
    assert table.exit_code == 0, table.output
    assert trunk_id in table.stdout and PASSWORD not in table.output

    with session_factory(engine)() as session:
        stored = session.get(Trunk, trunk_id)
        assert stored is not None
        assert (stored.calls_per_second, stored.max_concurrent) == (2.5, 7)
        assert all(
            PASSWORD not in event.payload for event in session.execute(select(AuditEvent)).scalars()
        )


def test_the_password_reaches_the_server_from_a_file_and_is_never_printed(
    on_stack: LiveKitStack, tmp_path: Path
) -> None:
    secret_file = tmp_path / "sip-password"
    secret_file.write_text(PASSWORD + "\n")
    created = runner.invoke(
        app,
        [
            "trunk",
            "create",
            "--name",
            "from-file",
            "--address",
            "sip.carrier.example",
            "--numbers",
            "+12125550197",
            "--auth-username",
            "clinic",
            "--auth-password-file",
            str(secret_file),
            "--json",
        ],
    )
    assert created.exit_code == 0, created.output
    assert PASSWORD not in created.output
    trunk_id = json.loads(created.stdout)["sip_trunk_id"]
    assert at_livekit(on_stack, trunk_id).auth_password == PASSWORD
