"""A clinic's daily run: the first attempt of every appointment ``lead days`` ahead.

Idempotent per clinic and run date: an appointment with an open attempt, or one
already created by this run date, gets nothing new (the database's unique index
backs this up), and :func:`run_due` skips a clinic whose run is recorded. Several
clinics' runs are made together, with one read of each kind for all of them and
one write of their attempts; each attempt is audited on its own. Callers own the
transaction: nothing here commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, and_, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit
from campaigns.attempts import transitions
from campaigns.clinics import get_clinic, list_clinics, parse_lead_days
from campaigns.compliance import service as compliance
from campaigns.db import insert_or_skip, one_of, utcnow
from campaigns.models import (
    OPEN_ATTEMPT_STATES,
    Appointment,
    AppointmentStatus,
    AttemptState,
    CallAttempt,
    Clinic,
    DailyRun,
)

# Clinics whose appointments one statement reads (its size, and SQLite's bound values).
CLINICS_READ_AT_ONCE = 50


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
    candidates: list[tuple[Clinic, date]] = []
    for clinic in session.execute(select(Clinic).order_by(col(Clinic.id))).scalars():
        local = now.astimezone(ZoneInfo(clinic.timezone))
        if local.time() >= clinic.daily_run_time:
            candidates.append((clinic, local.date()))
    if not candidates:
        return []
    # Every clinic's local date is one of at most three: one read of their runs.
    ran = set(
        session.execute(
            select(col(DailyRun.clinic_id), col(DailyRun.run_date)).where(
                col(DailyRun.run_date).in_(sorted({day for _, day in candidates}))
            )
        ).all()
    )
    return [(clinic, day) for clinic, day in candidates if (clinic.id, day) not in ran]


@dataclass(frozen=True)
class _Scheduled:
    """What the run reads of an appointment: the policy's facts (see ``CalleeFacts``)."""

    id: int
    clinic_id: int
    phone_e164: str
    patient_timezone: str | None
    patient_state: str | None
    patient_zip: str | None
    starts_at: datetime
    status: str


_SCHEDULED_COLUMNS = (
    col(Appointment.id),
    col(Appointment.clinic_id),
    col(Appointment.phone_e164),
    col(Appointment.patient_timezone),
    col(Appointment.patient_state),
    col(Appointment.patient_zip),
    col(Appointment.starts_at),
    col(Appointment.status),
)


def _scheduled(
    session: Session, days: Sequence[tuple[int, datetime, datetime]]
) -> list[list[_Scheduled]]:
    """The scheduled appointments of each ``(clinic id, start, end)``, soonest first, read
    at once (the days of one clinic do not overlap)."""
    found: list[list[_Scheduled]] = [[] for _ in days]
    if not days:
        return found
    which: dict[int, list[int]] = {}
    for index, (clinic_id, _, _) in enumerate(days):
        which.setdefault(clinic_id, []).append(index)
    rows = session.execute(
        select(*_SCHEDULED_COLUMNS)  # type: ignore[call-overload]
        .where(
            or_(
                *(
                    and_(
                        col(Appointment.clinic_id) == clinic_id,
                        col(Appointment.starts_at) >= start,
                        col(Appointment.starts_at) < end,
                    )
                    for clinic_id, start, end in days
                )
            ),
            col(Appointment.status) == AppointmentStatus.SCHEDULED,
        )
        .order_by(col(Appointment.starts_at), col(Appointment.id))
    ).all()
    # Bounds in UTC, as the rows' times are: comparing those needs no zone offsets.
    bounds = [(start.astimezone(UTC), end.astimezone(UTC)) for _, start, end in days]
    for row in rows:
        appointment = _Scheduled(*row)
        indexes = which[appointment.clinic_id]
        for index in indexes:
            start, end = bounds[index]
            if len(indexes) == 1 or start <= appointment.starts_at < end:
                found[index].append(appointment)
                break
    return found


