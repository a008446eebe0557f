"""The console's pages over HTTP: sign-in and its CSRF cookie, CSRF on every form,
pages by role, and patient-supplied text rendered inert."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit
from campaigns.models import AuditEvent, Clinic
from tests.console_support import PASSWORD, Console, running_console
from tests.factories import add_appointment, add_clinic, lift_append_only_guard

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
ADMIN = "admin@example.org"
STAFF = "staff@example.org"
REVIEWER = "reviewer@example.org"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def console(engine: Engine) -> Iterator[Console]:
    with Session(engine) as session:
        clinic = add_clinic(session, name="Clinic A")
        add_appointment(
            session,
            clinic,
            external_id="=cmd|' /C calc'!A0",
            patient_name="<img src=x onerror=alert(1)>",
        )
        session.commit()
    with running_console(engine) as running:
        running.add_user(ADMIN, "admin")
        running.add_user(STAFF, "staff", "Clinic A")
        running.add_user(REVIEWER, "reviewer")
        yield running


def clinic_id(console: Console) -> int:
    with console.sessions() as session:
        return int(session.execute(select(Clinic.id)).scalar_one())


def sign_in(console: Console, email: str) -> str:
    """Sign in through the form; returns the session's CSRF token from the next page."""
    form = console.client.get("/login")
    token = _CSRF.search(form.text)
    assert token is not None
    response = console.client.post(
        "/login",
        data={"email": email, "password": PASSWORD, "csrf_token": token.group(1), "next": "/"},
        follow_redirects=True,
    )
    assert response.status_code == 200, response.text
    session_token = _CSRF.search(response.text)
    assert session_token is not None
    return session_token.group(1)


def kinds(console: Console) -> list[str]:
    with console.sessions() as session:
        return list(session.execute(select(AuditEvent.kind).order_by(col(AuditEvent.id))).scalars())


@SQLITE_ONLY
def test_sign_in_needs_the_forms_csrf_cookie(console: Console) -> None:
    console.client.get("/login")
    forged = console.client.post(
        "/login", data={"email": STAFF, "password": PASSWORD, "csrf_token": "guess"}
    )
    assert forged.status_code == 403
    assert "campaigns_session" not in console.client.cookies
    sign_in(console, STAFF)
    assert "campaigns_session" in console.client.cookies


