"""The life of a call attempt through the service functions, on SQLite and PostgreSQL.

Every step runs in the caller's session with a fixed ``now``: a Tuesday, 11:00 in
New York, where the clinic and its patients are, inside every calling window.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, insert, update
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit, dnc
from campaigns.attempts import claim, daily, dial, reconcile, reports, status
from campaigns.attempts.pipeline import Pipeline
from campaigns.compliance import service as compliance
from campaigns.db import make_engine, session_factory
from campaigns.models import (
    Appointment,
    AppointmentStatus,
    AttemptState,
    AuditEvent,
    CallAttempt,
    Clinic,
    DncSource,
    Trunk,
)
from campaigns.settings import Settings
from campaigns.telephony.livekit_gateway import LiveKitTelephony
from campaigns.telephony.outcomes import DialProblem, Outcome
from campaigns.telephony.pacing.local_pacer import LocalPacer
from campaigns.telephony.port import CallRequest, CallResult
from campaigns.tokens import check_report_token
from simulator.testing import TEST_API_SECRET, running_simulator
from tests.factories import add_appointment, add_clinic
from workers.runtime import EventLoopThread

NOW = datetime(2026, 5, 12, 15, 0, tzinfo=UTC)  # Tuesday 11:00 EDT
RUN_DATE = date(2026, 5, 12)
SECRET = "test-report-secret"
DIAL = dial.DialSettings(
    default_trunk=None,
    default_agent="confirmer",
    report_secret=SECRET,
    ringing_timeout=timedelta(seconds=30),
    max_call_duration=timedelta(seconds=300),
    agent_script_version="script-v7",
    report_grace=timedelta(seconds=120),
)
# With jitter 0.5 the retry delay is exactly the clinic's base delay (1 h by default).
MID_JITTER = 0.5

_phones = itertools.count(1000)


def _clinic(session: Session, **overrides: object) -> Clinic:
    values: dict[str, object] = {
        "trunk_id": "ST_lakeside",
        "caller_id": "+12125550199",
        "lead_days": "2",
    }
    values.update(overrides)
    return add_clinic(session, **values)


def _appointment(session: Session, clinic: Clinic, **overrides: object) -> Appointment:
    values: dict[str, object] = {
        "phone_e164": f"+1212555{next(_phones):04d}",
        "starts_at": NOW + timedelta(days=2),
        "patient_timezone": "America/New_York",
    }
    values.update(overrides)
    return add_appointment(session, clinic, **values)


def _commit(session: Session) -> None:
    """End the step's transaction, as each pipeline step does, and forget cached rows."""
    session.commit()
    session.expire_all()


def _attempts(session: Session, appointment: Appointment) -> list[CallAttempt]:
    return list(
        session.execute(
            select(CallAttempt)
            .where(col(CallAttempt.appointment_id) == appointment.id)
            .order_by(col(CallAttempt.attempt_number))
        ).scalars()
    )


def _scheduled(session: Session, clinic: Clinic, appointment: Appointment) -> CallAttempt:
    daily.run_daily(session, clinic, RUN_DATE, NOW, actor="test")
    _commit(session)
    (attempt,) = _attempts(session, appointment)
    assert attempt.state == AttemptState.SCHEDULED
    return attempt


def _queued(session: Session, clinic: Clinic, appointment: Appointment) -> CallAttempt:
    attempt = _scheduled(session, clinic, appointment)
    assert attempt.id in claim.claim_due_attempts(session, NOW, limit=100).queued
    _commit(session)
    return attempt


def _dialing(
    session: Session, clinic: Clinic, appointment: Appointment
) -> tuple[CallAttempt, CallRequest]:
    attempt = _queued(session, clinic, appointment)
    assert attempt.id is not None
    plan = dial.begin_dial(session, attempt.id, NOW, DIAL)
    assert plan is not None
    _commit(session)
    return attempt, plan.request


def _answered(
    session: Session, clinic: Clinic, appointment: Appointment
) -> tuple[CallAttempt, CallRequest]:
    attempt, request = _dialing(session, clinic, appointment)
    assert attempt.id is not None
    answered = CallResult(answered=True, outcome=None, sip_call_id="SCL_1", dispatch_id="AD_1")
    dial.finish_dial(session, attempt.id, answered, NOW + timedelta(seconds=20), jitter=0.5)
    _commit(session)
    return attempt, request


def _audit_count(session: Session) -> int:
    return session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()


def _audited_as_queued(session: Session, attempt_id: int | None) -> bool:
    """Whether the log says the attempt was queued (one event each, or one per clinic and batch)."""
    for event_attempt, payload in session.execute(
        select(AuditEvent.attempt_id, AuditEvent.payload).where(
            col(AuditEvent.kind).in_(["attempt.queued", "attempts.queued"])
        )
    ).all():
        if event_attempt == attempt_id or attempt_id in json.loads(payload).get("attempt_ids", []):
            return True
    return False


def _audit_kinds(session: Session, attempt_id: int | None) -> list[str]:
    return list(
        session.execute(
            select(AuditEvent.kind)
            .where(col(AuditEvent.attempt_id) == attempt_id)
            .order_by(col(AuditEvent.id))
        ).scalars()
    )


# --------------------------------------------------------------------------- run_daily


