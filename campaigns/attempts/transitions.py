"""Every change of a call attempt's state, with its timestamps and its audit event.

An attempt is created by a clinic's daily run (or as the retry of an earlier
one), claimed by the scheduler tick when due, dialed by a worker, and closed by
the agent's report, by a failed dial, or by reconciliation. Every transition is
a guarded UPDATE (``WHERE state = <expected>``) or is made on a row loaded
``FOR UPDATE`` and checked, so a duplicate task, a second beat or a late report
is a no-op, and every transition is audited. Nothing else writes an attempt's
state.

Callers own the transaction: nothing here commits.
"""

from __future__ import annotations

import json
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Table, func, update
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit
from campaigns.compliance import service as compliance
from campaigns.compliance.policy import Decision
from campaigns.db import insert_returning_ids, one_of, utcnow
from campaigns.models import (
    Appointment,
    AttemptState,
    CallAttempt,
    Clinic,
)
from campaigns.telephony.outcomes import Outcome
from campaigns.telephony.port import CallResult

SCHEDULER = "scheduler"
WORKER = "worker"
AGENT = "agent"
IMPORTER = "importer"

DEFERRED = "attempt.deferred"
SKIPPED = "attempt.skipped"


class AttemptRef(Protocol):
    """An attempt known by its keys, without its ORM object."""

    @property
    def id(self) -> int: ...
    @property
    def attempt_number(self) -> int: ...
    @property
    def clinic_id(self) -> int: ...
    @property
    def appointment_id(self) -> int: ...


def decision_json(document: dict[str, Any]) -> str:
    """A decision's document (:func:`compliance.decision_document`, as audited) as the
    attempt stores it."""
    return json.dumps(document, sort_keys=True)


def refusal(decision: Decision, now: datetime) -> tuple[str, dict[str, Any]]:
    """What a refused decision does to a scheduled attempt, and its audit kind: deferred
    to the instant the policy next allows a call, or skipped; the reasons joined."""
    change: dict[str, Any] = {"skip_reasons": "; ".join(decision.reasons)}
    if decision.next_allowed_at is not None:
        return DEFERRED, change | {
            "state": AttemptState.SCHEDULED,
            "due_at": decision.next_allowed_at,
        }
    return SKIPPED, change | {"state": AttemptState.SKIPPED, "ended_at": now}


def load_for_update(
    session: Session, attempt_id: int, *, with_context: bool = False
) -> CallAttempt | None:
    """The attempt, its row locked until the caller's transaction ends.

    ``with_context``: its appointment and clinic are read in the same round trip
    (not locked), so a ``session.get`` of either afterwards is answered from the session.
    """
    entities: tuple[type[Any], ...] = (
        (CallAttempt, Appointment, Clinic) if with_context else (CallAttempt,)
    )
    query = select(*entities)
    if with_context:
        query = query.join(
            Appointment, col(Appointment.id) == col(CallAttempt.appointment_id)
        ).join(Clinic, col(Clinic.id) == col(CallAttempt.clinic_id))
    row = session.execute(
        query.where(col(CallAttempt.id) == attempt_id).with_for_update(of=CallAttempt)
    ).first()
    return None if row is None else row[0]


def _record(
    session: Session, attempt: CallAttempt, kind: str, payload: dict[str, Any], **context: Any
) -> None:
    audit.record(
        session,
        kind,
        payload,
        clinic_id=attempt.clinic_id,
        appointment_id=attempt.appointment_id,
        attempt_id=attempt.id,
        **context,
    )


def _move(attempt: CallAttempt, now: datetime, **change: Any) -> None:
    for name, value in change.items():
        setattr(attempt, name, value)
    attempt.updated_at = now


# --------------------------------------------------------------------------- creation


