"""Append-only audit log with a SHA-256 hash chain.

Each event's hash covers its content and the previous event's hash, so editing,
deleting or reordering any stored event breaks the chain at that event, which
:func:`verify` names. Appends are serialized (an advisory lock on PostgreSQL,
SQLite's single writer) so the chain never forks.

Events recorded in a transaction are chained and written when it commits, after
its other changes are flushed: every writer in every worker takes the append
lock, so it is held for the last moment of a transaction only. Events recorded
inside a savepoint that rolls back are dropped with it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event as orm_event
from sqlalchemy import func, insert, text
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel import col, select

from campaigns.db import utcnow
from campaigns.models import AuditEvent

GENESIS_HASH = "0" * 64
_PENDING = "campaigns.audit.pending"
_SAVEPOINT_MARKS = "campaigns.audit.savepoint_marks"
# Arbitrary constant naming the audit chain's advisory lock on PostgreSQL.
_AUDIT_LOCK_KEY = 0x0A0D17


@orm_event.listens_for(Session, "before_commit")
def _write_at_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint's release: its events wait for the real commit
    session.flush()
    write_pending(session)


@orm_event.listens_for(Session, "after_transaction_create")
def _mark_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        marks = session.info.setdefault(_SAVEPOINT_MARKS, {})
        marks[transaction] = len(session.info.get(_PENDING, ()))


@orm_event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    if previous_transaction.nested:
        mark = session.info.get(_SAVEPOINT_MARKS, {}).pop(previous_transaction, None)
        if mark is not None and _PENDING in session.info:
            del session.info[_PENDING][mark:]
    else:
        session.info.pop(_PENDING, None)
        session.info.pop(_SAVEPOINT_MARKS, None)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _event_hash(
    prev_hash: str,
    at: datetime,
    actor: str,
    kind: str,
    clinic_id: int | None,
    appointment_id: int | None,
    attempt_id: int | None,
    payload: str,
) -> str:
    material = canonical_json(
        [prev_hash, at.isoformat(), actor, kind, clinic_id, appointment_id, attempt_id, payload]
    )
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One event to append; see :func:`record`."""

    kind: str
    payload: Mapping[str, Any]
    actor: str
    clinic_id: int | None = None
    appointment_id: int | None = None
    attempt_id: int | None = None
    at: datetime | None = None


def record_many(session: Session, entries: Iterable[Entry]) -> None:
    """Record events, in order, as part of the caller's transaction (written at its commit)."""
    session.info.setdefault(_PENDING, []).extend(entries)


