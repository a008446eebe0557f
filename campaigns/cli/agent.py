"""``campaigns agent``: run the voice agent, or rehearse it offline on a scripted call.

``start``, ``dev`` and ``console`` pass their arguments through to LiveKit
Agents; ``rehearse`` dials, reports and stores nothing."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from campaigns.attempts.metadata import rehearsal_metadata
from campaigns.cli import common
from campaigns.settings import get_settings

app = common.command_group("The appointment-confirmation voice agent.")

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _agent_cli(command: str, ctx: typer.Context) -> None:
    from agent.worker import run

    run(command, list(ctx.args))


@app.command("start", context_settings=_PASS_THROUGH, add_help_option=False)
def agent_start(ctx: typer.Context) -> None:
    """Run the agent worker in production mode (the framework's `start`)."""
    _agent_cli("start", ctx)


@app.command("dev", context_settings=_PASS_THROUGH, add_help_option=False)
def agent_dev(ctx: typer.Context) -> None:
    """Run the agent worker with reload and debug logs (the framework's `dev`)."""
    _agent_cli("dev", ctx)


@app.command("console", context_settings=_PASS_THROUGH, add_help_option=False)
def agent_console(ctx: typer.Context) -> None:
    """Talk to the agent in the terminal (the framework's `console`)."""
    _agent_cli("console", ctx)


@app.command("rehearse")
def agent_rehearse(
    script: Annotated[Path, typer.Option(dir_okay=False, help="Rehearsal script (JSON)")],
    metadata: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Job metadata (JSON) to rehearse with")
    ] = None,
    clinic: Annotated[str | None, typer.Option(help="Clinic name (with --appointment)")] = None,
    appointment: Annotated[
        str | None, typer.Option(help="The clinic's appointment id: its next call's metadata")
    ] = None,
    as_json: common.JsonFlag = False,
) -> None:
    """Run the real agent offline on a scripted call; nothing is dialed, reported or stored."""
    from agent.metadata import MetadataError, parse_metadata
    from agent.rehearsal import Script, ScriptError, rehearse

    if (metadata is None) == (clinic is None or appointment is None) or (
        metadata is not None and (clinic or appointment)
    ):
        common.fail("give either --metadata FILE or --clinic C --appointment ID", 2)
    try:
        rehearsal_script = Script.load(script)
        if metadata is not None:
            try:
                raw = metadata.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise MetadataError(f"cannot read metadata {metadata}: {exc}", None, None) from None
            meta = parse_metadata(raw)
        else:
            assert clinic is not None and appointment is not None
            with common.unit_of_work() as session:
                document = rehearsal_metadata(
                    session, clinic, appointment, datetime.now(UTC), get_settings()
                )
                session.rollback()  # read only
            meta = parse_metadata(document)
    except (ScriptError, MetadataError) as exc:
        common.fail(str(exc), 2)
    result = asyncio.run(rehearse(meta, rehearsal_script))
    if as_json:
        common.emit_json(result.to_json())
        return
    for line in result.transcript:
        common.out.print(f"{line['role']:>6}: {line['text']}", markup=False, highlight=False)
    for call in result.tool_calls:
        common.out.print(f"  tool: {call['name']} {json.dumps(call['args'])}", markup=False)
    for report in result.reports:
        common.out.print(f"report: {report.outcome} {json.dumps(report.detail)}", markup=False)
    ending = (
        f"transferred to {result.transferred_to}"
        if result.transferred_to
        else ("hung up" if result.hung_up else "call still open at the end of the script")
    )
    common.out.print(ending, markup=False)