def _first_state(
    decision: Decision, at: datetime, kind: str
) -> tuple[str, datetime, dict[str, Any]]:
    """A new attempt's audit kind, due time and refusal columns as the policy judged it."""
    due_at = decision.next_allowed_at or at
    if decision.allowed:
        return kind, due_at, {}
    refused_kind, change = refusal(decision, at)
    return (SKIPPED if refused_kind == SKIPPED else kind), change.get("due_at", due_at), change


@dataclass(frozen=True)
class NewAttempt:
    """One attempt for :func:`create`: whose, which, what the policy said, what to audit."""

    appointment_id: int
    clinic_id: int
    number_called: str
    attempt_number: int
    decision: Decision
    payload: dict[str, Any]
    run_date: date | None = None


_CALL_ATTEMPT: Table = CallAttempt.__table__  # type: ignore[attr-defined]
# The columns a new attempt sets, in create's order; the others stay NULL.
_NEW_COLUMNS = (
    "appointment_id",
    "clinic_id",
    "attempt_number",
    "run_date",
    "number_called",
    "state",
    "due_at",
    "decision",
    "skip_reasons",
    "ended_at",
    "created_at",
    "updated_at",
)


def _decision_key(decision: Decision) -> tuple[Any, ...]:
    """Every field of the decision, hashable: equal keys, equal documents."""
    # hasattr, not isinstance(value, Mapping): the ABC check costs more than the rest.
    return tuple(
        tuple(value.items()) if hasattr(value, "items") else value
        for value in (getattr(decision, field.name) for field in fields(decision))
    )


def create(
    session: Session,
    new: Sequence[NewAttempt],
    at: datetime,
    *,
    kind: str,
    actor: str,
    audited_at: datetime | None = None,
) -> list[tuple[int, str]]:
    """Attempts as the policy judged each at ``at``: due then, due when it next allows
    a call, or skipped saying why not; audited as ``kind`` unless skipped (at
    ``audited_at``, or when written). Returns each attempt's id and state, in order."""
    if not new:
        return []
    # An attempt this session closed but has not written yet must be in the database
    # before its retry meets the one-open-attempt-per-appointment index.
    session.flush()
    rows: list[tuple[Any, ...]] = []
    states: list[str] = []
    events: list[tuple[NewAttempt, str, dict[str, Any]]] = []
    created = utcnow()
    # Callees alike get alike decisions: each distinct one is written out once.
    written: dict[tuple[Any, ...], tuple[dict[str, Any], str]] = {}
    for item in new:
        item_kind, due_at, change = _first_state(item.decision, at, kind)
        key = _decision_key(item.decision)
        if key not in written:
            document = compliance.decision_document(item.decision)
            written[key] = (document, decision_json(document))
        document, text = written[key]
        state = change.get("state", AttemptState.SCHEDULED)
        states.append(state)
        rows.append(
            (
                item.appointment_id,
                item.clinic_id,
                item.attempt_number,
                item.run_date,
                item.number_called,
                state,
                due_at,
                text,
                change.get("skip_reasons"),
                change.get("ended_at"),
                created,
                created,
            )
        )
        events.append(
            (item, item_kind, item.payload | {"due_at": due_at.isoformat(), "decision": document})
        )
    ids = insert_returning_ids(session, _CALL_ATTEMPT, _NEW_COLUMNS, rows)
    audit.record_many(
        session,
        [
            audit.Entry(
                item_kind,
                payload,
                actor,
                item.clinic_id,
                item.appointment_id,
                attempt_id,
                audited_at,
            )
            for attempt_id, (item, item_kind, payload) in zip(ids, events, strict=True)
        ],
    )
    return list(zip(ids, states, strict=True))


# --------------------------------------------------------------------------- the tick


