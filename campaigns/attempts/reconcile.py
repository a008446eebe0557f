"""Reconciliation of attempts stuck past their deadlines, and the worker heartbeats
that tell a live worker from a lost one.

A stale attempt is settled from what its room shows and is never re-dialed: a
queued attempt was never dialed (``dialing`` is committed before any dial) and
goes back to the schedule; a dialing or answered one nobody is on the call for
ends ``failed`` (ambiguous); an answered one whose callee is still on the call
past its length limit is to be hung up. Callers own the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, update
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns.attempts import closing, transitions
from campaigns.attempts.transitions import SCHEDULER
from campaigns.models import AttemptState, CallAttempt, Clinic, WorkerHeartbeat
from campaigns.telephony.outcomes import Outcome

RECONCILED = "reconciled: "
HANG_UP = "hung_up"  # reconcile_attempt's word for: end this call (DeleteRoom), settle it later


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

    With ``worker_lost``, a dialing attempt whose worker has not beaten its
    heartbeat for that long is stale at once, whatever its own deadline.
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
            (col(CallAttempt.state) == AttemptState.DIALING)
            & col(CallAttempt.worker_id).is_not(None)
            & ~alive
        )
    rows = session.execute(select(CallAttempt).where(or_(*overdue))).scalars()
    return [
        StaleAttempt(a.id or 0, a.state, a.room_name, a.participant_identity, a.trunk_id)
        for a in rows
    ]


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
    attempt = transitions.load_for_update(session, stale.attempt_id, with_context=True)
    if attempt is None or attempt.state != stale.state:
        return None
    clinic = session.get(Clinic, attempt.clinic_id)
    assert clinic is not None

    if attempt.state == AttemptState.QUEUED:
        # Never dialed (dialing is a committed state before any dial): safe to queue again.
        return transitions.reconciled(
            session, attempt, AttemptState.SCHEDULED, "rescheduled", now, due_at=now, worker_id=None
        )
    if room_participants is None:
        return None
    on_call = attempt.participant_identity in room_participants
    if attempt.state == AttemptState.DIALING and on_call:
        return transitions.reconciled(
            session, attempt, AttemptState.ANSWERED, "answered", now, answered_at=now
        )
    if on_call:
        # Past its length limit (and the report's grace) with no report, the callee still
        # on the line: LiveKit's SIP bridge does not end an answered call at
        # max_call_duration, so the engine ends it; the next pass (or LiveKit's
        # room_finished) finds the room empty and settles the attempt.
        return HANG_UP if attempt.state == AttemptState.ANSWERED else None
    error = RECONCILED + (
        "worker lost while dialing; the call may have been placed"
        if attempt.state == AttemptState.DIALING
        else "no report from the agent"
    )
    closing.close(
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
