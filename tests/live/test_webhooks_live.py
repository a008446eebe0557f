"""The real livekit-server's webhooks, end to end.

The stack's webhooks go to ``console_port`` (``tests/live/conftest.py``). One
test listens there itself and records what the server sends, byte for byte, and
checks that the simulator signs its webhooks the same way. The other starts
``campaigns serve`` there on a fresh database with the stack's API key and
secret, dials an answered call through the engine with no agent running, closes
the room, and watches the server's own ``participant_left`` and
``room_finished`` settle the attempt as the webhook path decides: ``failed``,
ambiguous, "reconciled: no report from the agent". A webhook signed with any
other secret is refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from livekit.api import TokenVerifier, WebhookReceiver
from livekit.protocol.models import Room
from livekit.protocol.webhook import WebhookEvent
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns.attempts import daily
from campaigns.attempts.pipeline import Pipeline
from campaigns.attempts.reconcile import RECONCILED
from campaigns.db import get_engine, make_engine, session_factory
from campaigns.models import Appointment, AttemptState, AuditEvent, CallAttempt
from campaigns.settings import get_settings
from campaigns.telephony.livekit_gateway import LiveKitTelephony
from campaigns.telephony.pacing.local_pacer import LocalPacer
from campaigns.telephony.port import CallRequest
from demo.daytime import daytime_zone, local_number
from harness.clinics import always_open_clinic
from harness.livekit.stack import LiveKitStack
from harness.processes import ProcessGroup, http_ok, processes, wait_until
from simulator.testing import running_simulator
from simulator.webhooks import sign_webhook
from tests.conftest import fresh_database
from tests.live.targets import CALLER_ID, SUFFIX, LiveKitTarget, SimulatorTarget, Target
from workers.runtime import EventLoopThread

AUDIT_KEY = "live-webhooks-audit-key-0123456789abcdef"
REPORT_SECRET = "live-webhooks-report-secret-0123456789"
WRONG_SECRET = "not-the-stack-secret-but-long-enough-for-hs256"
_serial = iter(range(10, 100))


# --------------------------------------------------------------------------- the wire


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """An HTTP endpoint on the console's port that keeps every webhook it is sent."""

    deliveries: list[Delivery] = field(default_factory=list)

    def for_room(self, room: str) -> list[tuple[Delivery, dict[str, Any]]]:
        found = []
        for delivery in list(self.deliveries):
            event = json.loads(delivery.body)
            if event.get("room", {}).get("name") == room:
                found.append((delivery, event))
        return found


