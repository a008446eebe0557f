"""Clinics: validated settings, creation, changes and lookup.

Every change goes through :class:`ClinicSpec` validation, so a clinic made by
``clinic add`` and one changed by ``clinic update`` obey the same rules, and is
audited with the values before and after.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import holidays
import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit
from campaigns.db import utcnow
from campaigns.errors import InvalidInputError, NotFoundError
from campaigns.models import Clinic
from campaigns.phones import to_e164

WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_window(text: str) -> tuple[time, time]:
    """``09:00-19:00`` -> (09:00, 19:00); the end is exclusive and after the start."""
    try:
        start_text, end_text = text.split("-")
        start, end = time.fromisoformat(start_text.strip()), time.fromisoformat(end_text.strip())
    except ValueError as exc:
        raise ValueError(f"calling window {text!r} is not HH:MM-HH:MM") from exc
    if end <= start:
        raise ValueError(f"calling window {text!r} ends before it starts")
    return start, end


def parse_weekdays(text: str) -> tuple[int, ...]:
    days = [part.strip().lower()[:3] for part in text.split(",") if part.strip()]
    unknown = [d for d in days if d not in WEEKDAY_NAMES]
    if unknown or not days:
        raise ValueError(f"weekdays {text!r}: use names like mon,tue,wed")
    return tuple(sorted({WEEKDAY_NAMES.index(d) for d in days}))


def parse_lead_days(text: str) -> tuple[int, ...]:
    try:
        days = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError as exc:
        raise ValueError(f"lead days {text!r}: use numbers like 1,2") from exc
    if not days or any(d < 0 or d > 60 for d in days):
        raise ValueError(f"lead days {text!r}: between 0 and 60")
    return days


def parse_holidays(text: str) -> tuple[str, str | None]:
    """``US`` or ``US-NY`` -> ("US", "NY"), checked against the holidays package."""
    country, _, subdivision = text.upper().partition("-")
    try:
        holidays.country_holidays(country, subdiv=subdivision or None)
    except NotImplementedError as exc:
        raise ValueError(f"holidays {text!r}: unknown country or subdivision") from exc
    return country, subdivision or None


class ClinicSpec(BaseModel):
    """What staff give to create a clinic; validated before anything is stored."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=200)
    timezone: str
    country: str = "US"
    window: str = "09:00-19:00"
    days: str = "mon,tue,wed,thu,fri"
    holidays: str | None = None
    caller_id: str | None = None
    transfer_number: str | None = None
    trunk_id: str | None = None
    agent_name: str | None = None
    max_attempts: int = Field(default=4, ge=1, le=20)
    lead_days: str = "1"
    daily_run_time: str = "10:00"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("clinic name is empty")
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        if value not in available_timezones():
            raise ValueError(f"unknown IANA timezone {value!r} (e.g. America/New_York)")
        try:
            ZoneInfo(value)
        except ZoneInfoNotFoundError as exc:
            raise ValueError(f"unknown IANA timezone {value!r}") from exc
        return value

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown country code {value!r} (ISO 3166 alpha-2, e.g. US)")
        return value.upper()

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        parse_window(value)
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: str) -> str:
        return ",".join(WEEKDAY_NAMES[d] for d in parse_weekdays(value))

    @field_validator("holidays")
    @classmethod
    def _holidays(cls, value: str | None) -> str | None:
        if value is None:
            return None
        country, subdivision = parse_holidays(value)
        return f"{country}-{subdivision}" if subdivision else country

    @field_validator("lead_days")
    @classmethod
    def _lead_days(cls, value: str) -> str:
        return ",".join(str(d) for d in parse_lead_days(value))

    @field_validator("daily_run_time")
    @classmethod
    def _daily_run_time(cls, value: str) -> str:
        try:
            time.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"daily run time {value!r} is not HH:MM") from exc
        return value


