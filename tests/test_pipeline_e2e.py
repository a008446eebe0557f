"""The whole pipeline with real parts: `campaigns worker` and `campaigns beat`
processes, a real broker (Redis, or the server-less SQLite transport), a real
database, and the LiveKit simulator reached through the real livekit-api client."""

from __future__ import annotations

import itertools
import json
import os
import re
import sqlite3
import stat
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit, clinics, dnc
from campaigns.attempts import daily, reports
from campaigns.db import make_engine, session_factory
from campaigns.models import (
    OPEN_ATTEMPT_STATES,
    Appointment,
    AttemptState,
    AuditEvent,
    CallAttempt,
    Clinic,
    DncSource,
    Trunk,
)
from campaigns.settings import get_settings
from demo.daytime import daytime_zone, local_number
from simulator.testing import SimulatorHandle, running_simulator
from tests.conftest import fresh_database
from tests.pipeline_harness import Processes, processes, wait_until

TRUNK = "ST_pipeline"
_ROOM_ATTEMPT = re.compile(r"^appt-(\d+)-")


@dataclass
class Stack:
    engine: Engine
    env: dict[str, str]
    sim: SimulatorHandle
    procs: Processes
    broker_url: str
    zone: str

    def session(self) -> Session:
        return session_factory(self.engine)()

    def send(self, task: str, *args: Any) -> None:
        sender = Celery(broker=self.broker_url)
        try:
            sender.send_task(task, args=list(args))
        finally:
            sender.close()

    def open_attempts(self) -> int:
        with self.session() as s:
            return len(
                s.execute(
                    select(col(CallAttempt.id)).where(
                        col(CallAttempt.state).in_(OPEN_ATTEMPT_STATES)
                    )
                ).all()
            )

    def dials_per_attempt(self) -> Counter[int]:
        counts: Counter[int] = Counter()
        for call in self.sim.calls():
            match = _ROOM_ATTEMPT.match(call["room_name"])
            assert match, call["room_name"]
            counts[int(match.group(1))] += 1
        return counts


AUDIT_KEY = "pipeline-test-audit-key-0123456789abcdef"


def _redis_db(worker_id: str) -> int:
    # Concurrent test runs on one machine each set their own base index.
    base = int(os.environ.get("CAMPAIGNS_TEST_REDIS_DB", "5"))
    return base + (int(worker_id[2:]) if worker_id.startswith("gw") else 0)


@pytest.fixture(params=["postgresql+redis", pytest.param("sqlite+embedded-broker", id="embedded")])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(request, tmp_path, request.param, speed=30.0)


def _stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    kind: str,
    *,
    speed: float,
    scenario: dict[str, Any] | None = None,
) -> Iterator[Stack]:
    database = "postgresql" if kind.startswith("postgresql") else "sqlite"
    # The test process records and verifies audit events too: under the workers' key.
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("CAMPAIGNS_AUDIT_KEY", AUDIT_KEY)
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    env_extra: dict[str, str] = {}
    if kind.startswith("postgresql"):
        index = _redis_db(getattr(request.config, "workerinput", {}).get("workerid", "main"))
        broker_url = f"redis://127.0.0.1:6379/{index}"
        redis.Redis.from_url(broker_url).flushdb()
        env_extra["CAMPAIGNS_REDIS_URL"] = broker_url
    else:
        broker_url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    for url in fresh_database(database, request, tmp_path):
        engine = make_engine(url)
        zone = daytime_zone(datetime.now(UTC))
        with running_simulator(
            speed=speed, default_trunk_id=TRUNK, broker_url=broker_url, scenario=scenario or {}
        ) as sim:
            env = {
                "PATH": os.environ["PATH"],
                "HOME": os.environ.get("HOME", str(tmp_path)),
                "CAMPAIGNS_DATABASE_URL": url,
                "CAMPAIGNS_BROKER_URL": broker_url,
                "LIVEKIT_URL": sim.url,
                "LIVEKIT_API_KEY": sim.api_key,
                "LIVEKIT_API_SECRET": sim.api_secret,
                # Real-length secrets: outside the embedded default the worker refuses others.
                "CAMPAIGNS_REPORT_SECRET": "pipeline-test-report-secret-0123456789",
                "CAMPAIGNS_AUDIT_KEY": AUDIT_KEY,
                "CAMPAIGNS_TICK_SECONDS": "0.5",
                "CAMPAIGNS_RECONCILE_SECONDS": "1",
                "CAMPAIGNS_QUEUED_TIMEOUT_SECONDS": "10",
                "CAMPAIGNS_DIAL_GRACE_SECONDS": "3",
                "CAMPAIGNS_REPORT_GRACE_SECONDS": "5",
                "CAMPAIGNS_MAX_CALL_DURATION_SECONDS": "30",
                "CAMPAIGNS_PACING_MAX_WAIT_SECONDS": "2",
                **env_extra,
            }
            with processes(env, tmp_path) as procs:
                stack = Stack(engine, env, sim, procs, broker_url, zone)
                try:
                    yield stack
                except BaseException:
                    print(procs.logs())
                    raise
        engine.dispose()


