"""The import of one file: :func:`import_appointments`.

The file is read once to hash it and check it is UTF-8, then once more to parse
it; valid rows are written in chunks of :data:`CHUNK_ROWS`. It never commits: the
caller's transaction makes the whole import atomic, and any exception leaves the
caller to roll back. Each import records one ``appointments.imported`` audit event.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import IO, Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns import audit
from campaigns.db import is_postgresql
from campaigns.importing.columns import resolve_columns
from campaigns.importing.report import ImportFileError, ImportReport, Rejection
from campaigns.importing.rows import Row, RowParser
from campaigns.importing.source import Source, opened, records
from campaigns.importing.writer import Writer
from campaigns.models import Appointment, CallAttempt, Clinic

logger = logging.getLogger(__name__)

CHUNK_ROWS = 1000
AUDIT_KIND = "appointments.imported"
# Line numbers kept in the audit payload; the report itself keeps every rejection.
_AUDIT_MAX_LINES = 1000


def _phone_source(filename: str, sha: str) -> str:
    name = os.path.basename(filename) or "upload"
    budget = 200 - len("import::") - 16
    return f"import:{name[:budget]}:{sha[:16]}"


def import_appointments(
    session: Session,
    clinic: Clinic,
    source: Source,
    *,
    filename: str,
    now: datetime,
    actor: str,
    progress: Callable[[int], None] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ImportReport:
    """Import a CSV of appointments into ``clinic`` in the caller's transaction.

    Raises :class:`ImportFileError` when the file is unusable. Never commits; any
    exception (file error, database error, an exception from ``progress``) may come
    after some chunks were written, so the caller must roll back.
    ``progress(rows_done)`` is called after every chunk and once at the end.
    """
    if clinic.id is None:
        raise ValueError("the clinic must be flushed before importing into it")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    clinic_id = clinic.id
    # Imports into one clinic run one at a time (a no-op on SQLite, a single writer).
    session.execute(select(col(Clinic.id)).where(col(Clinic.id) == clinic_id).with_for_update())
    if is_postgresql(session):
        # psycopg prepares a statement after 5 runs, and PostgreSQL then reuses a generic
        # plan made while the table was small: the per-chunk lookup degrades to a scan of
        # every row inserted so far (quadratic). Plan each lookup, for this transaction only.
        session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    with opened(source, filename) as (binary, sha):
        report = ImportReport(filename=filename, sha256=sha)
        writer = Writer(session, clinic_id, _phone_source(filename, sha), now, report)
        reader = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
        try:
            _run(
                reader,
                clinic=clinic,
                now=now,
                writer=writer,
                progress=progress,
                chunk_rows=chunk_rows,
            )
        finally:
            reader.detach()
    payload: dict[str, Any] = {
        "filename": filename,
        "sha256": report.sha256,
        "rows": report.rows,
        "imported": report.imported,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "cancelled": report.cancelled,
        "attempts_skipped": report.attempts_skipped,
        "rejected_rows": len(report.rejected_lines),
        "rejected_lines": report.rejected_lines[:_AUDIT_MAX_LINES],
    }
    if len(report.rejected_lines) > _AUDIT_MAX_LINES:
        payload["rejected_lines_truncated"] = True
    audit.record(session, AUDIT_KIND, payload, actor=actor, clinic_id=clinic_id)
    _expire_loaded(session)
    logger.info(
        "import %s into clinic %s: %d rows, %d imported, %d updated, %d unchanged, %d rejected",
        filename,
        clinic_id,
        report.rows,
        report.imported,
        report.updated,
        report.unchanged,
        len(report.rejected_lines),
    )
    return report


def _run(
    text: IO[str],
    *,
    clinic: Clinic,
    now: datetime,
    writer: Writer,
    progress: Callable[[int], None] | None,
    chunk_rows: int,
) -> None:
    report = writer.report
    parser: RowParser | None = None
    first_seen: dict[str, int] = {}
    batch: list[Row] = []
    for line, record in records(text):
        if not any(cell.strip() for cell in record):
            continue
        if parser is None:
            parser = RowParser(clinic, resolve_columns(record, line), now)
            continue
        report.rows += 1
        external_id = parser.cell(record, "external_id")
        if external_id:
            seen = first_seen.setdefault(external_id, line)
            if seen != line:
                report.rejected.append(
                    Rejection(
                        line,
                        parser.columns.header["external_id"],
                        f"duplicate appointment id, first seen on line {seen}",
                    )
                )
                continue
        row, errors = parser.parse(record, line)
        if row is None:
            report.rejected.extend(errors)
            continue
        batch.append(row)
        if len(batch) >= chunk_rows:
            writer.flush(batch)
            batch = []
            if progress is not None:
                progress(report.rows)
    if parser is None:
        raise ImportFileError("file is empty")
    writer.flush(batch)
    if progress is not None:
        progress(report.rows)


def _expire_loaded(session: Session) -> None:
    """Bulk statements bypass the identity map: drop stale appointments and attempts."""
    stale: Iterable[object] = [
        obj for obj in session.identity_map.values() if isinstance(obj, Appointment | CallAttempt)
    ]
    for obj in stale:
        session.expire(obj)