def write_pending(session: Session) -> None:
    """Chain and insert the events recorded so far in this transaction."""
    pending: list[Entry] = session.info.pop(_PENDING, [])
    if not pending:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _AUDIT_LOCK_KEY})
    prev_hash = (
        session.execute(
            select(AuditEvent.hash).order_by(col(AuditEvent.seq).desc()).limit(1)
        ).scalar_one_or_none()
        or GENESIS_HASH
    )
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for entry in pending:
        at = entry.at or now
        body = canonical_json(dict(entry.payload))
        digest = _event_hash(
            prev_hash,
            at,
            entry.actor,
            entry.kind,
            entry.clinic_id,
            entry.appointment_id,
            entry.attempt_id,
            body,
        )
        rows.append(
            {
                "at": at,
                "actor": entry.actor,
                "kind": entry.kind,
                "clinic_id": entry.clinic_id,
                "appointment_id": entry.appointment_id,
                "attempt_id": entry.attempt_id,
                "payload": body,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
        prev_hash = digest
    # Inserted in list order, so sequence numbers follow the chain.
    for start in range(0, len(rows), 1000):
        session.execute(insert(AuditEvent), rows[start : start + 1000])


def record(
    session: Session,
    kind: str,
    payload: Mapping[str, Any],
    *,
    actor: str,
    clinic_id: int | None = None,
    appointment_id: int | None = None,
    attempt_id: int | None = None,
    at: datetime | None = None,
) -> None:
    """Record one event as part of the caller's transaction (written at its commit)."""
    record_many(session, [Entry(kind, payload, actor, clinic_id, appointment_id, attempt_id, at)])


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify(session: Session) -> VerifyResult:
    """Re-walk the whole chain; stop at the first event that does not hold."""
    expected_prev = GENESIS_HASH
    count = 0
    for event in iter_events(session):
        count += 1
        assert event.seq is not None
        if event.prev_hash != expected_prev:
            return VerifyResult(
                False,
                count,
                event.seq,
                "previous hash does not match: an event was removed or reordered",
            )
        recomputed = _event_hash(
            event.prev_hash,
            event.at,
            event.actor,
            event.kind,
            event.clinic_id,
            event.appointment_id,
            event.attempt_id,
            event.payload,
        )
        if recomputed != event.hash:
            return VerifyResult(
                False, count, event.seq, "content does not match its hash: the event was altered"
            )
        expected_prev = event.hash
    return VerifyResult(True, count)


EXPORT_FIELDS = (
    "seq",
    "at",
    "actor",
    "kind",
    "clinic_id",
    "appointment_id",
    "attempt_id",
    "payload",
    "prev_hash",
    "hash",
)
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _neutralise(cell: str) -> str:
    # Spreadsheets execute cells that start like a formula (CSV injection).
    return "'" + cell if cell.startswith(_FORMULA_PREFIXES) else cell


def iter_events(session: Session, since: datetime | None = None) -> Iterator[AuditEvent]:
    write_pending(session)  # this transaction's own events belong to what it reads
    query = select(AuditEvent).order_by(col(AuditEvent.seq))
    if since is not None:
        query = query.where(col(AuditEvent.at) >= since)
    # Streamed with a server-side cursor; closed even when the reader stops early.
    result = session.execute(query.execution_options(yield_per=5000)).scalars()
    try:
        yield from result
    finally:
        result.close()


def _as_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": event.at.isoformat(),
        "actor": event.actor,
        "kind": event.kind,
        "clinic_id": event.clinic_id,
        "appointment_id": event.appointment_id,
        "attempt_id": event.attempt_id,
        "payload": event.payload,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def export_jsonl(events: Iterable[AuditEvent]) -> Iterator[str]:
    for event in events:
        row = _as_row(event)
        row["payload"] = json.loads(event.payload)
        yield json.dumps(row, ensure_ascii=False) + "\n"


def export_csv(events: Iterable[AuditEvent]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_FIELDS)
    for event in events:
        row = _as_row(event)
        writer.writerow(_neutralise("" if row[f] is None else str(row[f])) for f in EXPORT_FIELDS)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue()


EVENTS_PAGE_SIZE = 100


def list_events(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    kind: str | None = None,
    actor: str | None = None,
    page: int = 1,
) -> dict[str, Any]:
    """One page of events, newest first, filtered by time, kind (prefix) and actor."""
    if page < 1:
        raise ValueError("page starts at 1")
    filters = []
    if since is not None:
        filters.append(col(AuditEvent.at) >= since)
    if until is not None:
        filters.append(col(AuditEvent.at) < until)
    if kind:
        filters.append(col(AuditEvent.kind).startswith(kind, autoescape=True))
    if actor:
        filters.append(col(AuditEvent.actor) == actor)
    total = session.execute(
        select(func.count()).select_from(AuditEvent).where(*filters)
    ).scalar_one()
    events = session.execute(
        select(AuditEvent)
        .where(*filters)
        .order_by(col(AuditEvent.seq).desc())
        .offset((page - 1) * EVENTS_PAGE_SIZE)
        .limit(EVENTS_PAGE_SIZE)
    ).scalars()
    items = []
    for event in events:
        row = _as_row(event)
        row["payload"] = json.loads(event.payload)
        items.append(row)
    return {"page": page, "page_size": EVENTS_PAGE_SIZE, "total": total, "items": items}


def checkpoint(session: Session) -> dict[str, Any]:
    """The head of the chain, to be kept outside the database: any later rewrite of the
    events up to ``seq`` no longer ends in ``hash``."""
    write_pending(session)
    head = session.execute(
        select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(1)
    ).scalar_one_or_none()
    count = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    return {
        "seq": head.seq if head else 0,
        "hash": head.hash if head else GENESIS_HASH,
        "at": head.at.isoformat() if head else None,
        "count": count,
    }