def _setup_clinic(
    stack: Stack, count: int = 11, *, max_attempts: int = 3
) -> tuple[int, dict[str, int]]:
    """A clinic where it is early afternoon now, and one appointment per callee behaviour."""
    now = datetime.now(UTC)
    with stack.session() as s:
        spec = clinics.validate_spec(
            {
                "name": "Harbour Clinic",
                "timezone": stack.zone,
                "window": "00:00-23:59",
                "days": "mon,tue,wed,thu,fri,sat,sun",
                "trunk_id": TRUNK,
                "caller_id": "+12125550199",
                "max_attempts": max_attempts,
                "lead_days": "2",
            }
        )
        clinic = clinics.create_clinic(s, spec, actor="test")
        clinic.retry_base_seconds = 1
        clinic.retry_cap_seconds = 4
        clinic.min_gap_seconds = 1
        s.add(Trunk(sip_trunk_id=TRUNK, name="test trunk", calls_per_second=20, max_concurrent=50))
        assert clinic.id is not None
        appointment_ids: dict[str, int] = {}
        for n in range(count):
            suffix = f"{n:02d}"
            appointment = Appointment(
                clinic_id=clinic.id,
                external_id=f"APPT-{suffix}",
                patient_name=f"Patient {suffix}",
                phone_e164=local_number(stack.zone, "01" + suffix),
                patient_timezone=stack.zone,
                starts_at=now + timedelta(days=2),
            )
            s.add(appointment)
            s.flush()
            assert appointment.id is not None
            appointment_ids[suffix] = appointment.id
        local_today = now.astimezone(ZoneInfo(stack.zone)).date()
        result = daily.run_daily(s, clinic, local_today, now, actor="test")
        assert result.created == count
        s.commit()
        assert clinic.id is not None
        return clinic.id, appointment_ids


EXPECTED = {
    "00": ["confirmed"],
    "01": ["busy"] * 3,
    "02": ["no_answer"] * 3,
    "03": ["voicemail"] * 3,
    "04": ["declined"],
    "05": ["invalid_number"],
    "06": ["failed"] * 3,
    "07": ["cancelled"],
    "08": ["reschedule_requested"],
    "09": ["opted_out"],
    "10": ["wrong_number"],
}
FINAL_STATUS = {
    "00": "confirmed",
    "01": "unreached",
    "02": "unreached",
    "03": "unreached",
    "04": "scheduled",
    "05": "invalid_number",
    "06": "unreached",
    "07": "cancelled",
    "08": "reschedule_requested",
    "09": "opted_out",
    "10": "wrong_number",
}


@pytest.mark.slow
def test_a_campaign_ends_in_the_expected_outcomes_and_retries(stack: Stack) -> None:
    clinic_id, appointment_ids = _setup_clinic(stack)
    stack.procs.worker()
    stack.procs.beat()
    wait_until(lambda: stack.open_attempts() == 0, timeout=120, what="every attempt to finish")

    with stack.session() as s:
        by_appointment: dict[int, list[CallAttempt]] = defaultdict(list)
        for attempt in s.execute(
            select(CallAttempt).order_by(col(CallAttempt.attempt_number))
        ).scalars():
            by_appointment[attempt.appointment_id].append(attempt)
        for suffix, expected in EXPECTED.items():
            attempts = by_appointment[appointment_ids[suffix]]
            assert [a.outcome for a in attempts] == expected, suffix
            appointment = s.get(Appointment, appointment_ids[suffix])
            assert appointment is not None and appointment.status == FINAL_STATUS[suffix], suffix
            for earlier, later in itertools.pairwise(attempts):
                assert earlier.ended_at is not None and later.due_at >= earlier.ended_at
            gaps = [
                (later.due_at - earlier.ended_at).total_seconds()  # type: ignore[operator]
                for earlier, later in itertools.pairwise(attempts)
            ]
            assert gaps == sorted(gaps), f"backoff must grow for {suffix}: {gaps}"
            for attempt in attempts:
                decision = json.loads(attempt.decision or "{}")
                assert decision["allowed"], attempt.id
                for local in decision["callee_local_times"].values():
                    hour = datetime.fromisoformat(local).time()
                    assert clock_time(8) <= hour < clock_time(21)
        assert dnc.lookup(s, local_number(stack.zone, "0109"), clinic_id).blocked_by == ("clinic",)
        dialed = [a.id or 0 for group in by_appointment.values() for a in group if a.dialing_at]
        assert audit.verify(s).ok
        # Every simulated agent's report came back with its token unchanged and was applied.
        assert not s.execute(
            select(AuditEvent.seq).where(col(AuditEvent.kind) == reports.REPORT_REFUSED)
        ).all()
    assert sorted(stack.dials_per_attempt()) == sorted(dialed)
    assert set(stack.dials_per_attempt().values()) == {1}
    if stack.broker_url.startswith("sqla+"):
        stack.procs.stop_all()
        _assert_embedded_files_are_private_and_tidy(stack)


