"""The console in a real browser (Playwright driving the system's Chromium),
used as a person would: elements found by role and label."""

from __future__ import annotations

import csv
import io
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import uvicorn
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import users
from campaigns.attempts import daily
from campaigns.attempts.pipeline import Pipeline
from campaigns.db import make_engine, session_factory
from campaigns.models import Appointment, AttemptState, AuditEvent, CallAttempt, Clinic
from campaigns.telephony.pacing.local_pacer import LocalPacer
from console.app import create_app
from demo.daytime import daytime_zone, local_number
from harness.clinics import always_open_clinic
from harness.processes import processes, wait_until
from simulator.testing import running_simulator
from tests.conftest import fresh_database
from tests.console_support import PASSWORD, REPORT_SECRET, console_settings
from tests.factories import add_appointment, add_clinic

CHROMIUM = os.environ.get("CAMPAIGNS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the dev extra's playwright package is not installed"
)
if not Path(CHROMIUM).exists():
    pytest.skip(f"Chromium is not installed at {CHROMIUM}", allow_module_level=True)
expect = sync_api.expect

STAFF = "nurse@example.org"
REVIEWER = "auditor@example.org"
# Set to a folder (docs/screenshots) to keep a screenshot of each main page.
_SCREENSHOT_DIR = os.environ.get("CAMPAIGNS_SCREENSHOTS")
SCREENSHOTS = Path(_SCREENSHOT_DIR) if _SCREENSHOT_DIR else None

