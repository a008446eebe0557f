"""Reading a clinic's appointments: a searchable page, one appointment's call
timeline, its "why (not) called now", and the clinic's dashboard figures.

The JSON shapes here are shared by the CLI, the API and the console's pages.
Phone numbers are masked unless the caller says the reader may see them.
Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, case, exists, func, or_
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns.attempts import daily
from campaigns.attempts.status import status_counts
from campaigns.errors import InvalidInputError, NotFoundError
from campaigns.masking import mask_phone
from campaigns.models import (
    IN_FLIGHT_STATES,
    Appointment,
    AppointmentStatus,
    CallAttempt,
    Clinic,
    DailyRun,
)
from campaigns.telephony.outcomes import Outcome

PAGE_SIZE = 50
CONFIRMATION_DAYS = 14
UPCOMING_DAYS = 7


@dataclass(frozen=True)
class Search:
    status: str | None = None
    outcome: str | None = None
    q: str | None = None
    page: int = 1

    def checked(self) -> Search:
        if self.status and self.status not in {s.value for s in AppointmentStatus}:
            raise InvalidInputError(f"unknown status {self.status!r}")
        if self.outcome and self.outcome not in {o.value for o in Outcome}:
            raise InvalidInputError(f"unknown outcome {self.outcome!r}")
        if self.page < 1:
            raise InvalidInputError("page starts at 1")
        return self


def _phone(number: str | None, full: bool) -> str | None:
    if number is None:
        return None
    return number if full else mask_phone(number)


def search(
    session: Session, clinic: Clinic, criteria: Search, *, full_phones: bool
) -> dict[str, Any]:
    """One page of a clinic's appointments, soonest first, with each one's last call."""
    criteria = criteria.checked()
    filters: list[ColumnElement[bool]] = [col(Appointment.clinic_id) == clinic.id]
    if criteria.status:
        filters.append(col(Appointment.status) == criteria.status)
    if criteria.outcome:
        filters.append(
            exists().where(
                col(CallAttempt.appointment_id) == col(Appointment.id),
                col(CallAttempt.outcome) == criteria.outcome,
            )
        )
    if criteria.q and criteria.q.strip():
        term = criteria.q.strip()
        # lower() LIKE rather than ILIKE: several times faster on PostgreSQL, same answers.
        matches: list[ColumnElement[bool]] = [
            func.lower(col(Appointment.external_id)).contains(term.lower(), autoescape=True),
            func.lower(col(Appointment.patient_name)).contains(term.lower(), autoescape=True),
        ]
        digits = "".join(c for c in term if c.isdigit())
        if len(digits) >= 4:
            matches.append(col(Appointment.phone_e164).contains(digits))
        filters.append(or_(*matches))
    page = (
        select(Appointment)
        .where(*filters)
        .order_by(col(Appointment.starts_at), col(Appointment.id))
        .offset((criteria.page - 1) * PAGE_SIZE)
        .limit(PAGE_SIZE)
    )
    count = select(func.count()).select_from(Appointment).where(*filters)
    if criteria.q and criteria.q.strip():
        # A text search reads every row of the clinic: count the matches in the same pass.
        found = session.execute(page.add_columns(func.count().over())).all()
        rows = [appointment for appointment, _ in found]
        total = int(found[0][1]) if found else session.execute(count).scalar_one()
    else:
        # Otherwise the index on starts_at serves the page without sorting every match.
        rows = list(session.execute(page).scalars())
        total = session.execute(count).scalar_one()
    last = _last_attempts(session, [a.id for a in rows if a.id is not None])
    return {
        "page": criteria.page,
        "page_size": PAGE_SIZE,
        "total": total,
        "pages": max(1, -(-total // PAGE_SIZE)),
        "items": [
            _summary(appointment, last.get(appointment.id or 0), full_phones)
            for appointment in rows
        ],
    }


def _last_attempts(session: Session, appointment_ids: list[int]) -> dict[int, CallAttempt]:
    if not appointment_ids:
        return {}
    attempts = session.execute(
        select(CallAttempt)
        .where(col(CallAttempt.appointment_id).in_(appointment_ids))
        .order_by(col(CallAttempt.attempt_number))
    ).scalars()
    return {attempt.appointment_id: attempt for attempt in attempts}


def _summary(
    appointment: Appointment, last: CallAttempt | None, full_phones: bool
) -> dict[str, Any]:
    return {
        "id": appointment.id,
        "external_id": appointment.external_id,
        "patient_name": appointment.patient_name,
        "phone": _phone(appointment.phone_e164, full_phones),
        "starts_at": appointment.starts_at.isoformat(),
        "provider": appointment.provider,
        "location": appointment.location,
        "status": appointment.status,
        "attempts": last.attempt_number if last else 0,
        "last_outcome": last.outcome if last else None,
        "last_state": last.state if last else None,
    }


def get(session: Session, clinic: Clinic, appointment_id: int) -> Appointment:
    appointment = session.get(Appointment, appointment_id)
    if appointment is None or appointment.clinic_id != clinic.id:
        raise NotFoundError(f"clinic {clinic.name!r} has no appointment {appointment_id}")
    return appointment


def attempts_of(session: Session, appointment: Appointment) -> list[CallAttempt]:
    """The appointment's attempts, first attempt first."""
    return list(
        session.execute(
            select(CallAttempt)
            .where(col(CallAttempt.appointment_id) == appointment.id)
            .order_by(col(CallAttempt.attempt_number))
        ).scalars()
    )


