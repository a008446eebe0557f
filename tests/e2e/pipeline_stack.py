"""The real pipeline for end-to-end tests: `campaigns worker` and `campaigns beat`
processes (``harness.processes``), a real broker, a fresh database and the LiveKit
simulator in-process over HTTP, plus a clinic with one appointment per callee behaviour."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns.attempts import daily
from campaigns.db import make_engine, session_factory
from campaigns.models import (
    OPEN_ATTEMPT_STATES,
    Appointment,
    CallAttempt,
)
from campaigns.settings import get_settings
from demo.daytime import daytime_zone, local_number
from harness.clinics import always_open_clinic
from harness.processes import ProcessGroup, processes
from simulator.testing import SimulatorHandle, running_simulator
from tests.conftest import fresh_database

TRUNK = "ST_pipeline"
_ROOM_ATTEMPT = re.compile(r"^appt-(\d+)-")


@dataclass
class Stack:
    engine: Engine
    env: dict[str, str]
    sim: SimulatorHandle
    procs: ProcessGroup
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


def _redis_server() -> str:
    # The server of the pacing tests' CAMPAIGNS_TEST_REDIS_URL; the index is _redis_db's.
    url = urlsplit(os.environ.get("CAMPAIGNS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return f"{url.scheme}://{url.netloc}"


def pipeline_stack(
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
        broker_url = f"{_redis_server()}/{index}"
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


def setup_clinic(
    stack: Stack, count: int = 11, *, max_attempts: int = 3
) -> tuple[int, dict[str, int]]:
    """A clinic where it is early afternoon now, and one appointment per callee behaviour."""
    now = datetime.now(UTC)
    with stack.session() as s:
        clinic = always_open_clinic(
            s,
            "Harbour Clinic",
            stack.zone,
            TRUNK,
            max_attempts=max_attempts,
            cps=20,
            max_concurrent=50,
            actor="test",
        )
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
