"""The life of a call attempt, as service functions over one database session.

An attempt is created by a clinic's daily run (or as the retry of an earlier
one), claimed by the scheduler tick when due, dialed by a worker, and closed by
the agent's report, by a failed dial, or by reconciliation. Every transition is
a guarded UPDATE (``WHERE state = <expected>``) so a duplicate task, a second
beat or a late report is a no-op, and every transition is audited.

Callers own the transaction: nothing here commits.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, or_, update
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit, dnc
from campaigns.clinics import get_clinic, list_clinics, parse_lead_days
from campaigns.compliance import service as compliance
from campaigns.compliance.policy import Decision
from campaigns.compliance.state_rules import load_state_rules
from campaigns.db import one_of
from campaigns.masking import mask_phone
from campaigns.models import (
    IN_FLIGHT_STATES,
    OPEN_ATTEMPT_STATES,
    Appointment,
    AppointmentStatus,
    AttemptState,
    CallAttempt,
    Clinic,
    DailyRun,
    DncSource,
    Trunk,
    WorkerHeartbeat,
)
from campaigns.settings import Settings
from campaigns.telephony.outcomes import AGENT_OUTCOMES, Outcome, is_retryable
from campaigns.telephony.port import CallRequest, CallResult
from campaigns.telephony.retry import next_retry_due
from campaigns.telephony.trunks import DEFAULT_CPS, DEFAULT_MAX_CONCURRENT
from campaigns.tokens import TokenCheck, check_report_token, sign_report_token

log = logging.getLogger(__name__)

SCHEDULER = "scheduler"
WORKER = "worker"
AGENT = "agent"

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


def _decision_json(decision: Decision) -> str:
    return json.dumps(compliance.decision_document(decision), sort_keys=True)


def _audit_decision(decision: Decision) -> dict[str, Any]:
    return compliance.decision_document(decision)


# --------------------------------------------------------------------------- daily run


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
    """Create the first attempt of every appointment ``lead days`` after ``run_date``.

    Idempotent: an appointment with an open attempt, or one already created by
    this run date, gets nothing new (the database's unique index backs this up).
    """
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
            attempt = _new_attempt(appointment, clinic, number, decision, now, run_date=run_date)
            session.add(attempt)
            session.flush()
            if attempt.state == AttemptState.SKIPPED:
                skipped += 1
            else:
                created += 1
            audit.record(
                session,
                "attempt.created" if attempt.state != AttemptState.SKIPPED else "attempt.skipped",
                {
                    "attempt_number": number,
                    "run_date": run_date.isoformat(),
                    "due_at": attempt.due_at.isoformat(),
                    "decision": _audit_decision(decision),
                },
                actor=actor,
                clinic_id=clinic.id,
                appointment_id=appointment.id,
                attempt_id=attempt.id,
            )
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


def _new_attempt(
    appointment: Appointment,
    clinic: Clinic,
    number: int,
    decision: Decision,
    at: datetime,
    *,
    run_date: date | None = None,
) -> CallAttempt:
    """An attempt as the policy judged it at ``at``: due then, due when it next allows
    a call, or skipped saying why not."""
    assert appointment.id is not None and clinic.id is not None
    attempt = CallAttempt(
        appointment_id=appointment.id,
        clinic_id=clinic.id,
        attempt_number=number,
        run_date=run_date,
        number_called=appointment.phone_e164,
        due_at=decision.next_allowed_at or at,
        decision=_decision_json(decision),
    )
    if not decision.allowed:
        attempt.skip_reasons = "; ".join(decision.reasons)
        if decision.next_allowed_at is None:
            attempt.state = AttemptState.SKIPPED
            attempt.ended_at = at
    return attempt


# --------------------------------------------------------------------------- the tick


@dataclass(frozen=True)
class _DueAttempt:
    """The columns the claim needs, without loading ORM objects."""

    id: int
    attempt_number: int
    phone_e164: str  # the number this attempt calls
    appointment_id: int
    clinic_id: int
    patient_timezone: str | None
    patient_state: str | None
    patient_zip: str | None
    starts_at: datetime
    status: str


@dataclass(frozen=True)
class _TrunkRoom:
    """Calls each trunk may still start: its max_concurrent less the calls queued or in progress."""

    room: dict[str | None, int]
    trunk_of_clinic: dict[int, str | None]

    def take(self, clinic_id: int) -> bool:
        trunk = self.trunk_of_clinic.get(clinic_id)
        if self.room.get(trunk, 0) <= 0:
            return False
        self.room[trunk] -= 1
        return True


def _trunk_room(session: Session, default_trunk: str | None) -> _TrunkRoom:
    """How many more calls each trunk may carry, so the broker never holds more than that."""
    trunk_of = {
        clinic_id: trunk or default_trunk
        for clinic_id, trunk in session.execute(select(Clinic.id, Clinic.trunk_id)).all()
        if clinic_id is not None
    }
    limits = {t.sip_trunk_id: t.max_concurrent for t in session.execute(select(Trunk)).scalars()}
    room = {
        trunk: limits.get(trunk or "", DEFAULT_MAX_CONCURRENT) for trunk in set(trunk_of.values())
    }
    for clinic_id, busy in session.execute(
        select(CallAttempt.clinic_id, func.count())
        .where(col(CallAttempt.state).in_(IN_FLIGHT_STATES))
        .group_by(col(CallAttempt.clinic_id))
    ).all():
        trunk = trunk_of.get(clinic_id)
        room[trunk] = room.get(trunk, DEFAULT_MAX_CONCURRENT) - busy
    return _TrunkRoom(room, trunk_of)


@dataclass(frozen=True)
class TickResult:
    queued: list[int]
    deferred: int
    skipped: int
    waiting_for_trunk: int = 0


def claim_due_attempts(
    session: Session, now: datetime, *, limit: int, default_trunk: str | None = None
) -> TickResult:
    """Re-check the policy for due attempts and mark the callable ones queued.

    The rows are locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two
    ticks at once split the work instead of both taking it; SQLite's single
    writer gives the same guarantee. The caller commits, then sends one task
    per returned id. A callable attempt whose trunk is full stays scheduled, so
    the queue never holds more calls than the trunks can carry.
    """
    query = (
        select(  # type: ignore[call-overload]
            CallAttempt.id,
            CallAttempt.attempt_number,
            CallAttempt.number_called,
            CallAttempt.appointment_id,
            CallAttempt.clinic_id,
            Appointment.patient_timezone,
            Appointment.patient_state,
            Appointment.patient_zip,
            Appointment.starts_at,
            Appointment.status,
        )
        .join(Appointment, col(Appointment.id) == col(CallAttempt.appointment_id))
        .join(Clinic, col(Clinic.id) == col(CallAttempt.clinic_id))
        .where(
            col(CallAttempt.state) == AttemptState.SCHEDULED,
            col(CallAttempt.due_at) <= now,
            col(Clinic.paused_reason).is_(None),
        )
        .order_by(col(CallAttempt.due_at))
        .limit(limit)
        .with_for_update(skip_locked=True, of=CallAttempt)
    )
    rows = [_DueAttempt(*row) for row in session.execute(query).all()]
    if not rows:
        return TickResult([], 0, 0)
    questions = [
        compliance.Question(due.appointment_id, due.clinic_id, due.attempt_number, due)
        for due in rows
    ]
    clinics = session.execute(
        select(Clinic).where(col(Clinic.id).in_({due.clinic_id for due in rows}))
    ).scalars()
    inputs = compliance.gather(session, questions, clinics, now)
    room = _trunk_room(session, default_trunk)
    updates: list[dict[str, Any]] = []
    events: list[audit.Entry] = []
    queued: list[int] = []
    queued_by_clinic: dict[int, list[int]] = defaultdict(list)
    deferred = skipped = waiting = 0
    for due, question in zip(rows, questions, strict=True):
        decision = inputs.decide(question, now)
        if decision.allowed:
            if not room.take(due.clinic_id):
                waiting += 1
                continue
            # The full decision is recorded again when the worker re-checks it at dial time.
            queued.append(due.id)
            queued_by_clinic[due.clinic_id].append(due.id)
            continue
        change: dict[str, Any] = {
            "id": due.id,
            "decision": _decision_json(decision),
            "updated_at": now,
        }
        if decision.next_allowed_at is not None:
            change |= {
                "due_at": decision.next_allowed_at,
                "skip_reasons": "; ".join(decision.reasons),
            }
            kind = "attempt.deferred"
            deferred += 1
        else:
            change |= {
                "state": AttemptState.SKIPPED,
                "ended_at": now,
                "skip_reasons": "; ".join(decision.reasons),
            }
            kind = "attempt.skipped"
            skipped += 1
        updates.append(change)
        events.append(
            audit.Entry(
                kind,
                {"attempt_number": due.attempt_number, "decision": _audit_decision(decision)},
                SCHEDULER,
                due.clinic_id,
                due.appointment_id,
                due.id,
                now,
            )
        )
    if queued:
        session.execute(
            update(CallAttempt)
            .where(one_of(session, col(CallAttempt.id), queued))
            .values(state=AttemptState.QUEUED, queued_at=now, updated_at=now, worker_id=None)
            .execution_options(synchronize_session=False)
        )
    if updates:
        session.execute(update(CallAttempt), updates)
    events += [
        audit.Entry(
            "attempts.queued",
            {"attempt_ids": ids, "ruleset_version": inputs.rules[1]},
            SCHEDULER,
            clinic_id,
            at=now,
        )
        for clinic_id, ids in queued_by_clinic.items()
    ]
    audit.record_many(session, events)
    return TickResult(queued, deferred, skipped, waiting)


# --------------------------------------------------------------------------- dialing


@dataclass(frozen=True)
class DialTarget:
    """What pacing needs to know before the attempt is touched."""

    attempt_id: int
    trunk_id: str | None
    calls_per_second: float
    max_concurrent: int


def dial_target(session: Session, attempt_id: int, default_trunk: str | None) -> DialTarget | None:
    """The trunk and its limits for a queued attempt; None if it is not queued (a no-op)."""
    row = session.execute(
        select(CallAttempt.state, Clinic.trunk_id)
        .join(Clinic, col(Clinic.id) == col(CallAttempt.clinic_id))
        .where(col(CallAttempt.id) == attempt_id)
    ).first()
    if row is None or row[0] != AttemptState.QUEUED:
        return None
    trunk_id = row[1] or default_trunk
    limits = session.get(Trunk, trunk_id) if trunk_id else None
    return DialTarget(
        attempt_id=attempt_id,
        trunk_id=trunk_id,
        calls_per_second=limits.calls_per_second if limits else DEFAULT_CPS,
        max_concurrent=limits.max_concurrent if limits else DEFAULT_MAX_CONCURRENT,
    )


def take_attempt(session: Session, attempt_id: int, worker_id: str) -> None:
    """Mark a queued attempt as the worker's, so reconciliation notices if that worker dies."""
    session.execute(
        update(CallAttempt)
        .where(col(CallAttempt.id) == attempt_id, col(CallAttempt.state) == AttemptState.QUEUED)
        .values(worker_id=worker_id)
    )


def return_to_queue(
    session: Session, attempt_id: int, now: datetime, *, due_at: datetime, why: str
) -> bool:
    """queued -> scheduled: the call never started (pacing full, a worker shutting down)."""
    changed = session.execute(
        update(CallAttempt)
        .where(col(CallAttempt.id) == attempt_id, col(CallAttempt.state) == AttemptState.QUEUED)
        .values(state=AttemptState.SCHEDULED, due_at=due_at, updated_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if changed:
        attempt = session.get(CallAttempt, attempt_id)
        assert attempt is not None
        audit.record(
            session,
            "attempt.requeued",
            {"why": why, "due_at": due_at.isoformat()},
            actor=WORKER,
            clinic_id=attempt.clinic_id,
            appointment_id=attempt.appointment_id,
            attempt_id=attempt_id,
        )
    return bool(changed)


@dataclass(frozen=True)
class DialSettings:
    default_trunk: str | None
    default_agent: str
    report_secret: str
    ringing_timeout: timedelta
    max_call_duration: timedelta
    agent_script_version: str
    # How long after the longest call the agent's report token stays valid.
    report_grace: timedelta


def begin_dial(
    session: Session, attempt_id: int, now: datetime, config: DialSettings
) -> CallRequest | None:
    """queued -> dialing after a last policy check; the returned request is dialed exactly once.

    None when there is nothing to dial: not queued any more (a duplicate task),
    the policy now says no (a DNC entry added a second ago wins), or the clinic
    has no trunk (the clinic is paused until an operator fixes it).
    """
    attempt = session.execute(
        select(CallAttempt).where(col(CallAttempt.id) == attempt_id).with_for_update()
    ).scalar_one_or_none()
    if attempt is None or attempt.state != AttemptState.QUEUED:
        return None
    appointment = session.get(Appointment, attempt.appointment_id)
    clinic = session.get(Clinic, attempt.clinic_id)
    assert appointment is not None and clinic is not None
    if clinic.paused_reason:
        attempt.state = AttemptState.SCHEDULED
        attempt.updated_at = now
        return None
    decision = compliance.decide_for(session, appointment, clinic, attempt.attempt_number, now)
    attempt.decision = _decision_json(decision)
    attempt.updated_at = now
    if not decision.allowed:
        if decision.next_allowed_at is not None:
            attempt.state = AttemptState.SCHEDULED
            attempt.due_at = decision.next_allowed_at
            kind = "attempt.deferred"
        else:
            attempt.state = AttemptState.SKIPPED
            attempt.ended_at = now
            kind = "attempt.skipped"
        attempt.skip_reasons = "; ".join(decision.reasons)
        audit.record(
            session,
            kind,
            {"at_dial_time": True, "decision": _audit_decision(decision)},
            actor=WORKER,
            clinic_id=clinic.id,
            appointment_id=appointment.id,
            attempt_id=attempt.id,
        )
        return None
    trunk_id = clinic.trunk_id or config.default_trunk
    if not trunk_id:
        pause_clinic(
            session,
            clinic,
            "no SIP outbound trunk: set it with `campaigns clinic add --trunk` "
            "or LIVEKIT_SIP_TRUNK_ID",
            now,
        )
        attempt.state = AttemptState.SCHEDULED
        return None
    assert attempt.id is not None
    attempt.state = AttemptState.DIALING
    attempt.dialing_at = now
    attempt.trunk_id = trunk_id
    attempt.caller_id = clinic.caller_id
    attempt.room_name = f"appt-{attempt.id}-{secrets.token_hex(4)}"
    attempt.participant_identity = f"callee-{attempt.id}-{secrets.token_hex(4)}"
    audit.record(
        session,
        "attempt.dialing",
        {
            "attempt_number": attempt.attempt_number,
            "caller_id": clinic.caller_id,
            "number_called": attempt.number_called,
            "trunk_id": trunk_id,
            "room_name": attempt.room_name,
            "number_source": appointment.phone_source,
            "agent_name": clinic.agent_name or config.default_agent,
            "agent_script_version": config.agent_script_version,
            "decision": _audit_decision(decision),
        },
        actor=WORKER,
        clinic_id=clinic.id,
        appointment_id=appointment.id,
        attempt_id=attempt.id,
        at=now,
    )
    return CallRequest(
        attempt_id=attempt.id,
        room_name=attempt.room_name,
        participant_identity=attempt.participant_identity,
        trunk_id=trunk_id,
        call_to=attempt.number_called,
        caller_id=clinic.caller_id,
        agent_name=clinic.agent_name or config.default_agent,
        agent_metadata=agent_metadata(
            attempt.id,
            attempt.room_name,
            attempt.participant_identity,
            now + config.ringing_timeout + config.max_call_duration + config.report_grace,
            appointment,
            clinic,
            config.report_secret,
            config.agent_script_version,
        ),
        ringing_timeout=config.ringing_timeout,
        max_call_duration=config.max_call_duration,
    )


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


def pause_clinic(
    session: Session, clinic: Clinic, reason: str, now: datetime, *, actor: str = WORKER
) -> None:
    """Stop calling for a clinic: by hand, or when its configuration makes every call fail."""
    if clinic.paused_reason == reason:
        return
    clinic.paused_reason = reason
    clinic.updated_at = now
    log.error("clinic %s paused: %s", clinic.name, reason)
    audit.record(
        session, "clinic.paused", {"reason": reason}, actor=actor, clinic_id=clinic.id, at=now
    )


def resume_clinic(session: Session, clinic: Clinic, *, actor: str) -> bool:
    if clinic.paused_reason is None:
        return False
    audit.record(
        session, "clinic.resumed", {"was": clinic.paused_reason}, actor=actor, clinic_id=clinic.id
    )
    clinic.paused_reason = None
    return True


@dataclass(frozen=True)
class FinishedDial:
    """What the worker learned; ``release_slot`` is False while the call goes on."""

    state: str
    outcome: str | None
    release_slot: bool


def finish_dial(
    session: Session, attempt_id: int, result: CallResult, now: datetime, *, jitter: float
) -> FinishedDial:
    """Record the result of CreateSIPParticipant and, for a failed dial, the next attempt."""
    attempt = session.execute(
        select(CallAttempt).where(col(CallAttempt.id) == attempt_id).with_for_update()
    ).scalar_one()
    attempt.dispatch_id = result.dispatch_id or attempt.dispatch_id
    attempt.sip_call_id = result.sip_call_id or attempt.sip_call_id
    attempt.sip_status_code = result.sip_status_code
    attempt.sip_status = result.sip_status
    attempt.updated_at = now
    if attempt.state != AttemptState.DIALING:
        # The agent's report (or reconciliation) got here first; keep its outcome.
        return FinishedDial(attempt.state, attempt.outcome, attempt.state != AttemptState.ANSWERED)
    clinic = session.get(Clinic, attempt.clinic_id)
    assert clinic is not None
    base = {
        "clinic_id": attempt.clinic_id,
        "appointment_id": attempt.appointment_id,
        "attempt_id": attempt.id,
    }
    if result.answered:
        attempt.state = AttemptState.ANSWERED
        attempt.answered_at = now
        audit.record(
            session,
            "attempt.answered",
            {"sip_call_id": result.sip_call_id, "dispatch_id": result.dispatch_id},
            actor=WORKER,
            at=now,
            **base,
        )
        return FinishedDial(attempt.state, None, release_slot=False)
    if result.config_error or result.missed_start:
        # Nothing was dialed: the attempt goes back; on a configuration error the
        # clinic stops until fixed.
        attempt.state = AttemptState.SCHEDULED
        attempt.dialing_at = None
        attempt.error = result.error
        if result.config_error:
            why = "configuration error"
            pause_clinic(session, clinic, f"telephony configuration: {result.error}", now)
        else:
            why = "trunk at its limit"
            attempt.due_at = now
        audit.record(
            session,
            "attempt.requeued",
            {"why": why, "error": result.error},
            actor=WORKER,
            at=now,
            **base,
        )
        return FinishedDial(attempt.state, None, release_slot=True)
    outcome = result.outcome or Outcome.FAILED
    _close(
        session,
        attempt,
        clinic,
        outcome,
        now,
        error=result.error,
        ambiguous=result.ambiguous,
        jitter=jitter,
        actor=WORKER,
    )
    return FinishedDial(attempt.state, outcome, release_slot=True)


def _close(
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
    detail: dict[str, Any] | None = None,
    dropped_detail_keys: int = 0,
    schedule_next: bool = True,
) -> None:
    """Set the outcome, apply it to the appointment, and schedule the retry if any
    (unless ``schedule_next`` is False: a later attempt exists already)."""
    attempt.state = AttemptState.FAILED if outcome == Outcome.FAILED else AttemptState.COMPLETED
    attempt.outcome = outcome
    attempt.ended_at = now
    attempt.error = error
    attempt.updated_at = now
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
        _record_opt_out(session, attempt, actor=actor)
    session.flush()
    audit.record(
        session,
        "attempt.completed" if attempt.state == AttemptState.COMPLETED else "attempt.failed",
        {
            "outcome": outcome,
            "sip_status_code": attempt.sip_status_code,
            "sip_status": attempt.sip_status,
            "ambiguous": ambiguous,
            "error": error,
            "dialing_at": attempt.dialing_at.isoformat() if attempt.dialing_at else None,
            "answered_at": attempt.answered_at.isoformat() if attempt.answered_at else None,
            "ended_at": now.isoformat(),
            "duration_seconds": (now - attempt.answered_at).total_seconds()
            if attempt.answered_at
            else 0,
            "detail": detail or {},
            "dropped_detail_keys": dropped_detail_keys,
        },
        actor=actor,
        clinic_id=clinic.id,
        appointment_id=appointment.id,
        attempt_id=attempt.id,
        at=now,
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
) -> CallAttempt | None:
    """The next attempt as a row due after the backoff, moved into the next allowed instant."""
    if not is_retryable(outcome, retry_voicemail=clinic.retry_voicemail):
        return None
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
        return None
    number = attempt.attempt_number + 1
    decision = compliance.decide_for(session, appointment, clinic, number, due)
    if not decision.allowed and decision.next_allowed_at is None:
        audit.record(
            session,
            "retry.dropped",
            {"attempt_number": number, "decision": _audit_decision(decision)},
            actor=actor,
            at=now,
            **base,
        )
        return None
    following = _new_attempt(appointment, clinic, number, decision, due)
    session.add(following)
    session.flush()
    audit.record(
        session,
        "attempt.scheduled",
        {
            "attempt_number": number,
            "after_outcome": outcome,
            "due_at": following.due_at.isoformat(),
            "decision": _audit_decision(decision),
        },
        actor=actor,
        clinic_id=clinic.id,
        appointment_id=appointment.id,
        attempt_id=following.id,
        at=now,
    )
    return following


# --------------------------------------------------------------------------- agent reports

# The keys of an agent report's ``detail`` that are kept; everything else is dropped.
DETAIL_KEYS = frozenset({"preferred_times", "transferred_to", "amd", "reason", "script_version"})
DETAIL_STRING_LIMIT = 500  # characters of one string
DETAIL_SIZE_LIMIT = 4096  # bytes of the whole, as JSON
_DROP = object()


def _clean_detail_value(value: Any) -> Any:
    if isinstance(value, str):
        return value[:DETAIL_STRING_LIMIT]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _DROP
    if isinstance(value, list):
        items = [_clean_detail_value(item) for item in value if not isinstance(item, list)]
        return [item for item in items if item is not _DROP]
    return _DROP


def clean_detail(detail: Any) -> tuple[dict[str, Any], int]:
    """The part of an agent's ``detail`` the engine keeps, and how many keys it dropped.

    Only :data:`DETAIL_KEYS` with scalar or list-of-scalar values are kept,
    strings cut to :data:`DETAIL_STRING_LIMIT` characters; while the whole is
    over :data:`DETAIL_SIZE_LIMIT` bytes of JSON its largest value is dropped.
    """
    if not isinstance(detail, dict):
        return {}, 0 if detail is None else 1
    kept: dict[str, Any] = {}
    for key, value in detail.items():
        cleaned = _clean_detail_value(value) if key in DETAIL_KEYS else _DROP
        if cleaned is not _DROP:
            kept[key] = cleaned
    while len(audit.canonical_json(kept).encode()) > DETAIL_SIZE_LIMIT:
        del kept[max(kept, key=lambda k: len(audit.canonical_json(kept[k]).encode()))]
    return kept, len(detail) - len(kept)


REPORT_IGNORED = "report.ignored"  # authentic, but the attempt already has its outcome
REPORT_REFUSED = "report.refused"  # not authentic, expired, or not an outcome an agent reports


@dataclass(frozen=True)
class ReportResult:
    attempt_id: int
    accepted: bool
    duplicate: bool
    release_slot: bool
    trunk_id: str | None
    # Why the report was not applied (audited as report.ignored / report.refused).
    reason: str | None = None


def _agent_outcome(outcome: Any) -> Outcome | None:
    try:
        reported = Outcome(outcome)
    except ValueError:
        return None
    return reported if reported in AGENT_OUTCOMES else None


def _record_opt_out(session: Session, attempt: CallAttempt, *, actor: str) -> None:
    dnc.add(
        session,
        attempt.number_called,
        clinic_id=attempt.clinic_id,
        source=DncSource.PATIENT_REQUEST,
        reason=f"opted out during call attempt {attempt.id}",
        actor=actor,
    )


def _not_applied(
    session: Session,
    kind: str,
    attempt_id: int,
    attempt: CallAttempt | None,
    outcome: Any,
    reason: str,
    now: datetime,
    *,
    opt_out_recorded: bool = False,
) -> ReportResult:
    audit.record(
        session,
        kind,
        {
            "reason": reason,
            # As sent; an unauthenticated sender may put anything here, so only a short prefix.
            "outcome": str(outcome)[:40],
            "opt_out_recorded": opt_out_recorded,
        },
        actor=AGENT,
        clinic_id=attempt.clinic_id if attempt else None,
        appointment_id=attempt.appointment_id if attempt else None,
        attempt_id=attempt_id,
        at=now,
    )
    log.warning("attempt %s: %s: %s", attempt_id, kind, reason)
    return ReportResult(
        attempt_id,
        accepted=False,
        duplicate=kind == REPORT_IGNORED,
        release_slot=False,
        trunk_id=attempt.trunk_id if attempt else None,
        reason=reason,
    )


def record_outcome(
    session: Session,
    attempt_id: int,
    outcome: str,
    token: str,
    now: datetime,
    *,
    secret: str,
    jitter: float,
    detail: dict[str, Any] | None = None,
) -> ReportResult:
    """The agent's report after an answered call: authenticated, idempotent, always audited.

    The token must be the one signed for this attempt and its room, and not
    expired. An authentic report replaces the engine's own ``failed`` (an
    ambiguous dial, or reconciliation giving up on a silent call), whatever the
    outcome, without calling the patient again for it. A report that is not
    applied is audited with the reason (``report.refused`` / ``report.ignored``);
    an opt-out under an authentic token reaches the do-not-call list even then.
    """
    attempt = session.execute(
        select(CallAttempt).where(col(CallAttempt.id) == attempt_id).with_for_update()
    ).scalar_one_or_none()
    if attempt is None:
        return _not_applied(
            session, REPORT_REFUSED, attempt_id, None, outcome, "no such attempt", now
        )
    check = check_report_token(token, attempt_id, attempt.room_name, now, secret)
    if check is TokenCheck.INVALID:
        reason = "bad token: not signed for this attempt and room"
        return _not_applied(session, REPORT_REFUSED, attempt_id, attempt, outcome, reason, now)
    reported = _agent_outcome(outcome)
    opted_out = reported is Outcome.OPTED_OUT
    if check is TokenCheck.EXPIRED or reported is None:
        if opted_out:
            _record_opt_out(session, attempt, actor=AGENT)
        reason = "token expired" if check is TokenCheck.EXPIRED else "not an agent outcome"
        return _not_applied(
            session,
            REPORT_REFUSED,
            attempt_id,
            attempt,
            outcome,
            reason,
            now,
            opt_out_recorded=opted_out,
        )
    assert reported is not None
    supersedes = attempt.state == AttemptState.FAILED and attempt.outcome == Outcome.FAILED
    if not supersedes and (
        attempt.outcome is not None
        or attempt.state not in (AttemptState.DIALING, AttemptState.ANSWERED)
    ):
        if opted_out:
            _record_opt_out(session, attempt, actor=AGENT)
        reason = f"duplicate: the attempt is already {attempt.state} ({attempt.outcome})"
        return _not_applied(
            session,
            REPORT_IGNORED,
            attempt_id,
            attempt,
            outcome,
            reason,
            now,
            opt_out_recorded=opted_out,
        )
    clinic = session.get(Clinic, attempt.clinic_id)
    assert clinic is not None
    later_attempt_exists = supersedes and _settle_later_attempts(
        session, attempt, clinic, reported, now
    )
    attempt.answered_at = attempt.answered_at or now
    # A report can beat the worker's own write after an answer; then the worker frees the slot.
    release = attempt.state == AttemptState.ANSWERED
    kept, dropped = clean_detail(detail)
    _close(
        session,
        attempt,
        clinic,
        reported,
        now,
        error=None,
        jitter=jitter,
        actor=AGENT,
        detail=kept,
        dropped_detail_keys=dropped,
        schedule_next=not later_attempt_exists,
    )
    log.info(
        "attempt %s: agent reported %s for %s",
        attempt_id,
        reported,
        mask_phone(attempt.number_called),
    )
    return ReportResult(attempt_id, True, False, release, attempt.trunk_id)


def _settle_later_attempts(
    session: Session, attempt: CallAttempt, clinic: Clinic, reported: Outcome, now: datetime
) -> bool:
    """The attempts after a ``failed`` one that an authentic report now replaces.

    A retry still waiting is kept when the report allows one (voicemail) and
    skipped when it ends calling. Returns whether a later attempt exists: then
    the report schedules no retry of its own.
    """
    later = (
        session.execute(
            select(CallAttempt).where(
                col(CallAttempt.appointment_id) == attempt.appointment_id,
                col(CallAttempt.attempt_number) > attempt.attempt_number,
            )
        )
        .scalars()
        .all()
    )
    if not is_retryable(reported, retry_voicemail=clinic.retry_voicemail):
        for retry in later:
            if retry.state != AttemptState.SCHEDULED:
                continue
            retry.state = AttemptState.SKIPPED
            retry.ended_at = now
            retry.skip_reasons = (
                f"superseded: the agent reported {reported} for attempt {attempt.attempt_number}"
            )
            audit.record(
                session,
                "attempt.skipped",
                {"reason": retry.skip_reasons},
                actor=AGENT,
                clinic_id=retry.clinic_id,
                appointment_id=retry.appointment_id,
                attempt_id=retry.id,
                at=now,
            )
    return bool(later)


# --------------------------------------------------------------------------- reconciliation

RECONCILED = "reconciled: "


@dataclass(frozen=True)
class StaleAttempt:
    attempt_id: int
    state: str
    room_name: str | None
    participant_identity: str | None
    trunk_id: str | None


def stale_attempts(
    session: Session,
    now: datetime,
    *,
    queued_timeout: timedelta,
    dialing_timeout: timedelta,
    answered_timeout: timedelta,
    worker_lost: timedelta | None = None,
) -> list[StaleAttempt]:
    """Attempts past the deadline of their state: lost tasks, killed workers, silent agents.

    With ``worker_lost``, a queued or dialing attempt whose worker has not beaten
    its heartbeat for that long is stale at once, whatever its own deadline.
    """
    overdue = [
        (col(CallAttempt.state) == AttemptState.QUEUED)
        & (col(CallAttempt.queued_at) < now - queued_timeout),
        (col(CallAttempt.state) == AttemptState.DIALING)
        & (col(CallAttempt.dialing_at) < now - dialing_timeout),
        (col(CallAttempt.state) == AttemptState.ANSWERED)
        & (col(CallAttempt.answered_at) < now - answered_timeout),
    ]
    if worker_lost is not None:
        alive = (
            select(WorkerHeartbeat.worker_id)
            .where(
                col(WorkerHeartbeat.worker_id) == col(CallAttempt.worker_id),
                col(WorkerHeartbeat.seen_at) >= now - worker_lost,
            )
            .exists()
        )
        overdue.append(
            col(CallAttempt.state).in_((AttemptState.QUEUED, AttemptState.DIALING))
            & col(CallAttempt.worker_id).is_not(None)
            & ~alive
        )
    rows = session.execute(select(CallAttempt).where(or_(*overdue))).scalars()
    return [
        StaleAttempt(a.id or 0, a.state, a.room_name, a.participant_identity, a.trunk_id)
        for a in rows
    ]


def answered_attempt_in_room(session: Session, room_name: str) -> StaleAttempt | None:
    """The answered attempt whose call is in ``room_name`` (LiveKit says the call ended)."""
    attempt = session.execute(
        select(CallAttempt).where(
            col(CallAttempt.room_name) == room_name,
            col(CallAttempt.state) == AttemptState.ANSWERED,
        )
    ).scalar_one_or_none()
    if attempt is None or attempt.id is None:
        return None
    return StaleAttempt(
        attempt.id, attempt.state, attempt.room_name, attempt.participant_identity, attempt.trunk_id
    )


def reconcile_attempt(
    session: Session,
    stale: StaleAttempt,
    room_participants: Sequence[str] | None,
    now: datetime,
    *,
    jitter: float,
) -> str | None:
    """Settle one stale attempt given what the room shows; never re-dials it.

    ``room_participants`` is None when the room could not be inspected (then a
    dialing/answered attempt is left for the next pass).
    """
    attempt = session.execute(
        select(CallAttempt).where(col(CallAttempt.id) == stale.attempt_id).with_for_update()
    ).scalar_one_or_none()
    if attempt is None or attempt.state != stale.state:
        return None
    clinic = session.get(Clinic, attempt.clinic_id)
    assert clinic is not None

    def move(to: AttemptState, action: str) -> str:
        audit.record(
            session,
            "attempt.reconciled",
            {"was": attempt.state, "action": action},
            actor=SCHEDULER,
            at=now,
            clinic_id=attempt.clinic_id,
            appointment_id=attempt.appointment_id,
            attempt_id=attempt.id,
        )
        attempt.state = to
        attempt.updated_at = now
        return action

    if attempt.state == AttemptState.QUEUED:
        # Never dialed (dialing is a committed state before any dial): safe to queue again.
        attempt.due_at = now
        attempt.worker_id = None
        return move(AttemptState.SCHEDULED, "rescheduled")
    if room_participants is None:
        return None
    on_call = attempt.participant_identity in room_participants
    if attempt.state == AttemptState.DIALING and on_call:
        attempt.answered_at = now
        return move(AttemptState.ANSWERED, "answered")
    if on_call:
        return None  # still talking past the deadline: the hang-up is the caller's job
    error = RECONCILED + (
        "worker lost while dialing; the call may have been placed"
        if attempt.state == AttemptState.DIALING
        else "no report from the agent"
    )
    _close(
        session,
        attempt,
        clinic,
        Outcome.FAILED,
        now,
        error=error,
        jitter=jitter,
        actor=SCHEDULER,
        ambiguous=True,
    )
    return "failed"


# --------------------------------------------------------------------------- worker heartbeats

# A heartbeat row this old belongs to a worker long gone and owning nothing in flight.
_FORGET_WORKERS_AFTER = timedelta(days=1)


def heartbeat(session: Session, worker_id: str, now: datetime) -> None:
    """Record that the worker is alive now."""
    beaten = session.execute(
        update(WorkerHeartbeat)
        .where(col(WorkerHeartbeat.worker_id) == worker_id)
        .values(seen_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if not beaten:
        session.execute(
            delete(WorkerHeartbeat).where(
                col(WorkerHeartbeat.seen_at) < now - _FORGET_WORKERS_AFTER
            )
        )
        session.add(WorkerHeartbeat(worker_id=worker_id, started_at=now, seen_at=now))


def forget_worker(session: Session, worker_id: str) -> None:
    """A worker's clean exit: it has finished its calls, nothing of it is in flight."""
    session.execute(delete(WorkerHeartbeat).where(col(WorkerHeartbeat.worker_id) == worker_id))


# --------------------------------------------------------------------------- status


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
