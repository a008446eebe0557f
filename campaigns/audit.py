"""Append-only audit log with a keyed hash chain and checkpoints kept elsewhere.

Each event's hash is an HMAC-SHA256, keyed with ``CAMPAIGNS_AUDIT_KEY`` (kept
outside the database), of its sequence number, its content and the previous
event's hash. Editing, deleting or reordering a stored event breaks the chain at
that event, which :func:`verify` names, and someone with the database but not the
key cannot re-chain the log so that it verifies. Each event also stores the key's
fingerprint (``key_id``), so a wrong key is told apart from an altered event.

Sequence numbers run 1, 2, 3 ... with no gap: appends are serialized (an advisory
lock on PostgreSQL, SQLite's single writer) and each takes the next number itself,
so a rolled-back transaction leaves no hole, the chain never forks, and a missing
number is a removed event.

A :class:`Checkpoint` (the head's seq and hash, its time and the event count),
stored outside the database, anchors the log: :func:`verify` given one fails when
events up to it were removed, truncated or rewritten, even by someone holding the
key, and passes when the log only grew after it. Taking a checkpoint verifies the
log first and is itself an audited event; so is every export.

Events recorded in a transaction are chained and written when it commits, after
its other changes are flushed: every writer in every worker takes the append
lock, so it is held for the last moment of a transaction only. Events recorded
inside a savepoint that rolls back are dropped with it. These commit hooks listen
on the engine's own sessions (:class:`~campaigns.db.EngineSession`, what
:func:`~campaigns.db.session_factory` opens), not on other sessions in the process.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PositiveInt, ValidationError
from sqlalchemy import event as orm_event
from sqlalchemy import func, insert, text
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlmodel import col, select

from campaigns.db import EngineSession, session_scope, utcnow
from campaigns.errors import CampaignError, InvalidInputError
from campaigns.models import AuditEvent
from campaigns.settings import get_settings

GENESIS_HASH = "0" * 64
CHECKPOINT_KIND = "audit.checkpoint"
EXPORT_KIND = "audit.exported"
_PENDING = "campaigns.audit.pending"
_SAVEPOINT_MARKS = "campaigns.audit.savepoint_marks"
# Arbitrary constant naming the audit chain's advisory lock on PostgreSQL.
_AUDIT_LOCK_KEY = 0x0A0D17


@orm_event.listens_for(EngineSession, "before_commit")
def _write_at_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint's release: its events wait for the real commit
    session.flush()
    write_pending(session)


@orm_event.listens_for(EngineSession, "after_transaction_create")
def _mark_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        marks = session.info.setdefault(_SAVEPOINT_MARKS, {})
        marks[transaction] = len(session.info.get(_PENDING, ()))


@orm_event.listens_for(EngineSession, "after_soft_rollback")
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


@dataclass(frozen=True)
class ChainKey:
    """The chain's HMAC key, ready to seal, and its fingerprint (safe to store)."""

    id: str
    _mac: hmac.HMAC

    def seal(self, material: bytes) -> str:
        mac = self._mac.copy()  # cheaper than re-keying for every event
        mac.update(material)
        return mac.hexdigest()


@lru_cache(maxsize=4)
def _chain_key(secret: str) -> ChainKey:
    raw = secret.encode()
    fingerprint = hmac.new(raw, b"campaigns audit key id", hashlib.sha256).hexdigest()[:16]
    return ChainKey(fingerprint, hmac.new(raw, digestmod=hashlib.sha256))


def chain_key() -> ChainKey:
    """The key configured as ``CAMPAIGNS_AUDIT_KEY``."""
    return _chain_key(get_settings().audit_key.get_secret_value())


def event_material(
    seq: int,
    prev_hash: str,
    at: datetime,
    actor: str,
    kind: str,
    clinic_id: int | None,
    appointment_id: int | None,
    attempt_id: int | None,
    payload: str,
) -> bytes:
    """What an event's hash covers: its place in the log, its content, its predecessor."""
    return canonical_json(
        [
            seq,
            prev_hash,
            at.isoformat(),
            actor,
            kind,
            clinic_id,
            appointment_id,
            attempt_id,
            payload,
        ]
    ).encode()


def _stored_material(event: AuditEvent) -> bytes:
    assert event.seq is not None
    return event_material(
        event.seq,
        event.prev_hash,
        event.at,
        event.actor,
        event.kind,
        event.clinic_id,
        event.appointment_id,
        event.attempt_id,
        event.payload,
    )


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
    head = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(col(AuditEvent.seq).desc()).limit(1)
    ).one_or_none()
    seq, prev_hash = (head.seq or 0, head.hash) if head else (0, GENESIS_HASH)
    key = chain_key()
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for entry in pending:
        seq += 1
        at = (entry.at or now).astimezone(UTC)  # hashed as it will read back
        body = canonical_json(dict(entry.payload))
        digest = key.seal(
            event_material(
                seq,
                prev_hash,
                at,
                entry.actor,
                entry.kind,
                entry.clinic_id,
                entry.appointment_id,
                entry.attempt_id,
                body,
            )
        )
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": entry.actor,
                "kind": entry.kind,
                "clinic_id": entry.clinic_id,
                "appointment_id": entry.appointment_id,
                "attempt_id": entry.attempt_id,
                "payload": body,
                "prev_hash": prev_hash,
                "hash": digest,
                "key_id": key.id,
            }
        )
        prev_hash = digest
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


class InvalidCheckpointError(InvalidInputError):
    """A checkpoint file that cannot be read as one."""


