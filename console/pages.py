"""The console's server-rendered pages, over the same services as the API.

Forms post back with the session's CSRF token; sign-in uses a double-submit
cookie instead (there is no session yet). Pages a user may not open answer
with the same 403/404 as the API, as a page.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
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
from campaigns.models import AppointmentStatus, Clinic, DncSource, Role
from campaigns.phones import to_e164
from campaigns.telephony.outcomes import Outcome
from campaigns.users import Principal
from console import deps
from console.api.routes import (
    AuditFilters,
    dnc_rows,
    export_response,
    parse_time,
    run_import,
    take_checkpoint,
    verify_document,
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


@dataclass(frozen=True)
class Page:
    """A signed-in page being answered: its request, who asks, and the request's
    transaction."""

    request: Request
    user: Principal
    session: Session

    def render(self, name: str, context: dict[str, Any], *, status: int = 200) -> HTMLResponse:
        return render(self.request, name, context, status=status)


@dataclass(frozen=True)
class ClinicPage(Page):
    """A page of one clinic the user may read (or, as :data:`OperablePage`, change)."""

    clinic: Clinic

    @property
    def full_phones(self) -> bool:
        assert self.clinic.id is not None
        return self.user.sees_phone_numbers(self.clinic.id)

    def render(self, name: str, context: dict[str, Any], *, status: int = 200) -> HTMLResponse:
        return super().render(name, {"clinic": self.clinic} | context, status=status)


def signed_in(request: Request, user: deps.CurrentUser, session: deps.DB) -> Page:
    """Every signed-in page shows the user's clinics around its content."""
    request.state.nav_clinics = users.visible_clinics(session, user)
    return Page(request, user, session)


SignedIn = Annotated[Page, Depends(signed_in)]


# The clinic is checked first, so a page the user may not open gets no navigation.
def readable_page(clinic: deps.ReadableClinic, page: SignedIn) -> ClinicPage:
    return ClinicPage(page.request, page.user, page.session, clinic)


def operable_page(clinic: deps.OperableClinic, page: SignedIn) -> ClinicPage:
    return ClinicPage(page.request, page.user, page.session, clinic)


ReadablePage = Annotated[ClinicPage, Depends(readable_page)]
OperablePage = Annotated[ClinicPage, Depends(operable_page)]


# --------------------------------------------------------------------------- sign-in


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render(request, "login.html", {"login_csrf": token, "next": _safe_next(next)})
    response.set_cookie(
        deps.LOGIN_CSRF_COOKIE, token, httponly=True, samesite="lax", secure=_secure(request)
    )
    return response