def test_daily_run_creates_one_attempt_per_appointment_lead_days_ahead(session: Session) -> None:
    clinic = _clinic(session, lead_days="2")
    # Thursday 23:30 in New York is Friday 03:30 UTC: still the clinic's Thursday.
    late_thursday = _appointment(
        session, clinic, starts_at=datetime(2026, 5, 15, 3, 30, tzinfo=UTC)
    )
    thursday = _appointment(session, clinic)
    # Wednesday 23:30 in New York is Thursday 03:30 UTC: a Wednesday appointment.
    late_wednesday = _appointment(
        session, clinic, starts_at=datetime(2026, 5, 14, 3, 30, tzinfo=UTC)
    )
    friday = _appointment(session, clinic, starts_at=NOW + timedelta(days=3))
    confirmed = _appointment(session, clinic, status=AppointmentStatus.CONFIRMED)
    cancelled = _appointment(session, clinic, status=AppointmentStatus.CANCELLED)

    result = daily.run_daily(session, clinic, RUN_DATE, NOW, actor="test")
    _commit(session)

    assert (result.created, result.skipped, result.appointments_considered) == (2, 0, 2)
    for appointment in (thursday, late_thursday):
        (attempt,) = _attempts(session, appointment)
        assert attempt.state == AttemptState.SCHEDULED
        assert attempt.attempt_number == 1
        assert attempt.due_at == NOW
        assert attempt.run_date == RUN_DATE
        assert attempt.number_called == appointment.phone_e164
    for appointment in (late_wednesday, friday, confirmed, cancelled):
        assert _attempts(session, appointment) == []


def test_daily_run_with_two_lead_days_covers_both_days(session: Session) -> None:
    clinic = _clinic(session, lead_days="1,2")
    wednesday = _appointment(session, clinic, starts_at=NOW + timedelta(days=1))
    thursday = _appointment(session, clinic)
    friday = _appointment(session, clinic, starts_at=NOW + timedelta(days=3))

    result = daily.run_daily(session, clinic, RUN_DATE, NOW, actor="test")
    _commit(session)

    assert result.created == 2
    assert len(_attempts(session, wednesday)) == 1
    assert len(_attempts(session, thursday)) == 1
    assert _attempts(session, friday) == []


def test_running_the_daily_run_twice_creates_nothing_new(session: Session) -> None:
    clinic = _clinic(session)
    appointments = [_appointment(session, clinic) for _ in range(3)]
    first = daily.run_daily(session, clinic, RUN_DATE, NOW, actor="test")
    _commit(session)
    second = daily.run_daily(session, clinic, RUN_DATE, NOW + timedelta(minutes=5), actor="test")
    _commit(session)

    assert (first.created, second.created, second.skipped) == (3, 0, 0)
    assert all(len(_attempts(session, a)) == 1 for a in appointments)


def test_daily_run_records_a_dnc_listed_patient_as_skipped(session: Session) -> None:
    clinic = _clinic(session)
    assert clinic.id is not None
    listed = _appointment(session, clinic)
    dnc.add(
        session,
        listed.phone_e164,
        clinic_id=clinic.id,
        source=DncSource.INTERNAL,
        reason="asked",
        actor="staff",
    )

    result = daily.run_daily(session, clinic, RUN_DATE, NOW, actor="test")
    _commit(session)

    assert (result.created, result.skipped) == (0, 1)
    (attempt,) = _attempts(session, listed)
    assert attempt.state == AttemptState.SKIPPED
    assert attempt.ended_at == NOW
    assert "dnc_listed" in (attempt.skip_reasons or "")
    assert _audit_kinds(session, attempt.id) == ["attempt.skipped"]


def test_daily_run_schedules_a_patient_outside_the_window_at_the_next_allowed_time(
    session: Session,
) -> None:
    clinic = _clinic(session)
    # 15:00 UTC is 08:00 in Los Angeles: before the clinic's 09:00 opening there.
    west = _appointment(session, clinic, patient_timezone="America/Los_Angeles")
    expected = compliance.decide_for(session, west, clinic, 1, NOW)
    assert not expected.allowed

    daily.run_daily(session, clinic, RUN_DATE, NOW, actor="test")
    _commit(session)

    (attempt,) = _attempts(session, west)
    assert attempt.state == AttemptState.SCHEDULED
    assert attempt.due_at == expected.next_allowed_at == datetime(2026, 5, 12, 16, 0, tzinfo=UTC)
    assert "outside_clinic_window" in (attempt.skip_reasons or "")


# --------------------------------------------------------------------------- the tick


def _due_attempt(session: Session, appointment: Appointment, due_at: datetime) -> CallAttempt:
    attempt = CallAttempt(
        appointment_id=appointment.id or 0,
        clinic_id=appointment.clinic_id,
        attempt_number=1,
        due_at=due_at,
        number_called=appointment.phone_e164,
    )
    session.add(attempt)
    session.flush()
    return attempt


def test_claim_queues_due_attempts_defers_early_ones_and_skips_dnc(session: Session) -> None:
    clinic = _clinic(session)
    assert clinic.id is not None
    due = _due_attempt(session, _appointment(session, clinic), NOW - timedelta(minutes=1))
    later = _due_attempt(session, _appointment(session, clinic), NOW + timedelta(minutes=1))
    west = _due_attempt(
        session, _appointment(session, clinic, patient_timezone="America/Los_Angeles"), NOW
    )
    listed_appointment = _appointment(session, clinic)
    listed = _due_attempt(session, listed_appointment, NOW)
    dnc.add(
        session,
        listed_appointment.phone_e164,
        clinic_id=None,
        source=DncSource.INTERNAL,
        reason=None,
        actor="staff",
    )
    _commit(session)

    result = claim.claim_due_attempts(session, NOW, limit=100)
    _commit(session)

    assert result.queued == [due.id]
    assert (result.deferred, result.skipped) == (1, 1)
    session.refresh(due)
    assert (due.state, due.queued_at) == (AttemptState.QUEUED, NOW)
    session.refresh(later)
    assert (later.state, later.queued_at) == (AttemptState.SCHEDULED, None)
    session.refresh(west)
    assert west.state == AttemptState.SCHEDULED
    assert west.due_at == datetime(2026, 5, 12, 16, 0, tzinfo=UTC)
    assert "outside_clinic_window" in (west.skip_reasons or "")
    session.refresh(listed)
    assert listed.state == AttemptState.SKIPPED
    assert "dnc_listed: global" in (listed.skip_reasons or "")

    assert _audited_as_queued(session, due.id)
    assert not any(_audited_as_queued(session, a.id) for a in (later, west, listed))
    assert _audit_kinds(session, west.id) == ["attempt.deferred"]
    assert _audit_kinds(session, listed.id) == ["attempt.skipped"]
    assert _audit_kinds(session, later.id) == []
    assert audit.verify(session).ok
    # The deferred attempt is not claimed again before its new due time.
    assert claim.claim_due_attempts(session, NOW + timedelta(minutes=30), limit=100).queued == [
        later.id
    ]


