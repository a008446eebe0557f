"""Daily runs made for many clinics at once, on SQLite and PostgreSQL.

The batched run must make exactly what a run of one appointment at a time makes
(the same attempts, the same audit events in the same order), make nothing the
second time, and lose no clinic's run to another clinic's failure.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit, db, dnc
from campaigns.attempts import daily, pipeline, transitions
from campaigns.attempts.pipeline import Pipeline
from campaigns.clinics import parse_lead_days
from campaigns.compliance import service as compliance
from campaigns.db import make_engine, session_factory
from campaigns.models import (
    OPEN_ATTEMPT_STATES,
    Appointment,
    AppointmentStatus,
    AttemptState,
    AuditEvent,
    CallAttempt,
    Clinic,
    DailyRun,
    DncSource,
)
from campaigns.settings import Settings
from campaigns.telephony.pacing.local_pacer import LocalPacer
from tests.factories import add_appointment, add_attempt, add_clinic

NOW = datetime(2026, 5, 12, 15, 0, tzinfo=UTC)  # Tuesday 11:00 EDT
RUN_DATE = date(2026, 5, 12)


def _clinic(session: Session, name: str = "Lakeside Clinic", **overrides: Any) -> Clinic:
    values: dict[str, Any] = {"name": name, "lead_days": "1,2", "daily_run_time": time(0, 0)}
    return add_clinic(session, **(values | overrides))


def _appointment(session: Session, clinic: Clinic, phone: str, **overrides: Any) -> Appointment:
    values: dict[str, Any] = {
        "phone_e164": phone,
        "starts_at": NOW + timedelta(days=2),
        "patient_timezone": "America/New_York",
    }
    return add_appointment(session, clinic, **(values | overrides))


def _assorted_appointments(session: Session, clinic: Clinic) -> None:
    """One of each case the run tells apart."""
    assert clinic.id is not None
    n = clinic.id * 100
    _appointment(session, clinic, f"+1212555{n + 1:04d}")  # callable now
    _appointment(session, clinic, f"+1212555{n + 2:04d}", starts_at=NOW + timedelta(days=1))
    # 08:00 in Los Angeles: deferred to the clinic's opening there.
    _appointment(session, clinic, f"+1213555{n + 3:04d}", patient_timezone="America/Los_Angeles")
    _appointment(session, clinic, f"+1305555{n + 4:04d}", patient_state="FL", patient_zip="33101")
    listed = _appointment(session, clinic, f"+1212555{n + 5:04d}")
    dnc.add(
        session,
        listed.phone_e164,
        clinic_id=clinic.id,
        source=DncSource.INTERNAL,
        reason="asked",
        actor="staff",
    )
    # Called 30 minutes ago on voicemail: the next is attempt 2, after the minimum gap.
    called = _appointment(session, clinic, f"+1212555{n + 6:04d}")
    add_attempt(session, called, AttemptState.COMPLETED, 1)
    session.execute(
        update(CallAttempt)
        .where(col(CallAttempt.appointment_id) == called.id)
        .values(dialing_at=NOW - timedelta(minutes=30))
    )
    # The same number as the one called: its dial counts against the number's caps.
    _appointment(session, clinic, called.phone_e164, starts_at=NOW + timedelta(days=1, hours=2))
    still_open = _appointment(session, clinic, f"+1212555{n + 8:04d}")
    add_attempt(session, still_open, AttemptState.SCHEDULED, 1)
    exhausted = _appointment(session, clinic, f"+1212555{n + 9:04d}")
    for number in range(1, clinic.max_attempts + 1):
        add_attempt(session, exhausted, AttemptState.COMPLETED, number)
    _appointment(session, clinic, f"+1212555{n + 10:04d}", status=AppointmentStatus.CONFIRMED)
    _appointment(session, clinic, f"+1212555{n + 11:04d}", starts_at=NOW + timedelta(days=3))


def _one_at_a_time(session: Session, clinic: Clinic, run_date: date, now: datetime) -> None:
    """The daily run made one appointment at a time (a query, a decision, an insert and
    an audit event each): what the batched run must reproduce."""
    assert clinic.id is not None
    for lead in parse_lead_days(clinic.lead_days):
        start, end = daily.clinic_local_day(clinic, run_date + timedelta(days=lead))
        appointments = session.execute(
            select(Appointment)
            .where(
                col(Appointment.clinic_id) == clinic.id,
                col(Appointment.starts_at) >= start,
                col(Appointment.starts_at) < end,
                col(Appointment.status) == AppointmentStatus.SCHEDULED,
            )
            .order_by(col(Appointment.starts_at), col(Appointment.id))
        ).scalars()
        for appointment in appointments:
            earlier = session.execute(
                select(
                    col(CallAttempt.attempt_number),
                    col(CallAttempt.state),
                    col(CallAttempt.run_date),
                ).where(col(CallAttempt.appointment_id) == appointment.id)
            ).all()
            if any(s in OPEN_ATTEMPT_STATES or r == run_date for _, s, r in earlier):
                continue
            number = max((n for n, _, _ in earlier), default=0) + 1
            if number > clinic.max_attempts:
                continue
            assert appointment.id is not None
            one = transitions.NewAttempt(
                appointment_id=appointment.id,
                clinic_id=clinic.id,
                number_called=appointment.phone_e164,
                attempt_number=number,
                decision=compliance.decide_for(session, appointment, clinic, number, now),
                payload={"attempt_number": number, "run_date": run_date.isoformat()},
                run_date=run_date,
            )
            transitions.create(session, [one], now, kind="attempt.created", actor="test")


def _made(session: Session) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The attempts the runs made and the audit events about attempts, in order, without
    the ids and times that differ from one run to another."""
    audit.write_pending(session)
    attempts = session.execute(
        select(  # type: ignore[call-overload]
            col(CallAttempt.appointment_id),
            col(CallAttempt.clinic_id),
            col(CallAttempt.attempt_number),
            col(CallAttempt.run_date),
            col(CallAttempt.state),
            col(CallAttempt.due_at),
            col(CallAttempt.number_called),
            col(CallAttempt.decision),
            col(CallAttempt.skip_reasons),
            col(CallAttempt.ended_at),
        )
        .where(col(CallAttempt.run_date).is_not(None))
        .order_by(col(CallAttempt.appointment_id), col(CallAttempt.attempt_number))
    ).all()
    events = session.execute(
        select(  # type: ignore[call-overload]
            AuditEvent.kind,
            AuditEvent.actor,
            AuditEvent.clinic_id,
            AuditEvent.appointment_id,
            CallAttempt.attempt_number,
            AuditEvent.payload,
        )
        .join(CallAttempt, col(CallAttempt.id) == col(AuditEvent.attempt_id))
        .where(col(AuditEvent.kind).startswith("attempt."))
        .order_by(col(AuditEvent.id))
    ).all()
    return [tuple(a) for a in attempts], [(*e[:-1], json.loads(e[-1])) for e in events]


