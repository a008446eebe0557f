"""The tick's publisher against the real brokers: its messages are the ones ``apply_async``
sends, and kombu reads them back as Celery's worker does (a worker runs them in
tests/e2e/test_tick_publish.py)."""

from __future__ import annotations

import importlib
import json
import os
import uuid
from base64 import b64decode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from campaigns.settings import get_settings
from workers import task_names
from workers.celery_app import make_app
from workers.publish import CallPublisher

REDIS_URL = os.environ.get("CAMPAIGNS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _workers_app(monkeypatch: pytest.MonkeyPatch, broker_url: str, queue: str) -> Celery:
    """The workers' app on ``broker_url``, its tasks going to ``queue``."""
    monkeypatch.setenv("CAMPAIGNS_BROKER_URL", broker_url)
    get_settings.cache_clear()
    try:
        importlib.import_module("workers.tasks")  # the tasks, shared with every app
        app = make_app()
    finally:
        get_settings.cache_clear()
    app.conf.task_default_queue = queue
    return app


@pytest.fixture
def queue() -> str:
    return f"test-publish-{uuid.uuid4().hex}"


@pytest.fixture
def redis_app(monkeypatch: pytest.MonkeyPatch, queue: str) -> Iterator[Celery]:
    app = _workers_app(monkeypatch, REDIS_URL, queue)
    yield app
    redis.Redis.from_url(REDIS_URL).delete(queue)
    app.close()


def _decoded(raw: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(raw)
    message["body"] = json.loads(b64decode(message["body"]))
    return message


def _read(app: Celery, queue: str, count: int) -> list[tuple[str, list[Any]]]:
    """The task name and arguments of the next ``count`` messages, as a worker reads them."""
    taken: list[tuple[str, list[Any]]] = []
    with app.connection_for_read() as connection:
        reader = connection.SimpleQueue(queue)
        for _ in range(count):
            message = reader.get(timeout=5)
            args, kwargs, _embed = message.decode()
            assert kwargs == {}
            taken.append((message.headers["task"], args))
            message.ack()
        reader.close()
    return taken


@pytest.mark.redis
def test_a_message_is_the_one_apply_async_sends_but_for_its_ids(
    redis_app: Celery, queue: str
) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    redis_app.tasks[task_names.PLACE_CALL].apply_async((7,))
    theirs = _decoded(client.rpop(queue))  # type: ignore[arg-type]
    CallPublisher(redis_app, task_names.PLACE_CALL).publish([7, 7])
    ours, again = (_decoded(client.rpop(queue)) for _ in range(2))  # type: ignore[arg-type]

    fresh = {("headers", "id"), ("headers", "root_id"), ("properties", "correlation_id")}
    for part, name in {*fresh, ("properties", "delivery_tag")}:
        assert ours[part][name] != theirs[part][name]
        assert ours[part][name] != again[part][name]  # every message its own
        theirs[part][name] = ours[part][name] = "*"
    assert ours == theirs
    assert len({again[part][name] for part, name in fresh}) == 1
    assert client.llen(queue) == 0


@pytest.mark.redis
def test_a_batch_is_one_message_per_id_in_order(redis_app: Celery, queue: str) -> None:
    CallPublisher(redis_app, task_names.PLACE_CALL).publish([31, 4, 15, 9])

    assert _read(redis_app, queue, 4) == [
        (task_names.PLACE_CALL, [31]),
        (task_names.PLACE_CALL, [4]),
        (task_names.PLACE_CALL, [15]),
        (task_names.PLACE_CALL, [9]),
    ]


@pytest.mark.redis
def test_nothing_to_send_is_no_round_trip(redis_app: Celery, queue: str) -> None:
    CallPublisher(redis_app, task_names.PLACE_CALL).publish([])

    assert redis.Redis.from_url(REDIS_URL).llen(queue) == 0


def test_the_embedded_broker_gets_the_same_tasks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, queue: str
) -> None:
    app = _workers_app(monkeypatch, f"sqla+sqlite:///{tmp_path / 'broker.db'}", queue)
    try:
        CallPublisher(app, task_names.PLACE_CALL).publish([2, 1])
        assert _read(app, queue, 2) == [(task_names.PLACE_CALL, [2]), (task_names.PLACE_CALL, [1])]
    finally:
        app.close()
