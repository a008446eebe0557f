"""CSV import of a clinic's appointments.

``import_appointments`` streams the file once to hash it and check it is UTF-8,
then once more to parse it: header aliases, delimiter detection, per-row
validation (phone, times, zone, state, ZIP), and writes in chunks (one lookup of
the existing appointments per chunk, bulk insert, bulk update). It never commits:
the caller's transaction makes the whole import atomic, and any exception leaves
the caller to roll back. Rows are validated completely before anything of them is
written, so an invalid row is never half-written.

Rules a clinic should know:

- Header names match case-insensitively, ignoring spaces and punctuation, with the
  aliases in :data:`FIELD_ALIASES`. Required: appointment id, patient name (or first +
  last name), phone, appointment start (or separate date + time columns).
- Naive times are local to the row's timezone column, else the clinic's zone; a time
  that does not exist (DST spring-forward gap) is rejected; an ambiguous one (fall
  back) is the first occurrence. ``MM/DD/YYYY`` is month first. Stored in UTC.
- Phones: one number per cell, parsed with the clinic's country, only numbers the
  clinic may call (:func:`campaigns.phones.to_callable_e164`).
- A cell with a NUL, a control or a bidi-override character is rejected (line breaks
  are fine in a quoted cell, not in a name), as is a start more than
  :data:`MAX_START_AHEAD` ahead or outside the dates Python can hold; UTF-16, with
  or without a byte-order mark, is refused as a file.
- Re-import updates by (clinic, appointment id). Optional columns absent from the
  file keep their stored values; an empty cell clears them.
- Status: a ``cancelled`` row cancels the appointment and skips its scheduled
  attempts; ``confirmed`` (and the other statuses) are set as given. ``scheduled``
  or an empty cell does not undo an outcome the calls produced, except that a new
  start time asks for a new confirmation (confirmed, cancelled, reschedule requested
  and unreached go back to scheduled) and a new number clears ``wrong_number``.
- A changed start time or phone number skips the appointment's attempts still in
  ``scheduled`` (the pipeline creates new ones); queued/dialing attempts are left to
  the pipeline, which re-checks the appointment at dial time.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, BinaryIO
from zoneinfo import ZoneInfo, available_timezones

from sqlalchemy import String, Table, any_, bindparam, insert, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns import audit
from campaigns.attempts import transitions
from campaigns.errors import CampaignError, InvalidInputError
from campaigns.models import Appointment, AppointmentStatus, CallAttempt, Clinic
from campaigns.phones import to_callable_e164

__all__ = [
    "FIELD_ALIASES",
    "ImportFileError",
    "ImportReport",
    "Rejection",
    "import_appointments",
]

logger = logging.getLogger(__name__)

CHUNK_ROWS = 1000
AUDIT_KIND = "appointments.imported"
# Line numbers kept in the audit payload; the report itself keeps every rejection.
_AUDIT_MAX_LINES = 1000
_READ_BLOCK = 1 << 20
_SAMPLE_LINES = 50
_SAMPLE_CHARS = 64 * 1024
_DELIMITERS = ",;\t"
_SKIP_CANCELLED = "appointment_cancelled"
_SKIP_RESCHEDULED = "appointment_rescheduled"
_SKIP_PHONE_CHANGED = "appointment_phone_changed"
# Appointments further ahead than this are typing errors (e.g. 2062 for 2026).
MAX_START_AHEAD = timedelta(days=5 * 366)
# Characters that reorder or hide text where it is shown (Trojan Source).
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
# A file whose first bytes (its header) have this share of NULs on one side of each
# pair is UTF-16; a UTF-8 header has none.
_UTF16_NUL_SHARE = 0.8
_UTF16_PROBE = 128


class ImportFileError(CampaignError):
    """The file as a whole cannot be imported; the message is one line for the user."""


@dataclass(frozen=True)
class Rejection:
    line: int
    column: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "reason": self.reason}


@dataclass
class ImportReport:
    filename: str
    sha256: str
    rows: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    cancelled: int = 0
    attempts_skipped: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def usable_rows(self) -> int:
        """Rows that were valid (imported, updated or unchanged); 0 means the CLI fails."""
        return self.imported + self.updated + self.unchanged

    @property
    def rejected_lines(self) -> list[int]:
        return sorted({r.line for r in self.rejected})

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping (``json.dumps`` it) for ``campaigns import --json``."""
        return {
            "imported": self.imported,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": [r.to_json() for r in self.rejected],
            "rows": self.rows,
            "rejected_rows": len(self.rejected_lines),
            "cancelled": self.cancelled,
            "attempts_skipped": self.attempts_skipped,
        }