def test_a_paused_clinic_is_not_claimed(session: Session) -> None:
    paused = _clinic(session, name="Paused", paused_reason="trunk rejected")
    running = _clinic(session, name="Running")
    stopped = _due_attempt(session, _appointment(session, paused), NOW)
    going = _due_attempt(session, _appointment(session, running), NOW)
    _commit(session)

    assert claim.claim_due_attempts(session, NOW, limit=100).queued == [going.id]
    _commit(session)
    session.refresh(stopped)
    assert stopped.state == AttemptState.SCHEDULED


def _claim_in_thread(
    engine: Engine,
    barrier: threading.Barrier,
    claimed: list[list[int]],
    errors: list[BaseException],
) -> None:
    try:
        with session_factory(engine)() as session:
            barrier.wait(timeout=10)
            result = claim.claim_due_attempts(session, NOW, limit=150)
            session.commit()
            claimed.append(result.queued)
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


def _attempt_in(session: Session, clinic: Clinic, state: AttemptState) -> None:
    appointment = _appointment(session, clinic)
    assert appointment.id is not None and clinic.id is not None
    session.add(
        CallAttempt(
            appointment_id=appointment.id,
            clinic_id=clinic.id,
            attempt_number=1,
            state=state,
            due_at=NOW - timedelta(minutes=1),
            dialing_at=NOW if state == AttemptState.DIALING else None,
            number_called=appointment.phone_e164,
        )
    )


@pytest.mark.postgres
def test_the_claim_queues_no_more_calls_than_the_trunk_can_carry(session: Session) -> None:
    clinic = _clinic(session)
    session.add(Trunk(sip_trunk_id="ST_lakeside", name="lakeside", max_concurrent=3))
    _attempt_in(session, clinic, AttemptState.DIALING)
    for _ in range(5):
        _attempt_in(session, clinic, AttemptState.SCHEDULED)
    session.flush()

    result = claim.claim_due_attempts(session, NOW, limit=100)

    assert len(result.queued) == 2  # three lines, one already ringing
    assert result.waiting_for_trunk == 3
    still_scheduled = (
        session.execute(select(CallAttempt).where(col(CallAttempt.state) == AttemptState.SCHEDULED))
        .scalars()
        .all()
    )
    assert len(still_scheduled) == 3
    assert all(a.due_at == NOW - timedelta(minutes=1) for a in still_scheduled)


def test_a_trunk_shared_by_clinics_counts_the_calls_of_all_of_them(session: Session) -> None:
    lakeside = _clinic(session)
    harbour = _clinic(session, name="Harbour Clinic")  # the same trunk
    hillside = _clinic(session, name="Hillside Clinic", trunk_id=None)  # the default trunk
    session.add(Trunk(sip_trunk_id="ST_lakeside", name="lakeside", max_concurrent=4))
    session.add(Trunk(sip_trunk_id="ST_default", name="default", max_concurrent=1))
    for _ in range(3):
        _attempt_in(session, harbour, AttemptState.DIALING)
    for clinic in (lakeside, hillside):
        for _ in range(3):
            _attempt_in(session, clinic, AttemptState.SCHEDULED)
    session.flush()

    result = claim.claim_due_attempts(session, NOW, limit=100, default_trunk="ST_default")

    queued = session.execute(
        select(CallAttempt.clinic_id).where(col(CallAttempt.state) == AttemptState.QUEUED)
    ).all()
    assert sorted(clinic_id for (clinic_id,) in queued) == sorted(
        [lakeside.id or 0, hillside.id or 0]
    )
    assert result.waiting_for_trunk == 4  # two per clinic: one line left on each trunk


def test_two_concurrent_claims_on_postgres_never_take_the_same_attempt(
    pg_database_url: str,
) -> None:
    engine = make_engine(pg_database_url)
    try:
        with session_factory(engine)() as session:
            clinic = _clinic(session)
            session.add(Trunk(sip_trunk_id="ST_lakeside", name="lakeside", max_concurrent=1000))
            appointments = [_appointment(session, clinic) for _ in range(200)]
            session.execute(
                insert(CallAttempt),
                [
                    {
                        "appointment_id": a.id,
                        "clinic_id": clinic.id,
                        "attempt_number": 1,
                        "state": AttemptState.SCHEDULED,
                        "due_at": NOW - timedelta(seconds=i),
                        "number_called": a.phone_e164,
                    }
                    for i, a in enumerate(appointments)
                ],
            )
            session.commit()
            all_ids = set(session.execute(select(CallAttempt.id)).scalars())

        barrier = threading.Barrier(2)
        claimed: list[list[int]] = []
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_claim_in_thread, args=(engine, barrier, claimed, errors))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        first, second = claimed
        assert len(first) + len(second) == 200
        assert not set(first) & set(second)
        assert set(first) | set(second) == all_ids
        with session_factory(engine)() as session:
            states = session.execute(select(CallAttempt.state).distinct()).scalars().all()
            assert states == [AttemptState.QUEUED]
            assert audit.verify(session).ok
    finally:
        engine.dispose()


