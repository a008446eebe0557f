"""Crash recovery with real parts: a `campaigns worker` is SIGKILLed mid-flight and
its calls must be back in play within a minute with the default settings, none
dialed twice; a dial that hangs ends within the worker's limit, never re-dialed."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlmodel import col, select

from campaigns.models import AttemptState, CallAttempt, Trunk
from harness.processes import wait_until
from tests.e2e.pipeline_stack import TRUNK, Stack, pipeline_stack, setup_clinic

# Every recovery setting at its default: the stack's own shortcuts are dropped.
_SHORTCUTS = (
    "CAMPAIGNS_RECONCILE_SECONDS",
    "CAMPAIGNS_QUEUED_TIMEOUT_SECONDS",
    "CAMPAIGNS_DIAL_GRACE_SECONDS",
    "CAMPAIGNS_PACING_MAX_WAIT_SECONDS",
)
RECOVERY_LIMIT = 60.0


@pytest.fixture(params=["postgresql+redis", pytest.param("sqlite+embedded-broker", id="embedded")])
def ringing_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    # Real-time calls that ring 6 s then talk 1 s: a kill lands while calls ring.
    scenario = {
        "latency": {"answer": [6, 6], "call": [1, 1]},
        "suffixes": {f"{n:02d}": "confirmed" for n in range(10)},
    }
    yield from pipeline_stack(request, tmp_path, request.param, speed=1.0, scenario=scenario)


def _in_flight(stack: Stack) -> dict[int, tuple[str, str | None, datetime | None, str | None]]:
    with stack.session() as s:
        rows = s.execute(
            select(CallAttempt).where(
                col(CallAttempt.state).in_((AttemptState.QUEUED, AttemptState.DIALING))
            )
        ).scalars()
        return {a.id or 0: (a.state, a.worker_id, a.queued_at, a.room_name) for a in rows}


@pytest.mark.slow
def test_a_killed_workers_calls_are_back_in_play_within_a_minute(ringing_stack: Stack) -> None:
    stack = ringing_stack
    for name in _SHORTCUTS:
        stack.env.pop(name)
    setup_clinic(stack, count=10, max_attempts=2)
    with stack.session() as s:
        # One call a second: at the kill some calls ring, others wait for the trunk.
        trunk = s.get(Trunk, TRUNK)
        assert trunk is not None
        trunk.calls_per_second = 1
        s.commit()
    first = stack.procs.worker(name="worker-1")
    stack.procs.beat()
    wait_until(lambda: len(stack.sim.calls()) >= 3, timeout=60, what="calls to ring")
    stack.procs.kill(first)
    killed_at = time.monotonic()
    stranded = _in_flight(stack)
    ringing = {call["room_name"] for call in stack.sim.calls()}
    assert any(room in ringing for _, _, _, room in stranded.values())
    # Calls the worker had committed to dial but that still waited for the trunk's start.
    assert any(
        state == AttemptState.DIALING and worker and room not in ringing
        for state, worker, _, room in stranded.values()
    )
    stack.procs.worker(name="worker-2")  # a killed worker's successor starts at once

    def back_in_play() -> bool:
        now = _in_flight(stack)
        return all(now.get(attempt_id) != before for attempt_id, before in stranded.items())

    wait_until(back_in_play, timeout=RECOVERY_LIMIT, what="the killed worker's calls")
    assert time.monotonic() - killed_at <= RECOVERY_LIMIT
    wait_until(lambda: stack.open_attempts() == 0, timeout=120, what="every call to finish")

    assert set(stack.dials_per_attempt().values()) == {1}, "an attempt was dialed twice"
    numbers = Counter(call["sip_call_to"] for call in stack.sim.calls())
    assert set(numbers.values()) == {1}, "a number was dialed twice"
    assert len(numbers) == 10


@pytest.fixture
def unresponsive_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    # Every LiveKit request hangs for ten minutes: the dial never gets an answer.
    scenario = {"latency": {"api": [600, 600]}}
    yield from pipeline_stack(request, tmp_path, "postgresql+redis", speed=1.0, scenario=scenario)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_hanging_dial_ends_within_its_limit_and_is_never_redialed(
    unresponsive_stack: Stack,
) -> None:
    stack = unresponsive_stack
    stack.env["CAMPAIGNS_RINGING_TIMEOUT_SECONDS"] = "15"
    limit = 15 + 3 / 2  # ringing timeout + half the dial grace (3 s in this stack)
    setup_clinic(stack, count=1, max_attempts=1)
    stack.procs.worker()
    stack.procs.beat()

    def first_attempt() -> CallAttempt:
        with stack.session() as s:
            return s.execute(select(CallAttempt)).scalars().one()

    wait_until(lambda: first_attempt().dialing_at is not None, timeout=30, what="the dial")
    wait_until(
        lambda: first_attempt().state == AttemptState.FAILED,
        timeout=limit + 10,
        what="the worker to give the dial up",
    )
    attempt = first_attempt()
    assert attempt.ended_at is not None and attempt.dialing_at is not None
    assert (attempt.ended_at - attempt.dialing_at).total_seconds() < limit + 3
    assert "may have been placed" in (attempt.error or "")
    time.sleep(3)  # reconciliation runs every second here: it must not dial it again
    with stack.session() as s:
        attempts = s.execute(select(CallAttempt)).scalars().all()
    assert [(a.state, a.dialing_at) for a in attempts] == [
        (AttemptState.FAILED, attempt.dialing_at)
    ]
    assert len(stack.sim.calls()) <= 1