# --------------------------------------------------------------------------- header


def _aliases(text: str) -> tuple[str, ...]:
    return tuple(alias.strip() for alias in text.split(","))


FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "external_id": _aliases(
        "appointment id, appt id, appointment number, appointment no, appt number, "
        "appt no, appointment ref, appointment reference, external id, booking id, "
        "booking reference, visit id, encounter id, id"
    ),
    "patient_name": _aliases("patient name, patient, name, full name, patient full name"),
    "first_name": _aliases("first name, given name, patient first name, forename, first"),
    "last_name": _aliases("last name, surname, family name, patient last name, last"),
    "phone": _aliases(
        "phone, phone number, mobile, mobile phone, mobile number, cell, cell phone, "
        "cell number, telephone, telephone number, tel, patient phone, contact number, "
        "phone no"
    ),
    "start": _aliases(
        "start, appointment start, appointment time, start time, datetime, date time, "
        "appointment datetime, appointment date time, appt time, appt start, "
        "appt datetime, starts at, start at, scheduled at, scheduled for"
    ),
    "date": _aliases("date, appointment date, appt date, start date, visit date"),
    "time": _aliases("time, visit time, appointment hour"),
    "patient_ref": _aliases(
        "patient id, patient ref, patient reference, patient number, patient no, mrn, "
        "medical record number, chart number"
    ),
    "provider": _aliases("provider, provider name, doctor, physician, clinician, practitioner"),
    "location": _aliases("location, location name, site, office, facility, department"),
    "timezone": _aliases("timezone, time zone, tz, patient timezone, patient time zone"),
    "state": _aliases("state, patient state, us state, state code"),
    "zip": _aliases("zip, zip code, postal code, postcode, patient zip, zip+4"),
    "language": _aliases("language, lang, preferred language, patient language, locale"),
    "status": _aliases("status, appointment status, appt status"),
}
# A start-like header that is only the time of day when the file also has a date column.
_TIME_LIKE_START = frozenset({"appointmenttime", "starttime", "appttime"})


def _norm(header: str) -> str:
    return "".join(ch for ch in header.casefold() if ch.isalnum())


_ALIAS_TO_FIELD: dict[str, str] = {
    _norm(alias): key for key, aliases in FIELD_ALIASES.items() for alias in aliases
}


def _accepted(key: str) -> str:
    return ", ".join(FIELD_ALIASES[key])


@dataclass(frozen=True)
class _Columns:
    """Column index and header text (as written in the file) of each known field."""

    index: dict[str, int]
    header: dict[str, str]
    width: int

    def has(self, key: str) -> bool:
        return key in self.index


