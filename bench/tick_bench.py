"""Tick benchmark: one beat tick claiming and enqueueing 1,000 due attempts on
PostgreSQL holding 1,000,000 appointments and 100,000 pending attempts.

Loads the data with COPY into a fresh database, then times ``--ticks`` ticks as
the beat runs them: the claim (select due rows FOR UPDATE SKIP LOCKED, re-check
the policy for each, mark them queued, audit, commit) and the publish (one
``campaigns.place_call`` message per attempt on Redis, after the commit). Prints
the median and p90 of each phase and the SQL statements each tick sent, then
checks that the broker's queue holds one message per queued attempt. The
messages are the workers' own (their Celery app, on ``--broker``), sent as the
tick task sends them, or with ``--publish apply-async`` one ``apply_async`` per
attempt as the tick did before.
``--reuse`` skips the load: the attempts an earlier run queued are put back on
the schedule, so runs of two versions can alternate under the same load.

    .venv/bin/python bench/tick_bench.py [--appointments 1000000] [--pending 100000]
        [--ticks 10] [--broker redis://127.0.0.1:6379/14] [--publish apply-async] [--reuse]
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis
from celery import Celery
from sqlalchemy import Engine, event

from campaigns import migrate
from campaigns.attempts.pipeline import Pipeline
from campaigns.db import make_engine, session_factory
from campaigns.settings import Settings, get_settings
from campaigns.telephony.pacing.local_pacer import LocalPacer
from demo.daytime import country_of, daytime_zone, local_number
from workers import task_names
from workers.publish import CallPublisher

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
DB = "campaigns_tick_bench"
URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
BROKER = "redis://127.0.0.1:6379/14"
QUEUE = "celery"  # Celery's default queue, where place_call goes


def load(appointments: int, pending: int, due: int) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    migrate.upgrade(URL)
    now = datetime.now(UTC)
    zone = daytime_zone(now)
    started = time.perf_counter()
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{DB}") as conn:
        conn.execute(
            """
            INSERT INTO clinic (name, timezone, country, window_start, window_end, weekdays,
                max_attempts, retry_base_seconds, retry_cap_seconds, retry_voicemail,
                min_gap_seconds, cutoff_minutes, dials_per_number_24h, dials_per_number_7d,
                daily_run_time, lead_days, trunk_id, created_at, updated_at)
            VALUES ('Bench', %s, %s, '00:00', '23:59', 'mon,tue,wed,thu,fri,sat,sun', 4, 3600,
                86400, true, 3600, 120, 3, 6, '10:00', '1', 'ST_bench', %s, %s)
            """,
            (zone, country_of(zone), now, now),
        )
        # A trunk roomy enough that the claim is limited by the batch size alone.
        conn.execute(
            "INSERT INTO trunk (sip_trunk_id, name, numbers, calls_per_second, max_concurrent,"
            " created_at) VALUES ('ST_bench', 'bench', '', 1000, 1000000, %s)",
            (now,),
        )
        starts = now + timedelta(days=2)
        with conn.cursor().copy(
            "COPY appointment (clinic_id, external_id, patient_name, phone_e164, phone_source,"
            " patient_timezone, starts_at, status, created_at, updated_at) FROM STDIN"
        ) as copy:
            for n in range(appointments):
                copy.write_row(
                    (
                        1,
                        f"A{n}",
                        "Bench Patient",
                        local_number(zone, f"{n % 10_000:04d}"),
                        "bench",
                        zone,
                        starts,
                        "scheduled",
                        now,
                        now,
                    )
                )
        with conn.cursor().copy(
            "COPY call_attempt (appointment_id, clinic_id, attempt_number, state, due_at,"
            " number_called, created_at, updated_at) FROM STDIN"
        ) as copy:
            for n in range(pending):
                # The first `due` are due now, the rest later today.
                due_at = now - timedelta(seconds=due - n) if n < due else now + timedelta(hours=2)
                # An attempt calls its appointment's number, as a daily run makes it.
                number = local_number(zone, f"{n % 10_000:04d}")
                copy.write_row((n + 1, 1, 1, "scheduled", due_at, number, now, now))
        conn.execute("ANALYZE")
        conn.commit()
    print(
        f"loaded {appointments:,} appointments and {pending:,} pending attempts "
        f"in {time.perf_counter() - started:.1f}s (patients in {zone})"
    )


class StatementCounter:
    """Counts the statements an engine sends (an executemany counts once: one round trip)."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_: Any) -> None:
        self.count += 1


