"""Celery tasks: thin adapters that take ids and call one pipeline step."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import OperationalError

from workers.celery_app import app
from workers.runtime import get_pipeline

# A dial waits at most the ringing timeout plus the gateway's margin; this bounds a stuck task.
PLACE_CALL_TIME_LIMIT = 600


@app.task(name="campaigns.tick", acks_late=False, ignore_result=True)
def tick() -> int:
    # One producer, and the sends of each batch pipelined to the broker in one round trip.
    with app.producer_or_acquire() as producer, producer.batch(max_size=1000):
        result = get_pipeline().tick(
            send=lambda attempt_id: place_call.apply_async((attempt_id,), producer=producer)
        )
    return len(result.queued)


@app.task(name="campaigns.place_call", acks_late=True, soft_time_limit=PLACE_CALL_TIME_LIMIT)
def place_call(attempt_id: int) -> str:
    # Not retried by Celery: a second run of a dialed attempt is a no-op by its state,
    # and an undialed one is put back in the database queue by the step itself.
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