def _tick_holding_its_transaction(
    engine: Engine, claimed: threading.Event, other_done: threading.Event, out: list[list[int]]
) -> None:
    with session_factory(engine)() as session:
        result = claim.claim_due_attempts(session, NOW, limit=100)
        claimed.set()
        other_done.wait(timeout=1)  # the other tick runs now, or waits for this one
        session.commit()
    out.append(result.queued)


def test_two_ticks_at_once_never_queue_more_calls_than_the_trunk_can_carry(
    engine: Engine,
) -> None:
    """Ticks that pile up behind a burst of calls in the broker arrive together; the
    second must count the calls the first queued, or the trunk is oversubscribed and
    its queued calls hold every worker thread waiting for a line."""
    with session_factory(engine)() as session:
        clinic = _clinic(session)
        session.add(Trunk(sip_trunk_id="ST_lakeside", name="lakeside", max_concurrent=5))
        for _ in range(20):
            _attempt_in(session, clinic, AttemptState.SCHEDULED)
        session.commit()
    claimed, other_done = threading.Event(), threading.Event()
    first: list[list[int]] = []
    thread = threading.Thread(
        target=_tick_holding_its_transaction, args=(engine, claimed, other_done, first)
    )
    thread.start()
    try:
        assert claimed.wait(timeout=10)
        with session_factory(engine)() as session:
            second = claim.claim_due_attempts(session, NOW, limit=100)
            session.commit()
    finally:
        other_done.set()
        thread.join(timeout=30)

    assert len(first[0]) == 5
    assert second.queued == []
    assert second.waiting_for_trunk == 15


# --------------------------------------------------------------------------- begin_dial


def test_begin_dial_dials_a_queued_attempt_once_with_what_the_agent_needs(
    session: Session,
) -> None:
    clinic = _clinic(session, agent_name="lakeside-agent")
    first_appointment = _appointment(session, clinic, provider="Dr. Who")
    second_appointment = _appointment(session, clinic)
    daily.run_daily(session, clinic, RUN_DATE, NOW, actor="test")
    queued = claim.claim_due_attempts(session, NOW, limit=10).queued
    _commit(session)
    assert len(queued) == 2
    (first,) = _attempts(session, first_appointment)
    (second,) = _attempts(session, second_appointment)
    assert first.id is not None and second.id is not None
    session.add(
        Trunk(sip_trunk_id="ST_lakeside", name="lakeside", calls_per_second=7, max_concurrent=9)
    )
    _commit(session)

    plan = dial.begin_dial(session, first.id, NOW, DIAL)
    _commit(session)
    other_plan = dial.begin_dial(session, second.id, NOW, DIAL)
    _commit(session)

    assert plan is not None and other_plan is not None
    assert dial.begin_dial(session, first.id, NOW, DIAL) is None  # a duplicate task
    _commit(session)
    request, other = plan.request, other_plan.request
    assert (plan.calls_per_second, plan.max_concurrent) == (7, 9)  # the clinic's trunk
    assert request.attempt_id == first.id
    assert request.call_to == first_appointment.phone_e164
    assert request.caller_id == "+12125550199"
    assert request.trunk_id == "ST_lakeside"
    assert request.agent_name == "lakeside-agent"
    assert request.ringing_timeout == timedelta(seconds=30)
    assert len({request.room_name, other.room_name}) == 2
    assert len({request.participant_identity, other.participant_identity}) == 2
    metadata = json.loads(json.dumps(request.agent_metadata))
    assert metadata["participant_identity"] == request.participant_identity
    assert metadata["callback_number"] == "+12125550199"
    assert "Lovelace" not in json.dumps(metadata)  # the first name only
    assert metadata["provider"] == "Dr. Who"
    assert metadata["patient_first_name"] == "Ada"
    assert metadata["script_version"] == "script-v7"
    assert metadata["appointment_local_time"] == "2026-05-14T11:00:00-04:00"
    token = metadata["report_token"]
    # Valid for this attempt and its room until the longest call and the grace are over.
    expiry = NOW + timedelta(seconds=30 + 300 + 120)
    assert check_report_token(token, first.id, request.room_name, expiry, SECRET) == "valid"
    assert (
        check_report_token(
            token, first.id, request.room_name, expiry + timedelta(seconds=1), SECRET
        )
        == "expired"
    )
    assert check_report_token(token, second.id, request.room_name, NOW, SECRET) == "invalid"
    assert check_report_token(token, first.id, other.room_name, NOW, SECRET) == "invalid"

    session.refresh(first)
    assert first.state == AttemptState.DIALING
    assert first.dialing_at == NOW
    assert (first.room_name, first.participant_identity) == (
        request.room_name,
        request.participant_identity,
    )
    assert _audit_kinds(session, first.id)[-1] == "attempt.dialing"


def test_begin_dial_skips_a_number_put_on_the_dnc_list_after_queueing(session: Session) -> None:
    clinic = _clinic(session)
    appointment = _appointment(session, clinic)
    attempt = _queued(session, clinic, appointment)
    assert attempt.id is not None and clinic.id is not None
    dnc.add(
        session,
        appointment.phone_e164,
        clinic_id=clinic.id,
        source=DncSource.INTERNAL,
        reason="called the front desk",
        actor="staff",
    )
    _commit(session)

    assert dial.begin_dial(session, attempt.id, NOW + timedelta(seconds=2), DIAL) is None
    _commit(session)

    session.refresh(attempt)
    assert attempt.state == AttemptState.SKIPPED
    assert attempt.dialing_at is None and attempt.room_name is None
    assert "dnc_listed: clinic" in (attempt.skip_reasons or "")