@router.post("/login")
def login(
    request: Request,
    session: deps.DB,
    pipeline: deps.PipelineDep,
    email: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    cookie = request.cookies.get(deps.LOGIN_CSRF_COOKIE)
    if not cookie or not secrets.compare_digest(cookie.encode(), csrf_token.encode()):
        raise HTTPException(403, "the sign-in form expired; reload the page and try again")
    settings = pipeline.settings
    try:
        user = users.sign_in(
            session,
            email,
            password,
            deps.now(),
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
        session, user, users.BROWSER, deps.now(), timedelta(hours=settings.session_hours)
    )
    response = _see_other(_safe_next(next))
    response.set_cookie(
        deps.SESSION_COOKIE,
        token,
        expires=expires_at,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    response.delete_cookie(deps.LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
def logout(user: deps.CurrentUser, session: deps.DB) -> Response:
    users.revoke_session(session, user, deps.now())
    response = _see_other("/login")
    response.delete_cookie(deps.SESSION_COOKIE)
    return response


# --------------------------------------------------------------------------- clinics


@router.get("/")
def home(page: SignedIn) -> Response:
    clinics = page.request.state.nav_clinics
    if len(clinics) == 1:
        return _see_other(f"/clinics/{clinics[0].id}")
    return page.render("clinics.html", {"clinics": clinics})


@router.get("/clinics/{clinic_id}")
def dashboard(page: ReadablePage) -> Response:
    document = appointments.dashboard(page.session, page.clinic, deps.now())
    return page.render("dashboard.html", {"d": document})


@router.get("/clinics/{clinic_id}/live")
def dashboard_live(
    request: Request, clinic: deps.ReadableClinic, user: deps.CurrentUser, session: deps.DB
) -> Response:
    """The part of the dashboard that changes while a campaign runs (polled by the page)."""
    document = appointments.dashboard(session, clinic, deps.now())
    return render(request, "_live.html", {"clinic": clinic, "d": document})


@router.post("/clinics/{clinic_id}/pause")
def pause(
    clinic: deps.OperableClinic,
    user: deps.CurrentUser,
    session: deps.DB,
    reason: Annotated[str, Form(min_length=1, max_length=500)],
) -> Response:
    reason = f"paused by {user.email}: {reason}"
    dial.pause_clinic(session, clinic, reason, deps.now(), actor=user.actor)
    return _see_other(f"/clinics/{clinic.id}")


@router.post("/clinics/{clinic_id}/resume")
def resume(clinic: deps.OperableClinic, user: deps.CurrentUser, session: deps.DB) -> Response:
    dial.resume_clinic(session, clinic, actor=user.actor)
    return _see_other(f"/clinics/{clinic.id}")


# --------------------------------------------------------------------------- upload


@router.get("/clinics/{clinic_id}/upload")
def upload_page(page: OperablePage) -> Response:
    return page.render("upload.html", {"result": None, "status": 200})


@router.post("/clinics/{clinic_id}/upload")
def upload(page: OperablePage, file: UploadFile) -> Response:
    status, result = run_import(page.session, page.clinic, file, page.user.actor)
    return page.render(
        "upload.html",
        {"result": result, "status": status, "filename": file.filename},
        status=status,
    )


# --------------------------------------------------------------------------- appointments


@router.get("/clinics/{clinic_id}/appointments")
def appointment_list(
    page: ReadablePage,
    q: str = "",
    status: str = "",
    outcome: str = "",
    number: Annotated[int, Query(ge=1, alias="page")] = 1,
) -> Response:
    criteria = appointments.Search(status=status or None, outcome=outcome or None, q=q, page=number)
    found = appointments.search(page.session, page.clinic, criteria, full_phones=page.full_phones)

    def page_url(number: int) -> str:
        query = {"q": q, "status": status, "outcome": outcome, "page": number}
        return f"?{urlencode(query)}"

    return page.render(
        "appointments.html",
        {
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
def appointment_page(appointment_id: int, page: ReadablePage) -> Response:
    session, clinic = page.session, page.clinic
    found = appointments.get(session, clinic, appointment_id)
    detail = appointments.timeline(session, clinic, found, full_phones=page.full_phones)
    explained = compliance.explain_appointment(session, clinic, found, deps.now())
    return page.render("appointment.html", {"a": detail, "explain": explained})


# --------------------------------------------------------------------------- do-not-call


@router.get("/clinics/{clinic_id}/dnc")
def dnc_page(page: ReadablePage, q: str = "", message: str = "") -> Response:
    rows = dnc_rows(page.session, page.clinic, page.user, q)
    return page.render("dnc.html", {"rows": rows, "q": q, "message": message})


@router.post("/clinics/{clinic_id}/dnc")
def dnc_add(
    clinic: deps.OperableClinic,
    user: deps.CurrentUser,
    session: deps.DB,
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
    clinic: deps.ReadableClinic,
    user: deps.Admin,
    session: deps.DB,
    phone: Annotated[str, Form(max_length=40)],
    reason: Annotated[str, Form(min_length=1, max_length=500)],
) -> Response:
    number = to_e164(phone, clinic.country)
    if not dnc.remove(session, number, clinic_id=clinic.id, actor=user.actor, reason=reason):
        raise NotFoundError(f"{mask_phone(number)} is not on this clinic's list")
    message = f"{mask_phone(number)} removed"
    return _see_other(f"/clinics/{clinic.id}/dnc?{urlencode({'message': message})}")


# --------------------------------------------------------------------------- audit


def _audit_page(page: Page, filters: AuditFilters, **extra: Any) -> Response:
    listing = filters.listing(page.session)
    context = {"listing": listing, "filters": filters, "verified": None, "checkpoint": None}
    return page.render("audit.html", context | extra)


# The role is checked before the page is built: a refused page gets no navigation.
@router.get("/audit", dependencies=[Depends(deps.auditor)])
def audit_page(page: SignedIn, filters: Annotated[AuditFilters, Query()]) -> Response:
    return _audit_page(page, filters)


@router.post("/audit/verify", dependencies=[Depends(deps.auditor)])
def audit_verify(page: SignedIn) -> Response:
    verified = verify_document(audit.verify(page.session))
    return _audit_page(page, AuditFilters(), verified=verified)


@router.post("/audit/checkpoint", dependencies=[Depends(deps.auditor)])
def audit_checkpoint(page: SignedIn) -> Response:
    checkpoint = take_checkpoint(page.session, page.user)
    return _audit_page(page, AuditFilters(), checkpoint=checkpoint)


@router.get("/audit/export")
def audit_export(
    user: deps.Auditor,
    session: deps.DB,
    pipeline: deps.PipelineDep,
    format: str = "csv",
    since: str = "",
) -> Response:
    return export_response(session, user, pipeline, format, parse_time(since, "since"))


# --------------------------------------------------------------------------- users


@router.get("/users", dependencies=[Depends(deps.admin)])
def users_page(page: SignedIn, message: str = "") -> Response:
    return page.render(
        "users.html",
        {
            "people": users.list_users(page.session),
            "roles": [r.value for r in Role],
            "message": message,
        },
    )


@router.post("/users")
def users_add(
    user: deps.Admin,
    session: deps.DB,
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
def users_disable(user: deps.Admin, session: deps.DB, email: Annotated[str, Form()]) -> Response:
    users.disable_user(session, email, deps.now(), actor=user.actor)
    return _see_other(f"/users?{urlencode({'message': f'{email} disabled'})}")