def _summary(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return (
        f"  {name:<8} median {statistics.median(times):6.1f} ms   p90 {p90:6.1f} ms   (all: "
        + ", ".join(f"{t:.0f}" for t in times)
        + ")"
    )


def reset() -> None:
    """Put the attempts an earlier run queued back on the schedule."""
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{DB}", autocommit=True) as conn:
        conn.execute(
            "UPDATE call_attempt SET state = 'scheduled', queued_at = NULL,"
            " updated_at = created_at WHERE state = 'queued'"
        )
        conn.execute("VACUUM ANALYZE call_attempt")


def workers_app(broker: str) -> Celery:
    """The workers' Celery app and tasks, on the bench's broker."""
    os.environ["CAMPAIGNS_BROKER_URL"] = broker
    get_settings.cache_clear()
    tasks = importlib.import_module("workers.tasks")  # reads the broker URL when imported
    app: Celery = tasks.app
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--appointments", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--broker", default=BROKER, help="a Redis URL; its queue is emptied")
    parser.add_argument(
        "--publish",
        choices=["batch", "apply-async"],
        default="batch",
        help="the tick's one-round-trip publisher, or one apply_async per attempt",
    )
    parser.add_argument("--reuse", action="store_true", help="keep the loaded database")
    args = parser.parse_args()
    batch = 1000
    if args.reuse:
        reset()
    else:
        load(args.appointments, args.pending, due=batch * args.ticks)

    engine = make_engine(URL)
    statements = StatementCounter(engine)
    settings = Settings(database_url=URL, broker_url=args.broker, tick_batch=batch)
    pipeline = Pipeline(sessions=session_factory(engine), settings=settings, pacer=LocalPacer())
    app = workers_app(args.broker)
    publisher = CallPublisher(app, task_names.PLACE_CALL)
    place_call = app.tasks[task_names.PLACE_CALL]

    def apply_async(attempt_ids: list[int]) -> None:
        with app.producer_or_acquire() as producer, producer.batch(max_size=len(attempt_ids)):
            for attempt_id in attempt_ids:
                place_call.apply_async((attempt_id,), producer=producer)

    publish = publisher.publish if args.publish == "batch" else apply_async
    queue = redis.Redis.from_url(args.broker)
    queue.delete(QUEUE)
    claims, publishes, totals, counts = [], [], [], []
    for _ in range(args.ticks):
        publishing = 0.0

        def send(attempt_ids: list[int]) -> None:
            nonlocal publishing
            begun = time.perf_counter()
            publish(attempt_ids)
            publishing += time.perf_counter() - begun

        statements.count = 0
        started = time.perf_counter()
        result = pipeline.tick(send=send, max_batches=1)
        finished = time.perf_counter()
        assert len(result.queued) == batch, (len(result.queued), result)
        counts.append(statements.count)
        publishes.append(publishing * 1000)
        totals.append((finished - started) * 1000)
        claims.append(totals[-1] - publishes[-1])
    waiting = queue.llen(QUEUE)
    assert waiting == batch * args.ticks, f"{waiting} messages in the queue"
    queue.delete(QUEUE)
    print(
        f"tick of {batch} due attempts over {args.pending:,} pending"
        f" / {args.appointments:,} appointments, {args.ticks} ticks, publish: {args.publish}"
    )
    print(_summary("claim", claims))
    print(_summary("publish", publishes))
    print(_summary("total", totals) + "  target <= 100 ms")
    print(f"  SQL statements per tick: {statistics.median(counts):.0f} (plus BEGIN and COMMIT)")
    engine.dispose()


if __name__ == "__main__":
    main()
