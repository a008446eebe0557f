"""Parsing of a cell's date, time of day and date-time.

Naive times are local to a zone given by the caller (the row's timezone column,
else the clinic's); a time that does not exist (DST spring-forward gap) is
rejected; an ambiguous one (fall back) is the first occurrence. ``MM/DD/YYYY`` is
month first. Results are UTC instants.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, tzinfo
from zoneinfo import ZoneInfo

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


class BadValueError(ValueError):
    """A cell's value cannot be read; the message says why, in the user's terms."""


def parse_date(text: str) -> date:
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
            raise BadValueError(f"not a real date '{text}'") from None
    raise BadValueError(f"unrecognised date '{text}' (expected e.g. 2026-03-10 or 03/10/2026)")


def parse_time(text: str) -> tuple[time, str | None]:
    """Time of day and its UTC offset text (``Z``, ``+05:30``) if any."""
    m = _TIME_RE.fullmatch(text)
    if m is None or (m.group(2) is None and m.group(4) is None):
        raise BadValueError(f"unrecognised time '{text}' (expected e.g. 14:30 or 2:30 PM)")
    hour, minute, second = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    meridiem = m.group(4)
    if meridiem is not None:
        if not 1 <= hour <= 12:
            raise BadValueError(f"not a real time '{text}'")
        hour = hour % 12 + (12 if meridiem in "Pp" else 0)
    if hour > 23 or minute > 59 or second > 59:
        raise BadValueError(f"not a real time '{text}'")
    return time(hour, minute, second), m.group(5)


def offset_tz(offset: str) -> tzinfo | None:
    suffix = "+00:00" if offset == "Z" else offset
    return datetime.fromisoformat("2000-01-01T00:00" + suffix).tzinfo


def parse_datetime(text: str) -> datetime:
    """A datetime, aware when the text carries an offset, naive otherwise."""
    if _ISO_DATE_ONLY.fullmatch(text):
        raise BadValueError(f"date '{text}' has no time of day")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    parts = _DATE_TIME_SPLIT.split(text, maxsplit=1)
    if len(parts) != 2:
        raise BadValueError(f"unrecognised date/time '{text}' ({_FORMATS_HINT})")
    try:
        day = parse_date(parts[0])
        clock, offset = parse_time(parts[1])
    except BadValueError as exc:
        if str(exc).startswith("not a real"):
            raise
        raise BadValueError(f"unrecognised date/time '{text}' ({_FORMATS_HINT})") from None
    value = datetime.combine(day, clock)
    return value.replace(tzinfo=offset_tz(offset)) if offset else value


def localize(naive: datetime, zone: ZoneInfo) -> datetime:
    """UTC instant of a wall-clock time; the earlier one when the clock is ambiguous."""
    aware = naive.replace(tzinfo=zone)
    instant = aware.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != naive:
        raise BadValueError(
            f"{naive:%Y-%m-%d %H:%M} does not exist in {zone.key} "
            "(clocks skip that hour when daylight saving time starts)"
        )
    return instant


def to_utc(value: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of ``value``: its own offset when aware, else its wall time in ``zone``."""
    return value.astimezone(UTC) if value.tzinfo else localize(value, zone)
