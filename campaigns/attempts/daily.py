"""A clinic's daily run: the first attempt of every appointment ``lead days`` ahead.

Idempotent per clinic and run date: an appointment with an open attempt, or one
already created by this run date, gets nothing new (the database's unique index
backs this up). Callers own the transaction: nothing here commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit
from campaigns.attempts import transitions
from campaigns.clinics import get_clinic, list_clinics, parse_lead_days
from campaigns.compliance import service as compliance
from campaigns.compliance.state_rules import load_state_rules
from campaigns.models import (
    OPEN_ATTEMPT_STATES,
    Appointment,
    AppointmentStatus,
    AttemptState,
    CallAttempt,
    Clinic,
    DailyRun,
)


@dataclass(frozen=True)
class DailyRunResult:
    clinic: str
    run_date: date
    created: int
    skipped: int
    appointments_considered: int

    def to_json(self) -> dict[str, Any]:
        return {
            "clinic": self.clinic,
            "date": self.run_date.isoformat(),
            "created": self.created,
            "skipped": self.skipped,
            "appointments_considered": self.appointments_considered,
        }


def clinic_local_day(clinic: Clinic, day: date) -> tuple[datetime, datetime]:
    """The UTC instants bounding one clinic-local calendar day (DST days included)."""
    zone = ZoneInfo(clinic.timezone)
    start = datetime.combine(day, time(0), zone)
    end = datetime.combine(day + timedelta(days=1), time(0), zone)
    return start, end


def clinics_due_for_daily_run(session: Session, now: datetime) -> list[tuple[Clinic, date]]:
    """Clinics whose local daily-run time has passed today and that have not run today."""
    due: list[tuple[Clinic, date]] = []
    for clinic in session.execute(select(Clinic).order_by(col(Clinic.id))).scalars():
        local = now.astimezone(ZoneInfo(clinic.timezone))
        if local.time() < clinic.daily_run_time:
            continue
        ran = session.execute(
            select(DailyRun.id).where(
                col(DailyRun.clinic_id) == clinic.id, col(DailyRun.run_date) == local.date()
            )
        ).first()
        if ran is None:
            due.append((clinic, local.date()))
    return due


def run_daily(
    session: Session, clinic: Clinic, run_date: date, now: datetime, *, actor: str
) -> DailyRunResult:
    """Create the first attempt of every appointment ``lead days`` after ``run_date``."""
    assert clinic.id is not None
    rules = load_state_rules(session)
    created = skipped = considered = 0
    for lead in parse_lead_days(clinic.lead_days):
        start, end = clinic_local_day(clinic, run_date + timedelta(days=lead))
        appointments = (
            session.execute(
                select(Appointment).where(
                    col(Appointment.clinic_id) == clinic.id,
                    col(Appointment.starts_at) >= start,
                    col(Appointment.starts_at) < end,
                    col(Appointment.status) == AppointmentStatus.SCHEDULED,
                )
            )
            .scalars()
            .all()
        )
        for appointment in appointments:
            considered += 1
            attempts = session.execute(
                select(
                    col(CallAttempt.attempt_number),
                    col(CallAttempt.state),
                    col(CallAttempt.run_date),
                ).where(col(CallAttempt.appointment_id) == appointment.id)
            ).all()
            if any(s in OPEN_ATTEMPT_STATES or r == run_date for _, s, r in attempts):
                continue
            number = max((n for n, _, _ in attempts), default=0) + 1
            if number > clinic.max_attempts:
                continue
            decision = compliance.decide_for(session, appointment, clinic, number, now, rules)
            attempt = transitions.create(
                session,
                appointment,
                clinic,
                number,
                decision,
                now,
                kind="attempt.created",
                payload={"attempt_number": number, "run_date": run_date.isoformat()},
                actor=actor,
                run_date=run_date,
            )
            if attempt.state == AttemptState.SKIPPED:
                skipped += 1
            else:
                created += 1
    _record_daily_run(session, clinic.id, run_date, created)
    audit.record(
        session,
        "daily_run.completed",
        {
            "run_date": run_date.isoformat(),
            "created": created,
            "skipped": skipped,
            "considered": considered,
            "lead_days": clinic.lead_days,
        },
        actor=actor,
        clinic_id=clinic.id,
    )
    return DailyRunResult(clinic.name, run_date, created, skipped, considered)


def run_daily_for(
    session: Session, clinic_name: str | None, run_date: date | None, now: datetime, *, actor: str
) -> list[DailyRunResult]:
    """The daily run of the clinic named, or of every clinic, on ``run_date`` or else on
    each clinic's own local date at ``now``."""
    targets = [get_clinic(session, clinic_name)] if clinic_name else list_clinics(session)
    return [
        run_daily(
            session,
            clinic,
            run_date or now.astimezone(ZoneInfo(clinic.timezone)).date(),
            now,
            actor=actor,
        )
        for clinic in targets
    ]


def _record_daily_run(session: Session, clinic_id: int, run_date: date, created: int) -> None:
    existing = session.execute(
        select(DailyRun).where(
            col(DailyRun.clinic_id) == clinic_id, col(DailyRun.run_date) == run_date
        )
    ).scalar_one_or_none()
    if existing is None:
        session.add(DailyRun(clinic_id=clinic_id, run_date=run_date, attempts_created=created))
    else:
        existing.attempts_created += created
    session.flush()
