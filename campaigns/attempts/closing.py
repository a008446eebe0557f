"""The end of a call attempt: its outcome applied to the appointment, an opt-out
to the do-not-call list, and the retry it leaves, if any.

The attempt's own state changes through :mod:`campaigns.attempts.transitions`.
Callers own the transaction: nothing here commits.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from campaigns import audit, dnc
from campaigns.attempts import transitions
from campaigns.compliance import service as compliance
from campaigns.models import Appointment, AppointmentStatus, CallAttempt, Clinic, DncSource
from campaigns.telephony.outcomes import Outcome, is_retryable
from campaigns.telephony.retry import next_retry_due

# The appointment statuses an agent's outcome sets.
_STATUS_FOR_OUTCOME = {
    Outcome.CONFIRMED: AppointmentStatus.CONFIRMED,
    Outcome.CANCELLED: AppointmentStatus.CANCELLED,
    Outcome.RESCHEDULE_REQUESTED: AppointmentStatus.RESCHEDULE_REQUESTED,
    Outcome.WRONG_NUMBER: AppointmentStatus.WRONG_NUMBER,
    Outcome.INVALID_NUMBER: AppointmentStatus.INVALID_NUMBER,
    Outcome.OPTED_OUT: AppointmentStatus.OPTED_OUT,
    Outcome.TRANSFERRED: AppointmentStatus.TRANSFERRED,
}


def record_opt_out(session: Session, attempt: CallAttempt, *, actor: str) -> None:
    dnc.add(
        session,
        attempt.number_called,
        clinic_id=attempt.clinic_id,
        source=DncSource.PATIENT_REQUEST,
        reason=f"opted out during call attempt {attempt.id}",
        actor=actor,
    )


def close(
    session: Session,
    attempt: CallAttempt,
    clinic: Clinic,
    outcome: Outcome,
    now: datetime,
    *,
    error: str | None,
    jitter: float,
    actor: str,
    ambiguous: bool = False,
    report: transitions.AgentReport | None = None,
    schedule_next: bool = True,
) -> None:
    """Set the outcome, apply it to the appointment, and schedule the retry if any
    (unless ``schedule_next`` is False: a later attempt exists already). With the
    agent's ``report``, the call was answered."""
    appointment = session.get(Appointment, attempt.appointment_id)
    assert appointment is not None and clinic.id is not None
    status = _STATUS_FOR_OUTCOME.get(outcome)
    if status is not None and appointment.status in (
        AppointmentStatus.SCHEDULED,
        AppointmentStatus.UNREACHED,
    ):
        appointment.status = status
        appointment.updated_at = now
    if outcome == Outcome.OPTED_OUT:
        record_opt_out(session, attempt, actor=actor)
    session.flush()
    transitions.closed(
        session, attempt, outcome, now, error=error, actor=actor, ambiguous=ambiguous, report=report
    )
    if schedule_next:
        schedule_retry(
            session, attempt, appointment, clinic, outcome, now, jitter=jitter, actor=actor
        )


def schedule_retry(
    session: Session,
    attempt: CallAttempt,
    appointment: Appointment,
    clinic: Clinic,
    outcome: Outcome,
    now: datetime,
    *,
    jitter: float,
    actor: str,
) -> None:
    """The next attempt as a row due after the backoff, moved into the next allowed instant."""
    if not is_retryable(outcome, retry_voicemail=clinic.retry_voicemail):
        return
    due = next_retry_due(
        outcome,
        attempt.attempt_number,
        now,
        base=timedelta(seconds=clinic.retry_base_seconds),
        cap=timedelta(seconds=clinic.retry_cap_seconds),
        retry_voicemail=clinic.retry_voicemail,
        max_attempts=clinic.max_attempts,
        jitter=jitter,
    )
    base = {"clinic_id": clinic.id, "appointment_id": appointment.id, "attempt_id": attempt.id}
    if due is None:
        if appointment.status == AppointmentStatus.SCHEDULED:
            appointment.status = AppointmentStatus.UNREACHED
        audit.record(
            session,
            "retry.exhausted",
            {"attempts": attempt.attempt_number},
            actor=actor,
            at=now,
            **base,
        )
        return
    number = attempt.attempt_number + 1
    decision = compliance.decide_for(session, appointment, clinic, number, due)
    if not decision.allowed and decision.next_allowed_at is None:
        audit.record(
            session,
            "retry.dropped",
            {"attempt_number": number, "decision": compliance.decision_document(decision)},
            actor=actor,
            at=now,
            **base,
        )
        return
    assert appointment.id is not None and clinic.id is not None
    retry = transitions.NewAttempt(
        appointment_id=appointment.id,
        clinic_id=clinic.id,
        number_called=appointment.phone_e164,
        attempt_number=number,
        decision=decision,
        payload={"attempt_number": number, "after_outcome": outcome},
    )
    transitions.create(session, [retry], due, kind="attempt.scheduled", actor=actor, audited_at=now)
