"""Per-trunk pacing shared by every worker: calls per second and concurrent calls.

A SIP trunk accepts at most ``cps`` new calls per second and ``max_concurrent``
calls at once. Every worker process (on every host) asks the same :class:`Pacer`
before dialing:

    slot = pacer.acquire(trunk_id, attempt_id, cps=..., max_concurrent=...,
                         lease=max_call + ringing + margin, max_wait=timedelta(seconds=5),
                         lead=timedelta(seconds=0.2))
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
before it (the agent's dispatch) takes a varying time and fits in ``lead``.

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

Implementations: :class:`~campaigns.telephony.pacing.redis_pacer.RedisPacer`
keeps the state in Redis and reads the Redis server's clock, never the worker's;
:class:`~campaigns.telephony.pacing.local_pacer.LocalPacer` keeps it in memory for
the embedded mode (one worker process, no Redis). Both build on the arithmetic below.
"""

from __future__ import annotations

import asyncio
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

US_PER_S = 1_000_000
# Granted starts are spaced 15% wider than 1/cps. A dial reaches the callee's side
# a little after its granted start, late by a varying amount (timer slack, GIL, a
# busy CPU, the HTTP request's way to LiveKit); exact spacing would then put
# cps + 1 arrivals in some second. 15% absorbs up to 150 ms of such spread within
# any one-second window, a fifth of it at the sender (see _tolerance), and still
# runs at 87% of the limit. Measured with bench/pacing_bench.py at the simulator,
# two worker processes on a loaded 2-core machine: at 20 cps dials were sent at
# most 29 ms after their start and received at most 136 ms after it (p99 72 ms).
DEFAULT_HEADROOM = 0.15


@dataclass(frozen=True)
class Slot:
    """A granted call start on one trunk.

    ``start`` and ``lease_expires`` are on the pacer's clock (the Redis server's
    for the Redis pacer), in UTC. ``acquire`` returns once ``start`` is reached.
    """

    trunk_id: str
    attempt_id: int
    start: datetime
    lease_expires: datetime
    # ``start`` and the last instant it may still be used, on this process's
    # ``time.monotonic()`` clock (see :func:`wait_for_start`).
    due: float = field(default=0.0, compare=False)
    latest: float = field(default=math.inf, compare=False)


class Limits(NamedTuple):
    """The limits of one :meth:`Pacer.acquire`, checked."""

    max_concurrent: int
    lease: timedelta
    max_wait: timedelta
    lead: timedelta


class Pacer(ABC):
    """Asked by every worker before each dial; see the module docstring.

    :meth:`acquire` checks its arguments and an implementation takes the slot
    (:meth:`_take`).
    """

    def __init__(self, *, headroom: float = DEFAULT_HEADROOM) -> None:
        self._headroom = _check_headroom(headroom)
        self._tolerance = _tolerance(headroom)

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
        limits = Limits(max_concurrent, lease, max_wait, lead)
        _check(limits)
        return self._take(trunk_id, attempt_id, interval_us(cps, self._headroom), limits)

    @abstractmethod
    def _take(self, trunk_id: str, attempt_id: int, step: int, limits: Limits) -> Slot | None:
        """:meth:`acquire`, ``step`` µs between two granted starts."""

    @abstractmethod
    def release(self, trunk_id: str, attempt_id: int) -> None:
        """Free the attempt's concurrency slot; a no-op if it holds none."""

    @abstractmethod
    def in_flight(self, trunk_id: str) -> int:
        """Attempts holding an unexpired slot on the trunk."""


def interval_us(cps: float, headroom: float = DEFAULT_HEADROOM) -> int:
    """Microseconds between two granted starts: ``1/cps`` stretched by ``headroom``
    and rounded up, so ``cps`` is never exceeded."""
    if not (cps > 0 and math.isfinite(cps)):
        raise ValueError(f"cps must be a positive number, got {cps!r}")
    return max(1, math.ceil(US_PER_S * (1 + headroom) / cps))


def _check_headroom(headroom: float) -> float:
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be in [0, 1), got {headroom!r}")
    return headroom


def _check(limits: Limits) -> None:
    max_concurrent, lease, max_wait, lead = limits
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
    if lease <= timedelta(0):
        raise ValueError(f"lease must be positive, got {lease}")
    if max_wait < timedelta(0):
        raise ValueError(f"max_wait must not be negative, got {max_wait}")
    if lead < timedelta(0):
        raise ValueError(f"lead must not be negative, got {lead}")


def to_us(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def utc_from_us(epoch_us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=epoch_us)


def sleep_until(deadline: float) -> None:
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