def refuse_many(
    session: Session, refused: Sequence[tuple[AttemptRef, Decision]], now: datetime
) -> tuple[int, int]:
    """Defer or skip scheduled attempts the policy refused; returns (deferred, skipped)."""
    if not refused:
        return 0, 0
    updates: list[dict[str, Any]] = []
    events: list[audit.Entry] = []
    counts = {DEFERRED: 0, SKIPPED: 0}
    for due, decision in refused:
        kind, change = refusal(decision, now)
        counts[kind] += 1
        document = compliance.decision_document(decision)
        updates.append(
            {"id": due.id, "decision": decision_json(document), "updated_at": now} | change
        )
        events.append(
            audit.Entry(
                kind,
                {"attempt_number": due.attempt_number, "decision": document},
                SCHEDULER,
                due.clinic_id,
                due.appointment_id,
                due.id,
                now,
            )
        )
    session.execute(update(CallAttempt), updates)
    audit.record_many(session, events)
    return counts[DEFERRED], counts[SKIPPED]


def queue_many(
    session: Session, claimed: Iterable[AttemptRef], now: datetime, *, ruleset_version: str
) -> list[int]:
    """scheduled -> queued for the claimed attempts, audited once per clinic."""
    queued: list[int] = []
    by_clinic: dict[int, list[int]] = defaultdict(list)
    for due in claimed:
        queued.append(due.id)
        by_clinic[due.clinic_id].append(due.id)
    if not queued:
        return []
    session.execute(
        update(CallAttempt)
        .where(one_of(session, col(CallAttempt.id), queued))
        .values(state=AttemptState.QUEUED, queued_at=now, updated_at=now, worker_id=None)
        .execution_options(synchronize_session=False)
    )
    audit.record_many(
        session,
        [
            audit.Entry(
                "attempts.queued",
                {"attempt_ids": ids, "ruleset_version": ruleset_version},
                SCHEDULER,
                clinic_id,
                at=now,
            )
            for clinic_id, ids in by_clinic.items()
        ],
    )
    return queued


def skip_scheduled(
    session: Session, which: ColumnElement[bool], reason: str, now: datetime, *, actor: str
) -> int:
    """scheduled -> skipped for the attempts ``which`` selects, each audited; returns how many."""
    rows = session.execute(
        select(CallAttempt.id, CallAttempt.clinic_id, CallAttempt.appointment_id)
        .where(which, col(CallAttempt.state) == AttemptState.SCHEDULED)
        .with_for_update()
    ).all()
    if not rows:
        return 0
    session.execute(
        update(CallAttempt)
        .where(
            one_of(session, col(CallAttempt.id), [row.id for row in rows]),
            col(CallAttempt.state) == AttemptState.SCHEDULED,
        )
        .values(state=AttemptState.SKIPPED, skip_reasons=reason, ended_at=now, updated_at=now)
        .execution_options(synchronize_session="fetch")
    )
    audit.record_many(
        session,
        [
            audit.Entry(
                SKIPPED, {"reason": reason}, actor, r.clinic_id, r.appointment_id, r.id, now
            )
            for r in rows
        ],
    )
    return len(rows)


# --------------------------------------------------------------------------- dialing


def hold(attempt: CallAttempt, now: datetime) -> None:
    """queued -> scheduled, unaudited: the clinic is paused (its pause is the audited event)."""
    _move(attempt, now, state=AttemptState.SCHEDULED)


def refuse(session: Session, attempt: CallAttempt, decision: Decision, now: datetime) -> None:
    """queued -> scheduled or skipped: the policy said no at dial time."""
    kind, change = refusal(decision, now)
    _move(attempt, now, **change)
    _record(
        session,
        attempt,
        kind,
        {"at_dial_time": True, "decision": compliance.decision_document(decision)},
        actor=WORKER,
    )


def dialing(
    session: Session,
    attempt: CallAttempt,
    now: datetime,
    *,
    trunk_id: str,
    caller_id: str | None,
    payload: dict[str, Any],
    worker_id: str | None = None,
) -> None:
    """queued -> dialing, committed by the caller before any dial."""
    assert attempt.id is not None
    _move(
        attempt,
        now,
        state=AttemptState.DIALING,
        dialing_at=now,
        trunk_id=trunk_id,
        caller_id=caller_id,
        worker_id=worker_id,
        room_name=f"appt-{attempt.id}-{secrets.token_hex(4)}",
        participant_identity=f"callee-{attempt.id}-{secrets.token_hex(4)}",
    )
    _record(
        session,
        attempt,
        "attempt.dialing",
        {
            "attempt_number": attempt.attempt_number,
            "caller_id": caller_id,
            "number_called": attempt.number_called,
            "trunk_id": trunk_id,
            "room_name": attempt.room_name,
        }
        | payload,
        actor=WORKER,
        at=now,
    )