def _match_header(cells: list[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, cell in enumerate(cells):
        key = _ALIAS_TO_FIELD.get(_norm(cell))
        if key is not None and key not in index:
            index[key] = i
    return index


def _resolve_columns(cells: list[str], line: int) -> _Columns:
    cells = [c.strip() for c in cells]
    index = _match_header(cells)
    if not index:
        raise ImportFileError(
            f"no header row: line {line} names no known column "
            "(expected column names such as appointment id, patient name, phone, start)"
        )
    if (
        "date" in index
        and "time" not in index
        and "start" in index
        and _norm(cells[index["start"]]) in _TIME_LIKE_START
    ):
        index["time"] = index.pop("start")
    if "start" in index:  # a full date-time column wins over separate parts
        index.pop("date", None)
        index.pop("time", None)
    if "patient_name" not in index and not ("first_name" in index and "last_name" in index):
        index.pop("first_name", None)
        index.pop("last_name", None)

    missing: list[str] = []
    if "external_id" not in index:
        missing.append(f"'appointment id' (accepted: {_accepted('external_id')})")
    if "patient_name" not in index and "first_name" not in index:
        missing.append(
            f"'patient name' (accepted: {_accepted('patient_name')}; "
            f"or first name ({_accepted('first_name')}) + last name ({_accepted('last_name')}))"
        )
    if "phone" not in index:
        missing.append(f"'phone' (accepted: {_accepted('phone')})")
    if "start" not in index and not ("date" in index and "time" in index):
        if "date" in index:
            missing.append(
                f"'time' for the date column '{cells[index['date']]}' (accepted: "
                f"{_accepted('time')}, appointment time, start time, appt time)"
            )
        else:
            missing.append(
                f"'appointment start' (accepted: {_accepted('start')}; "
                f"or date ({_accepted('date')}) + time ({_accepted('time')}))"
            )
    if missing:
        noun = "column" if len(missing) == 1 else "columns"
        raise ImportFileError(f"missing required {noun}: " + "; ".join(missing))
    return _Columns(index, {k: cells[i] for k, i in index.items()}, len(cells))


# --------------------------------------------------------------------------- values

_MAX_LEN = {
    "external_id": 100,
    "patient_ref": 100,
    "patient_name": 200,
    "provider": 200,
    "location": 200,
    "language": 16,
}


def _code_table(text: str) -> dict[str, str]:
    table: dict[str, str] = {}
    for item in text.split("|"):
        code, _, name = item.partition("=")
        table[code] = name
    return table


US_STATES: dict[str, str] = _code_table(
    "AL=Alabama|AK=Alaska|AZ=Arizona|AR=Arkansas|CA=California|CO=Colorado|"
    "CT=Connecticut|DE=Delaware|DC=District of Columbia|FL=Florida|GA=Georgia|HI=Hawaii|"
    "ID=Idaho|IL=Illinois|IN=Indiana|IA=Iowa|KS=Kansas|KY=Kentucky|LA=Louisiana|ME=Maine|"
    "MD=Maryland|MA=Massachusetts|MI=Michigan|MN=Minnesota|MS=Mississippi|MO=Missouri|"
    "MT=Montana|NE=Nebraska|NV=Nevada|NH=New Hampshire|NJ=New Jersey|NM=New Mexico|"
    "NY=New York|NC=North Carolina|ND=North Dakota|OH=Ohio|OK=Oklahoma|OR=Oregon|"
    "PA=Pennsylvania|RI=Rhode Island|SC=South Carolina|SD=South Dakota|TN=Tennessee|"
    "TX=Texas|UT=Utah|VT=Vermont|VA=Virginia|WA=Washington|WV=West Virginia|WI=Wisconsin|"
    "WY=Wyoming|PR=Puerto Rico|GU=Guam|VI=U.S. Virgin Islands|AS=American Samoa|"
    "MP=Northern Mariana Islands"
)
_STATE_BY_NAME = {_norm(name): code for code, name in US_STATES.items()}
_ZIP_RE = re.compile(r"(\d{5})(?:-?(\d{4}))?")

_STATUS_WORDS: dict[str, str] = {
    **{_norm(s.value): s.value for s in AppointmentStatus},
    "booked": AppointmentStatus.SCHEDULED,
    "pending": AppointmentStatus.SCHEDULED,
    "active": AppointmentStatus.SCHEDULED,
    "open": AppointmentStatus.SCHEDULED,
    "rescheduled": AppointmentStatus.SCHEDULED,
    "canceled": AppointmentStatus.CANCELLED,
    "cancel": AppointmentStatus.CANCELLED,
    "void": AppointmentStatus.CANCELLED,
}
# Statuses that answer for one start time: a new time needs a new confirmation.
_TIME_BOUND_STATUSES = frozenset(
    {
        AppointmentStatus.CONFIRMED,
        AppointmentStatus.CANCELLED,
        AppointmentStatus.RESCHEDULE_REQUESTED,
        AppointmentStatus.UNREACHED,
    }
)


@lru_cache(maxsize=1)
def _zone_names() -> dict[str, str]:
    return {name.casefold(): name for name in available_timezones()}


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo | None:
    """The IANA zone named ``name`` (case-insensitively), or None."""
    canonical = _zone_names().get(name.casefold())
    return ZoneInfo(canonical) if canonical else None


_DATE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})"), "ymd"),
    (re.compile(r"(\d{4})/(\d{1,2})/(\d{1,2})"), "ymd"),
    (re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})"), "mdy"),
    (re.compile(r"(\d{1,2})-(\d{1,2})-(\d{4})"), "mdy"),
    (re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})"), "dmy"),
)
_TIME_RE = re.compile(
    r"(\d{1,2})(?::(\d{2})(?::(\d{2})(?:\.\d+)?)?)?\s*(?:([AaPp])\.?[Mm]\.?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?"
)
_DATE_TIME_SPLIT = re.compile(r"\s*(?:T|,\s*|\s+)\s*(?=\d)")
_ISO_DATE_ONLY = re.compile(r"\d{4}-?\d{2}-?\d{2}")
_FORMATS_HINT = "e.g. 2026-03-10 14:30, 03/10/2026 2:30 PM or ISO 8601 with offset"


