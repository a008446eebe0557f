"""``campaigns clinic``: clinics and their calling rules."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from campaigns import clinics
from campaigns.attempts import dial
from campaigns.cli import common
from campaigns.errors import InvalidInputError
from campaigns.masking import inert

app = common.command_group("Clinics and their calling rules.")

CallerId = Annotated[str | None, typer.Option(help="Number shown to patients (E.164)")]
TransferNumber = Annotated[
    str | None, typer.Option(help="Staff line the agent transfers callers to (E.164)")
]
MaxPerDay = Annotated[
    int | None, typer.Option(help="Dials per number in any 24 hours, all appointments (3)")
]
MaxPerWeek = Annotated[
    int | None, typer.Option(help="Dials per number in any 7 days, all appointments (6)")
]
HealthcareExemption = Annotated[
    bool,
    typer.Option("--healthcare-exemption", help="FCC healthcare-exemption caps: 1 a day, 3 a week"),
]


@app.command("add")
def clinic_add(
    name: str,
    timezone: Annotated[str, typer.Option(help="IANA zone of the clinic, e.g. America/New_York")],
    country: Annotated[str, typer.Option(help="Default region for phone numbers")] = "US",
    window: Annotated[
        str, typer.Option(help="Calling hours in the callee's local time")
    ] = "09:00-19:00",
    days: Annotated[str, typer.Option(help="Calling weekdays")] = "mon,tue,wed,thu,fri",
    holidays: Annotated[
        str | None, typer.Option(help="No calls on these holidays: US or US-NY")
    ] = None,
    caller_id: CallerId = None,
    transfer_number: TransferNumber = None,
    trunk: Annotated[str | None, typer.Option(help="LiveKit SIP outbound trunk id")] = None,
    agent_name: Annotated[str | None, typer.Option(help="LiveKit agent to dispatch")] = None,
    max_attempts: Annotated[int, typer.Option(help="Calls per appointment at most")] = 4,
    lead_days: Annotated[str, typer.Option(help="Call this many days before: 1,2")] = "1",
    daily_run_time: Annotated[str, typer.Option(help="Local time of the daily run")] = "10:00",
    max_per_day: MaxPerDay = None,
    max_per_week: MaxPerWeek = None,
    healthcare_exemption: HealthcareExemption = False,
    as_json: common.JsonFlag = False,
) -> None:
    """Create a clinic."""
    caps = clinics.cap_settings(max_per_day, max_per_week, healthcare_exemption)
    spec = clinics.validate_spec(
        caps
        | {
            "name": name,
            "timezone": timezone,
            "country": country,
            "window": window,
            "days": days,
            "holidays": holidays,
            "caller_id": caller_id,
            "transfer_number": transfer_number,
            "trunk_id": trunk,
            "agent_name": agent_name,
            "max_attempts": max_attempts,
            "lead_days": lead_days,
            "daily_run_time": daily_run_time,
        }
    )
    with common.unit_of_work() as session:
        clinic = clinics.create_clinic(session, spec, actor=common.actor())
        described = clinics.describe(clinic)
    if as_json:
        common.emit_json(described)
    else:
        common.out.print(inert(f"clinic {clinic.name!r} created (id {clinic.id})"))


@app.command("update")
def clinic_update(
    name: str,
    transfer_number: TransferNumber = None,
    caller_id: CallerId = None,
    window: Annotated[
        str | None, typer.Option(help="Calling hours in the callee's local time, HH:MM-HH:MM")
    ] = None,
    max_per_day: MaxPerDay = None,
    max_per_week: MaxPerWeek = None,
    healthcare_exemption: HealthcareExemption = False,
    as_json: common.JsonFlag = False,
) -> None:
    """Change a clinic's settings (audited with their values before and after)."""
    changes: dict[str, Any] = clinics.cap_settings(max_per_day, max_per_week, healthcare_exemption)
    changes |= {
        key: value
        for key, value in {
            "transfer_number": transfer_number,
            "caller_id": caller_id,
            "window": window,
        }.items()
        if value is not None
    }
    if not changes:
        raise InvalidInputError(
            "nothing to update: give --transfer-number, --caller-id, --window, "
            "--max-per-day, --max-per-week or --healthcare-exemption"
        )
    with common.unit_of_work() as session:
        changed = clinics.update_clinic(
            session, clinics.get_clinic(session, name), changes, actor=common.actor()
        )
    if as_json:
        common.emit_json(changed)
        return
    if not changed:
        common.out.print(inert(f"clinic {name!r}: nothing changed"))
    for key, change in changed.items():
        common.out.print(inert(f"{key}: {change['before']} -> {change['after']}"))


@app.command("list")
def clinic_list(as_json: common.JsonFlag = False) -> None:
    """List clinics."""
    with common.unit_of_work() as session:
        rows = [clinics.describe(c) for c in clinics.list_clinics(session)]
    if as_json:
        common.emit_json(rows)
        return
    common.print_table(
        {
            "name": "name",
            "timezone": "timezone",
            "window": "window",
            "days": "days",
            "lead days": "lead_days",
            "max attempts": "max_attempts",
            "paused": "paused_reason",
        },
        rows,
    )


@app.command("show")
def clinic_show(name: str, as_json: common.JsonFlag = False) -> None:
    """Show one clinic's settings."""
    with common.unit_of_work() as session:
        described = clinics.describe(clinics.get_clinic(session, name))
    if as_json:
        common.emit_json(described)
        return
    common.print_table(
        {"setting": "setting", "value": "value"},
        [{"setting": key, "value": value} for key, value in described.items()],
        show_header=False,
    )


@app.command("resume")
def clinic_resume(name: str) -> None:
    """Resume calling for a clinic paused by a configuration error."""
    with common.unit_of_work() as session:
        resumed = dial.resume_clinic(
            session, clinics.get_clinic(session, name), actor=common.actor()
        )
    common.err.print(inert(f"clinic {name!r} {'resumed' if resumed else 'was not paused'}"))
