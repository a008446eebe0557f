"""``campaigns explain``: why a patient may or may not be called at a time, and when next."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from campaigns.cli import common
from campaigns.compliance import service as compliance
from campaigns.masking import inert

app = common.command_group()


@app.command("explain")
def explain(
    clinic: Annotated[str, typer.Option(help="Clinic name")],
    appointment: Annotated[str, typer.Option(help="The clinic's appointment id")],
    at: Annotated[
        str | None, typer.Option(help="ISO 8601 instant with offset (default now)")
    ] = None,
    as_json: common.JsonFlag = False,
) -> None:
    """Why this patient may or may not be called at that time, and when next."""
    now = common.parse_instant(at, "--at") if at else datetime.now(UTC)
    with common.unit_of_work() as session:
        document = compliance.explain(session, clinic, appointment, now)
    if as_json:
        common.emit_json(document)
        return
    verdict = "[green]may be called[/]" if document["allowed"] else "[red]may not be called[/]"
    common.out.print(
        inert(f"appointment {appointment} (attempt {document['attempt_number']}) "),
        verdict,
        inert(f" at {document['at']}"),
        sep="",
    )
    for reason in document["reasons"]:
        common.out.print(inert(f"  - {reason}"))
    for zone, local in document["callee_local_times"].items():
        sources = ", ".join(document["zone_sources"].get(zone, ()))
        common.out.print(inert(f"  callee local time in {zone} (from {sources}): {local}"))
    common.out.print(
        inert(f"  next allowed at: {document['next_allowed_at'] or 'never (see reasons)'}")
    )
