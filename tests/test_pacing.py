"""Pacing against the real Redis (127.0.0.1:6379) and in-process.

Every Redis test works under its own key prefix and deletes its keys afterwards.
Cross-process tests spawn fresh interpreters (no fork of a threaded pytest).
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis

from campaigns import pacing
from campaigns.pacing import (
    LocalPacer,
    Pacer,
    RedisPacer,
    Slot,
    interval_us,
    pacer_from_settings,
    wait_for_start,
)
from campaigns.settings import Settings

REDIS_URL = os.environ.get("CAMPAIGNS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LONG = timedelta(seconds=30)
SPAWN = mp.get_context("spawn")


def us(slot: Slot) -> int:
    return int(slot.start.timestamp() * 1_000_000 + 0.5)


def max_in_window(times_us: list[int], window_us: int = 1_000_000) -> int:
    """Most events in any half-open window [t, t + window)."""
    times = sorted(times_us)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_us:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = current = 0
    for _, delta in events:  # at equal times a release (-1) sorts before a start
        current += delta
        best = max(best, current)
    return best


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    name = f"test:pacing:{uuid.uuid4().hex}"
    yield name
    keys = list(redis_client.scan_iter(match=f"{name}:*"))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), "local"])
def make_pacer(request: pytest.FixtureRequest) -> Callable[..., Pacer]:
    if request.param == "local":
        return LocalPacer
    client: redis.Redis = request.getfixturevalue("redis_client")
    prefix = request.getfixturevalue("prefix")
    return lambda **options: RedisPacer(client, prefix=prefix, **options)


@pytest.fixture
def pacer(make_pacer: Callable[..., Pacer]) -> Pacer:
    """The production pacer: default headroom, late wakers give their start up."""
    return make_pacer()


@pytest.fixture
def exact_pacer(make_pacer: Callable[..., Pacer]) -> Pacer:
    """No headroom: starts exactly 1/cps apart whatever the machine's load, for
    tests of what a reservation takes."""
    return make_pacer(headroom=0)


def run_threads(count: int, target: Callable[[], None]) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
        assert not thread.is_alive()


# --- rate ---------------------------------------------------------------------------------


def test_interval_rounds_up() -> None:
    assert interval_us(20, headroom=0) == 50_000
    assert interval_us(0.5, headroom=0) == 2_000_000
    assert interval_us(3, headroom=0) == 333_334  # four starts never fit in a second
    assert interval_us(20) == 57_500  # default 15% headroom for the way to the callee
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cps"):
            interval_us(bad)


def test_rate_never_exceeded_across_threads(pacer: Pacer) -> None:
    cps, total = 20, 40
    counter = iter(range(total))
    lock = threading.Lock()
    starts: list[int] = []
    observed: list[int] = []

    def worker() -> None:
        while True:
            with lock:
                attempt = next(counter, None)
            if attempt is None:
                return
            slot = pacer.acquire(
                "trunk-a", attempt, cps=cps, max_concurrent=100, lease=LONG, max_wait=LONG
            )
            assert slot is not None
            observed.append(time.time_ns() // 1000)
            starts.append(us(slot))
            pacer.release("trunk-a", attempt)

    run_threads(6, worker)
    starts.sort()
    assert len(starts) == total
    # Upper bounds only: how close the rate gets to the limit is bench/pacing_bench.py's job.
    assert max_in_window(starts) <= cps
    assert min(b - a for a, b in itertools.pairwise(starts)) >= interval_us(cps)
    assert max_in_window(observed) <= cps
    assert pacer.in_flight("trunk-a") == 0


def test_fractional_cps_spaces_starts(pacer: Pacer) -> None:
    kwargs: dict[str, Any] = {"cps": 2.5, "max_concurrent": 5, "lease": LONG, "max_wait": LONG}
    slots = [pacer.acquire("trunk-f", n, **kwargs) for n in range(3)]
    starts = [us(s) for s in slots if s is not None]
    assert len(starts) == 3
    # A caller that wakes late gives its start up for a later one: gaps never shrink.
    assert all(b - a >= interval_us(2.5) for a, b in itertools.pairwise(starts))


def _rate_and_concurrency_worker(
    prefix: str, attempts: range, out: Any, hold_seconds: float
) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    pacer = RedisPacer(client, prefix=prefix)
    lock = threading.Lock()
    todo = iter(attempts)
    records: list[tuple[int, int, int]] = []

    def worker() -> None:
        while True:
            with lock:
                attempt = next(todo, None)
            if attempt is None:
                return
            slot = pacer.acquire(
                "trunk-x", attempt, cps=20, max_concurrent=3, lease=LONG, max_wait=LONG
            )
            assert slot is not None
            began = time.time_ns() // 1000
            time.sleep(hold_seconds * (0.3 + (attempt % 7) / 6))
            ended = time.time_ns() // 1000
            pacer.release("trunk-x", attempt)
            records.append((us(slot), began, ended))

    run_threads(4, worker)
    out.put(records)
    client.close()


@pytest.mark.redis
def test_rate_and_concurrency_hold_across_processes(redis_client: redis.Redis, prefix: str) -> None:
    out = SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=_rate_and_concurrency_worker, args=(prefix, range(n, 60, 2), out, 0.15)
        )
        for n in (0, 1)
    ]
    for proc in procs:
        proc.start()
    records: list[tuple[int, int, int]] = out.get(timeout=25) + out.get(timeout=25)
    for proc in procs:
        proc.join(timeout=5)
        assert proc.exitcode == 0
    assert len(records) == 60
    starts = sorted(r[0] for r in records)
    assert len(set(starts)) == 60
    assert max_in_window(starts) <= 20
    assert max_in_window([r[1] for r in records]) <= 20
    # Observed holding intervals lie inside the slots' lifetimes, so this is a lower
    # bound of the true concurrency: it must reach the cap and never pass it.
    assert max_overlap([(r[1], r[2]) for r in records]) == 3
    assert RedisPacer(redis_client, prefix=prefix).in_flight("trunk-x") == 0


# --- concurrency --------------------------------------------------------------------------


def test_concurrency_cap_across_threads(pacer: Pacer) -> None:
    attempts = iter(range(30))
    lock = threading.Lock()
    intervals: list[tuple[int, int]] = []

    def worker() -> None:
        while True:
            with lock:
                attempt = next(attempts, None)
            if attempt is None:
                return
            slot = pacer.acquire(
                "trunk-c", attempt, cps=1000, max_concurrent=4, lease=LONG, max_wait=LONG
            )
            assert slot is not None
            began = time.monotonic_ns()
            time.sleep(0.02 + (attempt % 5) * 0.01)
            intervals.append((began, time.monotonic_ns()))
            pacer.release("trunk-c", attempt)

    run_threads(10, worker)
    assert len(intervals) == 30
    assert max_overlap(intervals) == 4


def _hold_and_hang(prefix: str, lease_seconds: float, out: Any) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    pacer = RedisPacer(client, prefix=prefix)
    slot = pacer.acquire(
        "trunk-k",
        1,
        cps=100,
        max_concurrent=1,
        lease=timedelta(seconds=lease_seconds),
        max_wait=timedelta(seconds=5),
    )
    out.put(slot)
    time.sleep(60)  # killed long before this


@pytest.mark.redis
def test_killed_holder_slot_comes_back_after_lease(redis_client: redis.Redis, prefix: str) -> None:
    out = SPAWN.Queue()
    proc = SPAWN.Process(target=_hold_and_hang, args=(prefix, 1.0, out))
    proc.start()
    held: Slot = out.get(timeout=10)
    proc.kill()
    proc.join(timeout=5)
    pacer = RedisPacer(redis_client, prefix=prefix)
    assert pacer.in_flight("trunk-k") == 1
    kwargs: dict[str, Any] = {"cps": 100, "max_concurrent": 1, "lease": LONG}
    assert pacer.acquire("trunk-k", 2, max_wait=timedelta(0), **kwargs) is None
    slot = pacer.acquire("trunk-k", 2, max_wait=timedelta(seconds=3), **kwargs)
    assert slot is not None
    assert slot.start >= held.lease_expires
    assert slot.start - held.lease_expires < timedelta(milliseconds=200)
    assert pacer.in_flight("trunk-k") == 1


def test_unreleased_slot_comes_back_after_lease(pacer: Pacer) -> None:
    kwargs: dict[str, Any] = {"cps": 100, "max_concurrent": 1}
    held = pacer.acquire("trunk-l", 1, lease=timedelta(seconds=0.4), max_wait=LONG, **kwargs)
    assert held is not None  # never released: its worker "died"
    slot = pacer.acquire("trunk-l", 2, lease=LONG, max_wait=timedelta(seconds=2), **kwargs)
    assert slot is not None
    assert slot.start >= held.lease_expires


def test_release_is_idempotent(pacer: Pacer) -> None:
    kwargs: dict[str, Any] = {"cps": 100, "max_concurrent": 1, "lease": LONG}
    assert pacer.acquire("trunk-r", 1, max_wait=LONG, **kwargs) is not None
    assert pacer.in_flight("trunk-r") == 1
    pacer.release("trunk-r", 1)
    pacer.release("trunk-r", 1)
    pacer.release("trunk-r", 99)
    pacer.release("never-used", 1)
    assert pacer.in_flight("trunk-r") == 0
    assert pacer.in_flight("never-used") == 0
    assert pacer.acquire("trunk-r", 2, max_wait=LONG, **kwargs) is not None
    assert pacer.in_flight("trunk-r") == 1


def test_same_attempt_twice_takes_one_slot(exact_pacer: Pacer) -> None:
    kwargs: dict[str, Any] = {"cps": 5, "max_concurrent": 2, "lease": LONG}
    first = exact_pacer.acquire("trunk-s", 7, max_wait=LONG, **kwargs)
    again = exact_pacer.acquire("trunk-s", 7, max_wait=timedelta(0), **kwargs)
    assert first is not None
    assert again == first  # same start: no second rate reservation either
    assert exact_pacer.in_flight("trunk-s") == 1
    other = exact_pacer.acquire("trunk-s", 8, max_wait=LONG, **kwargs)
    assert other is not None
    assert us(other) - us(first) == interval_us(5, headroom=0)
    assert exact_pacer.acquire("trunk-s", 9, max_wait=timedelta(0), **kwargs) is None
    exact_pacer.release("trunk-s", 7)
    assert exact_pacer.in_flight("trunk-s") == 1


def test_same_attempt_concurrently_takes_one_slot(pacer: Pacer) -> None:
    slots: list[Slot | None] = []

    def grab() -> None:
        slots.append(
            pacer.acquire("trunk-d", 5, cps=1, max_concurrent=3, lease=LONG, max_wait=LONG)
        )

    run_threads(4, grab)
    assert len(set(slots)) == 1
    assert slots[0] is not None
    assert pacer.in_flight("trunk-d") == 1


# --- max_wait -----------------------------------------------------------------------------


def test_rate_refusal_reserves_nothing(exact_pacer: Pacer) -> None:
    kwargs: dict[str, Any] = {"cps": 1, "max_concurrent": 5, "lease": LONG}
    first = exact_pacer.acquire("trunk-w", 1, max_wait=LONG, **kwargs)
    assert first is not None
    began = time.monotonic()
    assert exact_pacer.acquire("trunk-w", 2, max_wait=timedelta(seconds=0.5), **kwargs) is None
    assert time.monotonic() - began < 0.1  # the wait could only grow: refused at once
    assert exact_pacer.in_flight("trunk-w") == 1  # no concurrency slot kept by the refusal
    after = exact_pacer.acquire("trunk-w", 3, max_wait=LONG, **kwargs)
    assert after is not None
    assert us(after) - us(first) == interval_us(
        1, headroom=0
    )  # the refused call took no start time


def test_concurrency_refusal_reserves_nothing_and_sleeps(exact_pacer: Pacer) -> None:
    kwargs: dict[str, Any] = {"cps": 2, "max_concurrent": 1, "lease": LONG}
    first = exact_pacer.acquire("trunk-v", 1, max_wait=LONG, **kwargs)
    assert first is not None
    began, cpu = time.monotonic(), time.process_time()
    assert exact_pacer.acquire("trunk-v", 2, max_wait=timedelta(seconds=0.3), **kwargs) is None
    waited = time.monotonic() - began
    assert 0.3 <= waited < 0.5
    assert time.process_time() - cpu < 0.1  # slept, did not spin
    assert exact_pacer.in_flight("trunk-v") == 1
    exact_pacer.release("trunk-v", 1)
    after = exact_pacer.acquire("trunk-v", 3, max_wait=LONG, **kwargs)
    assert after is not None
    assert us(after) - us(first) == interval_us(
        2, headroom=0
    )  # the refused call took no start time


def test_waiter_gets_slot_released_during_wait(pacer: Pacer) -> None:
    kwargs: dict[str, Any] = {"cps": 100, "max_concurrent": 1, "lease": LONG}
    assert pacer.acquire("trunk-u", 1, max_wait=LONG, **kwargs) is not None
    timer = threading.Timer(0.2, pacer.release, args=("trunk-u", 1))
    timer.start()
    began = time.monotonic()
    slot = pacer.acquire("trunk-u", 2, max_wait=timedelta(seconds=2), **kwargs)
    timer.join()
    assert slot is not None
    assert 0.15 < time.monotonic() - began < 0.4


def test_arguments_are_checked(pacer: Pacer) -> None:
    good: dict[str, Any] = {"cps": 1, "max_concurrent": 1, "lease": LONG, "max_wait": LONG}
    for bad in ({"cps": 0}, {"max_concurrent": 0}, {"lease": timedelta(0)}, {"max_wait": -LONG}):
        with pytest.raises(ValueError, match="must"):
            pacer.acquire("trunk-z", 1, **(good | bad))
    assert pacer.in_flight("trunk-z") == 0


def test_pacer_from_settings() -> None:
    pacer_from_settings.cache_clear()
    try:
        local = pacer_from_settings(None)
        assert isinstance(local, LocalPacer)
        assert pacer_from_settings(None) is local  # one pacer per process
        assert isinstance(pacer_from_settings(REDIS_URL), RedisPacer)
    finally:
        pacer_from_settings.cache_clear()


def test_pacing_shares_the_brokers_redis_unless_told_otherwise() -> None:
    embedded = Settings(broker_url="sqla+sqlite:///broker.db", redis_url=None)
    on_redis = Settings(broker_url="redis://broker:6379/0", redis_url=None)
    elsewhere = Settings(broker_url="redis://broker:6379/0", redis_url="redis://pacing:6379/2")
    assert embedded.pacing_redis_url is None
    assert on_redis.pacing_redis_url == "redis://broker:6379/0"
    assert elsewhere.pacing_redis_url == "redis://pacing:6379/2"


def test_a_start_granted_ahead_leaves_time_to_prepare(pacer: Pacer) -> None:
    kwargs: dict[str, Any] = {"cps": 10, "max_concurrent": 5, "lease": LONG, "max_wait": LONG}
    lead = timedelta(seconds=0.3)
    asked = time.monotonic()
    first = pacer.acquire("trunk-p", 1, lead=lead, **kwargs)
    returned = time.monotonic()
    assert first is not None
    assert returned - asked < 0.15  # back at once: the start is a lead ahead
    assert first.due - asked >= 0.3 - 0.01
    second = pacer.acquire("trunk-p", 2, lead=lead, **kwargs)
    assert second is not None
    assert us(second) - us(first) == interval_us(10)
    assert asyncio.run(wait_for_start(first))
    assert time.monotonic() >= first.due
    time.sleep(second.latest - time.monotonic() + 0.01)
    assert not asyncio.run(wait_for_start(second))  # prepared too slowly: start given up


def test_late_waker_gives_its_start_up(pacer: Pacer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that oversleeps its start takes a later one rather than crowd the next."""
    real_sleep_until = pacing._sleep_until
    stalls = [0.05]

    def stalled_sleep_until(deadline: float) -> None:
        real_sleep_until(deadline + (stalls.pop() if stalls else 0))

    kwargs: dict[str, Any] = {"cps": 10, "max_concurrent": 5, "lease": LONG, "max_wait": LONG}
    first = pacer.acquire("trunk-o", 1, **kwargs)
    assert first is not None
    monkeypatch.setattr(pacing, "_sleep_until", stalled_sleep_until)
    second = pacer.acquire("trunk-o", 2, **kwargs)
    assert second is not None
    assert us(second) - us(first) == 2 * interval_us(10)  # the overslept start is skipped
    assert pacer.in_flight("trunk-o") == 2