@SQLITE_ONLY
def test_a_page_without_a_session_sends_you_to_sign_in(console: Console) -> None:
    response = console.client.get(f"/clinics/{clinic_id(console)}", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next=/clinics/{clinic_id(console)}"
    login = console.client.get("/login", params={"next": "//evil.example/x"})
    assert 'name="next" value="/"' in login.text


@SQLITE_ONLY
def test_every_form_needs_the_sessions_csrf_token(console: Console) -> None:
    csrf = sign_in(console, STAFF)
    clinic = clinic_id(console)
    for path, data in (
        (f"/clinics/{clinic}/pause", {"reason": "x"}),
        (f"/clinics/{clinic}/dnc", {"phone": "2125550123"}),
        ("/logout", {}),
    ):
        for wrong in ("wrong", "épreuve"):
            refused = console.client.post(path, data=data | {"csrf_token": wrong})
            assert refused.status_code == 403, path
    assert "clinic.paused" not in kinds(console) and "dnc.added" not in kinds(console)
    paused = console.client.post(
        f"/clinics/{clinic}/pause", data={"reason": "flu", "csrf_token": csrf}
    )
    assert paused.status_code == 200 and "Calling is paused" in paused.text
    signed_out = console.client.post("/logout", data={"csrf_token": csrf})
    assert signed_out.url.path == "/login"
    after = console.client.get(f"/clinics/{clinic}", follow_redirects=False)
    assert after.status_code == 303, "a signed-out session must not work again"


@SQLITE_ONLY
def test_patient_text_is_escaped_and_formulas_shown_as_text(console: Console) -> None:
    sign_in(console, STAFF)
    page = console.client.get(f"/clinics/{clinic_id(console)}/appointments").text
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&#39;=cmd|&#39; /C calc&#39;!A0" in page


@SQLITE_ONLY
def test_do_not_call_page_staff_add_and_admin_remove(console: Console) -> None:
    clinic = clinic_id(console)
    csrf = sign_in(console, STAFF)
    added = console.client.post(
        f"/clinics/{clinic}/dnc",
        data={"phone": "(212) 555-0123", "reason": "asked", "csrf_token": csrf},
    )
    assert "will not be called again" in added.text and "+12125550123" in added.text
    assert ">Remove<" not in added.text
    refused = console.client.post(
        f"/clinics/{clinic}/dnc/remove",
        data={"phone": "+12125550123", "reason": "oops", "csrf_token": csrf},
    )
    assert refused.status_code == 403
    console.client.cookies.clear()
    csrf = sign_in(console, ADMIN)
    removed = console.client.post(
        f"/clinics/{clinic}/dnc/remove",
        data={"phone": "+12125550123", "reason": "wrong patient", "csrf_token": csrf},
    )
    assert "removed" in removed.text
    with console.sessions() as session:
        event = session.execute(
            select(AuditEvent).where(col(AuditEvent.kind) == "dnc.removed")
        ).scalar_one()
    assert event.actor == f"user:{ADMIN}" and json.loads(event.payload)["reason"] == "wrong patient"


@SQLITE_ONLY
def test_users_page_is_for_admins(console: Console) -> None:
    sign_in(console, REVIEWER)
    assert console.client.get("/users").status_code == 403
    reviewer_view = console.client.get(f"/clinics/{clinic_id(console)}").text
    assert "Pause calling" not in reviewer_view and "Upload" not in reviewer_view
    console.client.cookies.clear()
    csrf = sign_in(console, ADMIN)
    page = console.client.get("/users")
    assert page.status_code == 200 and STAFF in page.text
    added = console.client.post(
        "/users",
        data={
            "email": "new@example.org",
            "role": "staff",
            "password": PASSWORD,
            "clinics": ["Clinic A"],
            "csrf_token": csrf,
        },
    )
    assert "new@example.org added" in added.text
    disabled = console.client.post(
        "/users/disable", data={"email": "new@example.org", "csrf_token": csrf}
    )
    assert "new@example.org disabled" in disabled.text
    assert kinds(console).count("user.added") == 4 and "user.disabled" in kinds(console)


@SQLITE_ONLY
def test_session_cookies_are_httponly_lax_and_secure_over_https(console: Console) -> None:
    console.client.base_url = "https://testserver"
    form = console.client.get("/login")
    token = _CSRF.search(form.text)
    assert token is not None
    response = console.client.post(
        "/login",
        data={"email": STAFF, "password": PASSWORD, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("campaigns_session=")
    )
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "samesite=lax"} <= attributes


@SQLITE_ONLY
def test_the_audit_page_shows_chains_and_names_a_broken_one(console: Console) -> None:
    clinic = clinic_id(console)
    with console.sessions() as session:
        audit.record(session, "clinic.noted", {"n": 1}, actor="t", clinic_id=clinic)
        session.commit()
    csrf = sign_in(console, REVIEWER)

    listing = console.client.get("/audit").text
    assert '<th scope="col">Chain</th>' in listing
    assert f"<td>{clinic}</td><td>1</td>" in listing  # the clinic's chain, its first event
    verified = console.client.post("/audit/verify", data={"csrf_token": csrf}).text
    assert re.search(r"Intact: \d+ events verified in 2 chains", verified)
    checkpoint = console.client.post("/audit/checkpoint", data={"csrf_token": csrf}).text
    assert "of chain 0, anchoring every chain" in checkpoint

    with console.sessions() as session:
        lift_append_only_guard(session)
        session.execute(
            text("UPDATE audit_event SET payload = '{}' WHERE chain = :c"), {"c": clinic}
        )
        session.commit()
    broken = console.client.post("/audit/verify", data={"csrf_token": csrf}).text
    assert f"Broken at chain {clinic}, event 1: content does not match its hash" in broken
