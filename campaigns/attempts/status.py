"""Counts of appointments and attempts, for one clinic or all."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns.models import Appointment, AttemptState, CallAttempt
from campaigns.telephony.outcomes import Outcome


def status_counts(session: Session, clinic_id: int | None = None) -> dict[str, Any]:
    """Appointments, attempts by state, outcomes and retries, for one clinic or all."""
    of_appointments = [] if clinic_id is None else [col(Appointment.clinic_id) == clinic_id]
    of_attempts = [] if clinic_id is None else [col(CallAttempt.clinic_id) == clinic_id]
    state_counts = {s.value: 0 for s in AttemptState}
    state_counts |= dict(
        session.execute(
            select(CallAttempt.state, func.count())
            .where(*of_attempts)
            .group_by(col(CallAttempt.state))
        ).all()
    )
    outcome_counts = {o.value: 0 for o in Outcome}
    outcome_counts |= dict(
        session.execute(
            select(CallAttempt.outcome, func.count())
            .where(col(CallAttempt.outcome).is_not(None), *of_attempts)
            .group_by(col(CallAttempt.outcome))
        ).all()
    )
    return {
        "appointments": session.execute(
            select(func.count()).select_from(Appointment).where(*of_appointments)
        ).scalar_one(),
        "attempts": state_counts,
        "outcomes": outcome_counts,
        "appointment_statuses": dict(
            session.execute(
                select(Appointment.status, func.count())
                .where(*of_appointments)
                .group_by(col(Appointment.status))
            ).all()
        ),
        "retries": session.execute(
            select(func.count())
            .select_from(CallAttempt)
            .where(col(CallAttempt.attempt_number) > 1, *of_attempts)
        ).scalar_one(),
    }
