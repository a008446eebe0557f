"""The HTTP API, for every role, on SQLite and PostgreSQL: who may do what, and
what each refusal looks like (401 no or dead token, 403 not allowed, 404 not
yours, bad CSRF, forged webhooks and reports)."""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from google.protobuf import json_format
from livekit.api import AccessToken
from livekit.protocol.models import ParticipantInfo, Room
from livekit.protocol.webhook import WebhookEvent
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from sqlmodel import col, select

from agent.ports import Report
from agent.reporting import HttpReporter, ReportRefusedError, reporter_from_settings
from campaigns import users
from campaigns.models import AttemptState, AuditEvent, CallAttempt, Clinic
from campaigns.settings import Settings
from campaigns.tokens import sign_report_token
from simulator.testing import TEST_API_SECRET
from tests.console_support import PASSWORD, REPORT_SECRET, Console, running_console
from tests.factories import add_appointment, add_clinic

ADMIN = "admin@example.org"
STAFF_A = "staff.a@example.org"
STAFF_B = "staff.b@example.org"
REVIEWER = "reviewer@example.org"

BAD_ROWS_CSV = (
    "Appointment ID,Patient Name,Phone,Date,Time,Provider\n"
    "A-1,Maria Garcia,(212) 555-0100,2030-01-15,9:00,Dr. Ahmed\n"
    'A-2,=HYPERLINK("http://x"),(212) 555-0101,2030-01-15,10:30,Dr. Baker\n'
    "A-3,No Phone,,2030-01-15,11:00,Dr. Baker\n"
    "A-4,Bad Date,(212) 555-0103,2030-13-45,11:00,Dr. Baker\n"
)


@pytest.fixture
def console(engine: Engine) -> Iterator[Console]:
    with engine.begin() as connection, Session(bind=connection) as session:
        add_clinic(session, name="Clinic A")
        add_clinic(session, name="Clinic B", timezone="America/Chicago")
        session.commit()
    with running_console(engine) as running:
        running.add_user(ADMIN, "admin")
        running.add_user(STAFF_A, "staff", "Clinic A")
        running.add_user(STAFF_B, "staff", "Clinic B")
        running.add_user(REVIEWER, "reviewer")
        yield running


def clinic_id(console: Console, name: str) -> int:
    with console.sessions() as session:
        found = session.execute(select(Clinic.id).where(col(Clinic.name) == name)).scalar_one()
    return int(found)


def events(console: Console, kind: str) -> list[AuditEvent]:
    with console.sessions() as session:
        return list(
            session.execute(
                select(AuditEvent).where(col(AuditEvent.kind) == kind).order_by(col(AuditEvent.id))
            ).scalars()
        )


def upload(console: Console, clinic: int, email: str, text: str = BAD_ROWS_CSV) -> Any:
    return console.client.post(
        f"/api/v1/clinics/{clinic}/imports",
        headers=console.auth(email),
        files={"file": ("appointments.csv", text.encode(), "text/csv")},
    )


# --------------------------------------------------------------------------- tokens


