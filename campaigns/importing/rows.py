"""Validation of one row: every reason it cannot be imported, or its values.

Rows are validated completely before anything of them is written, so an invalid
row is never half-written.

- Phones: one number per cell, parsed with the clinic's country, only numbers the
  clinic may call (:func:`campaigns.phones.to_callable_e164`).
- The row's timezone column, when present, is an IANA name (any case); its naive
  times are local to it, else to the clinic's zone.
- States are a USPS code or a name (:func:`campaigns.compliance.geography.state_for_name`);
  ZIP codes 5 or 9 digits.
- A cell with a NUL, a control or a bidi-override character is rejected (line breaks
  are fine in a quoted cell, not in a name), as is a start in the past, more than
  :data:`MAX_START_AHEAD` ahead or outside the dates Python can hold.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from campaigns.compliance.geography import US_STATES, state_for_name, zone_named
from campaigns.errors import InvalidInputError
from campaigns.importing.columns import Columns, normalized
from campaigns.importing.report import ImportFileError, Rejection
from campaigns.importing.values import (
    BadValueError,
    offset_tz,
    parse_date,
    parse_datetime,
    parse_time,
    to_utc,
)
from campaigns.models import AppointmentStatus, Clinic
from campaigns.phones import to_callable_e164

# Appointments further ahead than this are typing errors (e.g. 2062 for 2026).
MAX_START_AHEAD = timedelta(days=5 * 366)
# Characters that reorder or hide text where it is shown (Trojan Source).
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_MAX_LEN = {
    "external_id": 100,
    "patient_ref": 100,
    "patient_name": 200,
    "provider": 200,
    "location": 200,
    "language": 16,
}
_ZIP_RE = re.compile(r"(\d{5})(?:-?(\d{4}))?")

_STATUS_WORDS: dict[str, str] = {
    **{normalized(s.value): s.value for s in AppointmentStatus},
    "booked": AppointmentStatus.SCHEDULED,
    "pending": AppointmentStatus.SCHEDULED,
    "active": AppointmentStatus.SCHEDULED,
    "open": AppointmentStatus.SCHEDULED,
    "rescheduled": AppointmentStatus.SCHEDULED,
    "canceled": AppointmentStatus.CANCELLED,
    "cancel": AppointmentStatus.CANCELLED,
    "void": AppointmentStatus.CANCELLED,
}

# Distinct phone cells a parser remembers the verdict of (about 20 MB at most).
_PHONES_KEPT = 100_000
_OUT_OF_RANGE = "appointment start is outside the supported range of dates"
_NAME_KEYS = frozenset({"patient_name", "first_name", "last_name"})
_LINE_BREAKS = frozenset("\t\n\r")


def _unsafe_characters(cell: str, *, name: bool) -> str | None:
    """Why a cell cannot be stored and shown as given: NUL, a bidi override, a control
    character (a quoted multi-line cell may break lines, except in a name)."""
    if cell.isprintable():  # no control, format or line-separator character: the usual case
        return None
    for ch in cell:
        if ch == "\x00":
            return "contains a NUL character (U+0000)"
        if ch in _BIDI_CONTROLS:
            return f"contains a bidirectional-text control character (U+{ord(ch):04X})"
        if unicodedata.category(ch) == "Cc" and (name or ch not in _LINE_BREAKS):
            return f"contains a control character (U+{ord(ch):04X})"
    return None


@dataclass
class Row:
    line: int
    values: dict[str, Any]  # appointment columns the file provides
    status: str | None  # status the file states, None when silent


class RowParser:
    def __init__(self, clinic: Clinic, columns: Columns, now: datetime) -> None:
        self.columns = columns
        self.region = (clinic.country or "US").upper()
        zone = zone_named(clinic.timezone)
        if zone is None:
            raise ImportFileError(
                f"clinic '{clinic.name}' has an unknown timezone '{clinic.timezone}'"
            )
        self.clinic_zone = zone
        self.now = now
        self._phones: dict[str, tuple[str | None, str | None]] = {}
        self.optional = [
            k for k in ("patient_ref", "provider", "location", "language") if columns.has(k)
        ]

    def cell(self, record: list[str], key: str) -> str:
        i = self.columns.index.get(key)
        if i is None or i >= len(record):
            return ""
        return record[i].strip()

    def parse(self, record: list[str], line: int) -> tuple[Row | None, list[Rejection]]:
        """The row's values, or every reason it is rejected."""
        cols = self.columns
        errors: list[Rejection] = []

        def reject(key: str, reason: str) -> None:
            errors.append(Rejection(line, cols.header.get(key, key), reason))

        if len(record) > cols.width and any(c.strip() for c in record[cols.width :]):
            reason = (
                f"row has {len(record)} fields but the header has {cols.width} "
                "(check quoting and delimiters)"
            )
            return None, [Rejection(line, "", reason)]

        for key, index in cols.index.items():
            cell = record[index] if index < len(record) else ""
            unsafe = _unsafe_characters(cell, name=key in _NAME_KEYS)
            if unsafe is not None:
                reject(key, unsafe)
        if errors:  # nothing else is said of such a row: its text is not repeated
            return None, errors

        values: dict[str, Any] = {"external_id": self.cell(record, "external_id")}
        if not values["external_id"]:
            reject("external_id", "appointment id is missing")
        values["patient_name"] = self._name(record, reject)
        values["phone_e164"] = self._phone(record, reject)
        zone = self._zone(record, values, reject)
        starts_at = self._start(record, zone, reject)
        start_key = "start" if cols.has("start") else "date"
        if starts_at is not None and starts_at <= self.now:
            reject(start_key, "appointment start is in the past")
        elif starts_at is not None and starts_at > self.now + MAX_START_AHEAD:
            reject(
                start_key,
                f"appointment start is outside the supported range (at most "
                f"{MAX_START_AHEAD.days} days ahead)",
            )
        values["starts_at"] = starts_at
        self._address(record, values, reject)
        for key in self.optional:
            values[key] = self.cell(record, key) or None
        for key, limit in _MAX_LEN.items():
            text = values.get(key)
            if text and len(text) > limit:
                reject(key, f"too long ({len(text)} characters, at most {limit})")
        status = self._status(record, reject)
        if errors:
            return None, errors
        return Row(line, values, status), errors

    def _name(self, record: list[str], reject: Callable[[str, str], None]) -> str:
        name = " ".join(self.cell(record, "patient_name").split())
        if not name and self.columns.has("first_name"):
            first, last = self.cell(record, "first_name"), self.cell(record, "last_name")
            name = " ".join(f"{first} {last}".split())
        if not name:
            reject(
                "patient_name" if self.columns.has("patient_name") else "first_name",
                "patient name is missing",
            )
        return name

    def _phone(self, record: list[str], reject: Callable[[str, str], None]) -> str | None:
        raw = self.cell(record, "phone")
        if not raw:
            reject("phone", "phone number is missing")
            return None
        # A patient's number recurs (several appointments, one household): judged once.
        judged = self._phones.get(raw)
        if judged is None:
            try:
                judged = (to_callable_e164(raw, self.region), None)
            except InvalidInputError as exc:
                judged = (None, str(exc))
            if len(self._phones) >= _PHONES_KEPT:
                self._phones.clear()
            self._phones[raw] = judged
        e164, reason = judged
        if reason is not None:
            reject("phone", reason)
        return e164

    def _zone(
        self, record: list[str], values: dict[str, Any], reject: Callable[[str, str], None]
    ) -> ZoneInfo:
        """The zone naive times are in: the row's timezone, else the clinic's."""
        if not self.columns.has("timezone"):
            return self.clinic_zone
        name = self.cell(record, "timezone")
        zone = zone_named(name) if name else None
        if name and zone is None:
            reject(
                "timezone",
                f"unknown timezone '{name}' (expected an IANA name such as America/Chicago)",
            )
        values["patient_timezone"] = zone.key if zone else None
        return zone or self.clinic_zone

    def _address(
        self, record: list[str], values: dict[str, Any], reject: Callable[[str, str], None]
    ) -> None:
        if self.columns.has("state"):
            state = self.cell(record, "state")
            code = state.upper() if len(state) == 2 else (state_for_name(state) or "")
            if state and code not in US_STATES:
                reject("state", f"unknown US state '{state}' (expected a 2-letter code such as NY)")
            values["patient_state"] = code or None
        if self.columns.has("zip"):
            raw = self.cell(record, "zip")
            m = _ZIP_RE.fullmatch(raw)
            if raw and m is None:
                reject("zip", f"invalid ZIP code '{raw}' (expected 5 or 9 digits)")
            values["patient_zip"] = (
                (m.group(1) + (f"-{m.group(2)}" if m.group(2) else "")) if m else None
            )

    def _status(self, record: list[str], reject: Callable[[str, str], None]) -> str | None:
        raw = self.cell(record, "status")
        if not raw:
            return None
        status = _STATUS_WORDS.get(normalized(raw))
        if status is None:
            reject("status", f"unknown status '{raw}' (expected scheduled, confirmed or cancelled)")
        return status

    def _start(
        self, record: list[str], zone: ZoneInfo, reject: Callable[[str, str], None]
    ) -> datetime | None:
        if self.columns.has("start"):
            text = self.cell(record, "start")
            if not text:
                reject("start", "appointment start is missing")
                return None
            try:
                value = parse_datetime(text)
            except BadValueError as exc:
                reject("start", str(exc))
                return None
            return _instant(value, zone, reject, gap_key="start", range_key="start")
        date_text, time_text = self.cell(record, "date"), self.cell(record, "time")
        day: date | None = None
        clock: tuple[time, str | None] | None = None
        for key, text in (("date", date_text), ("time", time_text)):
            if not text:
                reject(key, f"appointment {key} is missing")
                continue
            try:
                if key == "date":
                    day = parse_date(text)
                else:
                    clock = parse_time(text)
            except BadValueError as exc:
                reject(key, str(exc))
        if day is None or clock is None:
            return None
        value = datetime.combine(day, clock[0])
        if clock[1]:
            value = value.replace(tzinfo=offset_tz(clock[1]))
        return _instant(value, zone, reject, gap_key="time", range_key="date")


def _instant(
    value: datetime,
    zone: ZoneInfo,
    reject: Callable[[str, str], None],
    *,
    gap_key: str,
    range_key: str,
) -> datetime | None:
    """``value`` as a UTC instant, or None once the reason is given: its wall time falls in
    a DST gap (under ``gap_key``) or it is beyond the dates Python holds (``range_key``)."""
    try:
        return to_utc(value, zone)
    except BadValueError as exc:
        reject(gap_key, str(exc))
        return None
    except OverflowError:
        reject(range_key, _OUT_OF_RANGE)
        return None