def test_the_batched_run_makes_what_a_run_of_one_appointment_at_a_time_made(
    session: Session,
) -> None:
    clinic = _clinic(session)
    _assorted_appointments(session, clinic)
    session.commit()

    with session.begin_nested() as reference:
        _one_at_a_time(session, clinic, RUN_DATE, NOW)
        expected = _made(session)
        reference.rollback()
    result = daily.run_daily(session, clinic, RUN_DATE, NOW, actor="test")
    made = _made(session)

    assert made == expected
    attempts, events = made
    states = [a[4] for a in attempts]
    assert len(attempts) == 7
    assert states.count(AttemptState.SKIPPED) == 1  # the DNC-listed number
    assert [a[2] for a in attempts].count(2) == 1  # the one called before
    assert [e[0] for e in events].count("attempt.skipped") == 1
    assert (result.created, result.skipped, result.appointments_considered) == (6, 1, 9)
    deferred = [a for a in attempts if a[4] == AttemptState.SCHEDULED and a[5] > NOW]
    assert len(deferred) >= 2  # Los Angeles, and the number dialled 30 minutes ago


def test_several_clinics_in_one_run_make_what_each_alone_makes(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daily, "CLINICS_READ_AT_ONCE", 2)  # three clinics: two reads
    # A run's many attempts go by COPY on PostgreSQL; the one-clinic test above covers
    # the single INSERT a few rows take.
    monkeypatch.setattr(db, "COPY_FROM_ROWS", 2)
    clinics = [_clinic(session, f"Clinic {n}") for n in range(3)]
    clinics[1].timezone = "America/Chicago"
    clinics[2].lead_days = "2"
    for clinic in clinics:
        _assorted_appointments(session, clinic)
    session.commit()

    with session.begin_nested() as reference:
        for clinic in clinics:
            _one_at_a_time(session, clinic, RUN_DATE, NOW)
        expected_attempts, expected_events = _made(session)
        reference.rollback()
    results = daily.run_many(session, [(c, RUN_DATE) for c in clinics], NOW, actor="test")
    attempts, events = _made(session)

    assert attempts == expected_attempts
    for clinic in clinics:  # each clinic's events in the same order (clinics may interleave)
        assert [e for e in events if e[2] == clinic.id] == [
            e for e in expected_events if e[2] == clinic.id
        ]
    assert [r.clinic for r in results] == [c.name for c in clinics]
    assert sum(r.created + r.skipped for r in results) == len(attempts)


def _pipeline(engine: Engine) -> Pipeline:
    return Pipeline(
        sessions=session_factory(engine),
        settings=Settings(database_url=engine.url.render_as_string(hide_password=False)),
        pacer=LocalPacer(),
        clock=lambda: NOW,
    )


