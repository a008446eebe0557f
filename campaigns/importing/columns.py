"""Header matching: which column of the file holds which appointment field.

Header names match case-insensitively, ignoring spaces and punctuation, with the
aliases in :data:`FIELD_ALIASES`. Required: appointment id, patient name (or first +
last name), phone, appointment start (or separate date + time columns). A full
date-time column wins over separate date and time columns.
"""

from __future__ import annotations

from dataclasses import dataclass

from campaigns.importing.report import ImportFileError


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


def normalized(header: str) -> str:
    return "".join(ch for ch in header.casefold() if ch.isalnum())


_ALIAS_TO_FIELD: dict[str, str] = {
    normalized(alias): key for key, aliases in FIELD_ALIASES.items() for alias in aliases
}


def _accepted(key: str) -> str:
    return ", ".join(FIELD_ALIASES[key])


@dataclass(frozen=True)
class Columns:
    """Column index and header text (as written in the file) of each known field."""

    index: dict[str, int]
    header: dict[str, str]
    width: int

    def has(self, key: str) -> bool:
        return key in self.index


def match_header(cells: list[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, cell in enumerate(cells):
        key = _ALIAS_TO_FIELD.get(normalized(cell))
        if key is not None and key not in index:
            index[key] = i
    return index


def resolve_columns(cells: list[str], line: int) -> Columns:
    cells = [c.strip() for c in cells]
    index = match_header(cells)
    if not index:
        raise ImportFileError(
            f"no header row: line {line} names no known column "
            "(expected column names such as appointment id, patient name, phone, start)"
        )
    if (
        "date" in index
        and "time" not in index
        and "start" in index
        and normalized(cells[index["start"]]) in _TIME_LIKE_START
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
    return Columns(index, {k: cells[i] for k, i in index.items()}, len(cells))
