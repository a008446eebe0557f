"""Pacing shared through Redis by every worker process and host.

The state of each trunk lives in Redis and every decision is one Lua script that
reads the Redis server's clock, never the worker's, so workers on hosts whose
clocks disagree still space their starts correctly. The semantics are those of
:class:`~campaigns.telephony.pacing.pacer.Pacer`.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import redis

from campaigns.telephony.pacing import pacer
from campaigns.telephony.pacing.pacer import DEFAULT_HEADROOM, Limits, Pacer, Slot

# How long a refused caller sleeps before asking again while every slot is taken.
_POLL_SECONDS = 0.05

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


class RedisPacer(Pacer):
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
        super().__init__(headroom=headroom)
        self._client = client
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._in_flight = client.register_script(_IN_FLIGHT)

    def _keys(self, trunk_id: str) -> list[str]:
        base = f"{self._prefix}:{{{trunk_id}}}"
        return [f"{base}:next", f"{base}:slots", f"{base}:starts"]

    def _take(self, trunk_id: str, attempt_id: int, step: int, limits: Limits) -> Slot | None:
        max_concurrent, lease, max_wait, lead = limits
        keys = self._keys(trunk_id)
        deadline = time.monotonic() + max_wait.total_seconds()
        while True:
            wait_us = max(0, math.floor((deadline - time.monotonic()) * pacer.US_PER_S))
            args = [
                attempt_id,
                step,
                max_concurrent,
                pacer.to_us(lease),
                wait_us,
                pacer.to_us(lead),
            ]
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
                ahead = (start - now) / pacer.US_PER_S
                due = received + ahead
                latest = asked + ahead + self._tolerance
                wake = due - lead.total_seconds()
                pacer.sleep_until(wake)
                if granted == 2 or time.monotonic() - lead.total_seconds() <= latest:
                    return Slot(
                        trunk_id,
                        attempt_id,
                        pacer.utc_from_us(start),
                        pacer.utc_from_us(expires),
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
            first_expiry = (float(reply[3]) - now) / pacer.US_PER_S
            poll = _POLL_SECONDS * random.uniform(0.5, 1.5)  # noqa: S311 (jitter, not secrets)
            time.sleep(min(left, max(0.001, first_expiry), poll))

    def release(self, trunk_id: str, attempt_id: int) -> None:
        keys = self._keys(trunk_id)
        self._release(keys=keys[1:], args=[attempt_id])

    def in_flight(self, trunk_id: str) -> int:
        return int(self._in_flight(keys=self._keys(trunk_id)[1:2]))
