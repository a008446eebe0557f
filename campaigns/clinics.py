"""Clinics: validated settings, creation, audited updates and lookup.

Caps per number (``max_per_day`` in a rolling 24 h, ``max_per_week`` in a rolling
7 days) count every dial to the number, across all of its appointments; the FCC
healthcare-exemption preset (:data:`HEALTHCARE_EXEMPTION`) is 1 a day and 3 a week.
:func:`update_clinic` takes a mapping of :class:`ClinicSpec` fields to new values,
validates the result as a whole and records the settings before and after in one
``clinic.updated`` audit event.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import time
from typing import Any

import holidays
import phonenumbers
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit
from campaigns.compliance.geography import zone_named
from campaigns.db import utcnow
from campaigns.errors import InvalidInputError, NotFoundError
from campaigns.models import Clinic
from campaigns.phones import to_e164

WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: The FCC healthcare-exemption limits (47 CFR 64.1200(a)(9)(iv)): dials per number.
HEALTHCARE_EXEMPTION: dict[str, int] = {"max_per_day": 1, "max_per_week": 3}


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
    max_per_day: int = Field(default=3, ge=1, le=50)
    max_per_week: int = Field(default=6, ge=1, le=350)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("clinic name is empty")
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        zone = zone_named(value)
        if zone is None or zone.key != value:
            raise ValueError(f"unknown IANA timezone {value!r} (e.g. America/New_York)")
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

    @model_validator(mode="after")
    def _caps(self) -> ClinicSpec:
        if self.max_per_week < self.max_per_day:
            raise ValueError(
                f"max per week ({self.max_per_week}) is below max per day ({self.max_per_day})"
            )
        return self


def cap_settings(
    max_per_day: int | None, max_per_week: int | None, healthcare_exemption: bool
) -> dict[str, int]:
    """The caps staff asked for: explicit values, or the healthcare-exemption preset."""
    explicit = {
        key: value
        for key, value in (("max_per_day", max_per_day), ("max_per_week", max_per_week))
        if value is not None
    }
    if healthcare_exemption and explicit:
        raise InvalidInputError(
            "--healthcare-exemption sets the caps (1 a day, 3 a week): "
            "give it or --max-per-day/--max-per-week, not both"
        )
    return dict(HEALTHCARE_EXEMPTION) if healthcare_exemption else explicit


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
    """The clinic row's columns that a spec sets."""
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
        "dials_per_number_24h": spec.max_per_day,
        "dials_per_number_7d": spec.max_per_week,
    }


def _calling_values(clinic: Clinic) -> dict[str, Any]:
    """The clinic's calling settings, spelled alike in its spec and its description."""
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
    }


def _spec_values(clinic: Clinic) -> dict[str, Any]:
    """The spec that gives a stored clinic's settings."""
    return {
        **_calling_values(clinic),
        "lead_days": clinic.lead_days,
        "daily_run_time": f"{clinic.daily_run_time:%H:%M}",
        "max_per_day": clinic.dials_per_number_24h,
        "max_per_week": clinic.dials_per_number_7d,
    }


def _flush_named(session: Session, name: str) -> None:
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise InvalidInputError(f"a clinic named {name!r} already exists") from exc


def create_clinic(session: Session, spec: ClinicSpec, *, actor: str) -> Clinic:
    clinic = Clinic(**_columns(spec))
    session.add(clinic)
    _flush_named(session, spec.name)
    audit.record(session, "clinic.created", describe(clinic), actor=actor, clinic_id=clinic.id)
    return clinic


def update_clinic(
    session: Session, clinic: Clinic, changes: Mapping[str, Any], *, actor: str
) -> dict[str, dict[str, Any]]:
    """Apply ``changes`` (:class:`ClinicSpec` field -> new value) to ``clinic`` in the
    caller's transaction; returns each changed setting's ``before`` and ``after``
    (empty, and nothing audited, when nothing changes)."""
    unknown = sorted(set(changes) - set(ClinicSpec.model_fields))
    if unknown:
        raise InvalidInputError(f"unknown clinic setting: {', '.join(unknown)}")
    if not changes:
        raise InvalidInputError("nothing to update: give at least one setting")
    spec = validate_spec(_spec_values(clinic) | dict(changes))
    before = describe(clinic)
    for column, value in _columns(spec).items():
        if getattr(clinic, column) != value:
            setattr(clinic, column, value)
    after = describe(clinic)
    changed = {
        key: {"before": before[key], "after": after[key]}
        for key in after
        if after[key] != before[key]
    }
    if not changed:
        return {}
    clinic.updated_at = utcnow()
    _flush_named(session, spec.name)
    audit.record(
        session,
        "clinic.updated",
        {
            "clinic": clinic.name,
            "before": {key: change["before"] for key, change in changed.items()},
            "after": {key: change["after"] for key, change in changed.items()},
        },
        actor=actor,
        clinic_id=clinic.id,
    )
    return changed


def get_clinic(session: Session, name: str) -> Clinic:
    clinic = session.execute(select(Clinic).where(col(Clinic.name) == name)).scalar_one_or_none()
    if clinic is None:
        raise NotFoundError(f"no clinic named {name!r} (see `campaigns clinic list`)")
    return clinic


def clinic_id(session: Session, name: str | None) -> int | None:
    """The id of the clinic named, or None (every clinic) without a name."""
    return get_clinic(session, name).id if name else None


def list_clinics(session: Session) -> list[Clinic]:
    return list(session.execute(select(Clinic).order_by(col(Clinic.name))).scalars())


def describe(clinic: Clinic) -> dict[str, Any]:
    return {
        "id": clinic.id,
        **_calling_values(clinic),
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