def timeline(
    session: Session, clinic: Clinic, appointment: Appointment, *, full_phones: bool
) -> dict[str, Any]:
    """An appointment and its attempts in order: time, state, outcome, SIP status, next."""
    attempts = attempts_of(session, appointment)
    entries = []
    for index, attempt in enumerate(attempts):
        following = attempts[index + 1] if index + 1 < len(attempts) else None
        entries.append(
            {
                "id": attempt.id,
                "attempt_number": attempt.attempt_number,
                "state": attempt.state,
                "outcome": attempt.outcome,
                "due_at": attempt.due_at.isoformat(),
                "dialing_at": _iso(attempt.dialing_at),
                "answered_at": _iso(attempt.answered_at),
                "ended_at": _iso(attempt.ended_at),
                "number_called": _phone(attempt.number_called, full_phones),
                "sip_status_code": attempt.sip_status_code,
                "sip_status": attempt.sip_status,
                "error": attempt.error,
                "skip_reasons": attempt.skip_reasons,
                "next_attempt_at": following.due_at.isoformat() if following else None,
            }
        )
    return _summary(appointment, attempts[-1] if attempts else None, full_phones) | {
        "clinic_id": clinic.id,
        "timeline": entries,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def dashboard(session: Session, clinic: Clinic, now: datetime) -> dict[str, Any]:
    """A clinic at a glance: counts, calls in flight, campaign days, confirmation rate."""
    assert clinic.id is not None
    zone = ZoneInfo(clinic.timezone)
    today = now.astimezone(zone).date()
    status = status_counts(session, clinic.id)
    runs = session.execute(
        select(col(DailyRun.run_date), col(DailyRun.attempts_created))
        .where(col(DailyRun.clinic_id) == clinic.id, col(DailyRun.run_date) >= today)
        .order_by(col(DailyRun.run_date))
    ).all()
    upcoming_days = [today + timedelta(days=n) for n in range(UPCOMING_DAYS)]
    upcoming = _per_local_day(
        session,
        clinic,
        upcoming_days,
        col(Appointment.starts_at),
        [func.count()],
        col(Appointment.clinic_id) == clinic.id,
    )
    return {
        "clinic": {"id": clinic.id, "name": clinic.name, "timezone": clinic.timezone},
        "paused": clinic.paused_reason is not None,
        "paused_reason": clinic.paused_reason,
        "at": now.isoformat(),
        "today": today.isoformat(),
        "in_flight": sum(status["attempts"][state] for state in IN_FLIGHT_STATES),
        "status": status,
        "campaign_days": [
            {"run_date": run_date.isoformat(), "attempts_created": created}
            for run_date, created in runs
        ],
        "upcoming_appointments": [
            {"date": day.isoformat(), "appointments": counts[0]}
            for day, counts in upcoming.items()
            if counts[0]
        ],
        "confirmation_rate": _confirmation_rate(session, clinic, now),
    }


def _per_local_day(
    session: Session,
    clinic: Clinic,
    days: list[date],
    instant: Any,
    aggregates: list[Any],
    *filters: ColumnElement[bool],
) -> dict[date, list[int]]:
    """``aggregates`` of the rows whose ``instant`` falls on each clinic-local day, in one
    query: the days' UTC bounds are computed here (DST included), so the database needs
    no time zone support and the ``instant`` index bounds the scan."""
    bounds = [daily.clinic_local_day(clinic, day) for day in days]
    bucket = case(
        *((instant < end, index) for index, (_, end) in enumerate(bounds)),
        else_=len(days),
    )
    rows = session.execute(
        select(bucket, *aggregates)
        .where(instant >= bounds[0][0], instant < bounds[-1][1], *filters)
        .group_by(bucket)
    ).all()
    result = {day: [0] * len(aggregates) for day in days}
    for index, *values in rows:
        if index < len(days):
            result[days[index]] = [int(v or 0) for v in values]
    return result


def _confirmation_rate(session: Session, clinic: Clinic, now: datetime) -> list[dict[str, Any]]:
    """Per clinic-local day of the last 14: calls answered, and the share confirmed."""
    today = now.astimezone(ZoneInfo(clinic.timezone)).date()
    days = [today - timedelta(days=n) for n in range(CONFIRMATION_DAYS - 1, -1, -1)]
    confirmed = case((col(CallAttempt.outcome) == Outcome.CONFIRMED, 1), else_=0)
    per_day = _per_local_day(
        session,
        clinic,
        days,
        col(CallAttempt.ended_at),
        [func.count(), func.sum(confirmed)],
        col(CallAttempt.clinic_id) == clinic.id,
        col(CallAttempt.answered_at).is_not(None),
    )
    return [
        {
            "date": day.isoformat(),
            "answered": answered,
            "confirmed": confirmed_calls,
            "rate": round(confirmed_calls / answered, 3) if answered else None,
        }
        for day, (answered, confirmed_calls) in per_day.items()
    ]