def test_begin_dial_puts_the_attempt_back_when_the_clinic_is_paused(session: Session) -> None:
    clinic = _clinic(session)
    attempt = _queued(session, clinic, _appointment(session, clinic))
    assert attempt.id is not None
    clinic.paused_reason = "operator stop"
    _commit(session)

    assert dial.begin_dial(session, attempt.id, NOW, DIAL) is None
    _commit(session)

    session.refresh(attempt)
    assert (attempt.state, attempt.dialing_at) == (AttemptState.SCHEDULED, None)


def test_begin_dial_without_any_trunk_pauses_the_clinic_and_names_the_setting(
    session: Session,
) -> None:
    clinic = _clinic(session, trunk_id=None)
    attempt = _queued(session, clinic, _appointment(session, clinic))
    assert attempt.id is not None

    assert dial.begin_dial(session, attempt.id, NOW, DIAL) is None
    _commit(session)

    session.refresh(attempt)
    session.refresh(clinic)
    assert (attempt.state, attempt.dialing_at) == (AttemptState.SCHEDULED, None)
    assert "LIVEKIT_SIP_TRUNK_ID" in (clinic.paused_reason or "")
    # No retry storm: nothing is claimed while the clinic stays paused.
    assert claim.claim_due_attempts(session, NOW + timedelta(minutes=1), limit=10).queued == []


# --------------------------------------------------------------------------- finish_dial


def test_a_busy_dial_completes_the_attempt_and_schedules_the_next_after_the_backoff(
    session: Session,
) -> None:
    clinic = _clinic(session)
    appointment = _appointment(session, clinic)
    attempt, _ = _dialing(session, clinic, appointment)
    assert attempt.id is not None
    ended = NOW + timedelta(seconds=40)
    busy = CallResult(answered=False, outcome=Outcome.BUSY, sip_status_code=486, sip_status="Busy")

    finished = dial.finish_dial(session, attempt.id, busy, ended, jitter=MID_JITTER)
    _commit(session)

    assert (finished.state, finished.outcome, finished.release_slot) == (
        AttemptState.COMPLETED,
        Outcome.BUSY,
        True,
    )
    first, retry = _attempts(session, appointment)
    assert (first.state, first.outcome, first.sip_status_code) == (
        AttemptState.COMPLETED,
        Outcome.BUSY,
        486,
    )
    assert first.ended_at == ended
    assert (retry.attempt_number, retry.state) == (2, AttemptState.SCHEDULED)
    assert retry.due_at == ended + timedelta(seconds=clinic.retry_base_seconds)
    assert compliance.decide_for(session, appointment, clinic, 2, retry.due_at).allowed
    assert audit.verify(session).ok


def test_a_configuration_error_requeues_the_attempt_and_pauses_the_clinic(
    session: Session,
) -> None:
    clinic = _clinic(session)
    appointment = _appointment(session, clinic)
    attempt, _ = _dialing(session, clinic, appointment)
    assert attempt.id is not None
    broken = CallResult(
        answered=False,
        outcome=None,
        problem=DialProblem.CONFIGURATION,
        error="unknown trunk ST_lakeside",
    )

    finished = dial.finish_dial(session, attempt.id, broken, NOW, jitter=MID_JITTER)
    _commit(session)

    assert finished.state == AttemptState.SCHEDULED and finished.release_slot
    (only,) = _attempts(session, appointment)
    assert (only.state, only.dialing_at, only.outcome) == (AttemptState.SCHEDULED, None, None)
    session.refresh(clinic)
    assert "unknown trunk ST_lakeside" in (clinic.paused_reason or "")


def test_a_missed_pacing_start_requeues_the_attempt_undialed(session: Session) -> None:
    clinic = _clinic(session)
    appointment = _appointment(session, clinic)
    attempt, _ = _dialing(session, clinic, appointment)
    assert attempt.id is not None
    late = CallResult(
        answered=False, outcome=None, problem=DialProblem.MISSED_START, error="start passed"
    )
    at = NOW + timedelta(seconds=2)

    finished = dial.finish_dial(session, attempt.id, late, at, jitter=MID_JITTER)
    _commit(session)

    assert finished.state == AttemptState.SCHEDULED and finished.release_slot
    (only,) = _attempts(session, appointment)
    assert (only.state, only.dialing_at, only.outcome, only.due_at) == (
        AttemptState.SCHEDULED,
        None,
        None,
        at,
    )
    session.refresh(clinic)
    assert clinic.paused_reason is None
    assert claim.claim_due_attempts(session, at, limit=10).queued == [attempt.id]


def test_an_answered_dial_waits_for_the_agent(session: Session) -> None:
    clinic = _clinic(session)
    appointment = _appointment(session, clinic)
    _answered(session, clinic, appointment)
    (only,) = _attempts(session, appointment)
    assert (only.state, only.outcome, only.sip_call_id) == (AttemptState.ANSWERED, None, "SCL_1")
    assert only.answered_at == NOW + timedelta(seconds=20)


def test_the_last_allowed_attempt_failing_marks_the_appointment_unreached(
    session: Session,
) -> None:
    clinic = _clinic(session, max_attempts=1)
    appointment = _appointment(session, clinic)
    attempt, _ = _dialing(session, clinic, appointment)
    assert attempt.id is not None
    no_answer = CallResult(answered=False, outcome=Outcome.NO_ANSWER, sip_status_code=480)

    dial.finish_dial(session, attempt.id, no_answer, NOW, jitter=MID_JITTER)
    _commit(session)

    (only,) = _attempts(session, appointment)
    assert only.outcome == Outcome.NO_ANSWER
    session.refresh(appointment)
    assert appointment.status == AppointmentStatus.UNREACHED
    assert "retry.exhausted" in _audit_kinds(session, attempt.id)


# --------------------------------------------------------------------------- record_outcome


