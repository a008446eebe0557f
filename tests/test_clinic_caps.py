"""Caps per number, set per clinic (with the FCC healthcare-exemption preset), audited
clinic updates, and patient-supplied text shown literally in the terminal."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import cli as cli_module
from campaigns import clinics, compliance
from campaigns.errors import InvalidInputError
from campaigns.models import AttemptState, AuditEvent, CallAttempt, Clinic
from tests.conftest import add_appointment
from tests.test_cli import (
    APPOINTMENT_START,
    CLINIC,
    SQLITE_ONLY,
    add_clinic_cli,
    add_patient,
    assert_one_line_error,
    cli,
    cli_json,
    database,
)

NOW = datetime(2026, 5, 12, 15, 0, tzinfo=UTC)  # Tuesday 11:00 in New York


def dial(session: Session, appointment_id: int, clinic_id: int, at: datetime, n: int) -> None:
    session.add(
        CallAttempt(
            appointment_id=appointment_id,
            clinic_id=clinic_id,
            attempt_number=n,
            state=AttemptState.COMPLETED,
            due_at=at,
            dialing_at=at,
            number_called="+12125550100",
            outcome="no_answer",
        )
    )
    session.flush()


def new_clinic(session: Session, **values: Any) -> Clinic:
    spec = clinics.validate_spec({"name": CLINIC, "timezone": "America/New_York", **values})
    return clinics.create_clinic(session, spec, actor="test")


def test_the_healthcare_exemption_counts_every_appointment_of_the_number(
    session: Session,
) -> None:
    clinic = new_clinic(session, **clinics.cap_settings(None, None, healthcare_exemption=True))
    first = add_appointment(session, clinic, starts_at=NOW + timedelta(days=3))
    second = add_appointment(session, clinic, starts_at=NOW + timedelta(days=3))
    assert clinic.id is not None and first.id is not None
    dial(session, first.id, clinic.id, NOW - timedelta(hours=20), 1)

    blocked = compliance.decide_for(session, second, clinic, 1, NOW)

    assert not blocked.allowed
    assert "number_cap_24h: 1 dials in 24 h (cap 1, clinic max per day)" in blocked.reasons
    assert blocked.next_allowed_at == NOW + timedelta(hours=4)

    dial(session, first.id, clinic.id, NOW - timedelta(days=3), 2)
    dial(session, first.id, clinic.id, NOW - timedelta(days=5), 3)
    later = NOW + timedelta(hours=5)
    weekly = compliance.decide_for(session, second, clinic, 1, later)
    assert "number_cap_7d: 3 dials in 7 days (cap 3, clinic max per week)" in weekly.reasons


def test_update_clinic_changes_caps_and_audits_before_and_after(session: Session) -> None:
    clinic = new_clinic(session)

    changed = clinics.update_clinic(
        session, clinic, {"max_per_day": 2, "max_per_week": 5}, actor="staff"
    )
    session.commit()

    assert changed == {
        "dials_per_number_24h": {"before": 3, "after": 2},
        "dials_per_number_7d": {"before": 6, "after": 5},
    }
    assert (clinic.dials_per_number_24h, clinic.dials_per_number_7d) == (2, 5)
    event = session.execute(
        select(AuditEvent).where(col(AuditEvent.kind) == "clinic.updated")
    ).scalar_one()
    assert event.actor == "staff" and event.clinic_id == clinic.id
    assert json.loads(event.payload) == {
        "clinic": CLINIC,
        "before": {"dials_per_number_24h": 3, "dials_per_number_7d": 6},
        "after": {"dials_per_number_24h": 2, "dials_per_number_7d": 5},
    }
    assert clinics.update_clinic(session, clinic, {"max_per_day": 2}, actor="staff") == {}


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"max_per_day": 0}, "max_per_day"),
        ({"max_per_day": 7}, "below max per day"),
        ({"colour": "red"}, "unknown clinic setting: colour"),
        ({}, "nothing to update"),
    ],
)
def test_update_clinic_refuses_bad_settings_and_keeps_the_old_ones(
    session: Session, changes: dict[str, Any], fragment: str
) -> None:
    clinic = new_clinic(session)

    with pytest.raises(InvalidInputError, match=fragment):
        clinics.update_clinic(session, clinic, changes, actor="staff")

    assert (clinic.dials_per_number_24h, clinic.dials_per_number_7d) == (3, 6)


# --------------------------------------------------------------------------- CLI


@SQLITE_ONLY
def test_clinic_add_and_update_set_the_caps(app_env: str) -> None:
    added = add_clinic_cli("--max-per-day", "2", "--max-per-week", "4")
    assert (added["dials_per_number_24h"], added["dials_per_number_7d"]) == (2, 4)

    updated = cli_json("clinic", "update", CLINIC, "--healthcare-exemption")

    assert updated == {
        "dials_per_number_24h": {"before": 2, "after": 1},
        "dials_per_number_7d": {"before": 4, "after": 3},
    }
    shown = cli_json("clinic", "show", CLINIC)
    assert (shown["dials_per_number_24h"], shown["dials_per_number_7d"]) == (1, 3)
    assert_one_line_error(
        cli("clinic", "update", CLINIC, "--healthcare-exemption", "--max-per-day", "2"), "not both"
    )
    assert_one_line_error(cli("clinic", "update", CLINIC, "--max-per-week", "0"), "max_per_week")
    assert_one_line_error(cli("clinic", "update", CLINIC), "nothing to update")
    assert_one_line_error(cli("clinic", "update", "Nowhere", "--max-per-day", "1"), "no clinic")


@SQLITE_ONLY
def test_explain_names_the_cap_that_blocks(app_env: str) -> None:
    add_clinic_cli("--healthcare-exemption")
    add_patient(app_env, "A-1")
    add_patient(app_env, "A-2")
    with database(app_env) as session:
        clinic = session.execute(select(Clinic)).scalar_one()
        assert clinic.id is not None
        dial(session, 1, clinic.id, datetime(2026, 5, 12, 13, tzinfo=UTC), 1)

    document = cli_json(
        "explain", "--clinic", CLINIC, "--appointment", "A-2", "--at", "2026-05-12T15:00:00Z"
    )

    assert document["allowed"] is False
    assert "number_cap_24h: 1 dials in 24 h (cap 1, clinic max per day)" in document["reasons"]
    assert document["next_allowed_at"] == "2026-05-13T13:00:00Z"


# --------------------------------------------------------------------------- terminal

MARKUP = "[bold]Eve[/] [link=https://x.example]pay[/link] :smile: \x1b[2J\u202eevil"


def shown_literally(output: str) -> None:
    assert "[bold]Eve[/] [link=https://x.example]pay[/link] :smile: \\x1b[2J\\u202eevil" in output
    assert "\x1b" not in output and "\u202e" not in output


@SQLITE_ONLY
def test_terminal_output_shows_stored_text_literally(
    app_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_module.out, "width", 300)  # one line per row, whatever the text
    add_clinic_cli()
    add_patient(app_env, MARKUP, patient_name=MARKUP)
    with database(app_env) as session:
        session.add(
            CallAttempt(
                appointment_id=1,
                clinic_id=1,
                attempt_number=1,
                state=AttemptState.COMPLETED,
                due_at=APPOINTMENT_START,
                number_called="+12125550100",
                outcome=MARKUP,
            )
        )
    assert cli("dnc", "add", "212-555-0100", "--reason", MARKUP).exit_code == 0
    assert cli("clinic", "add", MARKUP, "--timezone", "UTC").exit_code == 0

    for args in (
        ("clinic", "show", MARKUP),
        ("clinic", "list"),
        ("dnc", "list"),
        ("status",),
        ("explain", "--clinic", CLINIC, "--appointment", MARKUP, "--at", "2026-05-12T15:00Z"),
    ):
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output)
        shown_literally(result.stdout.replace("\n", ""))
