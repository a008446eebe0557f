"""Appending to the audit log: keys, chains, the commit hooks that write recorded events.

See :mod:`campaigns.audit` for the contract.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import event as orm_event
from sqlalchemy import insert, text
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel import col, select

from campaigns.db import EngineSession, is_postgresql, utcnow
from campaigns.models import AuditEvent
from campaigns.settings import get_settings

# What chain 0's first event links to: the genesis of the single log written before
# chains per clinic, so that log still verifies as chain 0.
GENESIS_HASH = "0" * 64
NO_CLINIC_CHAIN = 0
CHECKPOINT_KIND = "audit.checkpoint"
EXPORT_KIND = "audit.exported"
_PENDING = "campaigns.audit.pending"
_SAVEPOINT_MARKS = "campaigns.audit.savepoint_marks"
# Arbitrary constant naming the audit chains' advisory locks on PostgreSQL (the
# two-key form: this namespace, the chain).
_AUDIT_LOCK_NAMESPACE = 0x0A0D17


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


def chain_of(clinic_id: int | None) -> int:
    """The chain an event of this clinic (or of none) is appended to."""
    return NO_CLINIC_CHAIN if clinic_id is None else clinic_id


def genesis_hash(chain: int, key: ChainKey) -> str:
    """What a chain's first event links to: keyed per clinic, so that no event (nor a
    whole chain) of one clinic verifies in another's."""
    if chain == NO_CLINIC_CHAIN:
        return GENESIS_HASH
    return key.seal(f"chain {chain} genesis".encode())


def chain_name(chain: int) -> str:
    return "chain 0" if chain == NO_CLINIC_CHAIN else f"clinic {chain}'s chain"


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


def stored_material(event: AuditEvent) -> bytes:
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
    heads = _lock_heads(session, sorted({chain_of(entry.clinic_id) for entry in pending}))
    key = chain_key()
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for entry in pending:
        chain = chain_of(entry.clinic_id)
        seq, prev_hash = heads.get(chain) or (0, genesis_hash(chain, key))
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
                "chain": chain,
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
        heads[chain] = (seq, digest)
    for start in range(0, len(rows), 1000):
        session.execute(insert(AuditEvent), rows[start : start + 1000])


def _lock_heads(session: Session, chains: list[int]) -> dict[int, tuple[int, str]]:
    """Lock ``chains`` (sorted) until the transaction ends; their heads, once locked."""
    if not is_postgresql(session):
        heads: dict[int, tuple[int, str]] = {}  # SQLite: the one writer is this transaction
        for chain in chains:
            head = session.execute(
                select(AuditEvent.seq, AuditEvent.hash)
                .where(col(AuditEvent.chain) == chain)
                .order_by(col(AuditEvent.seq).desc())
                .limit(1)
            ).one_or_none()
            if head is not None:
                heads[chain] = (head.seq, head.hash)
        return heads
    # unnest yields the (sorted) array in order: the locks are taken in that order.
    session.execute(_LOCK_CHAINS, {"namespace": _AUDIT_LOCK_NAMESPACE, "chains": chains})
    # A statement of its own: under READ COMMITTED it sees what the previous holder
    # of each lock committed, which a snapshot taken before the lock would not.
    locked = session.execute(_CHAIN_HEADS, {"chains": chains})
    return {row.chain: (row.seq, row.hash) for row in locked}


_LOCK_CHAINS = text(
    "SELECT pg_advisory_xact_lock(CAST(:namespace AS integer), chain) "
    "FROM unnest(CAST(:chains AS integer[])) AS chain"
)
# One index probe (chain, seq) per chain, backwards from its highest number.
_CHAIN_HEADS = text(
    "SELECT c.chain, h.seq, h.hash FROM unnest(CAST(:chains AS integer[])) AS c(chain) "
    "CROSS JOIN LATERAL (SELECT seq, hash FROM audit_event WHERE chain = c.chain "
    "ORDER BY seq DESC LIMIT 1) AS h"
)


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


def iter_events(session: Session, since: datetime | None = None) -> Iterator[AuditEvent]:
    """Events chain by chain, each in sequence (what :func:`verify` walks and exports hold)."""
    write_pending(session)  # this transaction's own events belong to what it reads
    query = select(AuditEvent).order_by(col(AuditEvent.chain), col(AuditEvent.seq))
    if since is not None:
        query = query.where(col(AuditEvent.at) >= since)
    # Streamed with a server-side cursor; closed even when the reader stops early.
    result = session.execute(query.execution_options(yield_per=5000)).scalars()
    try:
        yield from result
    finally:
        result.close()