class Checkpoint(BaseModel):
    """The log's head at one moment, to keep outside the database (exactly these keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    seq: PositiveInt
    hash: str = Field(pattern="^[0-9a-f]{64}$")
    at: AwareDatetime
    count: PositiveInt

    @classmethod
    def parse(cls, document: str) -> Checkpoint:
        try:
            return cls.model_validate_json(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "checkpoint"
            raise InvalidCheckpointError(f"{where}: {first['msg']}") from exc


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int
    first_bad_seq: int | None = None
    problem: str | None = None
    checkpoint: Checkpoint | None = None


def _missing(first: int, last: int) -> str:
    return f"event {first} is missing" if first == last else f"events {first}-{last} are missing"


def _chain_problem(
    event: AuditEvent, expected_seq: int, expected_prev: str, key: ChainKey
) -> str | None:
    assert event.seq is not None
    if event.seq != expected_seq:
        if event.seq < expected_seq:
            return f"sequence number {event.seq} where {expected_seq} was expected"
        if expected_seq == 1:
            jump = f"the log starts at {event.seq}"
        else:
            jump = f"the sequence jumps from {expected_seq - 1} to {event.seq}"
        return f"{_missing(expected_seq, event.seq - 1)} ({jump}): removed"
    if event.prev_hash != expected_prev:
        return "previous hash does not match: an event was removed or reordered"
    if event.key_id != key.id:
        return (
            f"chained with key id {event.key_id or '(none)'}, not CAMPAIGNS_AUDIT_KEY's {key.id}: "
            "a different key, or re-chained without it"
        )
    if not hmac.compare_digest(key.seal(_stored_material(event)), event.hash):
        return "content does not match its hash: the event was altered"
    return None


def verify(session: Session, checkpoint: Checkpoint | None = None) -> VerifyResult:
    """Re-walk the whole chain; stop at the first event that does not hold.

    With a checkpoint, also fail when the log no longer holds the events it covers
    as they were then.
    """
    key = chain_key()
    expected_prev = GENESIS_HASH
    count = 0
    for event in iter_events(session):
        count += 1
        assert event.seq is not None
        problem = _chain_problem(event, count, expected_prev, key)
        if problem is None and checkpoint is not None and event.seq == checkpoint.seq:
            if event.hash != checkpoint.hash:
                problem = (
                    f"does not match the checkpoint taken {checkpoint.at.isoformat()}: "
                    "the log was rewritten up to it"
                )
            elif checkpoint.count != count:
                problem = (
                    f"the checkpoint counted {checkpoint.count} events up to it, "
                    f"the log holds {count}"
                )
        if problem is not None:
            return VerifyResult(False, count, event.seq, problem, checkpoint)
        expected_prev = event.hash
    if checkpoint is not None and count < checkpoint.seq:
        return VerifyResult(
            False,
            count,
            count + 1,
            f"{_missing(count + 1, checkpoint.seq)}: the log ends at event {count}, the "
            f"checkpoint taken {checkpoint.at.isoformat()} covers {checkpoint.count} events "
            "(truncated)",
            checkpoint,
        )
    return VerifyResult(True, count, checkpoint=checkpoint)


def take_checkpoint(session: Session, *, actor: str, out: str) -> Checkpoint:
    """Verify the log, record who anchors it (``out`` says where to), return its new head.

    The checkpoint covers its own event; it counts once the caller's transaction commits.
    """
    verified = verify(session)
    if not verified.ok:
        raise CampaignError(
            f"audit log broken at event {verified.first_bad_seq}: {verified.problem}; "
            "no checkpoint taken"
        )
    record(session, CHECKPOINT_KIND, {"out": out, "verified_events": verified.events}, actor=actor)
    write_pending(session)
    head = session.execute(
        select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(1)
    ).scalar_one()
    count = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    assert head.seq is not None
    return Checkpoint(seq=head.seq, hash=head.hash, at=head.at, count=count)


def record_export(
    session: Session,
    *,
    actor: str,
    fmt: str,
    since: datetime | None,
    count: int,
    complete: bool,
) -> None:
    """Audit an export of the log: who, which range and format, how many events left."""
    record(
        session,
        EXPORT_KIND,
        {
            "format": fmt,
            "since": since.isoformat() if since else None,
            "count": count,
            "complete": complete,
        },
        actor=actor,
    )


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


EXPORT_WRITERS: dict[str, Callable[[Iterable[AuditEvent]], Iterator[str]]] = {
    "csv": export_csv,
    "jsonl": export_jsonl,
}


def export(
    fmt: str,
    *,
    since: datetime | None,
    actor: str,
    sessions: sessionmaker[Session] | None = None,
) -> Generator[str]:
    """The log since ``since`` as ``fmt`` chunks, read in a transaction of its own.

    The export is audited once it ends, in another transaction, also when the reader
    stops early (a closed pipe, a dropped download) after some events left: the count
    says how many and ``complete`` whether that was all."""
    writer = EXPORT_WRITERS[fmt]
    exported = 0
    complete = False

    def counted(events: Iterator[AuditEvent]) -> Iterator[AuditEvent]:
        nonlocal exported
        for event in events:
            exported += 1
            yield event

    try:
        with session_scope(sessions) as reader:
            yield from writer(counted(iter_events(reader, since)))
        complete = True
    finally:
        if complete or exported:
            with session_scope(sessions) as recorder:
                record_export(
                    recorder,
                    actor=actor,
                    fmt=fmt,
                    since=since,
                    count=exported,
                    complete=complete,
                )


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
