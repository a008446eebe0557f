"""In-process pacing for the embedded mode: one worker process, its threads.

The semantics are those of :class:`~campaigns.telephony.pacing.pacer.Pacer`, kept
in memory under one lock on the monotonic clock; a second worker process would
not see them (the embedded mode allows only one).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

from campaigns.telephony.pacing import pacer
from campaigns.telephony.pacing.pacer import DEFAULT_HEADROOM, Limits, Pacer, Slot


@dataclass
class _Trunk:
    next_start: int = 0  # monotonic µs
    slots: dict[int, tuple[int, int]] = field(default_factory=dict)  # attempt: (start, expires)

    def purge(self, now: int) -> None:
        for attempt, (_, expires) in list(self.slots.items()):
            if expires <= now:
                del self.slots[attempt]


class LocalPacer(Pacer):
    """In-process pacing for the embedded mode: one worker process, its threads.

    Same semantics as :class:`~campaigns.telephony.pacing.redis_pacer.RedisPacer`,
    on the monotonic clock; ``Slot`` times are mapped to UTC with an offset fixed
    at construction.
    """

    def __init__(self, *, headroom: float = DEFAULT_HEADROOM) -> None:
        super().__init__(headroom=headroom)
        self._cond = threading.Condition()
        self._trunks: dict[str, _Trunk] = {}
        self._wall_offset_us = time.time_ns() // 1000 - time.monotonic_ns() // 1000

    def _slot(self, trunk_id: str, attempt_id: int, start: int, expires: int) -> Slot:
        offset = self._wall_offset_us
        due = start / pacer.US_PER_S
        return Slot(
            trunk_id,
            attempt_id,
            pacer.utc_from_us(start + offset),
            pacer.utc_from_us(expires + offset),
            due=due,
            latest=due + self._tolerance,
        )

    def _take(self, trunk_id: str, attempt_id: int, step: int, limits: Limits) -> Slot | None:
        max_concurrent, lease, max_wait, lead = limits
        deadline = time.monotonic_ns() // 1000 + pacer.to_us(max_wait)
        while True:
            reserved = self._reserve(
                trunk_id,
                attempt_id,
                step=step,
                max_concurrent=max_concurrent,
                lease=lease,
                lead=pacer.to_us(lead),
                deadline=deadline,
            )
            if reserved is None:
                return None
            start, expires, fresh = reserved
            wake = (start - pacer.to_us(lead)) / pacer.US_PER_S
            pacer.sleep_until(wake)
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
                    expires = max(expires, start + pacer.to_us(lease))
                    trunk.slots[attempt_id] = (start, expires)
                    return start, expires, False
                if len(trunk.slots) < max_concurrent:
                    start = max(now + lead, trunk.next_start)
                    if start - lead > deadline:
                        return None
                    trunk.next_start = start + step
                    expires = start + pacer.to_us(lease)
                    trunk.slots[attempt_id] = (start, expires)
                    return start, expires, True
                if now >= deadline:
                    return None
                first_expiry = min(expires for _, expires in trunk.slots.values())
                self._cond.wait((min(deadline, first_expiry) - now) / pacer.US_PER_S)

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