def _assert_embedded_files_are_private_and_tidy(stack: Stack) -> None:
    broker_file = Path(stack.broker_url.removeprefix("sqla+sqlite:///"))
    with closing(sqlite3.connect(broker_file)) as broker:
        consumed, waiting = broker.execute(
            "SELECT count(*) FILTER (WHERE NOT visible), count(*) FILTER (WHERE visible) "
            "FROM kombu_message"
        ).fetchone()
    assert consumed == 0, f"{consumed} consumed messages left in the broker ({waiting} waiting)"
    beat_data = stack.procs.workdir / "beat" / ".campaigns"
    assert stat.S_IMODE(beat_data.stat().st_mode) == 0o700
    created = [broker_file, *beat_data.glob("beat-schedule*")]
    assert len(created) > 1
    for path in created:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.slow
@pytest.mark.parametrize("change", ["dnc", "window"])
def test_a_change_between_enqueue_and_dial_stops_the_call(stack: Stack, change: str) -> None:
    _setup_clinic(stack, count=1)
    with stack.session() as s:
        attempt = s.execute(select(CallAttempt)).scalar_one()
        attempt.state = AttemptState.QUEUED
        attempt.queued_at = datetime.now(UTC)
        clinic = s.execute(select(Clinic)).scalar_one()
        if change == "dnc":
            dnc.add(
                s,
                attempt.number_called,
                clinic_id=None,
                source=DncSource.INTERNAL,
                reason="asked",
                actor="t",
            )
        else:
            local = datetime.now(ZoneInfo(stack.zone))
            clinic.window_start = clock_time((local.hour + 3) % 24, 0)
            clinic.window_end = clock_time((local.hour + 3) % 24, 30)
        s.commit()
        attempt_id = attempt.id
    stack.procs.worker()
    stack.send("campaigns.place_call", attempt_id)

    def settled() -> bool:
        with stack.session() as s:
            found = s.get(CallAttempt, attempt_id)
            return found is not None and found.state in (
                AttemptState.SKIPPED,
                AttemptState.SCHEDULED,
            )

    wait_until(settled, timeout=30, what="the worker to re-check the policy")
    with stack.session() as s:
        found = s.get(CallAttempt, attempt_id)
        assert found is not None and found.dialing_at is None
        if change == "dnc":
            assert found.state == AttemptState.SKIPPED and "dnc_listed" in (
                found.skip_reasons or ""
            )
        else:
            assert found.state == AttemptState.SCHEDULED and found.due_at > datetime.now(UTC)
    assert stack.sim.calls() == []


@pytest.fixture
def slow_ringing_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    # Speed 1 and a long ring, so the worker can be killed while calls ring.
    scenario = {
        "latency": {"answer": [6, 6], "call": [1, 1]},
        "suffixes": {f"{n:02d}": "confirmed" for n in range(8)},
    }
    yield from _stack(request, tmp_path, "postgresql+redis", speed=1.0, scenario=scenario)


@pytest.mark.slow
@pytest.mark.postgres
def test_killing_a_worker_mid_call_never_dials_twice_and_loses_nothing(
    slow_ringing_stack: Stack,
) -> None:
    stack = slow_ringing_stack
    _setup_clinic(stack, count=8, max_attempts=2)
    first = stack.procs.worker(name="worker-1")
    stack.procs.beat(name="beat-1")
    wait_until(lambda: len(stack.sim.calls()) >= 8, timeout=30, what="calls to ring")
    stack.procs.kill(first)
    stack.procs.worker(name="worker-2")
    stack.procs.beat(name="beat-2")  # two beats at once from here on
    wait_until(
        lambda: stack.open_attempts() == 0,
        timeout=120,
        what="reconciliation to settle every attempt",
    )

    assert set(stack.dials_per_attempt().values()) == {1}, "an attempt was dialed twice"
    with stack.session() as s:
        appointments = s.execute(select(Appointment)).scalars().all()
        assert len(appointments) == 8
        for appointment in appointments:
            attempts = (
                s.execute(
                    select(CallAttempt).where(col(CallAttempt.appointment_id) == appointment.id)
                )
                .scalars()
                .all()
            )
            assert attempts and all(a.state not in OPEN_ATTEMPT_STATES for a in attempts)
            assert appointment.status in ("confirmed", "unreached")
        assert audit.verify(s).ok
