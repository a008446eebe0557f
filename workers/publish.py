"""The tick's ``place_call`` messages: built from one template, sent in one round trip.

``apply_async`` costs about a fifth of a millisecond per message (routing, signals,
argument reprs, declaring the queue again), more than the claim of a tick that
queues a thousand calls. The tick's messages differ only in their attempt id, so
:class:`CallPublisher` has Celery build the task's message once, serializes it as
kombu's Redis transport does, with placeholders, and per attempt fills in the id, a
new task id and a new delivery tag. On Redis a batch goes out as one LPUSH: one
round trip, all of it or none. Any other broker (the embedded SQLite transport), or
a route the template does not cover, gets ``apply_async`` per attempt.

They are ordinary Celery protocol-2 messages and the worker runs them as it runs
``apply_async``'s: acks_late and the rest are the task's, not the message's.

The tick publishes a batch only after its claim has committed. A publish that
fails leaves those attempts ``queued`` and raises; reconciliation puts them back
on the schedule after ``queued_timeout_seconds`` and a later tick sends them
again. If the failed publish did reach Redis after all, the attempt is dialed by
whichever of its messages a worker takes first; the other finds it no longer
queued and does nothing.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.serialization import dumps as serialize
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

# Stand-ins in the template: none occurs in a real message, none needs JSON escaping.
_ID = 918273645546372819
_TASK_ID = "campaigns-task-id-placeholder"
_TAG = "campaigns-delivery-tag-placeholder"
_BODY = "campaigns-body-placeholder"


@dataclass(frozen=True)
class _Template:
    """A message as the Redis transport stores it, with ``%(name)s`` for what varies."""

    queue: str
    payload: str
    body_head: str  # the serialized body is body_head + the id + body_tail
    body_tail: str


_serial = itertools.count()


def _unique_ids(count: int) -> list[str]:
    """``count`` UUID-shaped ids: one random uuid4 per batch, its last field a serial
    number of this process (a uuid4 per message costs more than the rest of it)."""
    prefix = str(uuid.uuid4())[:24]
    return [f"{prefix}{next(_serial) % 2**48:012x}" for _ in range(count)]


class CallPublisher:
    """Publishes one Celery task that takes a single integer, for many integers at once."""

    def __init__(self, app: Celery, task_name: str) -> None:
        self._app = app
        self._task_name = task_name
        self._template: _Template | None = None
        self._checked = False
        self._lock = threading.Lock()

    def publish(self, ids: Sequence[int]) -> None:
        """One task message per id; raises when the broker may not have them."""
        if not ids:
            return
        with self._app.producer_or_acquire() as producer:
            channel = producer.channel
            template = self._template_for(channel)
            if template is None:
                task = self._app.tasks[self._task_name]
                with producer.batch(max_size=len(ids)):
                    for value in ids:
                        task.apply_async((int(value),), producer=producer)
                return
            encode, encoding = channel.encode_body, channel.body_encoding
            head, tail = template.body_head, template.body_tail
            task_ids, tags = _unique_ids(len(ids)), _unique_ids(len(ids))
            messages = [
                template.payload
                % {
                    "id": number,
                    "task_id": task_id,
                    "tag": tag,
                    "body": encode(f"{head}{number}{tail}", encoding)[0],
                }
                for number, task_id, tag in zip(map(int, ids), task_ids, tags, strict=True)
            ]
            with channel.conn_or_acquire() as client:
                client.lpush(template.queue, *messages)

    def _template_for(self, channel: Any) -> _Template | None:
        if not isinstance(channel, kombu_redis.Channel):
            return None
        with self._lock:
            if not self._checked:
                self._template = self._build_template(channel)
                self._checked = True
        return self._template

    def _build_template(self, channel: Any) -> _Template | None:
        """The message ``apply_async((id,))`` sends, if its route is a plain queue."""
        app = self._app
        task = app.tasks[self._task_name]
        options = {k: v for k, v in task._get_exec_options().items() if v is not None}
        route = app.amqp.router.route(options, self._task_name, (_ID,), {}, task)
        queue = route.get("queue")
        if (
            route.pop("serializer", app.conf.task_serializer) != "json"
            or queue is None
            or set(route) != {"queue"}  # an exchange, a routing key, a priority...
            or queue.exchange.type != "direct"
            or queue.expires is not None
            or queue.message_ttl is not None
            or queue.max_priority is not None
            or task.expires is not None
            or task.time_limit is not None
            or task.soft_time_limit is not None
        ):
            return None
        message = app.amqp.create_task_message(
            _TASK_ID,
            self._task_name,
            (_ID,),
            {},
            reply_to=app.thread_oid,
            ignore_result=task.ignore_result,
        )
        content_type, content_encoding, body = serialize(message.body, serializer="json")  # type: ignore[no-untyped-call]
        body_head, _, body_tail = body.partition(str(_ID))
        prepared = channel.prepare_message(
            _BODY,
            0,
            content_type,
            content_encoding,
            message.headers,
            {**message.properties, "delivery_mode": queue.exchange.delivery_mode or 2},
        )
        # What basic_publish adds to each message sent through the nameless exchange.
        prepared["properties"].update(
            body_encoding=channel.body_encoding,
            delivery_tag=_TAG,
            delivery_info={"exchange": "", "routing_key": queue.name},
        )
        payload = dumps(prepared).replace("%", "%%")  # type: ignore[no-untyped-call]
        for placeholder, name in (
            (_BODY, "body"),
            (_TAG, "tag"),
            (_TASK_ID, "task_id"),
            (str(_ID), "id"),
        ):
            payload = payload.replace(placeholder, f"%({name})s")
        return _Template(queue.name, payload, body_head, body_tail)
