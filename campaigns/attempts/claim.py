"""The scheduler tick's claim: due attempts re-checked against the policy and queued.

A callable attempt whose trunk is full stays scheduled, so the broker never holds
more calls than the trunks can carry. Ticks that arrive together (they queue in the
broker behind calls, and two workers may take them at once) claim in turn: each
counts the calls the one before queued. On PostgreSQL a transaction-scoped advisory
lock makes the turns; on SQLite the single writer does. Callers own the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import func, text
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns.attempts import transitions
from campaigns.compliance import service as compliance
from campaigns.compliance.policy import Decision
from campaigns.db import is_postgresql
from campaigns.models import IN_FLIGHT_STATES, Appointment, AttemptState, CallAttempt, Clinic, Trunk
from campaigns.telephony.trunks import DEFAULT_MAX_CONCURRENT

# Held by a tick's claim until its transaction ends ("tick" in ASCII; the high word 0
# keeps it apart from the audit chains' two-key locks).
_TICK_LOCK_KEY = 0x7469636B
_TAKE_TURNS = text("SELECT pg_advisory_xact_lock(:key)")


class _DueAttempt(NamedTuple):
    """The columns the claim needs, without loading ORM objects (a tuple: cheap to make)."""

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
    """How many more calls each trunk may carry, so the broker never holds more than that.

    One statement: every clinic with its trunk's limit and its calls in flight."""
    busy = (
        select(CallAttempt.clinic_id, func.count().label("calls"))
        .where(col(CallAttempt.state).in_(IN_FLIGHT_STATES))
        .group_by(col(CallAttempt.clinic_id))
        .subquery()
    )
    rows = session.execute(
        select(Clinic.id, Clinic.trunk_id, Trunk.max_concurrent, busy.c.calls)
        .outerjoin(
            Trunk,
            col(Trunk.sip_trunk_id)
            == func.coalesce(func.nullif(col(Clinic.trunk_id), ""), default_trunk),
        )
        .outerjoin(busy, busy.c.clinic_id == col(Clinic.id))
    ).all()
    trunk_of: dict[int, str | None] = {}
    room: dict[str | None, int] = {}
    for clinic_id, trunk_id, limit, calls in rows:
        trunk = trunk_id or default_trunk
        trunk_of[clinic_id] = trunk
        room.setdefault(trunk, DEFAULT_MAX_CONCURRENT if limit is None else limit)
        room[trunk] -= calls or 0
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

    Two ticks at once take turns (see the module), so neither takes an attempt
    the other took and the second counts the calls the first queued. The caller
    commits, then sends one task per returned id. A callable attempt whose trunk
    is full stays scheduled, so the queue never holds more calls than the trunks
    can carry.
    """
    if is_postgresql(session):
        session.execute(_TAKE_TURNS, {"key": _TICK_LOCK_KEY})
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
    claimed: list[_DueAttempt] = []
    refused: list[tuple[_DueAttempt, Decision]] = []
    waiting = 0
    for due, question in zip(rows, questions, strict=True):
        decision = inputs.decide(question, now)
        if not decision.allowed:
            refused.append((due, decision))
        elif room.take(due.clinic_id):
            # The full decision is recorded again when the worker re-checks it at dial time.
            claimed.append(due)
        else:
            waiting += 1
    deferred, skipped = transitions.refuse_many(session, refused, now)
    queued = transitions.queue_many(session, claimed, now, ruleset_version=inputs.rules[1])
    return TickResult(queued, deferred, skipped, waiting)
