"""Reading the audit log out: exports (themselves audited) and the console's listing.

See :mod:`campaigns.audit` for the contract.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col, select

from campaigns.audit.log import EXPORT_KIND, iter_events, record
from campaigns.db import session_scope
from campaigns.models import AuditEvent


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
    "chain",
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


def _as_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "chain": event.chain,
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
    """The log since ``since`` as ``fmt`` chunks, read in a transaction of its own: chain
    by chain (``chain``, then ``seq``), so each chain reads in order and can be re-walked.

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
        .order_by(col(AuditEvent.id).desc())
        .offset((page - 1) * EVENTS_PAGE_SIZE)
        .limit(EVENTS_PAGE_SIZE)
    ).scalars()
    items = []
    for event in events:
        row = _as_row(event)
        row["payload"] = json.loads(event.payload)
        items.append(row)
    return {"page": page, "page_size": EVENTS_PAGE_SIZE, "total": total, "items": items}