@pytest.fixture
def recorder(console_port: int) -> Iterator[Recorder]:
    kept = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            kept.deliveries.append(Delivery(dict(self.headers.items()), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", console_port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="webhook-recorder", daemon=True)
    thread.start()
    try:
        yield kept
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def answered_call(target: Target, room: str, identity: str) -> None:
    """Dial an answering callee into ``room`` (no agent: nobody reports), then close it."""
    request = CallRequest(
        attempt_id=next(_serial),
        room_name=room,
        participant_identity=identity,
        trunk_id=target.trunk_id,
        call_to=f"+1212555{next(_serial):02d}{SUFFIX['confirmed']}",
        caller_id=CALLER_ID,
        agent_name="live-webhooks-no-agent",
        agent_metadata={},
        ringing_timeout=timedelta(seconds=15),
        max_call_duration=timedelta(minutes=2),
    )

    async def go() -> None:
        async with LiveKitTelephony(target.url, target.api_key, target.api_secret) as tel:
            assert (await tel.place_call(request)).answered
            await tel.hang_up(room)

    asyncio.run(go())


def claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


@pytest.fixture(params=["simulator", pytest.param("livekit", marks=pytest.mark.live)])
def sender(
    request: pytest.FixtureRequest, recorder: Recorder, console_port: int
) -> Iterator[Target]:
    """A LiveKit whose webhooks go to the recorder: the real server, or a simulator."""
    if request.param == "livekit":
        yield request.getfixturevalue("livekit_target")
        return
    webhook = f"http://127.0.0.1:{console_port}/livekit/webhook"
    with running_simulator(
        speed=200, default_trunk_id="ST_wire", webhook_url=webhook, departure_timeout=0.5
    ) as sim:
        # SimulatorTarget is a Target by behaviour; its properties are read-only.
        yield cast(Target, SimulatorTarget(sim, "ST_wire"))


def test_webhooks_on_the_wire(recorder: Recorder, sender: Target) -> None:
    """What the real server sends for an answered call whose room is deleted; the
    simulator sends the same, signed the same way."""
    room = f"wire-{sender.name}-{os.getpid()}-{next(_serial)}"
    answered_call(sender, room, "patient-wire")
    wait_until(
        lambda: any(e["event"] == "room_finished" for _, e in recorder.for_room(room)),
        timeout=30,
        what=f"room_finished from {sender.name}",
    )
    seen = recorder.for_room(room)
    names = [event["event"] for _, event in seen]
    # One room's events are delivered one at a time, in order.
    assert names[-2:] == ["participant_left", "room_finished"]

    receiver = WebhookReceiver(TokenVerifier(sender.api_key, sender.api_secret))
    for delivery, event in seen:
        # A bare JWT (no "Bearer "), the webhook's own media type, a compact JSON body.
        token = delivery.headers["Authorization"]
        assert not token.startswith("Bearer ")
        assert delivery.headers["Content-Type"] == "application/webhook+json"
        assert b"\n" not in delivery.body and b'": ' not in delivery.body
        assert receiver.receive(delivery.body.decode(), token).event == event["event"]
        got = claims(token)
        assert set(got) == {"iss", "exp", "nbf", "iat", "sha256"}
        assert got["iss"] == sender.api_key
        assert got["exp"] - got["iat"] == 300  # valid for five minutes
        assert event["id"].startswith("EV_") and int(event["createdAt"]) > 0

    left = next(event for _, event in seen if event["event"] == "participant_left")
    assert left["participant"]["identity"] == "patient-wire"
    assert left["participant"]["kind"] == "SIP"
    finished = next(event for _, event in seen if event["event"] == "room_finished")
    assert finished["room"]["sid"].startswith("RM_")
    if sender.name == "livekit":
        # What only the real server sends (the simulator's events are built in
        # simulator/state.py): the room's start, the callee joining while it rings,
        # its audio track, and why the callee left.
        assert names[0] == "room_started" and "participant_joined" in names
        assert "track_published" in names
        assert left["participant"]["disconnectReason"] == "ROOM_DELETED"
        assert left["participant"]["state"] == "DISCONNECTED"
        assert left["room"]["sid"] == finished["room"]["sid"]


# --------------------------------------------------------------------------- the console


@dataclass
class LiveConsole:
    url: str
    engine: Engine
    procs: ProcessGroup
    zone: str

    def session(self) -> Session:
        return session_factory(self.engine)()

    def attempt(self, attempt_id: int) -> CallAttempt:
        with self.session() as s:
            found = s.get(CallAttempt, attempt_id)
            assert found is not None
            s.expunge(found)
            return found

    def events(self, kind: str, attempt_id: int | None = None) -> list[AuditEvent]:
        query = select(AuditEvent).where(col(AuditEvent.kind) == kind)
        if attempt_id is not None:
            query = query.where(col(AuditEvent.attempt_id) == attempt_id)
        with self.session() as s:
            return list(s.execute(query.order_by(col(AuditEvent.id))).scalars())

    def webhooks_for(self, room: str) -> list[dict[str, Any]]:
        payloads = [json.loads(e.payload) for e in self.events("livekit.webhook")]
        return [p for p in payloads if p["room"] == room]


def start_console(procs: ProcessGroup, port: int) -> None:
    served = procs.start("console", "serve", "--port", str(port))
    wait_until(
        lambda: http_ok(f"http://127.0.0.1:{port}/login") or served.popen.poll() is not None,
        timeout=30,
        what="campaigns serve",
    )
    assert served.popen.poll() is None, procs.tail("console")


@pytest.fixture
def console(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    livekit_stack: LiveKitStack,
    livekit_target: LiveKitTarget,
    console_port: int,
) -> Iterator[LiveConsole]:
    """``campaigns serve`` on the stack's webhook port, on a fresh database, with one
    clinic open now whose calls go through the trunk to the phones."""
    for url in fresh_database("sqlite", request, tmp_path):
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", str(tmp_path)),
            "CAMPAIGNS_DATABASE_URL": url,
            "CAMPAIGNS_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
            "CAMPAIGNS_REPORT_SECRET": REPORT_SECRET,
            "CAMPAIGNS_AUDIT_KEY": AUDIT_KEY,
            "CAMPAIGNS_LIVEKIT_TRUNK_ID": livekit_target.trunk_id,
            **livekit_stack.env(),
        }
        # This process dials and audits too: with the console's settings.
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        get_engine.cache_clear()
        engine = make_engine(url)
        base = f"http://127.0.0.1:{console_port}"
        try:
            with processes(env, tmp_path) as procs:
                start_console(procs, console_port)
                try:
                    yield LiveConsole(base, engine, procs, daytime_zone(datetime.now(UTC)))
                except BaseException:
                    print(procs.logs())
                    raise
        finally:
            engine.dispose()
            get_engine.cache_clear()
            get_settings.cache_clear()


def schedule_one_call(console: LiveConsole, trunk_id: str) -> int:
    """A clinic open now, one appointment whose callee answers and talks, its attempt due."""
    now = datetime.now(UTC)
    with console.session() as s:
        clinic = always_open_clinic(
            s,
            "Live Clinic",
            console.zone,
            trunk_id,
            max_attempts=2,
            cps=5,
            max_concurrent=5,
            actor="test",
        )
        clinic.caller_id = CALLER_ID  # a number of the trunk's
        assert clinic.id is not None
        s.add(
            Appointment(
                clinic_id=clinic.id,
                external_id="L-1",
                patient_name="Live Patient",
                phone_e164=local_number(console.zone, f"{next(_serial):02d}{SUFFIX['confirmed']}"),
                patient_timezone=console.zone,
                starts_at=now + timedelta(days=2),
            )
        )
        s.flush()
        daily.run_daily(s, clinic, now.astimezone(ZoneInfo(console.zone)).date(), now, actor="test")
        s.commit()
        [attempt_id] = s.execute(select(col(CallAttempt.id))).scalars()
        assert attempt_id is not None
        return attempt_id


@pytest.fixture
def engine_pipeline(console: LiveConsole) -> Iterator[Pipeline]:
    """The engine's pipeline as a worker builds it, pointed at the stack."""
    settings = get_settings()
    io = EventLoopThread()
    telephony = LiveKitTelephony.from_settings(settings)
    yield Pipeline(
        sessions=session_factory(console.engine),
        settings=settings,
        pacer=LocalPacer(),
        telephony=telephony,
        run=io.run,
    )
    io.run(telephony.aclose(), timeout=10)
    io.loop.call_soon_threadsafe(io.loop.stop)
    wait_until(lambda: not io.loop.is_running(), timeout=10, what="the I/O loop to stop")
    io.loop.close()


def post(url: str, body: bytes, token: str) -> int:
    """POST a webhook as LiveKit does (loopback, no proxy); the HTTP status."""
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Authorization": token, "Content-Type": "application/webhook+json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return refused.code


@pytest.mark.live
def test_the_real_servers_webhooks_settle_an_answered_call_nobody_reported(
    console: LiveConsole, engine_pipeline: Pipeline, livekit_target: LiveKitTarget
) -> None:
    attempt_id = schedule_one_call(console, livekit_target.trunk_id)
    sent: list[int] = []
    engine_pipeline.tick(sent.extend)
    assert sent == [attempt_id]
    assert engine_pipeline.place_call(attempt_id) == AttemptState.ANSWERED
    attempt = console.attempt(attempt_id)
    assert attempt.room_name and attempt.participant_identity
    room = attempt.room_name

    # Signed with another secret: refused, audited nowhere, and the call stays answered.
    body, token = sign_webhook(
        WebhookEvent(event="room_finished", id="EV_forged", room=Room(name=room)),
        livekit_target.api_key,
        WRONG_SECRET,
    )
    refused = post(f"{console.url}/livekit/webhook", body, token)
    assert refused == 401
    assert console.attempt(attempt_id).state == AttemptState.ANSWERED
    assert not any(w["id"] == "EV_forged" for w in console.webhooks_for(room))

    # The call ends (the room is deleted, as the agent's hang-up does); nobody reports.
    started = time.monotonic()
    engine_pipeline._hang_up(room)
    wait_until(
        lambda: console.attempt(attempt_id).state != AttemptState.ANSWERED,
        timeout=30,
        what="the console to settle the attempt from livekit-server's webhooks",
    )
    settled_in = time.monotonic() - started

    row = console.attempt(attempt_id)
    assert row.state == AttemptState.FAILED and row.outcome == "failed"
    assert row.error == RECONCILED + "no report from the agent"
    [failed] = console.events("attempt.failed", attempt_id)
    payload = json.loads(failed.payload)
    assert payload["ambiguous"] is True and payload["outcome"] == "failed"
    assert failed.actor == "scheduler"
    # A failed call is retried like any other: the next attempt is on the schedule.
    [retry] = console.events("attempt.scheduled")
    assert retry.attempt_id != attempt_id
    assert json.loads(retry.payload)["after_outcome"] == "failed"
    assert console.attempt(retry.attempt_id or 0).state == AttemptState.SCHEDULED

    # Every event the server sent for the room was verified and audited, in order; the
    # callee leaving settled nothing, the room finishing settled the call.
    wait_until(
        lambda: any(w["event"] == "room_finished" for w in console.webhooks_for(room)),
        timeout=10,
        what="room_finished in the audit log",
    )
    seen = console.webhooks_for(room)
    names = [w["event"] for w in seen]
    assert names[0] == "room_started" and "participant_joined" in names
    assert names[-2:] == ["participant_left", "room_finished"]
    left, finished = seen[-2:]
    assert left["participant"] == attempt.participant_identity and left["action"] is None
    assert finished["action"] == "failed" and finished["id"].startswith("EV_")
    assert all(w["action"] is None for w in seen[:-1])
    assert settled_in < 10, f"settled {settled_in:.1f}s after the room closed"
