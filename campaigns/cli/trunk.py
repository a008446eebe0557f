"""``campaigns trunk``: LiveKit SIP outbound trunks and the engine's limits for each.

The SIP password is never printed or logged; ``--auth-password-file``, the
environment or the hidden prompt keep it out of the shell history and the
process list."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from campaigns.cli import common
from campaigns.errors import InvalidInputError
from campaigns.settings import get_settings
from campaigns.telephony import trunks
from campaigns.telephony.port import Telephony

app = common.command_group("LiveKit SIP outbound trunks and their calling limits.")

TRUNK_PASSWORD_VARIABLE = "CAMPAIGNS_TRUNK_AUTH_PASSWORD"  # noqa: S105 - a variable name

T = TypeVar("T")


def _on_livekit(action: Callable[[Telephony], Awaitable[T]]) -> T:
    """Run ``action`` against the LiveKit server of the settings, then close the client."""
    from campaigns.telephony.livekit_gateway import LiveKitTelephony

    async def run() -> T:
        async with LiveKitTelephony.from_settings(get_settings()) as telephony:
            return await action(telephony)

    return asyncio.run(run())


def _trunk_password(
    username: str | None, password: str | None, password_file: Path | None
) -> str | None:
    """The SIP password: the command line, else the environment, else a hidden prompt.

    ``--auth-password-file`` keeps it out of the shell history and the process list.
    """
    if password_file is not None:
        if password is not None:
            raise InvalidInputError("give --auth-password or --auth-password-file, not both")
        try:
            password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"--auth-password-file: cannot read {password_file}") from exc
        if not password:
            raise InvalidInputError(f"--auth-password-file: {password_file} is empty")
    password = password or os.environ.get(TRUNK_PASSWORD_VARIABLE) or None
    if username and password is None:
        # On stderr: with --json, stdout carries the JSON document only.
        password = typer.prompt(f"SIP password for {username}", hide_input=True, err=True)
    return password


@app.command("create")
def trunk_create(
    name: Annotated[str, typer.Option()],
    address: Annotated[str, typer.Option(help="Carrier SIP host")],
    numbers: Annotated[str, typer.Option(help="Caller-ID numbers, E.164, comma separated")],
    auth_username: Annotated[str | None, typer.Option()] = None,
    auth_password: Annotated[
        str | None,
        typer.Option(
            help="Seen by other users of this machine: prefer --auth-password-file, "
            f"${TRUNK_PASSWORD_VARIABLE} or the prompt"
        ),
    ] = None,
    auth_password_file: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Read the SIP password from this file")
    ] = None,
    destination_country: Annotated[str | None, typer.Option(help="Region pinning, e.g. US")] = None,
    cps: Annotated[float, typer.Option(help="Calls started per second at most")] = 1.0,
    max_concurrent: Annotated[int, typer.Option(help="Calls in progress at most")] = 10,
    as_json: common.JsonFlag = False,
) -> None:
    """Create a LiveKit SIP outbound trunk and store its calling limits.

    The password is never printed or logged."""
    password = _trunk_password(auth_username, auth_password, auth_password_file)
    spec = trunks.trunk_spec(name, address, numbers, auth_username, password, destination_country)
    trunks.check_limits(cps, max_concurrent)
    with common.unit_of_work() as session:
        trunk_id = _on_livekit(
            lambda telephony: trunks.create_trunk(
                session, telephony, spec, cps, max_concurrent, actor=common.actor()
            )
        )
    if as_json:
        common.emit_json({"sip_trunk_id": trunk_id})
    else:
        common.out.print(f"trunk created: {trunk_id}")


@app.command("list")
def trunk_list(as_json: common.JsonFlag = False) -> None:
    """Outbound trunks at LiveKit, with the engine's limits for each."""
    with common.unit_of_work() as session:
        rows = _on_livekit(lambda telephony: trunks.list_trunks(session, telephony))
    if as_json:
        common.emit_json(rows)
        return
    common.print_table(
        {
            "sip_trunk_id": "sip_trunk_id",
            "name": "name",
            "address": "address",
            "numbers": "numbers",
            "cps": "cps",
            "max concurrent": "max_concurrent",
        },
        [row | {"numbers": ",".join(row["numbers"])} for row in rows],
    )
