"""The JSON API under ``/api/v1``: the same services and JSON shapes as the CLI.

Every route opens one transaction (``DB``) and calls service functions; a
clinic the caller may not read is 404, one they may read but not change 403.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, File, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from campaigns import appointments, audit, clinics, dnc, users
from campaigns.attempts import dial, status
from campaigns.attempts.pipeline import Pipeline
from campaigns.compliance import service as compliance
from campaigns.errors import InvalidInputError, NotFoundError
from campaigns.importing import ImportFileError, import_appointments
from campaigns.masking import mask_phone
from campaigns.models import Clinic, DncSource
from campaigns.phones import to_e164
from campaigns.users import Principal
from console.deps import (
    DB,
    Admin,
    Auditor,
    CurrentUser,
    OperableClinic,
    PipelineDep,
    ReadableClinic,
    now,
)

router = APIRouter(prefix="/api/v1")


def parse_time(text: str | None, name: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInputError(f"{name}: {text!r} is not an ISO 8601 time") from exc
    if value.tzinfo is None:
        raise InvalidInputError(f"{name}: {text!r} needs a UTC offset")
    return value.astimezone(UTC)


# --------------------------------------------------------------------------- tokens


class Credentials(BaseModel):
    email: str
    password: str


@router.post("/tokens")
def create_token(credentials: Credentials, session: DB, pipeline: PipelineDep) -> Any:
    """Exchange an email and password for a bearer token."""
    settings = pipeline.settings
    try:
        user = users.sign_in(
            session,
            credentials.email,
            credentials.password,
            now(),
            max_failures=settings.login_max_failures,
            lockout=timedelta(minutes=settings.login_lockout_minutes),
        )
    except users.SignInError as exc:
        # Returned, not raised: the failure count and its audit event are committed.
        return JSONResponse({"detail": str(exc)}, status_code=401)
    token, expires_at = users.open_session(
        session, user, users.API, now(), timedelta(days=settings.api_token_days)
    )
    return {"token": token, "expires_at": expires_at.isoformat()}


@router.delete("/tokens/current", status_code=204)
def revoke_token(user: CurrentUser, session: DB) -> None:
    """Revoke the token (or browser session) this request was made with."""
    users.revoke_session(session, user, now())


# --------------------------------------------------------------------------- clinics


def clinic_summary(clinic: Clinic) -> dict[str, Any]:
    return {
        "id": clinic.id,
        "name": clinic.name,
        "timezone": clinic.timezone,
        "paused": clinic.paused_reason is not None,
    }


@router.get("/clinics")
def list_clinics(user: CurrentUser, session: DB) -> list[dict[str, Any]]:
    return [clinic_summary(c) for c in users.visible_clinics(session, user)]


@router.post("/clinics", status_code=201)
def create_clinic(spec: dict[str, Any], user: Admin, session: DB) -> dict[str, Any]:
    """Create a clinic from the fields of ``campaigns clinic add`` (admin only)."""
    clinic = clinics.create_clinic(session, clinics.validate_spec(spec), actor=user.actor)
    return clinic_summary(clinic) | clinics.describe(clinic)


@router.get("/clinics/{clinic_id}/status")
def clinic_status(clinic: ReadableClinic, session: DB) -> dict[str, Any]:
    return status.status_counts(session, clinic.id)


@router.get("/clinics/{clinic_id}/dashboard")
def clinic_dashboard(clinic: ReadableClinic, session: DB) -> dict[str, Any]:
    return appointments.dashboard(session, clinic, now())


def run_import(
    session: DB, clinic: Clinic, upload: UploadFile, actor: str
) -> tuple[int, dict[str, Any]]:
    """Import an uploaded CSV; the status and the report (or the reason it was refused)."""
    filename = upload.filename or "upload.csv"
    try:
        report = import_appointments(
            session, clinic, upload.file, filename=filename, now=now(), actor=actor
        )
    except ImportFileError as exc:
        session.rollback()
        audit.record(
            session,
            "appointments.import_refused",
            {"filename": filename, "why": str(exc)},
            actor=actor,
            clinic_id=clinic.id,
        )
        return 422, {"detail": f"{filename}: {exc}"}
    document = report.to_json()
    if report.usable_rows == 0:
        # Like the CLI: an unusable file leaves no trace but its report (and this event).
        session.rollback()
        audit.record(
            session,
            "appointments.import_refused",
            {"filename": filename, "why": "no usable row", "rows": report.rows},
            actor=actor,
            clinic_id=clinic.id,
        )
        return 422, document | {"detail": f"{filename} has no usable row; nothing was imported"}
    return 200, document


@router.post("/clinics/{clinic_id}/imports")
def upload_appointments(
    clinic: OperableClinic,
    user: CurrentUser,
    session: DB,
    file: Annotated[UploadFile, File(description="CSV of appointments")],
) -> Any:
    status, document = run_import(session, clinic, file, user.actor)
    return JSONResponse(document, status_code=status)


class PauseRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


@router.post("/clinics/{clinic_id}/pause")
def pause_clinic(
    body: PauseRequest, clinic: OperableClinic, user: CurrentUser, session: DB
) -> dict[str, Any]:
    dial.pause_clinic(
        session, clinic, f"paused by {user.email}: {body.reason}", now(), actor=user.actor
    )
    return clinic_summary(clinic)


@router.post("/clinics/{clinic_id}/resume")
def resume_clinic(clinic: OperableClinic, user: CurrentUser, session: DB) -> dict[str, Any]:
    dial.resume_clinic(session, clinic, actor=user.actor)
    return clinic_summary(clinic)


# --------------------------------------------------------------------------- appointments


@router.get("/clinics/{clinic_id}/appointments")
def list_appointments(
    clinic: ReadableClinic,
    user: CurrentUser,
    session: DB,
    status: str | None = None,
    outcome: str | None = None,
    q: str | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
) -> dict[str, Any]:
    assert clinic.id is not None
    return appointments.search(
        session,
        clinic,
        appointments.Search(status=status or None, outcome=outcome or None, q=q, page=page),
        full_phones=user.sees_phone_numbers(clinic.id),
    )


@router.get("/clinics/{clinic_id}/appointments/{appointment_id}")
def show_appointment(
    appointment_id: int, clinic: ReadableClinic, user: CurrentUser, session: DB
) -> dict[str, Any]:
    assert clinic.id is not None
    found = appointments.get(session, clinic, appointment_id)
    return appointments.timeline(
        session, clinic, found, full_phones=user.sees_phone_numbers(clinic.id)
    )


@router.get("/clinics/{clinic_id}/appointments/{appointment_id}/explain")
def explain_appointment(
    appointment_id: int, clinic: ReadableClinic, session: DB, at: str | None = None
) -> dict[str, Any]:
    found = appointments.get(session, clinic, appointment_id)
    return compliance.explain_appointment(session, clinic, found, parse_time(at, "at") or now())


# --------------------------------------------------------------------------- do-not-call


def dnc_rows(session: DB, clinic: Clinic, user: CurrentUser, q: str | None) -> list[dict[str, Any]]:
    assert clinic.id is not None
    full = user.sees_phone_numbers(clinic.id)
    digits = "".join(c for c in (q or "") if c.isdigit())
    return [
        {
            "phone": entry.phone_e164 if full else mask_phone(entry.phone_e164),
            "list": entry.list_name,
            "source": entry.source,
            "reason": entry.reason,
            "added_by": entry.added_by,
            "added_at": entry.added_at.isoformat(),
        }
        for entry in dnc.entries(session, clinic_id=clinic.id)
        if not digits or digits in entry.phone_e164
    ]


@router.get("/clinics/{clinic_id}/dnc")
def list_dnc(
    clinic: ReadableClinic, user: CurrentUser, session: DB, q: str | None = None
) -> list[dict[str, Any]]:
    return dnc_rows(session, clinic, user, q)


class DncRequest(BaseModel):
    phone: str = Field(max_length=40)
    reason: str | None = Field(default=None, max_length=500)


@router.post("/clinics/{clinic_id}/dnc", status_code=201)
def add_dnc(
    body: DncRequest, clinic: OperableClinic, user: CurrentUser, session: DB
) -> dict[str, Any]:
    """A patient asked not to be called again by this clinic."""
    number = to_e164(body.phone, clinic.country)
    dnc.add(
        session,
        number,
        clinic_id=clinic.id,
        source=DncSource.PATIENT_REQUEST,
        reason=body.reason,
        actor=user.actor,
    )
    return {"phone": number, "list": dnc.clinic_list(clinic.id or 0)}


class DncRemoval(BaseModel):
    phone: str = Field(max_length=40)
    reason: str = Field(min_length=1, max_length=500)


@router.post("/clinics/{clinic_id}/dnc/remove")
def remove_dnc(
    body: DncRemoval, clinic: ReadableClinic, user: Admin, session: DB
) -> dict[str, Any]:
    """Take a number off the clinic's list (admin only, with the reason audited)."""
    number = to_e164(body.phone, clinic.country)
    if not dnc.remove(session, number, clinic_id=clinic.id, actor=user.actor, reason=body.reason):
        raise NotFoundError(f"{mask_phone(number)} is not on this clinic's list")
    return {"phone": number, "removed": True}


