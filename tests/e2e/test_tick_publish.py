"""The tick's messages with real parts: published by the tick's own publisher after its
claim commits, taken by a `campaigns worker` process that places the calls; and a
publish cut short after the commit leaves its attempts queued until reconciliation
queues them again, each then dialed exactly once."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlmodel import col, select

from campaigns import audit
from campaigns.attempts.pipeline import Pipeline
from campaigns.db import session_factory
from campaigns.models import AttemptState, CallAttempt
from campaigns.settings import Settings, get_settings
from campaigns.telephony.pacing.local_pacer import LocalPacer
from harness.processes import wait_until
from tests.e2e.pipeline_stack import Stack, pipeline_stack, setup_clinic
from workers import task_names
from workers.celery_app import make_app
from workers.publish import CallPublisher

CALLS = 10
# Every callee confirms at once: each attempt is the appointment's last.
_SCENARIO = {"suffixes": {f"{n:02d}": "confirmed" for n in range(CALLS)}}


@pytest.fixture(params=["postgresql+redis", pytest.param("sqlite+embedded-broker", id="embedded")])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    yield from pipeline_stack(request, tmp_path, request.param, speed=30.0, scenario=_SCENARIO)


@pytest.fixture
def redis_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    yield from pipeline_stack(request, tmp_path, "postgresql+redis", speed=30.0, scenario=_SCENARIO)


def _workers_app(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Celery:
    monkeypatch.setenv("CAMPAIGNS_BROKER_URL", stack.broker_url)
    get_settings.cache_clear()
    try:
        importlib.import_module("workers.tasks")  # the tasks, shared with every app
        return make_app()
    finally:
        get_settings.cache_clear()


def _pipeline(stack: Stack, batch: int, clock_ahead: timedelta = timedelta(0)) -> Pipeline:
    return Pipeline(
        sessions=session_factory(stack.engine),
        settings=Settings(database_url=stack.env["CAMPAIGNS_DATABASE_URL"], tick_batch=batch),
        pacer=LocalPacer(),
        clock=lambda: datetime.now(UTC) + clock_ahead,
    )


def _states(stack: Stack) -> dict[int, str]:
    with stack.session() as s:
        return {row.id: row.state for row in s.execute(select(CallAttempt.id, CallAttempt.state))}


@pytest.mark.slow
def test_a_ticks_messages_are_taken_by_the_worker_and_each_call_placed_once(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup_clinic(stack, count=CALLS)
    app = _workers_app(stack, monkeypatch)
    publisher = CallPublisher(app, task_names.PLACE_CALL)
    try:
        # Three batches (4, 4, 2), each published once its claim has committed.
        result = _pipeline(stack, batch=4).tick(send=publisher.publish)
    finally:
        app.close()
    assert len(result.queued) == CALLS
    assert set(_states(stack).values()) == {AttemptState.QUEUED}

    stack.procs.worker()
    # A call whose paced start the worker missed goes back on the schedule for the next tick.
    stack.procs.beat()
    wait_until(lambda: stack.open_attempts() == 0, timeout=90, what="every call to be placed")

    assert stack.dials_per_attempt() == dict.fromkeys(result.queued, 1)
    assert set(_states(stack).values()) == {AttemptState.COMPLETED}
    with stack.session() as s:
        assert audit.verify(s).ok


@pytest.mark.slow
@pytest.mark.postgres
def test_a_publish_cut_short_after_the_claim_loses_no_call_and_dials_none_twice(
    redis_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = redis_stack
    setup_clinic(stack, count=CALLS)
    app = _workers_app(stack, monkeypatch)
    publisher = CallPublisher(app, task_names.PLACE_CALL)
    queue = redis.Redis.from_url(stack.broker_url)

    def cut_short(attempt_ids: list[int]) -> None:
        publisher.publish(attempt_ids[: len(attempt_ids) // 2])
        raise ConnectionError("the broker went away mid-publish")

    try:
        with pytest.raises(ConnectionError):
            _pipeline(stack, batch=100).tick(send=cut_short)
        # Committed, half of them sent: the other half would be lost but for the database.
        assert set(_states(stack).values()) == {AttemptState.QUEUED}
        assert queue.llen("celery") == CALLS // 2

        timeout = timedelta(seconds=Settings().queued_timeout_seconds + 1)
        later = _pipeline(stack, batch=100, clock_ahead=timeout)
        assert later.reconcile() == {"rescheduled": CALLS}
        again = later.tick(send=publisher.publish)
    finally:
        app.close()
    assert len(again.queued) == CALLS
    assert queue.llen("celery") == CALLS + CALLS // 2  # half the calls have two messages

    stack.procs.worker()
    stack.procs.beat()
    wait_until(lambda: stack.open_attempts() == 0, timeout=90, what="every call to be placed")
    wait_until(lambda: queue.llen("celery") == 0, timeout=30, what="every message to be taken")

    assert stack.dials_per_attempt() == dict.fromkeys(again.queued, 1)
    with stack.session() as s:
        rescheduled = s.execute(
            select(CallAttempt.id).where(col(CallAttempt.state) == AttemptState.COMPLETED)
        ).all()
        assert len(rescheduled) == CALLS
        assert audit.verify(s).ok