class _BadValueError(ValueError):
    pass


def _parse_date(text: str) -> date:
    for pattern, order in _DATE_PATTERNS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        a, b, c = (int(g) for g in m.groups())
        if order == "ymd":
            year, month, day = a, b, c
        elif order == "mdy":
            month, day, year = a, b, c
        else:
            day, month, year = a, b, c
        if year < 100:
            year += 2000
        try:
            return date(year, month, day)
        except ValueError:
            raise _BadValueError(f"not a real date '{text}'") from None
    raise _BadValueError(f"unrecognised date '{text}' (expected e.g. 2026-03-10 or 03/10/2026)")


def _parse_time(text: str) -> tuple[time, str | None]:
    """Time of day and its UTC offset text (``Z``, ``+05:30``) if any."""
    m = _TIME_RE.fullmatch(text)
    if m is None or (m.group(2) is None and m.group(4) is None):
        raise _BadValueError(f"unrecognised time '{text}' (expected e.g. 14:30 or 2:30 PM)")
    hour, minute, second = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    meridiem = m.group(4)
    if meridiem is not None:
        if not 1 <= hour <= 12:
            raise _BadValueError(f"not a real time '{text}'")
        hour = hour % 12 + (12 if meridiem in "Pp" else 0)
    if hour > 23 or minute > 59 or second > 59:
        raise _BadValueError(f"not a real time '{text}'")
    return time(hour, minute, second), m.group(5)


def _offset_tz(offset: str) -> tzinfo | None:
    suffix = "+00:00" if offset == "Z" else offset
    return datetime.fromisoformat("2000-01-01T00:00" + suffix).tzinfo


def _parse_datetime(text: str) -> datetime:
    """A datetime, aware when the text carries an offset, naive otherwise."""
    if _ISO_DATE_ONLY.fullmatch(text):
        raise _BadValueError(f"date '{text}' has no time of day")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    parts = _DATE_TIME_SPLIT.split(text, maxsplit=1)
    if len(parts) != 2:
        raise _BadValueError(f"unrecognised date/time '{text}' ({_FORMATS_HINT})")
    try:
        day = _parse_date(parts[0])
        clock, offset = _parse_time(parts[1])
    except _BadValueError as exc:
        if str(exc).startswith("not a real"):
            raise
        raise _BadValueError(f"unrecognised date/time '{text}' ({_FORMATS_HINT})") from None
    value = datetime.combine(day, clock)
    return value.replace(tzinfo=_offset_tz(offset)) if offset else value


def _localize(naive: datetime, zone: ZoneInfo) -> datetime:
    """UTC instant of a wall-clock time; the earlier one when the clock is ambiguous."""
    aware = naive.replace(tzinfo=zone)
    instant = aware.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != naive:
        raise _BadValueError(
            f"{naive:%Y-%m-%d %H:%M} does not exist in {zone.key} "
            "(clocks skip that hour when daylight saving time starts)"
        )
    return instant


# --------------------------------------------------------------------------- rows

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
class _Row:
    line: int
    values: dict[str, Any]  # appointment columns the file provides
    status: str | None  # status the file states, None when silent