def _report(
    session: Session, attempt_id: int, outcome: str, token: str, at: datetime
) -> reports.ReportResult:
    result = reports.record_outcome(
        session, attempt_id, outcome, token, at, secret=SECRET, jitter=MID_JITTER
    )
    _commit(session)
    return result


def _audit_payloads(session: Session, kind: str) -> list[dict[str, object]]:
    return [
        json.loads(payload)
        for payload in session.execute(
            select(AuditEvent.payload)
            .where(col(AuditEvent.kind) == kind)
            .order_by(col(AuditEvent.id))
        ).scalars()
    ]


def test_a_report_with_a_bad_token_changes_nothing_but_is_audited(session: Session) -> None:
    clinic = _clinic(session)
    appointment = _appointment(session, clinic)
    attempt, request = _answered(session, clinic, appointment)
    assert attempt.id is not None
    token = request.agent_metadata["report_token"]
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")

    for bad in (forged, "", "not-a-token"):
        result = _report(session, attempt.id, "confirmed", bad, NOW)
        assert not result.accepted and "bad token" in (result.reason or "")
    signed_elsewhere = reports.record_outcome(
        session, attempt.id, "confirmed", token, NOW, secret="another-secret", jitter=MID_JITTER
    )
    _commit(session)
    assert not signed_elsewhere.accepted

    (only,) = _attempts(session, appointment)
    assert (only.state, only.outcome) == (AttemptState.ANSWERED, None)
    session.refresh(appointment)
    assert appointment.status == AppointmentStatus.SCHEDULED
    refused = _audit_payloads(session, reports.REPORT_REFUSED)
    assert len(refused) == 4
    assert all("bad token" in str(p["reason"]) for p in refused)


def test_a_confirmation_confirms_and_a_repeated_report_is_a_no_op(session: Session) -> None:
    clinic = _clinic(session)
    appointment = _appointment(session, clinic)
    attempt, request = _answered(session, clinic, appointment)
    assert attempt.id is not None
    token = request.agent_metadata["report_token"]
    at = NOW + timedelta(minutes=2)

    first = _report(session, attempt.id, "confirmed", token, at)
    events = _audit_count(session)
    again = _report(session, attempt.id, "confirmed", token, at + timedelta(seconds=5))
    ignored = _audit_payloads(session, reports.REPORT_IGNORED)

    assert (first.accepted, first.duplicate) == (True, False)
    assert (again.accepted, again.duplicate) == (False, True)
    (only,) = _attempts(session, appointment)
    assert (only.state, only.outcome, only.ended_at) == (
        AttemptState.COMPLETED,
        Outcome.CONFIRMED,
        at,
    )
    session.refresh(appointment)
    assert appointment.status == AppointmentStatus.CONFIRMED
    # The repeat changed nothing but says so in the audit log.
    assert _audit_count(session) == events + 1
    assert [p["reason"] for p in ignored] == [
        "duplicate: the attempt is already completed (confirmed)"
    ]


def test_an_opt_out_puts_the_number_on_the_clinics_dnc_list(session: Session) -> None:
    clinic = _clinic(session)
    other_clinic = _clinic(session, name="Elsewhere")
    assert clinic.id is not None and other_clinic.id is not None
    appointment = _appointment(session, clinic)
    attempt, request = _answered(session, clinic, appointment)
    assert attempt.id is not None

    _report(session, attempt.id, "opted_out", request.agent_metadata["report_token"], NOW)

    assert dnc.lookup(session, appointment.phone_e164, clinic.id).blocked_by == ("clinic",)
    assert dnc.lookup(session, appointment.phone_e164, other_clinic.id).blocked_by == ()
    (only,) = _attempts(session, appointment)  # no retry after an opt-out
    assert only.outcome == Outcome.OPTED_OUT
    later = _appointment(
        session, clinic, phone_e164=appointment.phone_e164, starts_at=NOW + timedelta(days=9)
    )
    decision = compliance.decide_for(session, later, clinic, 1, NOW + timedelta(days=7))
    assert not decision.allowed and decision.next_allowed_at is None
    assert any(r.startswith("dnc_listed") for r in decision.reasons)


def test_a_voicemail_schedules_the_next_attempt(session: Session) -> None:
    clinic = _clinic(session, retry_voicemail=True)
    appointment = _appointment(session, clinic)
    attempt, request = _answered(session, clinic, appointment)
    assert attempt.id is not None
    at = NOW + timedelta(minutes=1)

    result = _report(session, attempt.id, "voicemail", request.agent_metadata["report_token"], at)

    assert result.accepted and result.release_slot
    first, retry = _attempts(session, appointment)
    assert (first.state, first.outcome) == (AttemptState.COMPLETED, Outcome.VOICEMAIL)
    assert (retry.attempt_number, retry.state) == (2, AttemptState.SCHEDULED)
    assert retry.due_at == at + timedelta(seconds=clinic.retry_base_seconds)
    session.refresh(appointment)
    assert appointment.status == AppointmentStatus.SCHEDULED


def test_a_transfer_to_staff_is_final_and_shows_in_status(session: Session) -> None:
    clinic = _clinic(session, retry_voicemail=True)
    appointment = _appointment(session, clinic)
    attempt, request = _answered(session, clinic, appointment)
    assert attempt.id is not None
    token = request.agent_metadata["report_token"]

    result = _report(session, attempt.id, "transferred", token, NOW + timedelta(minutes=1))

    assert result.accepted and result.release_slot
    (only,) = _attempts(session, appointment)  # no retry: a person took the call over
    assert (only.state, only.outcome) == (AttemptState.COMPLETED, Outcome.TRANSFERRED)
    session.refresh(appointment)
    assert appointment.status == AppointmentStatus.TRANSFERRED
    assert status.status_counts(session, clinic.id)["outcomes"]["transferred"] == 1


