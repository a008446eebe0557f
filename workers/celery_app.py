"""The Celery application: configuration only; tasks live in :mod:`workers.tasks`."""

from __future__ import annotations

from typing import Any

from celery import Celery

from campaigns.db import create_sqlite_file, is_sqlite
from campaigns.settings import get_settings
from scheduler.schedule import beat_schedule
from workers.broker import EMBEDDED_PREFIX, celery_broker


def _transport_options(broker_url: str) -> dict[str, Any]:
    if broker_url.startswith(("redis://", "rediss://")):
        # Above the longest task (a dial), so Redis never re-delivers one still running.
        return {"visibility_timeout": 3600}
    if broker_url.startswith(EMBEDDED_PREFIX):
        # Options of the transport's SQLAlchemy engine: task arguments stay out of logs.
        return {"hide_parameters": True}
    return {}


def make_app() -> Celery:
    settings = get_settings()
    broker = celery_broker(settings.broker_url)
    if is_sqlite(broker["broker_url"]):
        create_sqlite_file(broker["broker_url"])
    app = Celery("campaigns", include=["workers.tasks"])
    app.conf.update(
        **broker,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        # A message whose worker died is redelivered; the attempt's state makes it a no-op.
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings.broker_url),
        beat_schedule=beat_schedule(settings),
        timezone="UTC",
        enable_utc=True,
    )
    return app


app = make_app()
