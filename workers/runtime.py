"""One pipeline per worker process: a database pool, the pacer, and one event
loop on a background thread that every task thread shares for its LiveKit I/O,
so hundreds of ringing calls cost coroutines, not processes.

A worker process also proves it is alive: :class:`Heartbeat` writes its row
every quarter of ``CAMPAIGNS_WORKER_LOST_SECONDS``, and every attempt it takes
is marked with its id, so reconciliation knows the calls of a killed worker
without waiting for their timeouts.

Without Redis, pacing lives in the worker process: :func:`claim_sole_worker`
keeps a second worker off the same database, which would double the trunks' limits.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import socket
import threading
from collections.abc import Awaitable
from concurrent.futures import Future
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import redis
from sqlalchemy import Connection, make_url, text

from campaigns.attempts import reconcile
from campaigns.attempts.pipeline import Pipeline, utc_clock
from campaigns.db import get_engine, is_sqlite, session_factory, session_scope
from campaigns.errors import CampaignError
from campaigns.settings import Settings, get_settings
from campaigns.telephony.livekit_gateway import LiveKitTelephony
from campaigns.telephony.pacing.local_pacer import LocalPacer
from campaigns.telephony.pacing.pacer import Pacer
from campaigns.telephony.pacing.redis_pacer import RedisPacer

log = logging.getLogger(__name__)

T = TypeVar("T")

# This process's name in the heartbeat table and on the attempts it takes.
WORKER_ID = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


class EventLoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="campaigns-io", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Awaitable[T], timeout: float | None = None) -> T:
        """The coroutine's result; past ``timeout`` seconds it is cancelled and
        :class:`TimeoutError` raised."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise


class Heartbeat:
    """A daemon thread that keeps this worker's heartbeat row fresh."""

    def __init__(self, settings: Settings) -> None:
        self._every = settings.worker_lost_seconds / 4
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="campaigns-heartbeat", daemon=True)

    def beat(self) -> None:
        with session_scope(session_factory(get_engine())) as session:
            reconcile.heartbeat(session, WORKER_ID, utc_clock())

    def start(self) -> None:
        self._beat_or_warn()
        self._thread.start()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with session_scope(session_factory(get_engine())) as session:
                reconcile.forget_worker(session, WORKER_ID)
        except Exception as exc:  # its row then simply ages out
            log.warning("could not remove the heartbeat: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._beat_or_warn()

    def _beat_or_warn(self) -> None:
        try:
            self.beat()
        except Exception as exc:  # the database may be back at the next beat
            log.warning("heartbeat failed: %s", str(exc).splitlines()[0] if str(exc) else exc)


class SoleWorkerError(CampaignError):
    pass


_sole_worker_hold: list[Any] = []  # the lock file or connection, held for the process's life

_SOLE_WORKER_ERROR = (
    "another `campaigns worker` already runs on this database, and without Redis each "
    "worker paces its calls alone: set CAMPAIGNS_REDIS_URL (or a Redis broker) to run more"
)
# pg_try_advisory_lock key: "campaigns-worker" in ASCII, truncated to 63 bits.
_ADVISORY_KEY = 0x63616D7061696773


def claim_sole_worker(settings: Settings) -> None:
    """Refuse a second worker process on a database where pacing is in-process.

    SQLite: an exclusive ``flock`` on a file beside the database; PostgreSQL: a
    session advisory lock. Either is released by the operating system or the
    server the moment the process dies, so a killed worker's successor starts at once.
    """
    if settings.pacing_redis_url is not None:
        return
    url = settings.database_url
    if is_sqlite(url):
        database = make_url(url).database or ""
        if database in ("", ":memory:"):
            return
        path = Path(database).with_name(Path(database).name + ".worker-lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SoleWorkerError(_SOLE_WORKER_ERROR) from None
        _sole_worker_hold.append(fd)
        return
    connection: Connection = get_engine().connect()
    if not connection.execute(
        text("SELECT pg_try_advisory_lock(:key)"), {"key": _ADVISORY_KEY}
    ).scalar():
        connection.close()
        raise SoleWorkerError(_SOLE_WORKER_ERROR)
    connection.commit()
    _sole_worker_hold.append(connection)


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


_lock = threading.Lock()
_pipeline: Pipeline | None = None


def get_pipeline() -> Pipeline:
    global _pipeline  # noqa: PLW0603 (one per process, built on first use)
    with _lock:
        if _pipeline is None:
            settings = get_settings()
            io = EventLoopThread()
            telephony = LiveKitTelephony.from_settings(settings)
            _pipeline = Pipeline(
                sessions=session_factory(get_engine()),
                settings=settings,
                pacer=pacer_from_settings(settings.pacing_redis_url),
                telephony=telephony,
                run=io.run,
                worker_id=WORKER_ID,
            )
        return _pipeline
