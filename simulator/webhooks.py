"""LiveKit webhooks as a LiveKit server sends them.

What livekit-server v1.13.5 does (its ``webhook.ResourceURLNotifier``, seen on
the wire by ``tests/live/test_webhooks_live.py``), and so what this does:

- The body is the ``WebhookEvent`` as compact protobuf JSON (camelCase names,
  64-bit integers as strings, enums by name, no whitespace).
- ``Authorization`` is the bare JWT (no ``Bearer``), HS256, signed with the API
  secret, with exactly the claims ``iss`` (the API key), ``exp``, ``nbf``,
  ``iat`` and ``sha256`` (the base64 SHA-256 of the body); valid five minutes.
  ``Content-Type`` is ``application/webhook+json``.
- The events of one room are delivered one at a time, in order; an event that
  waited in its room's queue for more than 30 s is dropped.
- A connection failure, a 429 or a 5xx other than 501 is retried (four times,
  waiting 1, 2, 4, 8 s); any other answer, a 401 included, is final.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import jwt
from google.protobuf import json_format
from google.protobuf.message import Message

logger = logging.getLogger("simulator")

TOKEN_LIFETIME = 300  # seconds, as livekit-server's SetValidFor(5 * time.Minute)
MAX_AGE = 30.0  # seconds an event may wait in its room's queue
RETRY_MAX = 4  # go-retryablehttp's defaults
RETRY_WAIT_MIN = 1.0
RETRY_WAIT_MAX = 30.0
REQUEST_TIMEOUT = 10.0


def webhook_body(event: Message) -> bytes:
    """``event`` as livekit-server encodes it (Go's ``protojson.Marshal``): compact JSON."""
    document = json_format.MessageToDict(event)
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def sign_webhook(
    event: Message, api_key: str, api_secret: str, *, now: float | None = None
) -> tuple[bytes, str]:
    """The body and the ``Authorization`` value LiveKit sends for ``event``."""
    body = webhook_body(event)
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": api_key,
        "exp": issued + TOKEN_LIFETIME,
        "nbf": issued,
        "iat": issued,
        "sha256": digest,
    }
    return body, jwt.encode(claims, api_secret, algorithm="HS256")


def retry_waits() -> Iterator[float]:
    """The waits before each retry: go-retryablehttp's exponential backoff."""
    for attempt in range(RETRY_MAX):
        yield min(RETRY_WAIT_MIN * 2**attempt, RETRY_WAIT_MAX)


def _retryable(status: int) -> bool:
    return status == 429 or (status >= 500 and status != 501)


@dataclass
class _Queue:
    """One room's queue: a lock taken in the order the events were sent (asyncio's
    locks wake their waiters first come, first served), and how many hold or wait."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], _Queue]]
_queues = weakref.WeakKeyDictionary()


def _resource(event: Message) -> str:
    """The queue an event waits in: its room's, as livekit-server's ``EventKey``."""
    room = getattr(event, "room", None)
    return str(getattr(room, "name", "") or "")


@asynccontextmanager
async def _turn(url: str, key: str) -> AsyncIterator[None]:
    queues = _queues.setdefault(asyncio.get_running_loop(), {})
    queue = queues.setdefault((url, key), _Queue())
    queue.users += 1
    try:
        async with queue.lock:
            yield
    finally:
        queue.users -= 1
        if queue.users == 0:
            del queues[(url, key)]


async def post_webhook(url: str, event: Message, api_key: str, api_secret: str) -> None:
    """Deliver one event after the earlier ones of its room; a refusal or a failure
    is logged, never raised."""
    queued = time.monotonic()
    async with _turn(url, _resource(event)):
        if time.monotonic() - queued > MAX_AGE:
            logger.warning("webhook %s dropped: queued too long", url)
            return
        await _deliver(url, event, api_key, api_secret)


async def _deliver(url: str, event: Message, api_key: str, api_secret: str) -> None:
    waits = retry_waits()
    # Signed once: the server's HTTP client re-sends the same request.
    body, token = sign_webhook(event, api_key, api_secret)
    headers = {"Authorization": token, "Content-Type": "application/webhook+json"}
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    ) as client:
        while True:
            try:
                async with client.post(url, data=body, headers=headers) as response:
                    if response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
                    if not _retryable(response.status):
                        logger.warning("webhook %s refused: %s", url, problem)
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
            wait = next(waits, None)
            if wait is None:
                logger.warning("webhook %s failed: %s", url, problem)
                return
            await asyncio.sleep(wait)