# --------------------------------------------------------------------------- audit


class AuditFilters(BaseModel):
    """Which page of the audit log to list, as the API's and the console page's query
    parameters: an empty value filters nothing."""

    since: str = ""
    until: str = ""
    kind: str = ""
    actor: str = ""
    page: int = Field(default=1, ge=1)

    def listing(self, session: Session) -> dict[str, Any]:
        return audit.list_events(
            session,
            since=parse_time(self.since, "since"),
            until=parse_time(self.until, "until"),
            kind=self.kind or None,
            actor=self.actor or None,
            page=self.page,
        )


@router.get("/audit/events")
def audit_events(
    user: Auditor, session: DB, filters: Annotated[AuditFilters, Query()]
) -> dict[str, Any]:
    return filters.listing(session)


EXPORT_MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


def export_response(
    session: Session, user: Principal, pipeline: Pipeline, fmt: str, since: datetime | None
) -> StreamingResponse:
    """The audit log as a download; the export is audited once streamed (or cut short)."""
    if fmt not in audit.EXPORT_WRITERS:
        raise InvalidInputError("format must be csv or jsonl")
    # The request's transaction outlives the streamed response: end it now, so that on
    # SQLite it does not hold the write lock while the export streams.
    session.commit()
    filename = f"audit-{now():%Y%m%dT%H%M%SZ}.{fmt}"
    return StreamingResponse(
        audit.export(fmt, since=since, actor=user.actor, sessions=pipeline.sessions),
        media_type=EXPORT_MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/audit/export")
def audit_export(
    user: Auditor,
    session: DB,
    pipeline: PipelineDep,
    format: str = "jsonl",
    since: str | None = None,
) -> StreamingResponse:
    return export_response(session, user, pipeline, format, parse_time(since, "since"))


def verify_document(result: audit.VerifyResult) -> dict[str, Any]:
    """As ``audit verify --json`` prints it."""
    return result.document()


@router.post("/audit/verify")
def audit_verify(
    user: Auditor,
    session: DB,
    checkpoint: Annotated[dict[str, Any] | None, Body()] = None,
) -> dict[str, Any]:
    """Re-walk every chain; with a checkpoint taken earlier as the body, also check that
    the events it anchors in each chain are still there as they were."""
    anchor = audit.Checkpoint.parse(json.dumps(checkpoint)) if checkpoint else None
    return verify_document(audit.verify(session, anchor))


@router.post("/audit/checkpoint")
def audit_checkpoint(user: Auditor, session: DB) -> dict[str, Any]:
    """Verify the log and return its head, ``{"seq", "hash", "at", "count"}``, to keep
    outside the database (as ``campaigns audit checkpoint`` prints it)."""
    return take_checkpoint(session, user)


def take_checkpoint(session: Session, user: Principal) -> dict[str, Any]:
    checkpoint = audit.take_checkpoint(session, actor=user.actor, out="console download")
    document: dict[str, Any] = checkpoint.model_dump(mode="json")
    return document


# --------------------------------------------------------------------------- users


class NewUser(BaseModel):
    email: str
    role: str
    password: str
    clinics: list[str] = []


@router.get("/users")
def list_users(user: Admin, session: DB) -> list[dict[str, Any]]:
    return users.list_users(session)


@router.post("/users", status_code=201)
def add_user(body: NewUser, user: Admin, session: DB) -> dict[str, Any]:
    created = users.add_user(
        session, body.email, body.role, body.password, clinic_names=body.clinics, actor=user.actor
    )
    return users.describe(session, created)


@router.post("/users/{email}/disable")
def disable_user(email: str, user: Admin, session: DB) -> dict[str, Any]:
    users.disable_user(session, email, now(), actor=user.actor)
    return users.describe(session, users.get_user(session, email))


# --------------------------------------------------------------------------- agent reports


class OutcomeReport(BaseModel):
    attempt_id: int
    outcome: str = Field(max_length=64)
    token: str = Field(max_length=200)
    detail: dict[str, Any] | None = None


@router.post("/reports")
def report_outcome(report: OutcomeReport, pipeline: PipelineDep) -> dict[str, Any]:
    """The agent's outcome report, authenticated by its report token alone; the same
    step as the Celery task, which audits every report it does not apply."""
    result = pipeline.record_outcome(report.attempt_id, report.outcome, report.token, report.detail)
    if not result.accepted and not result.duplicate:
        raise HTTPException(403, f"report refused: {result.reason}")
    return {
        "attempt_id": result.attempt_id,
        "accepted": result.accepted,
        "duplicate": result.duplicate,
    }
