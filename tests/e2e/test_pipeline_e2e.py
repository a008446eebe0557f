"""The whole pipeline with real parts: `campaigns worker` and `campaigns beat`
processes, a real broker (Redis, or the server-less SQLite transport), a real
database, and the LiveKit simulator reached through the real livekit-api client."""

from __future__ import annotations

import itertools
import json
import sqlite3
import stat
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import col, select

from campaigns import audit, dnc
from campaigns.attempts import reports
from campaigns.models import (
    OPEN_ATTEMPT_STATES,
    Appointment,
    AttemptState,
    AuditEvent,
    CallAttempt,
    Clinic,
    DncSource,
)
from demo.daytime import local_number
from harness.processes import wait_until
from tests.e2e.pipeline_stack import Stack, pipeline_stack, setup_clinic
from workers import task_names


@pytest.fixture(params=["postgresql+redis", pytest.param("sqlite+embedded-broker", id="embedded")])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    yield from pipeline_stack(request, tmp_path, request.param, speed=30.0)


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
    clinic_id, appointment_ids = setup_clinic(stack)
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
    setup_clinic(stack, count=1)
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
    stack.send(task_names.PLACE_CALL, attempt_id)

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
    yield from pipeline_stack(request, tmp_path, "postgresql+redis", speed=1.0, scenario=scenario)


@pytest.mark.slow
@pytest.mark.postgres
def test_killing_a_worker_mid_call_never_dials_twice_and_loses_nothing(
    slow_ringing_stack: Stack,
) -> None:
    stack = slow_ringing_stack
    setup_clinic(stack, count=8, max_attempts=2)
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