class _RowParser:
    def __init__(self, clinic: Clinic, columns: _Columns, now: datetime) -> None:
        self.columns = columns
        self.region = (clinic.country or "US").upper()
        zone = _zone(clinic.timezone)
        if zone is None:
            raise ImportFileError(
                f"clinic '{clinic.name}' has an unknown timezone '{clinic.timezone}'"
            )
        self.clinic_zone = zone
        self.now = now
        self.optional = [
            k for k in ("patient_ref", "provider", "location", "language") if columns.has(k)
        ]

    def cell(self, record: list[str], key: str) -> str:
        i = self.columns.index.get(key)
        if i is None or i >= len(record):
            return ""
        return record[i].strip()

    def parse(self, record: list[str], line: int) -> tuple[_Row | None, list[Rejection]]:
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
        return _Row(line, values, status), errors

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
        try:
            return to_callable_e164(raw, self.region)
        except InvalidInputError as exc:
            reject("phone", str(exc))
            return None

    def _zone(
        self, record: list[str], values: dict[str, Any], reject: Callable[[str, str], None]
    ) -> ZoneInfo:
        """The zone naive times are in: the row's timezone, else the clinic's."""
        if not self.columns.has("timezone"):
            return self.clinic_zone
        name = self.cell(record, "timezone")
        zone = _zone(name) if name else None
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
            code = state.upper() if len(state) == 2 else _STATE_BY_NAME.get(_norm(state), "")
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
        status = _STATUS_WORDS.get(_norm(raw))
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
                value = _parse_datetime(text)
                return value.astimezone(UTC) if value.tzinfo else _localize(value, zone)
            except _BadValueError as exc:
                reject("start", str(exc))
                return None
            except OverflowError:
                reject("start", _OUT_OF_RANGE)
                return None
        date_text, time_text = self.cell(record, "date"), self.cell(record, "time")
        day: date | None = None
        clock: tuple[time, str | None] | None = None
        for key, text in (("date", date_text), ("time", time_text)):
            if not text:
                reject(key, f"appointment {key} is missing")
                continue
            try:
                if key == "date":
                    day = _parse_date(text)
                else:
                    clock = _parse_time(text)
            except _BadValueError as exc:
                reject(key, str(exc))
        if day is None or clock is None:
            return None
        value = datetime.combine(day, clock[0])
        try:
            if clock[1]:
                return value.replace(tzinfo=_offset_tz(clock[1])).astimezone(UTC)
            return _localize(value, zone)
        except _BadValueError as exc:
            reject("time", str(exc))
            return None
        except OverflowError:
            reject("date", _OUT_OF_RANGE)
            return None


# --------------------------------------------------------------------------- file

Source = BinaryIO | IO[bytes] | str | os.PathLike[str]


def _refuse_utf16_without_bom(head: bytes) -> None:
    """UTF-16 without a byte-order mark is valid UTF-8 (ASCII and NULs): tell by the NULs."""
    pairs = len(head) // 2
    if pairs == 0:
        return
    for order, nuls in (("UTF-16-BE", head[0::2]), ("UTF-16-LE", head[1::2])):
        if nuls[:pairs].count(0) >= _UTF16_NUL_SHARE * pairs:
            raise ImportFileError(
                f"file is {order} text without a byte-order mark; save it as 'CSV UTF-8'"
            )


