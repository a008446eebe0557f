"""``campaigns run-daily`` and ``campaigns status``: the call attempts of the campaigns."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

import typer

from campaigns import clinics
from campaigns.attempts import daily
from campaigns.attempts.status import status_counts
from campaigns.cli import common
from campaigns.errors import InvalidInputError
from campaigns.masking import inert

app = common.command_group()


@app.command("run-daily")
def run_daily(
    clinic: Annotated[str | None, typer.Option(help="One clinic (default: all)")] = None,
    run_date: Annotated[
        str | None, typer.Option("--date", help="Clinic-local run date YYYY-MM-DD (default today)")
    ] = None,
    as_json: common.JsonFlag = False,
) -> None:
    """Create first call attempts for appointments lead-days ahead; running twice adds nothing."""
    try:
        day = date.fromisoformat(run_date) if run_date else None
    except ValueError as exc:
        raise InvalidInputError(f"--date: {run_date!r} is not YYYY-MM-DD") from exc
    with common.unit_of_work() as session:
        results = daily.run_daily_for(session, clinic, day, datetime.now(UTC), actor=common.actor())
    documents = [result.to_json() for result in results]
    if as_json:
        common.emit_json(documents)
        return
    for d in documents:
        common.out.print(
            inert(
                f"{d['clinic']} {d['date']}: {d['created']} calls scheduled, "
                f"{d['skipped']} not callable"
            )
        )


@app.command("status")
def status(
    clinic: Annotated[str | None, typer.Option()] = None, as_json: common.JsonFlag = False
) -> None:
    """Appointments, call attempts by state, and outcomes."""
    with common.unit_of_work() as session:
        counts = status_counts(session, clinics.clinic_id(session, clinic))
    if as_json:
        common.emit_json(counts)
        return
    common.out.print(f"appointments: {counts['appointments']}   retries: {counts['retries']}")
    common.print_table(
        {"attempt state": "state", "count": "count"},
        [{"state": k, "count": v} for k, v in counts["attempts"].items()],
    )
    common.print_table(
        {"outcome": "outcome", "count": "count"},
        [{"outcome": k, "count": v} for k, v in counts["outcomes"].items()],
    )
