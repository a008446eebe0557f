"""Tables of the engine. Alembic migrations create them; nothing calls ``create_all``.

Timestamps are stored in UTC (:class:`campaigns.db.UTCDateTime`); local times are
computed at the edges from the clinic's or callee's IANA zone.
"""

from __future__ import annotations

from datetime import date, datetime, time
from enum import StrEnum

from sqlalchemy import BigInteger, Column, Identity, Index, Integer, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from campaigns.db import UTCDateTime, utcnow

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class AppointmentStatus(StrEnum):
    SCHEDULED = "scheduled"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"
    RESCHEDULE_REQUESTED = "reschedule_requested"
    WRONG_NUMBER = "wrong_number"
    INVALID_NUMBER = "invalid_number"
    OPTED_OUT = "opted_out"
    TRANSFERRED = "transferred"
    UNREACHED = "unreached"


class AttemptState(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    DIALING = "dialing"
    ANSWERED = "answered"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


# States in which an attempt still holds the appointment's single calling slot.
OPEN_ATTEMPT_STATES = (
    AttemptState.SCHEDULED,
    AttemptState.QUEUED,
    AttemptState.DIALING,
    AttemptState.ANSWERED,
)
# States of an attempt the telephony side is working on (or about to).
IN_FLIGHT_STATES = (AttemptState.QUEUED, AttemptState.DIALING, AttemptState.ANSWERED)
_OPEN_STATES_SQL = "state IN ('scheduled', 'queued', 'dialing', 'answered')"


class DncSource(StrEnum):
    INTERNAL = "internal"
    PATIENT_REQUEST = "patient_request"
    NATIONAL_REGISTRY = "national_registry"


class Clinic(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=200)
    timezone: str = Field(max_length=64)
    country: str = Field(default="US", max_length=2)
    window_start: time = Field(default=time(9, 0))
    window_end: time = Field(default=time(19, 0))
    weekdays: str = Field(default="mon,tue,wed,thu,fri", max_length=40)
    holidays: str | None = Field(default=None, max_length=16, description="e.g. US or US-NY")
    caller_id: str | None = Field(default=None, max_length=20)
    transfer_number: str | None = Field(
        default=None, max_length=20, description="E.164 of the staff line callers are handed to"
    )
    trunk_id: str | None = Field(default=None, max_length=64)
    agent_name: str | None = Field(default=None, max_length=100)
    max_attempts: int = Field(default=4)
    retry_base_seconds: int = Field(default=60 * 60)
    retry_cap_seconds: int = Field(default=24 * 60 * 60)
    retry_voicemail: bool = Field(default=True)
    min_gap_seconds: int = Field(default=60 * 60)
    cutoff_minutes: int = Field(default=120)
    dials_per_number_24h: int = Field(default=3)
    dials_per_number_7d: int = Field(default=6)
    daily_run_time: time = Field(default=time(10, 0))
    lead_days: str = Field(default="1", max_length=40)
    paused_reason: str | None = Field(
        default=None,
        sa_type=Text,
        description="set on a configuration error; no calls until resumed",
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Appointment(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("clinic_id", "external_id"),
        # A clinic's appointments of one day (the daily run, the console's pages) read
        # only that day's rows, however the clinic's rows lie in the table.
        Index("ix_appointment_clinic_id_starts_at", "clinic_id", "starts_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    clinic_id: int = Field(foreign_key="clinic.id")
    external_id: str = Field(max_length=100)
    patient_ref: str | None = Field(default=None, max_length=100)
    patient_name: str = Field(max_length=200)
    phone_e164: str = Field(max_length=20, index=True)
    phone_source: str = Field(default="clinic_upload", max_length=200)
    patient_timezone: str | None = Field(default=None, max_length=64)
    patient_state: str | None = Field(default=None, max_length=2)
    patient_zip: str | None = Field(default=None, max_length=10)
    language: str | None = Field(default=None, max_length=16)
    starts_at: datetime = Field(sa_type=UTCDateTime, index=True)
    provider: str | None = Field(default=None, max_length=200)
    location: str | None = Field(default=None, max_length=200)
    status: str = Field(default=AppointmentStatus.SCHEDULED, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CallAttempt(SQLModel, table=True):
    """One call attempt and its whole life: the call log a reviewer audits."""

    __tablename__ = "call_attempt"
    __table_args__ = (
        UniqueConstraint("appointment_id", "attempt_number"),
        # The database, not only the code, keeps one open attempt per appointment.
        Index(
            "uq_call_attempt_open_per_appointment",
            "appointment_id",
            unique=True,
            postgresql_where=text(_OPEN_STATES_SQL),
            sqlite_where=text(_OPEN_STATES_SQL),
        ),
        Index("ix_call_attempt_state_due_at", "state", "due_at"),
        # A daily run creates at most one attempt per appointment, however often it runs.
        Index(
            "uq_call_attempt_run_date_per_appointment",
            "appointment_id",
            "run_date",
            unique=True,
            postgresql_where=text("run_date IS NOT NULL"),
            sqlite_where=text("run_date IS NOT NULL"),
        ),
        # Dials to a number (the per-number caps). Dialed attempts only: an attempt is
        # written again and again before its dial (created, deferred, queued), and an
        # index it is not in costs those writes nothing.
        Index(
            "ix_call_attempt_number_called_dialing_at",
            "number_called",
            "dialing_at",
            postgresql_where=text("dialing_at IS NOT NULL"),
            sqlite_where=text("dialing_at IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    appointment_id: int = Field(foreign_key="appointment.id")
    clinic_id: int = Field(foreign_key="clinic.id", index=True)
    attempt_number: int
    run_date: date | None = Field(
        default=None, description="clinic-local date of the daily run that created it"
    )
    state: str = Field(default=AttemptState.SCHEDULED, max_length=16)
    due_at: datetime = Field(sa_type=UTCDateTime)
    number_called: str = Field(max_length=20)
    caller_id: str | None = Field(default=None, max_length=20)
    trunk_id: str | None = Field(default=None, max_length=64)
    room_name: str | None = Field(default=None, max_length=100)
    participant_identity: str | None = Field(default=None, max_length=100)
    dispatch_id: str | None = Field(default=None, max_length=100)
    sip_call_id: str | None = Field(default=None, max_length=100)
    sip_status_code: int | None = None
    sip_status: str | None = Field(default=None, max_length=200)
    outcome: str | None = Field(default=None, max_length=32)
    error: str | None = Field(default=None, sa_type=Text)
    skip_reasons: str | None = Field(default=None, sa_type=Text)
    decision: str | None = Field(
        default=None, sa_type=Text, description="JSON of the last policy decision"
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    queued_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    dialing_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    answered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    worker_id: str | None = Field(
        default=None, max_length=64, description="the worker process that dialed it"
    )


class WorkerHeartbeat(SQLModel, table=True):
    """A worker process and when it last proved alive; the attempts of a silent
    one are orphans for reconciliation."""

    __tablename__ = "worker_heartbeat"

    worker_id: str = Field(primary_key=True, max_length=64)
    started_at: datetime = Field(sa_type=UTCDateTime)
    seen_at: datetime = Field(sa_type=UTCDateTime)


class DailyRun(SQLModel, table=True):
    """One clinic's daily run for one clinic-local date; its key makes re-runs harmless."""

    __tablename__ = "daily_run"
    __table_args__ = (UniqueConstraint("clinic_id", "run_date"),)

    id: int | None = Field(default=None, primary_key=True)
    clinic_id: int = Field(foreign_key="clinic.id")
    run_date: date
    attempts_created: int = Field(default=0)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DncList(SQLModel, table=True):
    """A do-not-call list and its version, bumped on every change, recorded by each decision."""

    __tablename__ = "dnc_list"

    name: str = Field(primary_key=True, max_length=40, description="global, national, clinic:<id>")
    version: int = Field(default=0)
    registry_as_of: date | None = Field(
        default=None, description="data date of a national registry file"
    )
    entries: int = Field(default=0)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DncEntry(SQLModel, table=True):
    __tablename__ = "dnc_entry"
    __table_args__ = (UniqueConstraint("list_name", "phone_e164"),)

    id: int | None = Field(default=None, primary_key=True)
    list_name: str = Field(foreign_key="dnc_list.name", max_length=40)
    phone_e164: str = Field(max_length=20, index=True)
    clinic_id: int | None = Field(default=None, foreign_key="clinic.id")
    source: str = Field(max_length=32)
    reason: str | None = Field(default=None, max_length=500)
    added_by: str = Field(max_length=100)
    added_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AuditEvent(SQLModel, table=True):
    """Append-only, HMAC-chained record of every change and decision.

    Events form one chain per clinic (``chain`` is the clinic's id) and chain 0 for
    events of no clinic (and for the log written before chains were per clinic);
    ``seq`` runs 1, 2, 3 ... with no gap within a chain. ``id`` orders events across
    chains as they were written. ``key_id`` names the key that chained the event (a
    fingerprint, not the key).
    """

    __tablename__ = "audit_event"
    __table_args__ = (UniqueConstraint("chain", "seq"),)

    # BIGINT: every clinic's events share it; SQLite's rowid is INTEGER (64-bit) already.
    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True
        ),
    )
    chain: int
    seq: int
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    actor: str = Field(max_length=100)
    kind: str = Field(max_length=64, index=True)
    clinic_id: int | None = Field(default=None, index=True)
    appointment_id: int | None = Field(default=None, index=True)
    attempt_id: int | None = Field(default=None, index=True)
    payload: str = Field(sa_type=Text)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64, unique=True)
    key_id: str = Field(default="", max_length=16, sa_column_kwargs={"server_default": ""})


class StateRuleRow(SQLModel, table=True):
    """Date-stamped state calling rules: data, so a new holiday is a data change."""

    __tablename__ = "state_rule"
    __table_args__ = (UniqueConstraint("state", "effective_from"),)

    id: int | None = Field(default=None, primary_key=True)
    state: str = Field(max_length=2)
    effective_from: date
    effective_to: date | None = None
    window_start: time
    window_end: time
    saturday_start: time | None = None
    saturday_end: time | None = None
    sunday_start: time | None = None
    sunday_end: time | None = None
    sunday_banned: bool = False
    holiday_banned: bool = False
    extra_holidays: str = Field(default="[]", sa_type=Text, description="JSON list of ISO dates")
    max_calls_per_24h: int | None = None
    citation: str = Field(sa_type=Text)


class Trunk(SQLModel, table=True):
    """Engine-side limits of a LiveKit outbound trunk, shared by every worker."""

    sip_trunk_id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    numbers: str = Field(default="", max_length=500)
    calls_per_second: float = Field(default=1.0)
    max_concurrent: int = Field(default=10)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Role(StrEnum):
    ADMIN = "admin"
    STAFF = "staff"
    REVIEWER = "reviewer"


class User(SQLModel, table=True):
    """A person who signs in to the console or calls the API."""

    __tablename__ = "app_user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, max_length=254)
    password_hash: str = Field(max_length=200)
    role: str = Field(max_length=16)
    disabled: bool = Field(default=False)
    failed_logins: int = Field(default=0)
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class UserClinic(SQLModel, table=True):
    """The clinics a staff user works for."""

    __tablename__ = "user_clinic"

    user_id: int = Field(foreign_key="app_user.id", primary_key=True)
    clinic_id: int = Field(foreign_key="clinic.id", primary_key=True)


class UserSession(SQLModel, table=True):
    """A browser session or an API token; only the SHA-256 of the secret is stored."""

    __tablename__ = "user_session"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, max_length=64)
    user_id: int = Field(foreign_key="app_user.id", index=True)
    kind: str = Field(max_length=16, description="browser or api")
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