def test_a_token_from_email_and_password_opens_the_api(console: Console) -> None:
    response = console.client.post("/api/v1/tokens", json={"email": STAFF_A, "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    assert datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC) + timedelta(days=1)
    clinics = console.client.get(
        "/api/v1/clinics", headers={"Authorization": f"Bearer {body['token']}"}
    )
    assert clinics.status_code == 200
    assert [c["name"] for c in clinics.json()] == ["Clinic A"]
    assert events(console, "user.token_issued")[-1].actor == f"user:{STAFF_A}"


def test_wrong_passwords_are_audited_and_lock_the_account(console: Console) -> None:
    for _ in range(3):  # the console's limit in these tests
        wrong = console.client.post("/api/v1/tokens", json={"email": STAFF_A, "password": "nope"})
        assert wrong.status_code == 401
    right = console.client.post("/api/v1/tokens", json={"email": STAFF_A, "password": PASSWORD})
    assert right.status_code == 401, "a locked account must refuse even the right password"
    failures = events(console, "user.login_failed")
    assert [e.actor for e in failures] == [f"user:{STAFF_A}"] * 4
    assert "locked_until" in json.loads(failures[2].payload)
    assert json.loads(failures[3].payload)["why"] == "locked"
    unknown = console.client.post("/api/v1/tokens", json={"email": "x@y.z", "password": "p"})
    assert unknown.status_code == 401
    assert unknown.json()["detail"] == "wrong email or password"


def test_no_token_an_expired_one_a_revoked_one_or_a_disabled_user_get_401(
    console: Console,
) -> None:
    assert console.client.get("/api/v1/clinics").status_code == 401
    bogus = console.client.get("/api/v1/clinics", headers={"Authorization": "Bearer nope"})
    assert bogus.status_code == 401
    expired = console.token(STAFF_A, lifetime=timedelta(seconds=-1))
    response = console.client.get("/api/v1/clinics", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401

    headers = console.auth(STAFF_A)
    assert console.client.delete("/api/v1/tokens/current", headers=headers).status_code == 204
    assert console.client.get("/api/v1/clinics", headers=headers).status_code == 401

    headers = console.auth(STAFF_B)
    disabled = console.client.post(f"/api/v1/users/{STAFF_B}/disable", headers=console.auth(ADMIN))
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert console.client.get("/api/v1/clinics", headers=headers).status_code == 401


def test_the_openapi_document_is_served_under_the_api_prefix(console: Console) -> None:
    document = console.client.get("/api/v1/openapi.json").json()
    for path in (
        "/api/v1/tokens",
        "/api/v1/clinics",
        "/api/v1/clinics/{clinic_id}/imports",
        "/api/v1/clinics/{clinic_id}/appointments/{appointment_id}/explain",
        "/api/v1/audit/export",
        "/api/v1/reports",
    ):
        assert path in document["paths"]


# --------------------------------------------------------------------------- clinics and roles


def test_each_role_sees_the_clinics_it_may_read(console: Console) -> None:
    def names(email: str) -> list[str]:
        return [
            c["name"]
            for c in console.client.get("/api/v1/clinics", headers=console.auth(email)).json()
        ]

    assert names(ADMIN) == ["Clinic A", "Clinic B"]
    assert names(REVIEWER) == ["Clinic A", "Clinic B"]
    assert names(STAFF_A) == ["Clinic A"]
    row = console.client.get("/api/v1/clinics", headers=console.auth(STAFF_A)).json()[0]
    assert row == {
        "id": clinic_id(console, "Clinic A"),
        "name": "Clinic A",
        "timezone": "America/New_York",
        "paused": False,
    }


def test_staff_of_one_clinic_gets_404_for_another_clinic(console: Console) -> None:
    other = clinic_id(console, "Clinic B")
    headers = console.auth(STAFF_A)
    for path in ("status", "appointments", "appointments/1", "appointments/1/explain", "dnc"):
        response = console.client.get(f"/api/v1/clinics/{other}/{path}", headers=headers)
        assert response.status_code == 404, path
        assert "Clinic B" not in response.text
    assert upload(console, other, STAFF_A).status_code == 404
    missing = console.client.get("/api/v1/clinics/999/status", headers=headers)
    assert missing.status_code == 404


def test_status_is_the_cli_status_document(console: Console) -> None:
    response = console.client.get(
        f"/api/v1/clinics/{clinic_id(console, 'Clinic A')}/status", headers=console.auth(REVIEWER)
    )
    assert response.status_code == 200
    assert set(response.json()) == {
        "appointments",
        "attempts",
        "outcomes",
        "appointment_statuses",
        "retries",
    }


def test_staff_pause_and_resume_their_clinic_and_it_is_audited(console: Console) -> None:
    clinic = clinic_id(console, "Clinic A")
    headers = console.auth(STAFF_A)
    paused = console.client.post(
        f"/api/v1/clinics/{clinic}/pause", json={"reason": "flu season"}, headers=headers
    )
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert events(console, "clinic.paused")[-1].actor == f"user:{STAFF_A}"
    reviewer = console.client.post(
        f"/api/v1/clinics/{clinic}/resume", headers=console.auth(REVIEWER)
    )
    assert reviewer.status_code == 403
    resumed = console.client.post(f"/api/v1/clinics/{clinic}/resume", headers=headers)
    assert resumed.json()["paused"] is False
    assert events(console, "clinic.resumed")[-1].actor == f"user:{STAFF_A}"


def test_only_admins_create_clinics_and_users(console: Console) -> None:
    spec = {"name": "Clinic C", "timezone": "America/Denver"}
    assert (
        console.client.post("/api/v1/clinics", json=spec, headers=console.auth(STAFF_A)).status_code
        == 403
    )
    created = console.client.post("/api/v1/clinics", json=spec, headers=console.auth(ADMIN))
    assert created.status_code == 201 and created.json()["name"] == "Clinic C"
    new_user = {
        "email": "new@example.org",
        "role": "staff",
        "password": PASSWORD,
        "clinics": ["Clinic C"],
    }
    assert (
        console.client.post(
            "/api/v1/users", json=new_user, headers=console.auth(REVIEWER)
        ).status_code
        == 403
    )
    added = console.client.post("/api/v1/users", json=new_user, headers=console.auth(ADMIN))
    assert added.status_code == 201
    assert added.json()["clinics"] == ["Clinic C"]
    listed = console.client.get("/api/v1/users", headers=console.auth(ADMIN)).json()
    assert "new@example.org" in [u["email"] for u in listed]
    assert events(console, "user.added")[-1].actor == f"user:{ADMIN}"


# --------------------------------------------------------------------------- uploads


def test_staff_upload_reports_bad_rows_by_line_and_column(console: Console) -> None:
    clinic = clinic_id(console, "Clinic A")
    response = upload(console, clinic, STAFF_A)
    assert response.status_code == 200
    report = response.json()
    assert report["imported"] == 2
    rejected = {(r["line"], r["column"]) for r in report["rejected"]}
    assert rejected == {(4, "Phone"), (5, "Date")}
    imported = events(console, "appointments.imported")[-1]
    assert imported.actor == f"user:{STAFF_A}" and imported.clinic_id == clinic


def test_a_reviewer_cannot_upload(console: Console) -> None:
    response = upload(console, clinic_id(console, "Clinic A"), REVIEWER)
    assert response.status_code == 403
    assert events(console, "appointments.imported") == []


def test_an_unusable_file_imports_nothing_and_says_why(console: Console) -> None:
    clinic = clinic_id(console, "Clinic A")
    response = upload(
        console, clinic, STAFF_A, "Appointment ID,Patient Name,Phone,Date,Time\nA-9,X,,,\n"
    )
    assert response.status_code == 422
    assert "no usable row" in response.json()["detail"]
    empty = upload(console, clinic, STAFF_A, "")
    assert empty.status_code == 422
    assert len(events(console, "appointments.import_refused")) == 2
    listed = console.client.get(
        f"/api/v1/clinics/{clinic}/appointments", headers=console.auth(STAFF_A)
    ).json()
    assert listed["total"] == 0


# --------------------------------------------------------------------------- appointments


def test_appointment_list_searches_pages_and_masks_phones_for_reviewers(console: Console) -> None:
    clinic = clinic_id(console, "Clinic A")
    assert upload(console, clinic, STAFF_A).status_code == 200
    path = f"/api/v1/clinics/{clinic}/appointments"
    staff = console.client.get(path, headers=console.auth(STAFF_A)).json()
    assert staff["total"] == 2 and staff["page"] == 1
    assert {i["phone"] for i in staff["items"]} == {"+12125550100", "+12125550101"}
    reviewer = console.client.get(path, headers=console.auth(REVIEWER)).json()
    assert all("555" not in i["phone"] for i in reviewer["items"])
    found = console.client.get(path, params={"q": "garcia"}, headers=console.auth(STAFF_A)).json()
    assert [i["external_id"] for i in found["items"]] == ["A-1"]
    by_status = console.client.get(
        path, params={"status": "confirmed"}, headers=console.auth(STAFF_A)
    ).json()
    assert by_status["total"] == 0
    bad = console.client.get(path, params={"status": "nope"}, headers=console.auth(STAFF_A))
    assert bad.status_code == 400
    beyond = console.client.get(path, params={"page": 2}, headers=console.auth(STAFF_A)).json()
    assert beyond["items"] == []


def test_explain_and_timeline_of_an_appointment(console: Console) -> None:
    clinic = clinic_id(console, "Clinic A")
    with console.sessions() as session:
        found = session.get(Clinic, clinic)
        assert found is not None
        appointment = add_appointment(session, found, external_id="X-1")
        session.commit()
    base = f"/api/v1/clinics/{clinic}/appointments/{appointment.id}"
    explained = console.client.get(
        f"{base}/explain", params={"at": "2030-01-14T15:00:00Z"}, headers=console.auth(REVIEWER)
    )
    assert explained.status_code == 200
    document = explained.json()
    assert document["appointment"] == "X-1" and document["attempt_number"] == 1
    assert {"allowed", "reasons", "next_allowed_at"} <= set(document)
    detail = console.client.get(base, headers=console.auth(STAFF_A)).json()
    assert detail["external_id"] == "X-1" and detail["timeline"] == []
    bad_time = console.client.get(
        f"{base}/explain", params={"at": "tomorrow"}, headers=console.auth(STAFF_A)
    )
    assert bad_time.status_code == 400


# --------------------------------------------------------------------------- do-not-call


def test_staff_add_a_patients_request_and_only_admins_remove_with_a_reason(
    console: Console,
) -> None:
    clinic = clinic_id(console, "Clinic A")
    added = console.client.post(
        f"/api/v1/clinics/{clinic}/dnc",
        json={"phone": "(212) 555-0177", "reason": "asked on the phone"},
        headers=console.auth(STAFF_A),
    )
    assert added.status_code == 201 and added.json()["phone"] == "+12125550177"
    listed = console.client.get(
        f"/api/v1/clinics/{clinic}/dnc", params={"q": "0177"}, headers=console.auth(STAFF_A)
    ).json()
    assert [(r["phone"], r["source"]) for r in listed] == [("+12125550177", "patient_request")]
    removal = {"phone": "+12125550177", "reason": "entered for the wrong patient"}
    refused = console.client.post(
        f"/api/v1/clinics/{clinic}/dnc/remove", json=removal, headers=console.auth(STAFF_A)
    )
    assert refused.status_code == 403
    removed = console.client.post(
        f"/api/v1/clinics/{clinic}/dnc/remove", json=removal, headers=console.auth(ADMIN)
    )
    assert removed.status_code == 200
    event = events(console, "dnc.removed")[-1]
    assert event.actor == f"user:{ADMIN}"
    assert json.loads(event.payload)["reason"] == "entered for the wrong patient"


# --------------------------------------------------------------------------- audit


def test_staff_cannot_read_the_audit_log(console: Console) -> None:
    headers = console.auth(STAFF_A)
    assert console.client.get("/api/v1/audit/events", headers=headers).status_code == 403
    assert console.client.get("/api/v1/audit/export", headers=headers).status_code == 403
    assert console.client.post("/api/v1/audit/verify", headers=headers).status_code == 403
    assert console.client.post("/api/v1/audit/checkpoint", headers=headers).status_code == 403


def test_reviewers_browse_verify_checkpoint_and_export_the_audit_log(console: Console) -> None:
    upload(console, clinic_id(console, "Clinic A"), STAFF_A)
    headers = console.auth(REVIEWER)
    page = console.client.get(
        "/api/v1/audit/events", params={"kind": "appointments."}, headers=headers
    ).json()
    assert [e["kind"] for e in page["items"]] == ["appointments.imported"]
    assert page["items"][0]["actor"] == f"user:{STAFF_A}"
    by_actor = console.client.get(
        "/api/v1/audit/events", params={"actor": f"user:{ADMIN}"}, headers=headers
    ).json()
    assert by_actor["total"] == 0
    verified = console.client.post("/api/v1/audit/verify", headers=headers).json()
    assert verified["ok"] is True and verified["first_bad_seq"] is None
    checkpoint = console.client.post("/api/v1/audit/checkpoint", headers=headers).json()
    assert set(checkpoint) == {"seq", "hash", "at", "count"}
    # The checkpoint verifies the log, records itself, and covers its own event.
    assert checkpoint["count"] == verified["events"] + 1 and len(checkpoint["hash"]) == 64
    assert events(console, "audit.checkpoint")[0].actor == f"user:{REVIEWER}"
    anchored = console.client.post("/api/v1/audit/verify", json=checkpoint, headers=headers)
    assert anchored.json()["ok"] is True and anchored.json()["checkpoint"] == checkpoint
    beyond = checkpoint | {"seq": checkpoint["seq"] + 50, "count": checkpoint["count"] + 50}
    truncated = console.client.post("/api/v1/audit/verify", json=beyond, headers=headers).json()
    assert truncated["ok"] is False and "truncated" in truncated["problem"]
    assert (truncated["chain"], truncated["first_bad_seq"]) == (0, checkpoint["seq"] + 1)
    malformed = console.client.post("/api/v1/audit/verify", json={"seq": 1}, headers=headers)
    assert malformed.status_code == 400

    exported = console.client.get("/api/v1/audit/export", params={"format": "csv"}, headers=headers)
    assert exported.status_code == 200
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert "appointments.imported" in [r["kind"] for r in rows]
    lines = console.client.get("/api/v1/audit/export", headers=headers).text.splitlines()
    assert all({"chain", "seq"} <= set(json.loads(line)) for line in lines)
    assert len(events(console, "audit.exported")) == 2
    assert events(console, "audit.exported")[0].actor == f"user:{REVIEWER}"
    unknown = console.client.get("/api/v1/audit/export", params={"format": "xml"}, headers=headers)
    assert unknown.status_code == 400


# --------------------------------------------------------------------------- browser sessions


def test_a_cookie_session_needs_its_csrf_token_to_change_anything(console: Console) -> None:
    with console.sessions() as session:
        user = users.get_user(session, STAFF_A)
        token, _ = users.open_session(
            session, user, users.BROWSER, datetime.now(UTC), timedelta(hours=1)
        )
        found = users.principal_for(session, token, datetime.now(UTC))
        session.commit()
    assert found is not None
    clinic = clinic_id(console, "Clinic A")
    console.client.cookies.set("campaigns_session", token)
    assert console.client.get("/api/v1/clinics").status_code == 200
    path = f"/api/v1/clinics/{clinic}/pause"
    refused = console.client.post(path, json={"reason": "x"})
    assert refused.status_code == 403
    forged = console.client.post(path, json={"reason": "x"}, headers={"X-CSRF-Token": "guess"})
    assert forged.status_code == 403
    assert events(console, "clinic.paused") == []
    accepted = console.client.post(
        path, json={"reason": "x"}, headers={"X-CSRF-Token": found.csrf_token}
    )
    assert accepted.status_code == 200


# --------------------------------------------------------------------------- agent reports


def answered_attempt(console: Console) -> int:
    with console.sessions() as session:
        clinic = session.get(Clinic, clinic_id(console, "Clinic A"))
        assert clinic is not None
        appointment = add_appointment(session, clinic)
        assert appointment.id is not None
        now = datetime.now(UTC)
        attempt = CallAttempt(
            appointment_id=appointment.id,
            clinic_id=appointment.clinic_id,
            attempt_number=1,
            state=AttemptState.ANSWERED,
            due_at=now,
            number_called=appointment.phone_e164,
            room_name="appt-room-1",
            participant_identity="sip-callee",
            dialing_at=now,
            answered_at=now,
        )
        session.add(attempt)
        session.commit()
        assert attempt.id is not None
        return attempt.id


ROOM = "appt-room-1"


def report_token(attempt_id: int) -> str:
    return sign_report_token(
        attempt_id, ROOM, datetime.now(UTC) + timedelta(hours=1), REPORT_SECRET
    )


def attempt_row(console: Console, attempt_id: int) -> CallAttempt:
    with console.sessions() as session:
        found = session.get(CallAttempt, attempt_id)
        assert found is not None
        return found


def test_an_agent_report_with_its_token_sets_the_outcome(console: Console) -> None:
    attempt_id = answered_attempt(console)
    report = {
        "attempt_id": attempt_id,
        "outcome": "confirmed",
        "token": report_token(attempt_id),
        "detail": {"call_seconds": 12},
    }
    accepted = console.client.post("/api/v1/reports", json=report)
    assert accepted.status_code == 200
    assert accepted.json() == {"attempt_id": attempt_id, "accepted": True, "duplicate": False}
    assert attempt_row(console, attempt_id).outcome == "confirmed"
    again = console.client.post("/api/v1/reports", json=report)
    assert again.json()["duplicate"] is True


def test_a_forged_report_is_refused_audited_and_changes_nothing(console: Console) -> None:
    attempt_id = answered_attempt(console)
    forged = console.client.post(
        "/api/v1/reports",
        json={"attempt_id": attempt_id, "outcome": "cancelled", "token": "forged", "detail": {}},
    )
    assert forged.status_code == 403
    row = attempt_row(console, attempt_id)
    assert row.state == AttemptState.ANSWERED and row.outcome is None
    refused = events(console, "report.refused")
    assert [e.attempt_id for e in refused] == [attempt_id]
    assert json.loads(refused[0].payload)["reason"].startswith("bad token")
    other = sign_report_token(
        attempt_id + 1, ROOM, datetime.now(UTC) + timedelta(hours=1), REPORT_SECRET
    )
    stolen = console.client.post(
        "/api/v1/reports",
        json={"attempt_id": attempt_id, "outcome": "cancelled", "token": other},
    )
    assert stolen.status_code == 403


# --------------------------------------------------------------------------- LiveKit webhooks


def signed_webhook(event: WebhookEvent, secret: str = TEST_API_SECRET) -> tuple[bytes, str]:
    body = json_format.MessageToJson(event).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = AccessToken("devkey", secret).with_sha256(digest).to_jwt()
    return body, token


def sip_left(room: str) -> WebhookEvent:
    return WebhookEvent(
        event="participant_left",
        id="EV_1",
        room=Room(name=room),
        participant=ParticipantInfo(identity="sip-callee", kind=ParticipantInfo.Kind.SIP),
    )


def post_webhook(console: Console, event: WebhookEvent) -> Any:
    body, token = signed_webhook(event)
    return console.client.post(
        "/livekit/webhook",
        content=body,
        headers={"Authorization": token, "Content-Type": "application/webhook+json"},
    )


def test_a_finished_room_settles_an_answered_call_without_a_report(console: Console) -> None:
    attempt_id = answered_attempt(console)
    left = post_webhook(console, sip_left("appt-room-1"))
    assert left.json() == {"event": "participant_left", "action": None}
    assert attempt_row(console, attempt_id).state == AttemptState.ANSWERED
    finished = post_webhook(
        console, WebhookEvent(event="room_finished", id="EV_2", room=Room(name="appt-room-1"))
    )
    assert finished.status_code == 200
    assert finished.json() == {"event": "room_finished", "action": "failed"}
    row = attempt_row(console, attempt_id)
    assert row.state == AttemptState.FAILED and (row.error or "").startswith("reconciled")
    logged = events(console, "livekit.webhook")
    assert [json.loads(e.payload)["event"] for e in logged] == ["participant_left", "room_finished"]
    # The agent's authentic report, arriving late, still wins.
    late = console.client.post(
        "/api/v1/reports",
        json={
            "attempt_id": attempt_id,
            "outcome": "confirmed",
            "token": report_token(attempt_id),
        },
    )
    assert late.json()["accepted"] is True
    assert attempt_row(console, attempt_id).outcome == "confirmed"


def test_forged_webhooks_get_401_and_change_nothing(console: Console) -> None:
    attempt_id = answered_attempt(console)
    body, token = signed_webhook(sip_left("appt-room-1"))
    _, wrong_secret = signed_webhook(sip_left("appt-room-1"), secret="x" * 40)
    other_body, _ = signed_webhook(sip_left("appt-room-2"))
    for headers, content in (
        ({}, body),
        ({"Authorization": wrong_secret}, body),
        ({"Authorization": token}, other_body),
        ({"Authorization": "not a jwt"}, body),
    ):
        response = console.client.post("/livekit/webhook", content=content, headers=headers)
        assert response.status_code == 401
    assert attempt_row(console, attempt_id).state == AttemptState.ANSWERED
    assert events(console, "livekit.webhook") == []


def test_the_http_reporter_posts_the_agents_report_to_the_api(console: Console) -> None:
    attempt_id = answered_attempt(console)
    app = console.client.app
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://c")
    reporter = HttpReporter("http://c/", client=client)

    async def send() -> tuple[bool, str]:
        try:
            accepted = await reporter.send(
                Report(attempt_id, "confirmed", report_token(attempt_id), {})
            )
            try:
                await reporter(Report(attempt_id, "confirmed", "forged", {}))
            except ReportRefusedError as exc:
                return accepted, str(exc)
            return accepted, ""
        finally:
            await reporter.aclose()

    accepted, refusal = asyncio.run(send())
    assert accepted is True and "refused: HTTP 403" in refusal
    assert attempt_row(console, attempt_id).outcome == "confirmed"


def test_the_agent_reports_over_http_when_the_console_address_is_set() -> None:
    over_http = reporter_from_settings(Settings(api_url="https://console.example.org"))
    assert isinstance(over_http, HttpReporter)
    asyncio.run(over_http.aclose())
    through_broker = reporter_from_settings(Settings(api_url=None))
    assert not isinstance(through_broker, HttpReporter)
    through_broker.close()


def test_the_dashboard_counts_calls_in_flight_days_and_the_confirmation_rate(
    console: Console,
) -> None:
    attempt_id = answered_attempt(console)  # an appointment two days ahead, its call going on
    clinic = clinic_id(console, "Clinic A")
    path = f"/api/v1/clinics/{clinic}/dashboard"
    before = console.client.get(path, headers=console.auth(STAFF_A)).json()
    assert before["in_flight"] == 1
    assert sum(d["appointments"] for d in before["upcoming_appointments"]) == 1
    assert len(before["confirmation_rate"]) == 14
    assert all(d["answered"] == 0 for d in before["confirmation_rate"])
    console.client.post(
        "/api/v1/reports",
        json={
            "attempt_id": attempt_id,
            "outcome": "confirmed",
            "token": report_token(attempt_id),
        },
    )
    after = console.client.get(path, headers=console.auth(STAFF_A)).json()
    assert after["in_flight"] == 0
    today = after["confirmation_rate"][-1]
    assert today["date"] == after["today"]
    assert (today["answered"], today["confirmed"], today["rate"]) == (1, 1, 1.0)
    assert after["status"]["outcomes"]["confirmed"] == 1
    other = clinic_id(console, "Clinic B")
    hidden = console.client.get(f"/api/v1/clinics/{other}/dashboard", headers=console.auth(STAFF_A))
    assert hidden.status_code == 404
