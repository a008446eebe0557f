"""Console benchmark: the dashboard and the appointment list of one clinic holding
100,000 appointments (and as many call attempts) in PostgreSQL.

Loads the data with COPY into a fresh database, then times whole HTTP requests
through the application (routing, authentication, services, rendering) with an
API token: the dashboard JSON and page, and appointment list pages (first,
deep, searched, filtered). The target is under 300 ms each.

    .venv/bin/python bench/console_bench.py [--appointments 100000] [--repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

import psycopg
from fastapi.testclient import TestClient

from campaigns import migrate, users
from campaigns.attempts.pipeline import Pipeline
from campaigns.db import make_engine, session_factory
from campaigns.settings import Settings
from campaigns.telephony.pacing.local_pacer import LocalPacer
from console.app import create_app

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
DB = "campaigns_console_bench"
URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
STATES = ("completed", "completed", "failed", "scheduled", "skipped")
OUTCOMES = {"completed": "confirmed", "failed": "no_answer"}
ZONE = "America/New_York"


def load(appointments: int) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    migrate.upgrade(URL)
    now = datetime.now(UTC)
    started = time.perf_counter()
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{DB}") as conn:
        conn.execute(
            "INSERT INTO clinic (name, timezone, country, window_start, window_end, weekdays,"
            " max_attempts, retry_base_seconds, retry_cap_seconds, retry_voicemail,"
            " min_gap_seconds, cutoff_minutes, dials_per_number_24h, dials_per_number_7d,"
            " daily_run_time, lead_days, created_at, updated_at) VALUES ('Bench', %s, 'US',"
            " '09:00', '19:00', 'mon,tue,wed,thu,fri', 4, 3600, 86400, true, 3600, 120, 3, 6,"
            " '10:00', '1', %s, %s)",
            (ZONE, now, now),
        )
        with conn.cursor().copy(
            "COPY appointment (clinic_id, external_id, patient_name, phone_e164, phone_source,"
            " patient_timezone, starts_at, status, created_at, updated_at) FROM STDIN"
        ) as copy:
            for n in range(appointments):
                # Spread over the last and the next 30 days.
                starts = now + timedelta(minutes=(n % 86_400) - 43_200)
                copy.write_row(
                    (
                        1,
                        f"A{n:07d}",
                        f"Patient {n}",
                        f"+1212{n % 10_000_000:07d}",
                        "bench",
                        ZONE,
                        starts,
                        "scheduled",
                        now,
                        now,
                    )
                )
        with conn.cursor().copy(
            "COPY call_attempt (appointment_id, clinic_id, attempt_number, state, outcome,"
            " due_at, number_called, dialing_at, answered_at, ended_at, created_at, updated_at)"
            " FROM STDIN"
        ) as copy:
            for n in range(appointments):
                state = STATES[n % len(STATES)]
                at = now - timedelta(minutes=n % 20_000)
                done = state in OUTCOMES
                copy.write_row(
                    (
                        n + 1,
                        1,
                        1,
                        state,
                        OUTCOMES.get(state),
                        at,
                        f"+1212{n % 10_000_000:07d}",
                        at if done else None,
                        at if state == "completed" else None,
                        at if done else None,
                        now,
                        now,
                    )
                )
        conn.execute("ANALYZE")
        conn.commit()
    print(
        f"loaded {appointments:,} appointments and {appointments:,} attempts "
        f"in {time.perf_counter() - started:.1f}s"
    )


def timed(client: TestClient, path: str, headers: dict[str, str], repeat: int) -> list[float]:
    client.get(path, headers=headers).raise_for_status()  # warm the caches once
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        client.get(path, headers=headers).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--appointments", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    load(args.appointments)
    engine = make_engine(URL)
    sessions = session_factory(engine)
    with sessions() as session:
        user = users.add_user(
            session, "bench@example.org", "admin", "bench-password-long", actor="bench"
        )
        token, _ = users.open_session(
            session, user, users.API, datetime.now(UTC), timedelta(hours=1)
        )
        session.commit()
    pipeline = Pipeline(sessions=sessions, settings=Settings(database_url=URL), pacer=LocalPacer())
    headers = {"Authorization": f"Bearer {token}"}
    paths = {
        "dashboard (JSON)": "/api/v1/clinics/1/dashboard",
        "dashboard page": "/clinics/1",
        "dashboard live fragment": "/clinics/1/live",
        "appointments, page 1": "/api/v1/clinics/1/appointments",
        "appointments, page 1000": "/api/v1/clinics/1/appointments?page=1000",
        "appointments, search by name": "/api/v1/clinics/1/appointments?q=Patient%2099999",
        "appointments, by outcome": "/api/v1/clinics/1/appointments?outcome=confirmed",
        "appointment list page": "/clinics/1/appointments",
    }
    print(f"median and worst of {args.repeat} requests (target < 300 ms):")
    with TestClient(create_app(pipeline)) as client:
        for name, path in paths.items():
            times = timed(client, path, headers, args.repeat)
            print(
                f"  {name:32s} median {statistics.median(times):6.1f} ms  max {max(times):6.1f} ms"
            )
    engine.dispose()


if __name__ == "__main__":
    main()
