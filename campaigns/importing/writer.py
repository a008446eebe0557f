"""Writing validated rows in chunks: one lookup of the existing appointments per
chunk, one bulk insert (COPY on PostgreSQL) and one bulk update.

Re-import updates by (clinic, appointment id). Optional columns absent from the
file keep their stored values; an empty cell clears them.

Status: a ``cancelled`` row cancels the appointment and skips its scheduled
attempts; ``confirmed`` (and the other statuses) are set as given. ``scheduled``
or an empty cell does not undo an outcome the calls produced, except that a new
start time asks for a new confirmation (confirmed, cancelled, reschedule requested
and unreached go back to scheduled) and a new number clears ``wrong_number``.

A changed start time or phone number skips the appointment's attempts still in
``scheduled`` (the pipeline creates new ones); queued/dialing attempts are left to
the pipeline, which re-checks the appointment at dial time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, Table, any_, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.attempts import transitions
from campaigns.db import copy_rows, is_postgresql
from campaigns.importing.report import ImportReport
from campaigns.importing.rows import Row
from campaigns.models import Appointment, AppointmentStatus, CallAttempt

_SKIP_CANCELLED = "appointment_cancelled"
_SKIP_RESCHEDULED = "appointment_rescheduled"
_SKIP_PHONE_CHANGED = "appointment_phone_changed"
# Statuses that answer for one start time: a new time needs a new confirmation.
_TIME_BOUND_STATUSES = frozenset(
    {
        AppointmentStatus.CONFIRMED,
        AppointmentStatus.CANCELLED,
        AppointmentStatus.RESCHEDULE_REQUESTED,
        AppointmentStatus.UNREACHED,
    }
)

_UPDATABLE = (
    "patient_ref",
    "patient_name",
    "phone_e164",
    "phone_source",
    "patient_timezone",
    "patient_state",
    "patient_zip",
    "language",
    "starts_at",
    "provider",
    "location",
    "status",
)
_EXISTING_COLUMNS = [col(Appointment.id), col(Appointment.external_id)] + [
    col(getattr(Appointment, name)) for name in _UPDATABLE
]


_TABLE: Table = Appointment.__table__  # type: ignore[attr-defined]
_INSERT = insert(_TABLE)
_UPDATE = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}") for name in (*_UPDATABLE, "updated_at")})
)
# Every column an insert sets, so that each chunk is one executemany.
_BLANK: dict[str, Any] = dict.fromkeys(
    ("clinic_id", "external_id", "created_at", "updated_at", *_UPDATABLE)
)


def _merged_status(stated: str | None, old: str, start_changed: bool, phone_changed: bool) -> str:
    if stated is not None and stated != AppointmentStatus.SCHEDULED:
        return stated
    if start_changed and old in _TIME_BOUND_STATUSES:
        return AppointmentStatus.SCHEDULED
    if phone_changed and old == AppointmentStatus.WRONG_NUMBER:
        return AppointmentStatus.SCHEDULED
    return old


class Writer:
    def __init__(
        self,
        session: Session,
        clinic_id: int,
        phone_source: str,
        now: datetime,
        report: ImportReport,
    ) -> None:
        self.session = session
        self.clinic_id = clinic_id
        self.phone_source = phone_source
        self.now = now
        self.report = report
        self.postgresql = is_postgresql(session)

    def flush(self, rows: list[Row]) -> None:
        if not rows:
            return
        ids = [row.values["external_id"] for row in rows]
        external_id = col(Appointment.external_id)
        # One array parameter on PostgreSQL: cheap to plan, whatever the chunk size.
        matches = (
            external_id == any_(bindparam("external_ids", ids, type_=ARRAY(String)))
            if self.postgresql
            else external_id.in_(ids)
        )
        existing = {
            r.external_id: r
            for r in self.session.execute(
                select(*_EXISTING_COLUMNS).where(
                    col(Appointment.clinic_id) == self.clinic_id, matches
                )
            )
        }
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        skips: dict[str, list[int]] = {
            _SKIP_CANCELLED: [],
            _SKIP_RESCHEDULED: [],
            _SKIP_PHONE_CHANGED: [],
        }
        report = self.report
        for row in rows:
            old = existing.get(row.values["external_id"])
            if old is None:
                status = row.status or AppointmentStatus.SCHEDULED
                inserts.append(
                    {
                        "clinic_id": self.clinic_id,
                        "phone_source": self.phone_source,
                        "status": status,
                        "created_at": self.now,
                        "updated_at": self.now,
                        **row.values,
                    }
                )
                report.imported += 1
                report.cancelled += status == AppointmentStatus.CANCELLED
                continue
            current = {name: getattr(old, name) for name in _UPDATABLE}
            new = {**current, **{k: v for k, v in row.values.items() if k != "external_id"}}
            start_changed = new["starts_at"] != current["starts_at"]
            phone_changed = new["phone_e164"] != current["phone_e164"]
            if phone_changed:
                new["phone_source"] = self.phone_source
            new["status"] = _merged_status(
                row.status, current["status"], start_changed, phone_changed
            )
            if new == current:
                report.unchanged += 1
                continue
            report.updated += 1
            updates.append({"id": old.id, "updated_at": self.now, **new})
            if new["status"] == AppointmentStatus.CANCELLED:
                if current["status"] != AppointmentStatus.CANCELLED:
                    report.cancelled += 1
                    skips[_SKIP_CANCELLED].append(old.id)
            elif start_changed:
                skips[_SKIP_RESCHEDULED].append(old.id)
            elif phone_changed:
                skips[_SKIP_PHONE_CHANGED].append(old.id)
        # COPY on PostgreSQL; elsewhere Core executemany, one batched statement per chunk
        # (the ORM bulk path splits rows into groups by which values are None).
        if inserts and self.postgresql:
            copy_rows(
                self.session,
                "appointment",
                tuple(_BLANK),
                ([values.get(name) for name in _BLANK] for values in inserts),
            )
        elif inserts:
            self.session.execute(_INSERT, [{**_BLANK, **values} for values in inserts])
        if updates:
            self.session.execute(_UPDATE, [{f"b_{k}": v for k, v in u.items()} for u in updates])
        for reason, ids in skips.items():
            if ids:
                report.attempts_skipped += skip_scheduled_attempts(
                    self.session, ids, reason, self.now
                )


def skip_scheduled_attempts(
    session: Session, appointment_ids: list[int], reason: str, now: datetime
) -> int:
    """Skip the attempts of these appointments still in ``scheduled``, for ``reason``
    (each audited); returns how many."""
    return transitions.skip_scheduled(
        session,
        col(CallAttempt.appointment_id).in_(appointment_ids),
        reason,
        now,
        actor=transitions.IMPORTER,
    )
