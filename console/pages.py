"""The console's server-rendered pages, over the same services as the API.

Forms post back with the session's CSRF token; sign-in uses a double-submit
cookie instead (there is no session yet). Pages a user may not open answer
with the same 403/404 as the API, as a page.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from campaigns import appointments, audit, dnc, users
from campaigns.attempts import dial
from campaigns.compliance import service as compliance
from campaigns.errors import CampaignError, NotFoundError
from campaigns.masking import mask_phone
from campaigns.models import AppointmentStatus, DncSource, Role
from campaigns.phones import to_e164
from campaigns.telephony.outcomes import Outcome
from campaigns.users import Principal
from console.api.routes import (
    dnc_rows,
    export_response,
    parse_time,
    run_import,
    take_checkpoint,
    verify_document,
)
from console.deps import (
    DB,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Admin,
    Auditor,
    CurrentUser,
    OperableClinic,
    PipelineDep,
    ReadableClinic,
    now,
)
from console.render import render

router = APIRouter(include_in_schema=False)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _safe_next(target: str | None) -> str:
    # Only a path on this site: never an open redirect.
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/"


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def page_context(request: Request, session: Session, user: Principal) -> None:
    """What every signed-in page shows around its content: the user's clinics."""
    request.state.nav_clinics = users.visible_clinics(session, user)


def signed_in(request: Request, user: CurrentUser, session: DB) -> Principal:
    page_context(request, session, user)
    return user


PageUser = Annotated[Principal, Depends(signed_in)]


# --------------------------------------------------------------------------- sign-in


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render(request, "login.html", {"login_csrf": token, "next": _safe_next(next)})
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="lax", secure=_secure(request)
    )
    return response


