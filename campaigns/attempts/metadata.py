"""The job metadata an agent is dispatched with (``agent.metadata`` reads it)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns.clinics import get_clinic
from campaigns.compliance import service as compliance
from campaigns.models import OPEN_ATTEMPT_STATES, Appointment, CallAttempt, Clinic
from campaigns.settings import Settings
from campaigns.tokens import sign_report_token


def agent_metadata(
    attempt_id: int,
    room_name: str,
    participant_identity: str,
    token_expires_at: datetime,
    appointment: Appointment,
    clinic: Clinic,
    report_secret: str,
    script_version: str,
) -> dict[str, Any]:
    """What the agent is dispatched with, and no more: the patient's first name (never
    the full name), the appointment in the patient's zone, the clinic's numbers, the
    callee's identity in the room, and the report token signed for the attempt and its
    room (``agent.metadata``)."""
    local_start = appointment.starts_at.astimezone(
        ZoneInfo(appointment.patient_timezone or clinic.timezone)
    )
    return {
        "attempt_id": attempt_id,
        "report_token": sign_report_token(attempt_id, room_name, token_expires_at, report_secret),
        "participant_identity": participant_identity,
        "clinic_name": clinic.name,
        "callback_number": clinic.caller_id,
        "transfer_number": clinic.transfer_number,
        "patient_first_name": appointment.patient_name.split()[0],
        "appointment_local_time": local_start.isoformat(),
        "appointment_timezone": str(local_start.tzinfo),
        "provider": appointment.provider,
        "location": appointment.location,
        "language": appointment.language,
        "script_version": script_version,
    }


def next_attempt_id(session: Session, appointment: Appointment) -> int:
    """The id of the appointment's open attempt, else the id its next attempt would get."""
    open_attempt = session.execute(
        select(CallAttempt.id).where(
            col(CallAttempt.appointment_id) == appointment.id,
            col(CallAttempt.state).in_(OPEN_ATTEMPT_STATES),
        )
    ).scalar_one_or_none()
    if open_attempt is not None:
        return int(open_attempt)
    return int(session.execute(select(func.max(CallAttempt.id))).scalar_one() or 0) + 1


def rehearsal_metadata(
    session: Session, clinic_name: str, external_id: str, now: datetime, settings: Settings
) -> dict[str, Any]:
    """The metadata the engine would dispatch for the appointment's next call; writes nothing."""
    clinic = get_clinic(session, clinic_name)
    appointment = compliance.find_appointment(session, clinic, external_id)
    attempt_id = next_attempt_id(session, appointment)
    longest_call = (
        settings.ringing_timeout_seconds
        + settings.max_call_duration_seconds
        + settings.report_grace_seconds
    )
    return agent_metadata(
        attempt_id,
        f"appt-{attempt_id}-rehearsal",
        f"callee-{attempt_id}-rehearsal",
        now + timedelta(seconds=longest_call),
        appointment,
        clinic,
        settings.report_secret.get_secret_value(),
        settings.agent_script_version,
    )