# --------------------------------------------------------------------------- reconciliation


def _stale(session: Session, at: datetime) -> Iterator[reconcile.StaleAttempt]:
    yield from reconcile.stale_attempts(
        session,
        at,
        queued_timeout=timedelta(minutes=5),
        dialing_timeout=timedelta(minutes=2),
        answered_timeout=timedelta(minutes=7),
    )


def test_a_stale_queued_attempt_is_scheduled_again(session: Session) -> None:
    clinic = _clinic(session)
    attempt = _queued(session, clinic, _appointment(session, clinic))
    later = NOW + timedelta(minutes=10)
    assert list(_stale(session, NOW + timedelta(minutes=1))) == []
    (stale,) = _stale(session, later)

    assert (
        reconcile.reconcile_attempt(session, stale, None, later, jitter=MID_JITTER) == "rescheduled"
    )
    _commit(session)

    session.refresh(attempt)
    assert (attempt.state, attempt.due_at) == (AttemptState.SCHEDULED, later)
    assert claim.claim_due_attempts(session, later, limit=10).queued == [attempt.id]


def test_a_stale_dial_with_the_callee_in_the_room_is_answered(session: Session) -> None:
    clinic = _clinic(session)
    attempt, request = _dialing(session, clinic, _appointment(session, clinic))
    later = NOW + timedelta(minutes=10)
    (stale,) = _stale(session, later)

    action = reconcile.reconcile_attempt(
        session, stale, ["agent-1", request.participant_identity], later, jitter=MID_JITTER
    )
    _commit(session)

    assert action == "answered"
    session.refresh(attempt)
    assert (attempt.state, attempt.answered_at) == (AttemptState.ANSWERED, later)


def test_a_stale_dial_with_an_empty_room_fails_and_is_retried_later(session: Session) -> None:
    clinic = _clinic(session)
    appointment = _appointment(session, clinic)
    attempt, _ = _dialing(session, clinic, appointment)
    later = NOW + timedelta(minutes=10)
    (stale,) = _stale(session, later)

    assert reconcile.reconcile_attempt(session, stale, [], later, jitter=MID_JITTER) == "failed"
    _commit(session)

    first, retry = _attempts(session, appointment)
    assert (first.state, first.outcome) == (AttemptState.FAILED, Outcome.FAILED)
    assert "may have been placed" in (first.error or "")
    failed_event = session.execute(
        select(AuditEvent.payload).where(
            col(AuditEvent.attempt_id) == attempt.id, col(AuditEvent.kind) == "attempt.failed"
        )
    ).scalar_one()
    assert json.loads(failed_event)["ambiguous"] is True
    assert (retry.attempt_number, retry.state) == (2, AttemptState.SCHEDULED)
    assert retry.due_at == later + timedelta(seconds=clinic.retry_base_seconds)


def test_an_answered_call_past_its_limit_with_the_callee_on_the_line_is_hung_up(
    session: Session,
) -> None:
    # LiveKit's SIP bridge does not end an answered call at max_call_duration: the engine does.
    clinic = _clinic(session)
    appointment = _appointment(session, clinic)
    attempt, request = _dialing(session, clinic, appointment)
    (answered,) = _stale(session, NOW + timedelta(minutes=10))
    assert (
        reconcile.reconcile_attempt(
            session, answered, [request.participant_identity], NOW, jitter=MID_JITTER
        )
        == "answered"
    )
    _commit(session)
    later = NOW + timedelta(hours=1)
    (stale,) = _stale(session, later)

    action = reconcile.reconcile_attempt(
        session, stale, ["agent-1", request.participant_identity], later, jitter=MID_JITTER
    )
    assert action == reconcile.HANG_UP
    (only,) = _attempts(session, appointment)
    assert only.state == AttemptState.ANSWERED  # settled once the room is empty
    (stale,) = _stale(session, later)
    assert reconcile.reconcile_attempt(session, stale, [], later, jitter=MID_JITTER) == "failed"
    _commit(session)
    session.refresh(attempt)
    assert (attempt.state, attempt.error) == (
        AttemptState.FAILED,
        reconcile.RECONCILED + "no report from the agent",
    )


def test_a_stale_dial_whose_room_cannot_be_inspected_is_left_alone(session: Session) -> None:
    clinic = _clinic(session)
    appointment = _appointment(session, clinic)
    _dialing(session, clinic, appointment)
    later = NOW + timedelta(minutes=10)
    (stale,) = _stale(session, later)

    assert reconcile.reconcile_attempt(session, stale, None, later, jitter=MID_JITTER) is None
    _commit(session)

    (only,) = _attempts(session, appointment)
    assert (only.state, only.outcome) == (AttemptState.DIALING, None)


def test_the_calls_of_a_silent_worker_are_stale_at_once_and_a_live_ones_are_not(
    session: Session,
) -> None:
    clinic = _clinic(session)
    lost, _ = _dialing(session, clinic, _appointment(session, clinic))
    waiting = _queued(session, clinic, _appointment(session, clinic))
    busy, _ = _dialing(session, clinic, _appointment(session, clinic))
    _dialing(session, clinic, _appointment(session, clinic))  # no worker recorded
    assert lost.id and waiting.id and busy.id
    reconcile.heartbeat(session, "worker-a", NOW)
    reconcile.heartbeat(session, "worker-b", NOW)
    session.execute(
        update(CallAttempt).where(col(CallAttempt.id) == lost.id).values(worker_id="worker-a")
    )
    session.execute(
        update(CallAttempt).where(col(CallAttempt.id) == busy.id).values(worker_id="worker-b")
    )
    _commit(session)
    later = NOW + timedelta(seconds=25)
    reconcile.heartbeat(session, "worker-b", later - timedelta(seconds=3))  # worker-a fell silent
    _commit(session)

    def stale(at: datetime) -> list[reconcile.StaleAttempt]:
        return reconcile.stale_attempts(
            session,
            at,
            queued_timeout=timedelta(minutes=5),
            dialing_timeout=timedelta(minutes=2),
            answered_timeout=timedelta(minutes=7),
            worker_lost=timedelta(seconds=20),
        )

    assert stale(NOW + timedelta(seconds=10)) == []
    # A queued attempt belongs to no worker yet: only its own deadline makes it stale.
    found = {s.attempt_id: s.state for s in stale(later)}
    assert found == {lost.id: AttemptState.DIALING}
    assert waiting.id in {s.attempt_id for s in stale(NOW + timedelta(minutes=6))}


