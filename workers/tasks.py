"""Celery tasks: thin adapters that take ids and call one pipeline step."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_init, worker_shutdown
from sqlalchemy.exc import OperationalError

from campaigns.settings import get_settings
from workers import task_names
from workers.celery_app import app
from workers.publish import CallPublisher
from workers.runtime import Heartbeat, get_pipeline

_heartbeat = Heartbeat(get_settings())
# The tick's place_call messages: each batch's in one round trip to the broker.
_calls = CallPublisher(app, task_names.PLACE_CALL)


@worker_init.connect  # before the first task is taken
def _start_heartbeat(**_: Any) -> None:
    _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    _heartbeat.stop()


@app.task(name=task_names.TICK, acks_late=False, ignore_result=True)
def tick() -> int:
    return len(get_pipeline().tick(send=_calls.publish).queued)


@app.task(name=task_names.PLACE_CALL, acks_late=True)
def place_call(attempt_id: int) -> str:
    # Not retried by Celery: a second run of a dialed attempt is a no-op by its state,
    # and an undialed one is put back in the database queue by the step itself.
    # Celery's time limits do not apply to the threads pool: the step bounds its own dial.
    return get_pipeline().place_call(int(attempt_id))


@app.task(
    name=task_names.RECORD_OUTCOME,
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


@app.task(name=task_names.RECONCILE, acks_late=False)
def reconcile() -> dict[str, int]:
    return get_pipeline().reconcile()


@app.task(name=task_names.DAILY_RUNS, acks_late=False)
def daily_runs() -> int:
    return sum(r.created for r in get_pipeline().daily_runs())
