"""Tick benchmark: one beat tick claiming and enqueueing 1,000 due attempts on
PostgreSQL holding 1,000,000 appointments and 100,000 pending attempts.

Loads the data with COPY into a fresh database, then times several ticks: the
claim (select due rows FOR UPDATE SKIP LOCKED, re-check the policy for each,
mark them queued, audit) and the enqueue (one Celery task per attempt on Redis).

    .venv/bin/python bench/tick_bench.py [--appointments 1000000] [--pending 100000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

import psycopg
from celery import Celery

from campaigns import migrate
from campaigns.attempts.pipeline import Pipeline
from campaigns.db import make_engine, session_factory
from campaigns.settings import Settings
from campaigns.telephony.pacing.local_pacer import LocalPacer
from demo.daytime import daytime_zone, local_number
from workers import task_names

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
DB = "campaigns_tick_bench"
URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
BROKER = "redis://127.0.0.1:6379/14"


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
            VALUES ('Bench', %s, 'US', '00:00', '23:59', 'mon,tue,wed,thu,fri,sat,sun', 4, 3600,
                86400, true, 3600, 120, 3, 6, '10:00', '1', 'ST_bench', %s, %s)
            """,
            (zone, now, now),
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
                copy.write_row(
                    (n + 1, 1, 1, "scheduled", due_at, f"+1212{n % 10_000_000:07d}", now, now)
                )
        conn.execute("ANALYZE")
        conn.commit()
    print(
        f"loaded {appointments:,} appointments and {pending:,} pending attempts "
        f"in {time.perf_counter() - started:.1f}s (patients in {zone})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--appointments", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--ticks", type=int, default=5)
    args = parser.parse_args()
    batch = 1000
    load(args.appointments, args.pending, due=batch * args.ticks)

    engine = make_engine(URL)
    settings = Settings(database_url=URL, broker_url=BROKER, tick_batch=batch)
    pipeline = Pipeline(sessions=session_factory(engine), settings=settings, pacer=LocalPacer())
    sender = Celery(broker=BROKER)
    sender.connection_for_write().ensure_connection()
    producer_pool = sender.producer_pool
    claim_times, send_times, totals = [], [], []
    with producer_pool.acquire(block=True) as producer:
        for _ in range(args.ticks):
            sent: list[int] = []
            started = time.perf_counter()
            result = pipeline.tick(send=sent.append, max_batches=1)
            claimed = time.perf_counter()
            with producer.batch(max_size=batch):
                for attempt_id in sent:
                    sender.send_task(task_names.PLACE_CALL, args=[attempt_id], producer=producer)
            finished = time.perf_counter()
            assert len(result.queued) == batch, (len(result.queued), result)
            claim_times.append((claimed - started) * 1000)
            send_times.append((finished - claimed) * 1000)
            totals.append((finished - started) * 1000)
    print(
        f"tick of {batch} due attempts over {args.pending:,} pending"
        f" / {args.appointments:,} appointments"
    )
    print(
        f"  claim + policy + audit: median {statistics.median(claim_times):.0f} ms  (all: "
        + ", ".join(f"{t:.0f}" for t in claim_times)
        + ")"
    )
    print(f"  enqueue on Redis:       median {statistics.median(send_times):.0f} ms")
    print(
        f"  whole tick:             median {statistics.median(totals):.0f} ms  (target <= 100 ms)"
    )
    engine.dispose()
    sender.close()


if __name__ == "__main__":
    main()
