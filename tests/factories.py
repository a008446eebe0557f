"""Rows for tests: each factory adds one row with plausible defaults, flushed, not committed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from campaigns.models import Appointment, CallAttempt, Clinic


def add_clinic(session: Session, **overrides: Any) -> Clinic:
    values: dict[str, Any] = {
        "name": "Lakeside Clinic",
        "timezone": "America/New_York",
        "country": "US",
    }
    values.update(overrides)
    clinic = Clinic(**values)
    session.add(clinic)
    session.flush()
    return clinic


def add_appointment(session: Session, clinic: Clinic, **overrides: Any) -> Appointment:
    assert clinic.id is not None
    values: dict[str, Any] = {
        "clinic_id": clinic.id,
        "external_id": f"A-{uuid.uuid4().hex[:8]}",
        "patient_name": "Ada Lovelace",
        "phone_e164": "+12125550100",
        "starts_at": datetime.now(UTC) + timedelta(days=2),
    }
    values.update(overrides)
    appointment = Appointment(**values)
    session.add(appointment)
    session.flush()
    return appointment


def add_attempt(
    session: Session,
    appointment: Appointment,
    state: str,
    number: int = 1,
    *,
    due_at: datetime | None = None,
) -> int:
    assert appointment.id is not None
    attempt = CallAttempt(
        appointment_id=appointment.id,
        clinic_id=appointment.clinic_id,
        attempt_number=number,
        state=state,
        due_at=due_at or datetime.now(UTC) + timedelta(days=1),
        number_called=appointment.phone_e164,
    )
    session.add(attempt)
    session.flush()
    assert attempt.id is not None
    return attempt.id


def lift_append_only_guard(session: Session) -> None:
    # A tamperer with database access can drop the trigger; the chain must still tell.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only"))
    else:
        session.execute(text("DROP TRIGGER IF EXISTS audit_event_no_update"))
        session.execute(text("DROP TRIGGER IF EXISTS audit_event_no_delete"))