def answered(session: Session, attempt_id: int, now: datetime, result: CallResult) -> bool:
    """dialing -> answered in one guarded UPDATE, with what LiveKit said of the call.

    False, changing nothing, when the attempt is no longer dialing (the agent's
    report or reconciliation got there first)."""
    row = session.execute(
        update(CallAttempt)
        .where(col(CallAttempt.id) == attempt_id, col(CallAttempt.state) == AttemptState.DIALING)
        .values(
            state=AttemptState.ANSWERED,
            answered_at=now,
            updated_at=now,
            dispatch_id=func.coalesce(result.dispatch_id, col(CallAttempt.dispatch_id)),
            sip_call_id=func.coalesce(result.sip_call_id, col(CallAttempt.sip_call_id)),
            sip_status_code=result.sip_status_code,
            sip_status=result.sip_status,
        )
        .returning(col(CallAttempt.clinic_id), col(CallAttempt.appointment_id))
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return False
    audit.record(
        session,
        "attempt.answered",
        {"sip_call_id": result.sip_call_id, "dispatch_id": result.dispatch_id},
        actor=WORKER,
        clinic_id=row.clinic_id,
        appointment_id=row.appointment_id,
        attempt_id=attempt_id,
        at=now,
    )
    return True


def undialed(
    session: Session,
    attempt: CallAttempt,
    now: datetime,
    *,
    why: str,
    error: str | None,
    due_at: datetime | None = None,
) -> None:
    """dialing -> scheduled: nothing was dialed after all (configuration, a missed start)."""
    _move(attempt, now, state=AttemptState.SCHEDULED, dialing_at=None, error=error)
    if due_at is not None:
        attempt.due_at = due_at
    _record(
        session, attempt, "attempt.requeued", {"why": why, "error": error}, actor=WORKER, at=now
    )


# --------------------------------------------------------------------------- reconciliation


def reconciled(
    session: Session,
    attempt: CallAttempt,
    to: AttemptState,
    action: str,
    now: datetime,
    **change: Any,
) -> str:
    """A stale attempt moved on by reconciliation; returns ``action``."""
    _record(
        session,
        attempt,
        "attempt.reconciled",
        {"was": attempt.state, "action": action},
        actor=SCHEDULER,
        at=now,
    )
    _move(attempt, now, state=to, **change)
    return action


# --------------------------------------------------------------------------- closing


@dataclass(frozen=True)
class AgentReport:
    """What the agent said of the call it answered, as the engine keeps it."""

    detail: dict[str, Any]
    dropped_keys: int = 0  # keys of its detail not kept


def closed(
    session: Session,
    attempt: CallAttempt,
    outcome: Outcome,
    now: datetime,
    *,
    error: str | None,
    actor: str,
    ambiguous: bool = False,
    report: AgentReport | None = None,
) -> None:
    """dialing, answered or failed -> completed or failed, with the call's outcome
    (with the agent's ``report``, the call was answered: now, if not before)."""
    if report is not None:
        attempt.answered_at = attempt.answered_at or now
    _move(
        attempt,
        now,
        state=AttemptState.FAILED if outcome == Outcome.FAILED else AttemptState.COMPLETED,
        outcome=outcome,
        ended_at=now,
        error=error,
    )
    _record(
        session,
        attempt,
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
            "detail": report.detail if report else {},
            "dropped_detail_keys": report.dropped_keys if report else 0,
        },
        actor=actor,
        at=now,
    )
