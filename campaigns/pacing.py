"""Per-trunk pacing shared by every worker: calls per second and concurrent calls.

A SIP trunk accepts at most ``cps`` new calls per second and ``max_concurrent``
calls at once. Every worker process (on every host) asks the same :class:`Pacer`
before dialing:

    slot = pacer.acquire(trunk_id, attempt_id, cps=..., max_concurrent=...,
                         lease=max_call + ringing + margin, max_wait=timedelta(seconds=5),
                         lead=timedelta(seconds=1))
    if slot is None:
        ...  # put the attempt back in the database queue; nothing was reserved
    try:
        ...  # prepare the call: acquire() has slept until ``lead`` before slot.start
        if await wait_for_start(slot):
            ...  # send the dial now
        else:
            ...  # too late for this start: dial nothing, queue the attempt again
    finally:
        pacer.release(trunk_id, attempt_id)

The limit holds where the callee is, so the dial itself is paced: the work
before it (database, agent dispatch) takes a varying time and fits in ``lead``.

Rate: virtual scheduling (GCRA without burst). Each grant reserves
``start = max(now + lead, next)`` and moves ``next`` to ``start + 1/cps`` (stretched by a
small ``headroom``, see :data:`DEFAULT_HEADROOM`), so granted start times are at
least ``1/cps`` apart: no window of W seconds holds more than ``ceil(cps * W)``
starts, i.e. never more than ``cps`` in any second for a whole-number ``cps``.
A grant whose start is further away than ``lead + max_wait`` is refused without
reserving anything. A caller that wakes from its wait too late to use its start
(more than a fifth of the headroom late: a stalled process) gives that start up and
takes a later one, so real dial times keep within the limit as well.

Concurrency: the attempts holding a slot, each with a lease expiry. An expired
lease is dropped, so the slot of a worker killed mid-call comes back once its
lease runs out: the lease must outlast the longest call (ringing timeout + max
call duration + a margin). Acquiring for an attempt that already holds a slot
returns that slot again and takes nothing more.

Both limits are checked before either is taken (one Lua script on Redis, one
lock in-process): a refusal on either leaves the other untouched.

:class:`RedisPacer` keeps the state in Redis and reads the Redis server's clock,
never the worker's; :class:`LocalPacer` keeps it in memory for the embedded mode
(one worker process, no Redis).
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Protocol

import redis

_US = 1_000_000
# Granted starts are spaced 15% wider than 1/cps. A dial reaches the callee's side
# a little after its granted start, late by a varying amount (timer slack, GIL, a
# busy CPU, the HTTP request's way to LiveKit); exact spacing would then put
# cps + 1 arrivals in some second. 15% absorbs up to 150 ms of such spread within
# any one-second window, a fifth of it at the sender (see _tolerance), and still
# runs at 87% of the limit. Measured with bench/pacing_bench.py at the simulator,
# two worker processes on a loaded 2-core machine: at 20 cps dials were sent at
# most 29 ms after their start and received at most 136 ms after it (p99 72 ms).
DEFAULT_HEADROOM = 0.15
# How long a refused caller sleeps before asking again while every slot is taken.
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Slot:
    """A granted call start on one trunk.

    ``start`` and ``lease_expires`` are on the pacer's clock (the Redis server's
    for :class:`RedisPacer`), in UTC. ``acquire`` returns once ``start`` is reached.
    """

    trunk_id: str
    attempt_id: int
    start: datetime
    lease_expires: datetime
    # ``start`` and the last instant it may still be used, on this process's
    # ``time.monotonic()`` clock (see :func:`wait_for_start`).
    due: float = field(default=0.0, compare=False)
    latest: float = field(default=math.inf, compare=False)


class Pacer(Protocol):
    def acquire(
        self,
        trunk_id: str,
        attempt_id: int,
        *,
        cps: float,
        max_concurrent: int,
        lease: timedelta,
        max_wait: timedelta,
        lead: timedelta = timedelta(0),
    ) -> Slot | None:
        """Wait (sleeping) at most ``max_wait`` for a concurrency slot and a start
        time within the rate at least ``lead`` ahead, then until ``lead`` before
        that start (time to prepare the call; :func:`wait_for_start` waits out
        the rest). ``None``: nothing was reserved; requeue the call."""
        ...

    def release(self, trunk_id: str, attempt_id: int) -> None:
        """Free the attempt's concurrency slot; a no-op if it holds none."""
        ...

    def in_flight(self, trunk_id: str) -> int:
        """Attempts holding an unexpired slot on the trunk."""
        ...


