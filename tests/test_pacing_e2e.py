"""A trunk's limits hold however many workers run, measured where the callee is:
the simulator's log of when each CreateSIPParticipant reached it."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlmodel import select

from campaigns.models import CallAttempt, Trunk, WorkerHeartbeat
from tests.pipeline_harness import CAMPAIGNS, wait_until
from tests.test_pacing import max_in_window
from tests.test_pipeline_e2e import TRUNK, Stack, _setup_clinic, _stack

CALLS = 60
CPS = 5
MAX_CONCURRENT = 8


@pytest.fixture
def redis_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    # Real-time calls: answered within a second, a second or two long, so both
    # the rate and the concurrency cap bind.
    scenario = {
        "latency": {"answer": [0.2, 1.0], "call": [1.0, 2.0]},
        "suffixes": {f"{n:02d}": "confirmed" for n in range(CALLS)},
    }
    yield from _stack(request, tmp_path, "postgresql+redis", speed=1.0, scenario=scenario)


@pytest.fixture
def embedded_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(request, tmp_path, "sqlite+embedded-broker", speed=30.0)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_on_a_redis_broker_keep_the_trunks_limits_at_the_callee(
    redis_stack: Stack,
) -> None:
    stack = redis_stack
    stack.env.pop("CAMPAIGNS_REDIS_URL")  # no setting: pacing shares the broker's Redis
    _setup_clinic(stack, count=CALLS, max_attempts=1)
    with stack.session() as s:
        trunk = s.get(Trunk, TRUNK)
        assert trunk is not None
        trunk.calls_per_second, trunk.max_concurrent = CPS, MAX_CONCURRENT
        s.commit()
    stack.procs.worker(name="worker-1")
    stack.procs.worker(name="worker-2")
    broker = redis.Redis.from_url(stack.broker_url)
    index = str(broker.connection_pool.connection_kwargs.get("db", 0))

    def consuming() -> int:  # workers blocked on the queue (kombu polls with BRPOP)
        clients = broker.client_list()
        return sum(c.get("cmd") == "brpop" and str(c.get("db")) == index for c in clients)

    wait_until(lambda: consuming() >= 2, timeout=60, what="both workers to consume")
    stack.procs.beat()
    wait_until(lambda: stack.open_attempts() == 0, timeout=180, what="every call to finish")

    calls = stack.sim.calls()
    assert len(calls) == CALLS
    assert set(stack.dials_per_attempt().values()) == {1}
    arrivals = [round(call["received_at"] * 1_000_000) for call in calls]
    assert max_in_window(arrivals) <= CPS
    assert stack.sim.stats()["max_in_flight"] <= MAX_CONCURRENT
    with stack.session() as s:
        takers = Counter(s.execute(select(CallAttempt.worker_id)).scalars())
    assert len(takers) == 2 and min(takers.values()) >= CALLS // 6  # both workers dialed


@pytest.mark.slow
def test_a_second_worker_refuses_to_start_where_pacing_is_in_process(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    stack.procs.worker(name="worker-1")

    def first_is_up() -> bool:
        with stack.session() as s:
            return s.execute(select(WorkerHeartbeat)).first() is not None

    wait_until(first_is_up, timeout=60, what="the first worker")
    second = subprocess.run(
        [CAMPAIGNS, "worker"],
        env=stack.env,
        cwd=stack.procs.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1
    assert second.stderr.startswith("error: another `campaigns worker` already runs")
    assert "CAMPAIGNS_REDIS_URL" in second.stderr
