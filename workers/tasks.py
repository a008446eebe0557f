"""Celery tasks: thin adapters that take ids and call one pipeline step."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_init, worker_shutdown
from sqlalchemy.exc import OperationalError

from campaigns.settings import get_settings
from workers.celery_app import app
from workers.runtime import Heartbeat, get_pipeline

_heartbeat = Heartbeat(get_settings())


@worker_init.connect  # before the first task is taken
def _start_heartbeat(**_: Any) -> None:
    _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    _heartbeat.stop()


@app.task(name="campaigns.tick", acks_late=False, ignore_result=True)
def tick() -> int:
    # One producer, and the sends of each batch pipelined to the broker in one round trip.
    with app.producer_or_acquire() as producer, producer.batch(max_size=1000):
        result = get_pipeline().tick(
            send=lambda attempt_id: place_call.apply_async((attempt_id,), producer=producer)
        )
    return len(result.queued)


@app.task(name="campaigns.place_call", acks_late=True)
def place_call(attempt_id: int) -> str:
    # Not retried by Celery: a second run of a dialed attempt is a no-op by its state,
    # and an undialed one is put back in the database queue by the step itself.
    # Celery's time limits do not apply to the threads pool: the step bounds its own dial.
    return get_pipeline().place_call(int(attempt_id))


@app.task(
    name="campaigns.record_outcome",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=8,
)
def record_outcome(
    attempt_id: int, outcome: str, token: str, detail: dict[str, Any] | None = None
) -> bool:
    # A report that is not applied is audited with the reason, never raised: nothing to retry.
    return get_pipeline().record_outcome(int(attempt_id), outcome, token, detail).accepted


@app.task(name="campaigns.reconcile", acks_late=False)
def reconcile() -> dict[str, int]:
    return get_pipeline().reconcile()


@app.task(name="campaigns.daily_runs", acks_late=False)
def daily_runs() -> int:
    return sum(r.created for r in get_pipeline().daily_runs())