BAD_ROWS_CSV = (
    "Appointment ID,Patient Name,Phone,Date,Time,Provider\n"
    "B-1,<script>alert(1)</script>,(212) 555-0100,2030-01-15,9:00,Dr. Ahmed\n"
    'B-2,=HYPERLINK("http://evil.example"),(212) 555-0101,2030-01-15,10:30,Dr. Baker\n'
    "B-3,No Phone,,2030-01-15,11:00,Dr. Baker\n"
    "B-4,Bad Date,(212) 555-0103,2030-13-45,11:00,Dr. Baker\n"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveConsole:
    url: str
    engine: Engine
    clinic_id: int

    def session(self) -> Session:
        return session_factory(self.engine)()

    def events(self, kind: str) -> list[AuditEvent]:
        with self.session() as s:
            return list(s.execute(select(AuditEvent).where(col(AuditEvent.kind) == kind)).scalars())


def serve_console(engine: Engine, url: str, **settings: Any) -> Iterator[str]:
    """The console on a free loopback port, in a thread, until the test ends."""
    pipeline = Pipeline(
        sessions=session_factory(engine),
        settings=console_settings(url, **settings),
        pacer=LocalPacer(),
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(pipeline), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, what="the console to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def add_people(engine: Engine, clinic: str) -> None:
    with session_factory(engine)() as s:
        users.add_user(s, STAFF, "staff", PASSWORD, clinic_names=[clinic], actor="test")
        users.add_user(s, REVIEWER, "reviewer", PASSWORD, actor="test")
        s.commit()


@pytest.fixture
def console(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveConsole]:
    for url in fresh_database("sqlite", request, tmp_path):
        engine = make_engine(url)
        with session_factory(engine)() as s:
            clinic = add_clinic(s, name="Lakeside Clinic")
            assert clinic.id is not None
            clinic_id = clinic.id
            s.commit()
        add_people(engine, "Lakeside Clinic")
        for base in serve_console(engine, url):
            yield LiveConsole(base, engine, clinic_id)
        engine.dispose()


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A fresh browser tab. Playwright's sync API runs an event loop on this thread
    while it is open, so other loops (the simulator's) must start and stop outside it."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1200, "height": 900}
        )
        context.set_default_timeout(15_000)
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


@pytest.fixture
def page() -> Iterator[Any]:
    with chromium_page() as tab:
        yield tab


def sign_in(page: Any, base: str, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def screenshot(page: Any, name: str) -> None:
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_sign_in_and_a_wrong_password(console: LiveConsole, page: Any) -> None:
    page.goto(f"{console.url}/clinics/{console.clinic_id}")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    screenshot(page, "sign-in")
    sign_in(page, console.url, STAFF, "not the password")
    expect(page.get_by_role("alert")).to_contain_text("wrong email or password")
    sign_in(page, console.url, STAFF)
    expect(page.get_by_role("heading", name="Lakeside Clinic")).to_be_visible()
    expect(page.get_by_role("heading", name="Attempts by state")).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "campaigns_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert [e.actor for e in console.events("user.login")] == [f"user:{STAFF}"]
    assert [e.actor for e in console.events("user.login_failed")] == [f"user:{STAFF}"]


def test_upload_a_csv_and_see_its_bad_rows(console: LiveConsole, page: Any, tmp_path: Path) -> None:
    sign_in(page, console.url, STAFF)
    page.get_by_role("link", name="Upload").click()
    file = tmp_path / "appointments.csv"
    file.write_text(BAD_ROWS_CSV)
    page.get_by_label("Appointments CSV").set_input_files(str(file))
    page.get_by_role("button", name="Upload").click()
    rejected = page.get_by_role("table", name="Rejected rows")
    expect(rejected).to_be_visible()
    headers = rejected.get_by_role("columnheader")
    expect(headers).to_have_text(["Line", "Column", "Reason"])
    rows = rejected.get_by_role("row")
    expect(rows).to_have_count(3)  # the header and two rejected rows
    expect(rows.nth(1)).to_contain_text("4")
    expect(rows.nth(1)).to_contain_text("Phone")
    expect(rows.nth(2)).to_contain_text("Date")
    expect(page.get_by_text("2 imported")).to_be_visible()
    screenshot(page, "upload")

    # Patient-supplied text is shown as text: no script runs, a formula is not a formula.
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.get_by_role("link", name="Appointments").click()
    table = page.get_by_role("table", name="Appointments")
    expect(table.get_by_role("cell", name="<script>alert(1)</script>")).to_be_visible()
    expect(table.get_by_role("cell", name='\'=HYPERLINK("http://evil.example")')).to_be_visible()
    assert dialogs == []


def add_called_appointment(console: LiveConsole) -> int:
    now = datetime.now(UTC)
    with console.session() as s:
        clinic = s.get(Clinic, console.clinic_id)
        assert clinic is not None
        appointment = add_appointment(s, clinic, external_id="T-100", patient_name="Grace Hopper")
        assert appointment.id is not None
        s.add(
            CallAttempt(
                appointment_id=appointment.id,
                clinic_id=console.clinic_id,
                attempt_number=1,
                state=AttemptState.FAILED,
                outcome="busy",
                due_at=now - timedelta(hours=2),
                dialing_at=now - timedelta(hours=2),
                ended_at=now - timedelta(hours=2),
                number_called=appointment.phone_e164,
                sip_status_code=486,
                sip_status="Busy Here",
            )
        )
        s.add(
            CallAttempt(
                appointment_id=appointment.id,
                clinic_id=console.clinic_id,
                attempt_number=2,
                state=AttemptState.SCHEDULED,
                due_at=now + timedelta(hours=1),
                number_called=appointment.phone_e164,
            )
        )
        s.commit()
        return appointment.id


def test_an_appointments_timeline_and_why_it_is_not_called_now(
    console: LiveConsole, page: Any
) -> None:
    add_called_appointment(console)
    sign_in(page, console.url, STAFF)
    page.get_by_role("link", name="Appointments").click()
    page.get_by_label("Search").fill("hopper")
    page.get_by_role("button", name="Search").click()
    screenshot(page, "appointments")
    page.get_by_role("link", name="T-100").click()
    timeline = page.get_by_role("table", name="Timeline")
    rows = timeline.get_by_role("row")
    expect(rows).to_have_count(3)
    expect(rows.nth(1)).to_contain_text("busy")
    expect(rows.nth(1)).to_contain_text("486 Busy Here")
    expect(rows.nth(2)).to_contain_text("scheduled")
    expect(page.get_by_role("heading", name="Why (not) called now")).to_be_visible()
    expect(
        page.get_by_text("May not be called now").or_(page.get_by_text("May be called now"))
    ).to_be_visible()
    screenshot(page, "appointment")


def test_a_reviewer_exports_the_audit_log(console: LiveConsole, page: Any) -> None:
    sign_in(page, console.url, REVIEWER)
    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("table", name="Audit events")).to_contain_text("user.login")
    page.get_by_role("button", name="Verify the chain").click()
    expect(page.get_by_role("status")).to_contain_text("Intact")
    screenshot(page, "audit")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    download = download_info.value
    text = Path(download.path()).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {"user.login", "user.added"} <= {r["kind"] for r in rows}
    assert [e.actor for e in console.events("audit.exported")] == [f"user:{REVIEWER}"]


def test_staff_cannot_open_the_audit_log(console: LiveConsole, page: Any) -> None:
    sign_in(page, console.url, STAFF)
    expect(page.get_by_role("link", name="Audit log")).to_have_count(0)
    response = page.goto(f"{console.url}/audit")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.get_by_role("table", name="Audit events")).to_have_count(0)


# --------------------------------------------------------------------------- a running campaign

TRUNK = "ST_console"


def _campaign(engine: Engine, zone: str, count: int) -> int:
    """A clinic open at any hour with ``count`` calls due now; the numbers are local to
    ``zone``, so every zone the policy considers for a callee is in the afternoon."""
    now = datetime.now(UTC)
    with session_factory(engine)() as s:
        clinic = always_open_clinic(
            s, "Harbour Clinic", zone, TRUNK, max_attempts=1, cps=5, max_concurrent=5, actor="test"
        )
        assert clinic.id is not None
        for n in range(count):
            s.add(
                Appointment(
                    clinic_id=clinic.id,
                    external_id=f"H-{n:02d}",
                    patient_name=f"Patient {n:02d}",
                    phone_e164=local_number(zone, f"01{n:02d}"),
                    patient_timezone=zone,
                    starts_at=now + timedelta(days=2),
                )
            )
        s.flush()
        local_today = now.astimezone(ZoneInfo(zone)).date()
        daily.run_daily(s, clinic, local_today, now, actor="test")
        s.commit()
        return clinic.id


def room_finished_webhook_seen(console: LiveConsole) -> bool:
    return any('"room_finished"' in e.payload for e in console.events("livekit.webhook"))


@pytest.mark.slow
def test_the_dashboard_follows_a_running_campaign(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A worker and beat (subprocesses) call through the simulator while the page is open;
    the simulator's signed webhooks reach the console."""
    for url in fresh_database("sqlite", request, tmp_path):
        engine = make_engine(url)
        zone = daytime_zone(datetime.now(UTC))
        clinic_id = _campaign(engine, zone, count=4)
        add_people(engine, "Harbour Clinic")
        broker_url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
        for base in serve_console(engine, url):
            with (
                running_simulator(
                    speed=20,
                    default_trunk_id=TRUNK,
                    broker_url=broker_url,
                    departure_timeout=0.5,
                    webhook_url=f"{base}/livekit/webhook",
                ) as sim,
                chromium_page() as page,
            ):
                sign_in(page, base, STAFF)
                expect(page.get_by_role("heading", name="Harbour Clinic")).to_be_visible()
                states = page.get_by_role("table", name="Attempts by state")
                expect(states.get_by_role("row", name="scheduled 4")).to_be_visible()
                env = {
                    "PATH": os.environ["PATH"],
                    "HOME": os.environ.get("HOME", str(tmp_path)),
                    "CAMPAIGNS_DATABASE_URL": url,
                    "CAMPAIGNS_BROKER_URL": broker_url,
                    "LIVEKIT_URL": sim.url,
                    "LIVEKIT_API_KEY": sim.api_key,
                    "LIVEKIT_API_SECRET": sim.api_secret,
                    "CAMPAIGNS_REPORT_SECRET": REPORT_SECRET,
                    "CAMPAIGNS_TICK_SECONDS": "0.5",
                    "CAMPAIGNS_RECONCILE_SECONDS": "1",
                }
                with processes(env, tmp_path) as procs:
                    procs.worker(concurrency=8)
                    procs.beat()
                    try:
                        # The page refreshes itself: no reload here.
                        expect(states.get_by_role("row", name="scheduled 0")).to_be_visible(
                            timeout=90_000
                        )
                        expect(states.get_by_role("row", name="queued 0")).to_be_visible(
                            timeout=90_000
                        )
                        expect(states.get_by_role("row", name="dialing 0")).to_be_visible(
                            timeout=90_000
                        )
                        expect(states.get_by_role("row", name="answered 0")).to_be_visible(
                            timeout=90_000
                        )
                        expect(page.get_by_test_id("in-flight")).to_have_text("0")
                        screenshot(page, "dashboard")
                        live = LiveConsole(base, engine, clinic_id)
                        wait_until(
                            partial(room_finished_webhook_seen, live),
                            timeout=30,
                            what="a room_finished webhook from the simulator",
                        )
                    except BaseException:
                        print(procs.logs())
                        raise
                assert len(sim.calls()) == 4
        engine.dispose()