def _check_and_hash(stream: IO[bytes], sink: IO[bytes] | None = None) -> str:
    """SHA-256 of the stream; raises :class:`ImportFileError` unless it is UTF-8 text."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines = 0
    size = 0
    meaningful = False
    first = True
    while True:
        block = stream.read(_READ_BLOCK)
        if first:
            first = False
            if block.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise ImportFileError(
                    "file is UTF-16 text; save it as 'CSV UTF-8' (UTF-8 with or without BOM)"
                )
            _refuse_utf16_without_bom(block[:_UTF16_PROBE])
        digest.update(block)
        if sink is not None:
            sink.write(block)
        size += len(block)
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as exc:
            at = max(exc.start - pending, 0)
            line = newlines + block[:at].count(b"\n") + 1
            raise ImportFileError(
                f"file is not UTF-8 text (invalid byte on line {line}); save it as 'CSV UTF-8'"
            ) from None
        if not meaningful and text.lstrip("\ufeff \t\r\n"):
            meaningful = True
        newlines += block.count(b"\n")
        if not block:
            break
    if size == 0 or not meaningful:
        raise ImportFileError("file is empty")
    return digest.hexdigest()


@contextmanager
def _opened(source: Source, filename: str) -> Iterator[tuple[IO[bytes], str]]:
    """The file rewound to its start, and its SHA-256 (checked to be UTF-8 text)."""
    if isinstance(source, str | os.PathLike):
        try:
            handle: IO[bytes] = Path(source).open("rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ImportFileError(f"cannot read {filename}: {exc.strerror or exc}") from None
        with handle:
            sha = _check_and_hash(handle)
            handle.seek(0)
            yield handle, sha
        return
    if source.seekable():
        start = source.tell()
        sha = _check_and_hash(source)
        source.seek(start)
        yield source, sha
        return
    with tempfile.SpooledTemporaryFile(max_size=16 << 20) as spool:
        sha = _check_and_hash(source, spool)
        spool.seek(0)
        yield spool, sha


def _known_columns(header_line: str, delimiter: str) -> int:
    cells = next(csv.reader([header_line], delimiter=delimiter), [])
    return len(_match_header(cells))


def _detect_delimiter(sample_lines: list[str]) -> str:
    """csv.Sniffer on a sample, checked against the header; else count per delimiter."""
    header = next((line for line in sample_lines if line.strip()), "")
    candidates = {d: _known_columns(header, d) for d in _DELIMITERS}
    best = max(candidates.values())
    try:
        sniffed: str | None = csv.Sniffer().sniff("".join(sample_lines), _DELIMITERS).delimiter
    except csv.Error:
        sniffed = None
    if sniffed in candidates and candidates[sniffed] == best:
        return sniffed
    # Fallback: the delimiter naming the most known columns, then the most frequent one.
    return max(_DELIMITERS, key=lambda d: (candidates[d], header.count(d)))


def _records(text: IO[str]) -> Iterator[tuple[int, list[str]]]:
    """CSV records with the physical line each starts on (1-based)."""
    lines = iter(text)
    sample: list[str] = []
    size = 0
    for line in lines:
        sample.append(line)
        size += len(line)
        if len(sample) >= _SAMPLE_LINES or size >= _SAMPLE_CHARS:
            break
    reader = csv.reader(itertools.chain(sample, lines), delimiter=_detect_delimiter(sample))
    consumed = 0
    while True:
        start = consumed + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportFileError(f"line {start}: malformed CSV ({exc})") from None
        consumed = reader.line_num
        yield start, record


# --------------------------------------------------------------------------- writes

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


class _Writer:
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
        self.postgresql = session.get_bind().dialect.name == "postgresql"

    def flush(self, rows: list[_Row]) -> None:
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
        # Core executemany: one batched statement per chunk on both databases (the ORM
        # bulk path splits rows into groups by which values are None).
        if inserts:
            self.session.execute(_INSERT, [{**_BLANK, **values} for values in inserts])
        if updates:
            self.session.execute(_UPDATE, [{f"b_{k}": v for k, v in u.items()} for u in updates])
        for reason, ids in skips.items():
            if ids:
                report.attempts_skipped += self._skip_scheduled_attempts(ids, reason)

    def _skip_scheduled_attempts(self, appointment_ids: list[int], reason: str) -> int:
        return transitions.skip_scheduled(
            self.session,
            col(CallAttempt.appointment_id).in_(appointment_ids),
            reason,
            self.now,
            actor=transitions.IMPORTER,
        )


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
    if session.get_bind().dialect.name == "postgresql":
        # psycopg prepares a statement after 5 runs, and PostgreSQL then reuses a generic
        # plan made while the table was small: the per-chunk lookup degrades to a scan of
        # every row inserted so far (quadratic). Plan each lookup, for this transaction only.
        session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    with _opened(source, filename) as (binary, sha):
        report = ImportReport(filename=filename, sha256=sha)
        writer = _Writer(session, clinic_id, _phone_source(filename, sha), now, report)
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
    writer: _Writer,
    progress: Callable[[int], None] | None,
    chunk_rows: int,
) -> None:
    report = writer.report
    records = _records(text)
    parser: _RowParser | None = None
    first_seen: dict[str, int] = {}
    batch: list[_Row] = []
    for line, record in records:
        if not any(cell.strip() for cell in record):
            continue
        if parser is None:
            parser = _RowParser(clinic, _resolve_columns(record, line), now)
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