def interval_us(cps: float, headroom: float = DEFAULT_HEADROOM) -> int:
    """Microseconds between two granted starts: ``1/cps`` stretched by ``headroom``
    and rounded up, so ``cps`` is never exceeded."""
    if not (cps > 0 and math.isfinite(cps)):
        raise ValueError(f"cps must be a positive number, got {cps!r}")
    return max(1, math.ceil(_US * (1 + headroom) / cps))


def _check_headroom(headroom: float) -> float:
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be in [0, 1), got {headroom!r}")
    return headroom


def _check(max_concurrent: int, lease: timedelta, max_wait: timedelta, lead: timedelta) -> None:
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
    if lease <= timedelta(0):
        raise ValueError(f"lease must be positive, got {lease}")
    if max_wait < timedelta(0):
        raise ValueError(f"max_wait must not be negative, got {max_wait}")
    if lead < timedelta(0):
        raise ValueError(f"lead must not be negative, got {lead}")


def _us(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def _utc(epoch_us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=epoch_us)


def _sleep_until(deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(left)


def _tolerance(headroom: float) -> float:
    """Seconds a caller may start after its granted start.

    Starts are ``headroom`` seconds per second further apart than the limit needs,
    so real starts stay within it while each one lags its granted start by less
    than that. A caller later than a fifth of it (a busy CPU, a stalled
    process) gives its start up and asks again for a later one, rather than crowd
    the calls granted after it; the rest is left for the way from the caller to
    the callee's side.
    """
    return math.inf if headroom == 0 else headroom / 5


async def wait_for_start(slot: Slot) -> bool:
    """Sleep on the running event loop until the slot's start; False when it is
    too late to use it (give the start up: nothing may be started on it)."""
    while (left := slot.due - time.monotonic()) > 0:
        await asyncio.sleep(left)
    return time.monotonic() <= slot.latest


# Numbers cross into Redis as strings made with %.0f: Lua's own tostring keeps
# only 14 significant digits, fewer than an epoch in microseconds has.
_ACQUIRE = """
local next_key, slots_key, starts_key = KEYS[1], KEYS[2], KEYS[3]
local attempt = ARGV[1]
local interval = tonumber(ARGV[2])
local max_concurrent = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5])
local lead = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(x) return string.format('%.0f', x) end

local expired = redis.call('ZRANGEBYSCORE', slots_key, '-inf', fmt(now), 'LIMIT', 0, 1000)
if #expired > 0 then
  redis.call('ZREM', slots_key, unpack(expired))
  redis.call('HDEL', starts_key, unpack(expired))
end

local held = redis.call('ZSCORE', slots_key, attempt)
if held then
  local start = tonumber(redis.call('HGET', starts_key, attempt) or fmt(now))
  local expires = math.max(tonumber(held), start + lease)
  redis.call('ZADD', slots_key, fmt(expires), attempt)
  return {2, fmt(now), fmt(start), fmt(expires)}
end

if redis.call('ZCARD', slots_key) >= max_concurrent then
  local first = redis.call('ZRANGE', slots_key, 0, 0, 'WITHSCORES')
  return {0, fmt(now), 'concurrency', first[2]}
end

local start = math.max(now + lead, tonumber(redis.call('GET', next_key) or '0'))
if start - now - lead > max_wait then
  return {0, fmt(now), 'rate', fmt(start)}
end

local next_start = start + interval
redis.call('SET', next_key, fmt(next_start), 'PX', fmt(math.ceil((next_start - now) / 1000) + 1000))
local expires = start + lease
redis.call('ZADD', slots_key, fmt(expires), attempt)
redis.call('HSET', starts_key, attempt, fmt(start))
local last = redis.call('ZRANGE', slots_key, -1, -1, 'WITHSCORES')
local ttl = fmt(math.ceil((tonumber(last[2]) - now) / 1000) + 1000)
redis.call('PEXPIRE', slots_key, ttl)
redis.call('PEXPIRE', starts_key, ttl)
return {1, fmt(now), fmt(start), fmt(expires)}
"""

_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 0
"""

_IN_FLIGHT = """
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""


class RedisPacer:
    """Pacing shared through Redis by every worker process and host.

    Keys per trunk (hash-tagged on the trunk so they share a cluster slot):
    ``{prefix}:{trunk}:next`` (next free start, µs since the epoch),
    ``{prefix}:{trunk}:slots`` (attempt ids scored by lease expiry) and
    ``{prefix}:{trunk}:starts`` (each holder's granted start). All expire on
    their own once the trunk is idle.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "campaigns:pacing",
        headroom: float = DEFAULT_HEADROOM,
    ) -> None:
        self._client = client
        self._headroom = _check_headroom(headroom)
        self._tolerance = _tolerance(headroom)
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._in_flight = client.register_script(_IN_FLIGHT)

    def _keys(self, trunk_id: str) -> list[str]:
        base = f"{self._prefix}:{{{trunk_id}}}"
        return [f"{base}:next", f"{base}:slots", f"{base}:starts"]

    def acquire(
        self,
        trunk_id: str,
        attempt_id: int,
        *,
        cps: float,
        max_concurrent: int,
        lease: timedelta,
        max_wait: timedelta,
        lead: timedelta = timedelta(0),
    ) -> Slot | None:
        _check(max_concurrent, lease, max_wait, lead)
        step = interval_us(cps, self._headroom)
        keys = self._keys(trunk_id)
        deadline = time.monotonic() + max_wait.total_seconds()
        while True:
            wait_us = max(0, math.floor((deadline - time.monotonic()) * _US))
            args = [attempt_id, step, max_concurrent, _us(lease), wait_us, _us(lead)]
            asked = time.monotonic()
            reply: list[Any] = self._acquire(keys=keys, args=args)
            received = time.monotonic()
            granted, now = int(reply[0]), int(reply[1])
            if granted:
                start, expires = int(reply[2]), int(reply[3])
                # The server read ``now`` between ``asked`` and ``received``. Sleep
                # counted from the reply's arrival: a call never starts early. Judge
                # lateness counted from the question: a slow reply (a busy process)
                # cannot hide how late the call really is.
                ahead = (start - now) / _US
                due = received + ahead
                latest = asked + ahead + self._tolerance
                wake = due - lead.total_seconds()
                _sleep_until(wake)
                if granted == 2 or time.monotonic() - lead.total_seconds() <= latest:
                    return Slot(
                        trunk_id,
                        attempt_id,
                        _utc(start),
                        _utc(expires),
                        due=due,
                        latest=latest,
                    )
                self.release(trunk_id, attempt_id)
                continue
            if reply[2] in (b"rate", "rate"):
                return None  # ``next`` only moves forward: waiting cannot help
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # Every slot is taken: sleep until the first lease expires or a poll
            # interval passes (a release frees a slot early), whichever is sooner.
            first_expiry = (float(reply[3]) - now) / _US
            poll = _POLL_SECONDS * random.uniform(0.5, 1.5)  # noqa: S311 (jitter, not secrets)
            time.sleep(min(left, max(0.001, first_expiry), poll))

    def release(self, trunk_id: str, attempt_id: int) -> None:
        keys = self._keys(trunk_id)
        self._release(keys=keys[1:], args=[attempt_id])

    def in_flight(self, trunk_id: str) -> int:
        return int(self._in_flight(keys=self._keys(trunk_id)[1:2]))


@dataclass
class _Trunk:
    next_start: int = 0  # monotonic µs
    slots: dict[int, tuple[int, int]] = field(default_factory=dict)  # attempt: (start, expires)

    def purge(self, now: int) -> None:
        for attempt, (_, expires) in list(self.slots.items()):
            if expires <= now:
                del self.slots[attempt]


class LocalPacer:
    """In-process pacing for the embedded mode: one worker process, its threads.

    Same semantics as :class:`RedisPacer`, on the monotonic clock; ``Slot`` times
    are mapped to UTC with an offset fixed at construction.
    """

    def __init__(self, *, headroom: float = DEFAULT_HEADROOM) -> None:
        self._headroom = _check_headroom(headroom)
        self._tolerance = _tolerance(headroom)
        self._cond = threading.Condition()
        self._trunks: dict[str, _Trunk] = {}
        self._wall_offset_us = time.time_ns() // 1000 - time.monotonic_ns() // 1000

    def _slot(self, trunk_id: str, attempt_id: int, start: int, expires: int) -> Slot:
        offset = self._wall_offset_us
        due = start / _US
        return Slot(
            trunk_id,
            attempt_id,
            _utc(start + offset),
            _utc(expires + offset),
            due=due,
            latest=due + self._tolerance,
        )

    def acquire(
        self,
        trunk_id: str,
        attempt_id: int,
        *,
        cps: float,
        max_concurrent: int,
        lease: timedelta,
        max_wait: timedelta,
        lead: timedelta = timedelta(0),
    ) -> Slot | None:
        _check(max_concurrent, lease, max_wait, lead)
        step = interval_us(cps, self._headroom)
        deadline = time.monotonic_ns() // 1000 + _us(max_wait)
        while True:
            reserved = self._reserve(
                trunk_id,
                attempt_id,
                step=step,
                max_concurrent=max_concurrent,
                lease=lease,
                lead=_us(lead),
                deadline=deadline,
            )
            if reserved is None:
                return None
            start, expires, fresh = reserved
            wake = (start - _us(lead)) / _US
            _sleep_until(wake)
            if not fresh or time.monotonic() - wake <= self._tolerance:
                return self._slot(trunk_id, attempt_id, start, expires)
            self.release(trunk_id, attempt_id)

    def _reserve(
        self,
        trunk_id: str,
        attempt_id: int,
        *,
        step: int,
        max_concurrent: int,
        lease: timedelta,
        lead: int,
        deadline: int,
    ) -> tuple[int, int, bool] | None:
        """(start, lease expiry, newly taken) in monotonic µs, or None by the deadline."""
        with self._cond:
            trunk = self._trunks.setdefault(trunk_id, _Trunk())
            while True:
                now = time.monotonic_ns() // 1000
                trunk.purge(now)
                if attempt_id in trunk.slots:
                    start, expires = trunk.slots[attempt_id]
                    expires = max(expires, start + _us(lease))
                    trunk.slots[attempt_id] = (start, expires)
                    return start, expires, False
                if len(trunk.slots) < max_concurrent:
                    start = max(now + lead, trunk.next_start)
                    if start - lead > deadline:
                        return None
                    trunk.next_start = start + step
                    expires = start + _us(lease)
                    trunk.slots[attempt_id] = (start, expires)
                    return start, expires, True
                if now >= deadline:
                    return None
                first_expiry = min(expires for _, expires in trunk.slots.values())
                self._cond.wait((min(deadline, first_expiry) - now) / _US)

    def release(self, trunk_id: str, attempt_id: int) -> None:
        with self._cond:
            trunk = self._trunks.get(trunk_id)
            if trunk is not None and trunk.slots.pop(attempt_id, None) is not None:
                self._cond.notify_all()

    def in_flight(self, trunk_id: str) -> int:
        with self._cond:
            trunk = self._trunks.get(trunk_id)
            if trunk is None:
                return 0
            trunk.purge(time.monotonic_ns() // 1000)
            return len(trunk.slots)


@cache
def pacer_from_settings(redis_url: str | None) -> Pacer:
    """The process's pacer: shared through Redis when a URL is set, else in-process.

    Cached, so every task in a process shares one pacer (and one connection pool).
    """
    if redis_url is None:
        return LocalPacer()
    client = redis.Redis.from_url(
        redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
    )
    return RedisPacer(client)