@router.post("/login")
def login(
    request: Request,
    session: DB,
    pipeline: PipelineDep,
    email: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not cookie or not secrets.compare_digest(cookie.encode(), csrf_token.encode()):
        raise HTTPException(403, "the sign-in form expired; reload the page and try again")
    settings = pipeline.settings
    try:
        user = users.sign_in(
            session,
            email,
            password,
            now(),
            max_failures=settings.login_max_failures,
            lockout=timedelta(minutes=settings.login_lockout_minutes),
        )
    except users.SignInError as exc:
        return render(
            request,
            "login.html",
            {"login_csrf": cookie, "next": _safe_next(next), "error": str(exc), "email": email},
            status=401,
        )
    token, expires_at = users.open_session(
        session, user, users.BROWSER, now(), timedelta(hours=settings.session_hours)
    )
    response = _see_other(_safe_next(next))
    response.set_cookie(
        SESSION_COOKIE,
        token,
        expires=expires_at,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
def logout(user: CurrentUser, session: DB) -> Response:
    users.revoke_session(session, user, now())
    response = _see_other("/login")
    response.delete_cookie(SESSION_COOKIE)
    return response


# --------------------------------------------------------------------------- clinics


@router.get("/")
def home(request: Request, user: PageUser) -> Response:
    clinics = request.state.nav_clinics
    if len(clinics) == 1:
        return _see_other(f"/clinics/{clinics[0].id}")
    return render(request, "clinics.html", {"clinics": clinics})


@router.get("/clinics/{clinic_id}")
def dashboard(request: Request, clinic: ReadableClinic, user: PageUser, session: DB) -> Response:
    document = appointments.dashboard(session, clinic, now())
    return render(request, "dashboard.html", {"clinic": clinic, "d": document})


@router.get("/clinics/{clinic_id}/live")
def dashboard_live(
    request: Request, clinic: ReadableClinic, user: CurrentUser, session: DB
) -> Response:
    """The part of the dashboard that changes while a campaign runs (polled by the page)."""
    document = appointments.dashboard(session, clinic, now())
    return render(request, "_live.html", {"clinic": clinic, "d": document})


@router.post("/clinics/{clinic_id}/pause")
def pause(
    clinic: OperableClinic,
    user: CurrentUser,
    session: DB,
    reason: Annotated[str, Form(min_length=1, max_length=500)],
) -> Response:
    reason = f"paused by {user.email}: {reason}"
    dial.pause_clinic(session, clinic, reason, now(), actor=user.actor)
    return _see_other(f"/clinics/{clinic.id}")


@router.post("/clinics/{clinic_id}/resume")
def resume(clinic: OperableClinic, user: CurrentUser, session: DB) -> Response:
    dial.resume_clinic(session, clinic, actor=user.actor)
    return _see_other(f"/clinics/{clinic.id}")


# --------------------------------------------------------------------------- upload


@router.get("/clinics/{clinic_id}/upload")
def upload_page(request: Request, clinic: OperableClinic, user: PageUser) -> Response:
    return render(request, "upload.html", {"clinic": clinic, "result": None, "status": 200})


@router.post("/clinics/{clinic_id}/upload")
def upload(
    request: Request,
    clinic: OperableClinic,
    user: PageUser,
    session: DB,
    file: UploadFile,
) -> Response:
    status, result = run_import(session, clinic, file, user.actor)
    return render(
        request,
        "upload.html",
        {"clinic": clinic, "result": result, "status": status, "filename": file.filename},
        status=status,
    )


# --------------------------------------------------------------------------- appointments


@router.get("/clinics/{clinic_id}/appointments")
def appointment_list(
    request: Request,
    clinic: ReadableClinic,
    user: PageUser,
    session: DB,
    q: str = "",
    status: str = "",
    outcome: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
) -> Response:
    assert clinic.id is not None
    criteria = appointments.Search(status=status or None, outcome=outcome or None, q=q, page=page)
    found = appointments.search(
        session, clinic, criteria, full_phones=user.sees_phone_numbers(clinic.id)
    )

    def page_url(number: int) -> str:
        query = {"q": q, "status": status, "outcome": outcome, "page": number}
        return f"?{urlencode(query)}"

    return render(
        request,
        "appointments.html",
        {
            "clinic": clinic,
            "found": found,
            "q": q,
            "status": status,
            "outcome": outcome,
            "statuses": [s.value for s in AppointmentStatus],
            "outcomes": [o.value for o in Outcome],
            "page_url": page_url,
        },
    )


@router.get("/clinics/{clinic_id}/appointments/{appointment_id}")
def appointment_page(
    request: Request,
    appointment_id: int,
    clinic: ReadableClinic,
    user: PageUser,
    session: DB,
) -> Response:
    assert clinic.id is not None
    found = appointments.get(session, clinic, appointment_id)
    detail = appointments.timeline(
        session, clinic, found, full_phones=user.sees_phone_numbers(clinic.id)
    )
    explained = compliance.explain_appointment(session, clinic, found, now())
    return render(
        request,
        "appointment.html",
        {"clinic": clinic, "a": detail, "explain": explained},
    )


# --------------------------------------------------------------------------- do-not-call


@router.get("/clinics/{clinic_id}/dnc")
def dnc_page(
    request: Request,
    clinic: ReadableClinic,
    user: PageUser,
    session: DB,
    q: str = "",
    message: str = "",
) -> Response:
    rows = dnc_rows(session, clinic, user, q)
    return render(request, "dnc.html", {"clinic": clinic, "rows": rows, "q": q, "message": message})


@router.post("/clinics/{clinic_id}/dnc")
def dnc_add(
    clinic: OperableClinic,
    user: CurrentUser,
    session: DB,
    phone: Annotated[str, Form(max_length=40)],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    try:
        number = to_e164(phone, clinic.country)
    except CampaignError as exc:
        return _see_other(f"/clinics/{clinic.id}/dnc?{urlencode({'message': str(exc)})}")
    dnc.add(
        session,
        number,
        clinic_id=clinic.id,
        source=DncSource.PATIENT_REQUEST,
        reason=reason or None,
        actor=user.actor,
    )
    message = f"{mask_phone(number)} will not be called again"
    return _see_other(f"/clinics/{clinic.id}/dnc?{urlencode({'message': message})}")


@router.post("/clinics/{clinic_id}/dnc/remove")
def dnc_remove(
    clinic: ReadableClinic,
    user: Admin,
    session: DB,
    phone: Annotated[str, Form(max_length=40)],
    reason: Annotated[str, Form(min_length=1, max_length=500)],
) -> Response:
    number = to_e164(phone, clinic.country)
    if not dnc.remove(session, number, clinic_id=clinic.id, actor=user.actor, reason=reason):
        raise NotFoundError(f"{mask_phone(number)} is not on this clinic's list")
    message = f"{mask_phone(number)} removed"
    return _see_other(f"/clinics/{clinic.id}/dnc?{urlencode({'message': message})}")


# --------------------------------------------------------------------------- audit


def _audit_page(
    request: Request, session: Session, filters: dict[str, str], **extra: Any
) -> Response:
    page = int(filters.get("page") or 1)
    listing = audit.list_events(
        session,
        since=parse_time(filters.get("since"), "since"),
        until=parse_time(filters.get("until"), "until"),
        kind=filters.get("kind") or None,
        actor=filters.get("actor") or None,
        page=page,
    )
    return render(
        request,
        "audit.html",
        {"listing": listing, "filters": filters, "verified": None, "checkpoint": None} | extra,
    )


@router.get("/audit")
def audit_page(
    request: Request,
    user: Auditor,
    session: DB,
    since: str = "",
    until: str = "",
    kind: str = "",
    actor: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
) -> Response:
    page_context(request, session, user)
    filters = {"since": since, "until": until, "kind": kind, "actor": actor, "page": str(page)}
    return _audit_page(request, session, filters)


@router.post("/audit/verify")
def audit_verify(request: Request, user: Auditor, session: DB) -> Response:
    page_context(request, session, user)
    return _audit_page(request, session, {}, verified=verify_document(audit.verify(session)))


@router.post("/audit/checkpoint")
def audit_checkpoint(request: Request, user: Auditor, session: DB) -> Response:
    page_context(request, session, user)
    return _audit_page(request, session, {}, checkpoint=take_checkpoint(session, user))


@router.get("/audit/export")
def audit_export(
    user: Auditor,
    session: DB,
    pipeline: PipelineDep,
    format: str = "csv",
    since: str = "",
) -> Response:
    return export_response(session, user, pipeline, format, parse_time(since, "since"))


# --------------------------------------------------------------------------- users


@router.get("/users")
def users_page(request: Request, user: Admin, session: DB, message: str = "") -> Response:
    page_context(request, session, user)
    return render(
        request,
        "users.html",
        {
            "people": users.list_users(session),
            "roles": [r.value for r in Role],
            "message": message,
        },
    )


@router.post("/users")
def users_add(
    user: Admin,
    session: DB,
    email: Annotated[str, Form()],
    role: Annotated[str, Form()],
    password: Annotated[str, Form()],
    clinics: Annotated[list[str] | None, Form()] = None,
) -> Response:
    try:
        users.add_user(session, email, role, password, clinic_names=clinics or [], actor=user.actor)
    except CampaignError as exc:
        session.rollback()
        return _see_other(f"/users?{urlencode({'message': str(exc)})}")
    return _see_other(f"/users?{urlencode({'message': f'{email} added'})}")


@router.post("/users/disable")
def users_disable(user: Admin, session: DB, email: Annotated[str, Form()]) -> Response:
    users.disable_user(session, email, now(), actor=user.actor)
    return _see_other(f"/users?{urlencode({'message': f'{email} disabled'})}")