def validate_spec(values: dict[str, Any]) -> ClinicSpec:
    try:
        spec = ClinicSpec(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "clinic"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidInputError(f"{field}: {message}") from exc
    for number_field in ("caller_id", "transfer_number"):
        number = getattr(spec, number_field)
        if number is not None:
            try:
                to_e164(number, spec.country)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{number_field}: {exc}") from exc
    return spec


def _columns(spec: ClinicSpec) -> dict[str, Any]:
    """The clinic's column values a validated spec sets."""
    window_start, window_end = parse_window(spec.window)
    return {
        "name": spec.name,
        "timezone": spec.timezone,
        "country": spec.country,
        "window_start": window_start,
        "window_end": window_end,
        "weekdays": spec.days,
        "holidays": spec.holidays,
        "caller_id": to_e164(spec.caller_id, spec.country) if spec.caller_id else None,
        "transfer_number": (
            to_e164(spec.transfer_number, spec.country) if spec.transfer_number else None
        ),
        "trunk_id": spec.trunk_id,
        "agent_name": spec.agent_name,
        "max_attempts": spec.max_attempts,
        "lead_days": spec.lead_days,
        "daily_run_time": time.fromisoformat(spec.daily_run_time),
    }


def create_clinic(session: Session, spec: ClinicSpec, *, actor: str) -> Clinic:
    clinic = Clinic(**_columns(spec))
    session.add(clinic)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise InvalidInputError(f"a clinic named {spec.name!r} already exists") from exc
    audit.record(session, "clinic.created", describe(clinic), actor=actor, clinic_id=clinic.id)
    return clinic


def _spec_values(clinic: Clinic) -> dict[str, Any]:
    """The clinic's current settings in the terms of :class:`ClinicSpec`."""
    return {
        "name": clinic.name,
        "timezone": clinic.timezone,
        "country": clinic.country,
        "window": f"{clinic.window_start:%H:%M}-{clinic.window_end:%H:%M}",
        "days": clinic.weekdays,
        "holidays": clinic.holidays,
        "caller_id": clinic.caller_id,
        "transfer_number": clinic.transfer_number,
        "trunk_id": clinic.trunk_id,
        "agent_name": clinic.agent_name,
        "max_attempts": clinic.max_attempts,
        "lead_days": clinic.lead_days,
        "daily_run_time": f"{clinic.daily_run_time:%H:%M}",
    }


def update_clinic(
    session: Session, clinic: Clinic, changes: Mapping[str, Any], *, actor: str
) -> dict[str, dict[str, Any]]:
    """Apply ``changes`` (:class:`ClinicSpec` field names to new values) to ``clinic``.

    The clinic's settings with the changes merged in are validated as a whole
    before anything is written. Returns, and audits as ``clinic.updated``, each
    setting that really changed with its value before and after (as
    :func:`describe` shows it); nothing changed records nothing.
    """
    unknown = sorted(set(changes) - (set(ClinicSpec.model_fields) - {"name"}))
    if unknown:
        raise InvalidInputError(f"cannot change clinic setting(s): {', '.join(unknown)}")
    spec = validate_spec(_spec_values(clinic) | dict(changes))
    before = describe(clinic)
    columns = _columns(spec)
    for spec_field in changes:
        for column in _COLUMNS_OF.get(spec_field, (spec_field,)):
            setattr(clinic, column, columns[column])
    after = describe(clinic)
    changed = {
        key: {"before": before[key], "after": after[key]}
        for key in after
        if before[key] != after[key]
    }
    if changed:
        clinic.updated_at = utcnow()
        session.flush()
        audit.record(
            session, "clinic.updated", {"changes": changed}, actor=actor, clinic_id=clinic.id
        )
    return changed


# Spec fields stored in columns of another name.
_COLUMNS_OF: dict[str, tuple[str, ...]] = {
    "window": ("window_start", "window_end"),
    "days": ("weekdays",),
}


def get_clinic(session: Session, name: str) -> Clinic:
    clinic = session.execute(select(Clinic).where(col(Clinic.name) == name)).scalar_one_or_none()
    if clinic is None:
        raise NotFoundError(f"no clinic named {name!r} (see `campaigns clinic list`)")
    return clinic


def list_clinics(session: Session) -> list[Clinic]:
    return list(session.execute(select(Clinic).order_by(col(Clinic.name))).scalars())


def describe(clinic: Clinic) -> dict[str, Any]:
    return {
        "id": clinic.id,
        "name": clinic.name,
        "timezone": clinic.timezone,
        "country": clinic.country,
        "window": f"{clinic.window_start:%H:%M}-{clinic.window_end:%H:%M}",
        "days": clinic.weekdays,
        "holidays": clinic.holidays,
        "caller_id": clinic.caller_id,
        "transfer_number": clinic.transfer_number,
        "trunk_id": clinic.trunk_id,
        "agent_name": clinic.agent_name,
        "max_attempts": clinic.max_attempts,
        "retry_base_seconds": clinic.retry_base_seconds,
        "retry_cap_seconds": clinic.retry_cap_seconds,
        "retry_voicemail": clinic.retry_voicemail,
        "min_gap_seconds": clinic.min_gap_seconds,
        "cutoff_minutes": clinic.cutoff_minutes,
        "dials_per_number_24h": clinic.dials_per_number_24h,
        "dials_per_number_7d": clinic.dials_per_number_7d,
        "daily_run_time": f"{clinic.daily_run_time:%H:%M}",
        "lead_days": clinic.lead_days,
        "paused_reason": clinic.paused_reason,
    }