def test_the_worker_that_dials_an_attempt_is_recorded_on_it(session: Session) -> None:
    clinic = _clinic(session)
    attempt = _queued(session, clinic, _appointment(session, clinic))
    assert attempt.id is not None and not attempt.worker_id
    plan = dial.begin_dial(session, attempt.id, NOW, DIAL, worker_id="worker-a")
    _commit(session)
    assert plan is not None
    session.refresh(attempt)
    assert (attempt.state, attempt.worker_id) == (AttemptState.DIALING, "worker-a")


# --------------------------------------------------------------------------- status


def test_status_counts_every_state_and_outcome(session: Session) -> None:
    clinic = _clinic(session)
    other = _clinic(session, name="Other")
    busy_appointment = _appointment(session, clinic)
    _appointment(session, clinic, status=AppointmentStatus.CONFIRMED)
    _appointment(session, other)
    attempt, _ = _dialing(session, clinic, busy_appointment)
    assert attempt.id is not None and clinic.id is not None
    busy = CallResult(answered=False, outcome=Outcome.BUSY, sip_status_code=486)
    dial.finish_dial(session, attempt.id, busy, NOW, jitter=MID_JITTER)
    _commit(session)

    counts = status.status_counts(session, clinic.id)

    assert {"appointments", "attempts", "outcomes"} <= counts.keys()
    assert set(counts["attempts"]) == {s.value for s in AttemptState}
    assert set(counts["outcomes"]) == {o.value for o in Outcome}
    assert counts["appointments"] == 2
    assert counts["attempts"]["completed"] == 1
    assert counts["attempts"]["scheduled"] == 1  # the retry
    assert counts["outcomes"]["busy"] == 1
    assert counts["retries"] == 1
    assert status.status_counts(session)["appointments"] == 3


# --------------------------------------------------------------------------- Pipeline.tick


def test_tick_sends_each_task_only_after_its_claim_is_committed(
    session: Session, engine: Engine
) -> None:
    clinic = _clinic(session)
    for _ in range(3):
        _appointment(session, clinic)
    daily.run_daily(session, clinic, RUN_DATE, NOW, actor="test")
    _commit(session)
    sessions = session_factory(engine)
    pipeline = Pipeline(
        sessions=sessions,
        settings=Settings(database_url=str(engine.url), tick_batch=2),
        pacer=LocalPacer(),
        clock=lambda: NOW,
    )
    seen: list[tuple[int, str]] = []
    batches: list[int] = []

    def send(attempt_ids: list[int]) -> None:
        batches.append(len(attempt_ids))
        with sessions() as fresh:
            for attempt_id in attempt_ids:
                attempt = fresh.get(CallAttempt, attempt_id)
                assert attempt is not None
                seen.append((attempt_id, attempt.state))

    result = pipeline.tick(send)

    assert len(result.queued) == 3
    assert batches == [2, 1]  # one send per claimed batch
    assert sorted(attempt_id for attempt_id, _ in seen) == sorted(result.queued)
    assert {state for _, state in seen} == {AttemptState.QUEUED}
    assert pipeline.tick(send).queued == []  # nothing is sent twice
    assert len(seen) == 3


# --------------------------------------------------------------------------- Pipeline.place_call


def test_a_call_whose_trunk_is_full_goes_back_to_the_schedule_undialed(
    session: Session, engine: Engine
) -> None:
    clinic = _clinic(session)
    attempt = _queued(session, clinic, _appointment(session, clinic))
    attempt_id = attempt.id
    assert attempt_id is not None
    session.add(Trunk(sip_trunk_id="ST_lakeside", name="lakeside", max_concurrent=1))
    _commit(session)
    pacer = LocalPacer()
    lease = timedelta(minutes=5)
    held = pacer.acquire(
        "ST_lakeside", 0, cps=1, max_concurrent=1, lease=lease, max_wait=lease, lead=timedelta(0)
    )
    assert held is not None  # another call holds the trunk's only line
    io = EventLoopThread()
    with running_simulator(default_trunk_id="ST_lakeside") as sim:
        settings = Settings(
            database_url=str(engine.url),
            livekit_url=sim.url,
            livekit_api_secret=TEST_API_SECRET,
            report_secret=SECRET,
            pacing_max_wait_seconds=0,
        )
        pipeline = Pipeline(
            sessions=session_factory(engine),
            settings=settings,
            pacer=pacer,
            telephony=LiveKitTelephony.from_settings(settings),
            run=io.run,
            clock=lambda: NOW,
            worker_id="worker-a",
        )

        assert pipeline.place_call(attempt_id) == "paced"
        assert pipeline.place_call(attempt_id) == "not-dialed"  # a duplicate message: a no-op

        assert sim.calls() == []
    session.refresh(attempt)
    assert (attempt.state, attempt.due_at) == (AttemptState.SCHEDULED, NOW + timedelta(seconds=1))
    assert attempt.dialing_at is None
    assert _audit_kinds(session, attempt_id)[-2:] == ["attempt.dialing", "attempt.requeued"]