def _next_attempt_numbers(
    session: Session, appointments: list[_Scheduled], run_date_of: dict[int, date]
) -> dict[int, int]:
    """The number of each appointment's next attempt; none for an appointment with an
    open attempt or one created by its clinic's run date (``run_date_of`` by clinic)."""
    history: dict[int, list[tuple[int, str, date | None]]] = {a.id: [] for a in appointments}
    if history:
        for appointment_id, number, state, made_on in session.execute(
            select(
                col(CallAttempt.appointment_id),
                col(CallAttempt.attempt_number),
                col(CallAttempt.state),
                col(CallAttempt.run_date),
            ).where(one_of(session, col(CallAttempt.appointment_id), list(history)))
        ).all():
            history[appointment_id].append((number, state, made_on))
    return {
        a.id: max((n for n, _, _ in history[a.id]), default=0) + 1
        for a in appointments
        if not any(
            s in OPEN_ATTEMPT_STATES or r == run_date_of[a.clinic_id] for _, s, r in history[a.id]
        )
    }


def run_daily(
    session: Session, clinic: Clinic, run_date: date, now: datetime, *, actor: str
) -> DailyRunResult:
    """Create the first attempt of every appointment ``lead days`` after ``run_date``,
    whether or not the clinic's run for that date was made before."""
    return run_many(session, [(clinic, run_date)], now, actor=actor)[0]


def run_due(
    session: Session, due: Sequence[tuple[int, date]], now: datetime, *, actor: str
) -> list[DailyRunResult]:
    """The daily runs of the ``(clinic id, run date)`` pairs not yet recorded.

    Each run's :class:`DailyRun` row is inserted first and its unique key decides: a run
    recorded, or being recorded by a concurrent transaction (this one waits for it), is
    not made again."""
    claimed = _claim_runs(session, due)
    if not claimed:
        return []
    clinics = {
        clinic.id: clinic
        for clinic in session.execute(
            select(Clinic).where(col(Clinic.id).in_(sorted({c for c, _ in claimed})))
        ).scalars()
    }
    runs = [(clinics[c], day) for c, day in due if (c, day) in claimed and c in clinics]
    return run_many(session, runs, now, actor=actor)


def run_many(
    session: Session, runs: Sequence[tuple[Clinic, date]], now: datetime, *, actor: str
) -> list[DailyRunResult]:
    """The daily run of each ``(clinic, run date)``, one result each, in order (a clinic
    at most once). Each attempt is audited as ``attempt.created`` (``attempt.skipped``
    when refused for good); each run then as ``daily_run.completed``."""
    if len(runs) > CLINICS_READ_AT_ONCE:
        return [
            result
            for start in range(0, len(runs), CLINICS_READ_AT_ONCE)
            for result in run_many(
                session, runs[start : start + CLINICS_READ_AT_ONCE], now, actor=actor
            )
        ]
    days: list[tuple[int, datetime, datetime]] = []
    owner: list[int] = []  # the run each of `days` belongs to
    for index, (clinic, run_date) in enumerate(runs):
        assert clinic.id is not None
        for lead in parse_lead_days(clinic.lead_days):
            days.append((clinic.id, *clinic_local_day(clinic, run_date + timedelta(days=lead))))
            owner.append(index)
    per_run: list[list[_Scheduled]] = [[] for _ in runs]
    for index, found in zip(owner, _scheduled(session, days), strict=True):
        per_run[index] += found
    run_date_of = {clinic.id: run_date for clinic, run_date in runs if clinic.id is not None}
    appointments = [a for found in per_run for a in found]
    numbers = _next_attempt_numbers(session, appointments, run_date_of)
    max_attempts = {clinic.id: clinic.max_attempts for clinic, _ in runs}
    questions = [
        compliance.Question(a.id, a.clinic_id, numbers[a.id], a)
        for a in appointments
        if numbers.get(a.id, max_attempts[a.clinic_id] + 1) <= max_attempts[a.clinic_id]
    ]
    states: list[tuple[int, str]] = []
    if questions:
        inputs = compliance.gather(session, questions, [c for c, _ in runs], now)
        new = [
            transitions.NewAttempt(
                q.appointment_id,
                q.clinic_id,
                q.callee.phone_e164,
                q.attempt_number,
                inputs.decide(q, now),
                {
                    "attempt_number": q.attempt_number,
                    "run_date": run_date_of[q.clinic_id].isoformat(),
                },
                run_date_of[q.clinic_id],
            )
            for q in questions
        ]
        states = transitions.create(session, new, now, kind="attempt.created", actor=actor)
    created: dict[int, int] = dict.fromkeys(run_date_of, 0)
    skipped: dict[int, int] = dict.fromkeys(run_date_of, 0)
    for question, (_, state) in zip(questions, states, strict=True):
        counts = skipped if state == AttemptState.SKIPPED else created
        counts[question.clinic_id] += 1
    results: list[DailyRunResult] = []
    completed: list[audit.Entry] = []
    for (clinic, run_date), found in zip(runs, per_run, strict=True):
        assert clinic.id is not None
        done = DailyRunResult(
            clinic.name, run_date, created[clinic.id], skipped[clinic.id], len(found)
        )
        results.append(done)
        completed.append(
            audit.Entry(
                "daily_run.completed",
                {
                    "run_date": run_date.isoformat(),
                    "created": done.created,
                    "skipped": done.skipped,
                    "considered": done.appointments_considered,
                    "lead_days": clinic.lead_days,
                },
                actor,
                clinic.id,
            )
        )
    _record_runs(session, [(c.id, d, r.created) for (c, d), r in zip(runs, results, strict=True)])
    audit.record_many(session, completed)
    return results


