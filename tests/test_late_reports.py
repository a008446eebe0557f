"""An agent's report that arrives after reconciliation gave up on the call wins,
and the retry reconciliation scheduled never calls the patient again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import calls
from campaigns.models import Appointment, AppointmentStatus, AttemptState, CallAttempt
from campaigns.tokens import sign_report_token
from tests.conftest import add_appointment, add_clinic

SECRET = "late-report-test-secret"
NOW = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)  # a Tuesday, 11:00 in New York


def _dialing_attempt(session: Session) -> CallAttempt:
    clinic = add_clinic(session, trunk_id="ST_x", retry_base_seconds=60, min_gap_seconds=0)
    appointment = add_appointment(
        session, clinic, patient_timezone="America/New_York", starts_at=NOW + timedelta(days=2)
    )
    assert appointment.id is not None and clinic.id is not None
    attempt = CallAttempt(
        appointment_id=appointment.id,
        clinic_id=clinic.id,
        attempt_number=1,
        state=AttemptState.DIALING,
        due_at=NOW - timedelta(minutes=5),
        dialing_at=NOW - timedelta(minutes=5),
        number_called=appointment.phone_e164,
        room_name="appt-1-x",
        participant_identity="callee-1-x",
    )
    session.add(attempt)
    session.flush()
    return attempt


def test_a_late_confirmation_supersedes_reconciliation_and_cancels_its_retry(
    session: Session,
) -> None:
    attempt = _dialing_attempt(session)
    assert attempt.id is not None
    stale = calls.StaleAttempt(
        attempt.id, attempt.state, attempt.room_name, attempt.participant_identity, None
    )
    assert calls.reconcile_attempt(session, stale, [], NOW, jitter=0.5) == "failed"
    retry = session.execute(
        select(CallAttempt).where(col(CallAttempt.attempt_number) == 2)
    ).scalar_one()
    assert retry.state == AttemptState.SCHEDULED

    result = calls.record_outcome(
        session,
        attempt.id,
        "confirmed",
        sign_report_token(attempt.id, SECRET),
        NOW + timedelta(minutes=1),
        secret=SECRET,
        jitter=0.5,
    )

    assert result.accepted
    session.refresh(attempt)
    session.refresh(retry)
    assert (attempt.state, attempt.outcome) == (AttemptState.COMPLETED, "confirmed")
    assert retry.state == AttemptState.SKIPPED and "superseded" in (retry.skip_reasons or "")
    appointment = session.get(Appointment, attempt.appointment_id)
    assert appointment is not None and appointment.status == AppointmentStatus.CONFIRMED


def test_a_second_report_after_a_real_outcome_changes_nothing(session: Session) -> None:
    attempt = _dialing_attempt(session)
    assert attempt.id is not None
    token = sign_report_token(attempt.id, SECRET)
    first = calls.record_outcome(
        session, attempt.id, "cancelled", token, NOW, secret=SECRET, jitter=0.5
    )
    again = calls.record_outcome(
        session, attempt.id, "confirmed", token, NOW, secret=SECRET, jitter=0.5
    )
    assert first.accepted and again.duplicate and not again.accepted
    session.refresh(attempt)
    assert attempt.outcome == "cancelled"
