"""One pipeline per worker process: a database pool, the pacer, and one event
loop on a background thread that every task thread shares for its LiveKit I/O,
so hundreds of ringing calls cost coroutines, not processes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from concurrent.futures import Future
from typing import TypeVar

from campaigns.db import get_engine, session_factory
from campaigns.livekit_gateway import LiveKitTelephony
from campaigns.pacing import pacer_from_settings
from campaigns.pipeline import Pipeline
from campaigns.settings import get_settings

T = TypeVar("T")


class EventLoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="campaigns-io", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Awaitable[T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
        return future.result()


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
                pacer=pacer_from_settings(settings.redis_url),
                telephony=telephony,
                run=io.run,
            )
        return _pipeline