def run_daily_for(
    session: Session, clinic_name: str | None, run_date: date | None, now: datetime, *, actor: str
) -> list[DailyRunResult]:
    """The daily run of the clinic named, or of every clinic, on ``run_date`` or else on
    each clinic's own local date at ``now``."""
    targets = [get_clinic(session, clinic_name)] if clinic_name else list_clinics(session)
    runs = [
        (clinic, run_date or now.astimezone(ZoneInfo(clinic.timezone)).date()) for clinic in targets
    ]
    return run_many(session, runs, now, actor=actor)


_RUNS: Table = DailyRun.__table__  # type: ignore[attr-defined]
_RUN_KEY = ["clinic_id", "run_date"]


def _new_runs(
    session: Session, runs: Sequence[tuple[int | None, date, int]]
) -> postgresql.Insert | sqlite.Insert:
    started = utcnow()
    return insert_or_skip(session, _RUNS).values(
        [
            {
                "clinic_id": clinic_id,
                "run_date": run_date,
                "attempts_created": created,
                "started_at": started,
            }
            for clinic_id, run_date, created in runs
        ]
    )


def _claim_runs(session: Session, due: Sequence[tuple[int, date]]) -> set[tuple[int, date]]:
    """Record the runs not recorded yet; returns them. Inserted in key order, so that
    concurrent claims wait for each other rather than deadlock."""
    if not due:
        return set()
    claim = _new_runs(session, [(clinic_id, day, 0) for clinic_id, day in sorted(due)])
    return set(
        session.execute(
            claim.on_conflict_do_nothing(index_elements=_RUN_KEY).returning(
                _RUNS.c.clinic_id, _RUNS.c.run_date
            )
        ).all()
    )


def _record_runs(session: Session, runs: Sequence[tuple[int | None, date, int]]) -> None:
    """Add each run's attempts to its :class:`DailyRun` row, inserting the rows missing."""
    if not runs:
        return
    record = _new_runs(session, sorted(runs, key=lambda run: (run[0] or 0, run[1])))
    session.execute(
        record.on_conflict_do_update(
            index_elements=_RUN_KEY,
            set_={"attempts_created": _RUNS.c.attempts_created + record.excluded.attempts_created},
        )
    )