def _count(session: Session, model: type[Any]) -> int:
    count = session.execute(select(func.count()).select_from(model)).scalar_one()
    session.commit()  # SQLite's single writer: hold no transaction while the pipeline runs
    return count


def test_the_second_daily_run_makes_nothing_and_audits_nothing(
    session: Session, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "DAILY_RUN_BATCH", 2)  # three clinics: two transactions
    clinics = [_clinic(session, f"Clinic {n}") for n in range(3)]
    for clinic in clinics:
        _assorted_appointments(session, clinic)
    session.commit()
    runner = _pipeline(engine)

    first = runner.daily_runs()
    attempts, events = _count(session, CallAttempt), _count(session, AuditEvent)
    second = runner.daily_runs()

    assert [r.clinic for r in first] == [c.name for c in clinics]
    assert [(r.created, r.skipped) for r in first] == [(6, 1)] * 3
    assert second == []
    assert (_count(session, CallAttempt), _count(session, AuditEvent)) == (attempts, events)
    completed = session.execute(
        select(func.count()).where(col(AuditEvent.kind) == "daily_run.completed")
    ).scalar_one()
    assert completed == 3
    runs = session.execute(select(DailyRun.clinic_id, DailyRun.attempts_created)).all()
    assert sorted(runs) == [(c.id, 6) for c in clinics]
    assert audit.verify(session).ok


def test_a_clinic_whose_run_fails_costs_no_other_clinic_its_run(
    session: Session,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(pipeline, "DAILY_RUN_BATCH", 10)  # all three in one transaction
    clinics = [_clinic(session, f"Clinic {n}") for n in range(3)]
    for clinic in clinics:
        _assorted_appointments(session, clinic)
    broken = clinics[1]
    # Settings written around the validation (an old row, a hand edit): the run raises.
    session.execute(update(Clinic).where(col(Clinic.id) == broken.id).values(lead_days="soon"))
    session.commit()
    runner = _pipeline(engine)

    with caplog.at_level(logging.ERROR, logger="campaigns.attempts.pipeline"):
        results = runner.daily_runs()

    assert [r.clinic for r in results] == [clinics[0].name, clinics[2].name]
    assert [(r.created, r.skipped) for r in results] == [(6, 1), (6, 1)]
    assert f"daily run of clinic {broken.id}" in caplog.text
    made = session.execute(
        select(CallAttempt.clinic_id).where(col(CallAttempt.run_date).is_not(None))
    )
    assert broken.id not in set(made.scalars())
    # The failed clinic is still due: once mended, the next run makes its attempts.
    session.execute(update(Clinic).where(col(Clinic.id) == broken.id).values(lead_days="1,2"))
    session.commit()
    assert [(r.clinic, r.created) for r in runner.daily_runs()] == [(broken.name, 6)]
    assert audit.verify(session).ok


def test_create_keeps_one_open_attempt_per_appointment(session: Session) -> None:
    clinic = _clinic(session)
    assert clinic.id is not None
    appointment = _appointment(session, clinic, "+12125550100")
    assert appointment.id is not None
    add_attempt(session, appointment, AttemptState.SCHEDULED, 1)
    decision = compliance.decide_for(session, appointment, clinic, 2, NOW)
    second = transitions.NewAttempt(
        appointment.id, clinic.id, appointment.phone_e164, 2, decision, {}, RUN_DATE
    )

    with pytest.raises(IntegrityError), session.begin_nested():
        transitions.create(session, [second], NOW, kind="attempt.created", actor="test")


def _daily_runs_in_thread(
    engine: Engine, barrier: threading.Barrier, out: list[int], errors: list[BaseException]
) -> None:
    try:
        barrier.wait(timeout=30)
        out.append(sum(r.created + r.skipped for r in _pipeline(engine).daily_runs()))
    except BaseException as exc:  # reported to the test's thread
        errors.append(exc)


def test_two_concurrent_daily_runs_on_postgres_make_each_attempt_once(
    pg_database_url: str,
) -> None:
    engine = make_engine(pg_database_url)
    try:
        with session_factory(engine)() as session:
            for n in range(6):
                _assorted_appointments(session, _clinic(session, f"Clinic {n}"))
            session.commit()
        barrier = threading.Barrier(2)
        made: list[int] = []
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_daily_runs_in_thread, args=(engine, barrier, made, errors))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert sum(made) == 6 * 7
        with session_factory(engine)() as session:
            per_appointment = session.execute(
                select(CallAttempt.appointment_id, func.count())
                .where(col(CallAttempt.run_date).is_not(None))
                .group_by(col(CallAttempt.appointment_id))
            ).all()
            assert len(per_appointment) == 6 * 7
            assert {count for _, count in per_appointment} == {1}
            completed = session.execute(
                select(func.count()).where(col(AuditEvent.kind) == "daily_run.completed")
            ).scalar_one()
            assert completed == 6
            assert audit.verify(session).ok
    finally:
        engine.dispose()
