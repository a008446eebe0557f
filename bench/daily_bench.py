"""Daily-run benchmark: every clinic's daily run at once, on PostgreSQL.

Loads clinics in several zones, each due for its daily run now, and appointments
spread over the next days (some confirmed or cancelled, some with an earlier call,
some with a call still open, some numbers on the do-not-call list) with COPY into
a fresh database, then times ``Pipeline.daily_runs`` twice: the first run creates
the attempts, the second finds every clinic done and creates nothing.

    .venv/bin/python bench/daily_bench.py [--clinics 2000] [--appointments 1000000]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
import psutil
import psycopg
from sqlalchemy import func
from sqlmodel import col, select

from campaigns.attempts.pipeline import Pipeline
from campaigns.db import make_engine, session_factory
from campaigns.models import AuditEvent, CallAttempt
from campaigns.settings import Settings
from campaigns.telephony.pacing.local_pacer import LocalPacer
from harness.databases import scratch_postgres
from harness.measure import rss_sampler

# Clinic zones and the area codes of their patients' numbers.
AREA_CODES: dict[str, tuple[int, ...]] = {
    "America/New_York": (212, 617, 404, 305),
    "America/Chicago": (312, 713, 214, 612),
    "America/Denver": (303, 801, 505),
    "America/Phoenix": (602, 480),
    "America/Los_Angeles": (213, 415, 206, 503),
    "America/Anchorage": (907,),
    "Pacific/Honolulu": (808,),
}
ZONES = tuple(AREA_CODES)
STATES = {"America/New_York": ("NY", "10001"), "America/Chicago": ("IL", "60601")}
LEAD_DAYS = ("1", "2", "1,2", "1,3")
WEEKDAYS = ("mon,tue,wed,thu,fri", "mon,tue,wed,thu,fri,sat,sun", "mon,tue,wed,thu,fri,sat")
WINDOWS = (("09:00", "19:00"), ("08:00", "20:00"), ("10:00", "18:00"))


def number_prefixes(zone: str) -> list[str]:
    """E.164 prefixes (country, area code, exchange) of valid numbers in ``zone``'s areas."""
    prefixes = []
    for area in AREA_CODES[zone]:
        for exchange in range(201, 999, 37):
            prefix = f"+1{area}{exchange}"
            if phonenumbers.is_valid_number(phonenumbers.parse(prefix + "0100")):
                prefixes.append(prefix)
    return prefixes


def load(dsn: str, clinics: int, appointments: int, days: int, now: datetime) -> None:
    prefixes = {zone: number_prefixes(zone) for zone in ZONES}
    with psycopg.connect(dsn) as conn:
        with conn.cursor().copy(
            "COPY clinic (id, name, timezone, country, window_start, window_end, weekdays,"
            " max_attempts, retry_base_seconds, retry_cap_seconds, retry_voicemail,"
            " min_gap_seconds, cutoff_minutes, dials_per_number_24h, dials_per_number_7d,"
            " daily_run_time, lead_days, trunk_id, created_at, updated_at) FROM STDIN"
        ) as copy:
            for c in range(1, clinics + 1):
                zone = ZONES[c % len(ZONES)]
                local = now.astimezone(ZoneInfo(zone))
                # Any time of day up to now: every clinic is due.
                minutes = (local.hour * 60 + local.minute) * (c % 7) // 7
                run_at = clock_time(minutes // 60, minutes % 60)
                start, end = WINDOWS[c % len(WINDOWS)]
                copy.write_row(
                    (
                        c,
                        f"Clinic {c:05d}",
                        zone,
                        "US",
                        start,
                        end,
                        WEEKDAYS[c % len(WEEKDAYS)],
                        4,
                        3600,
                        86400,
                        True,
                        3600,
                        120,
                        3,
                        6,
                        run_at,
                        LEAD_DAYS[c % len(LEAD_DAYS)],
                        "ST_bench",
                        now,
                        now,
                    )
                )
        conn.execute("SELECT setval('clinic_id_seq', %s)", (clinics,))
        earlier: list[tuple[Any, ...]] = []
        dnc: set[str] = set()
        with conn.cursor().copy(
            "COPY appointment (id, clinic_id, external_id, patient_name, phone_e164,"
            " phone_source, patient_timezone, patient_state, patient_zip, starts_at, status,"
            " created_at, updated_at) FROM STDIN"
        ) as copy:
            for n in range(1, appointments + 1):
                clinic = 1 + n % clinics
                zone = ZONES[clinic % len(ZONES)]
                own = prefixes[zone]
                phone = f"{own[(n // clinics) % len(own)]}{(n * 7919) % 10_000:04d}"
                state, zip_code = STATES.get(zone, (None, None)) if n % 5 == 1 else (None, None)
                # Spread over the next `days` days, in the clinic's daytime hours.
                starts = now + timedelta(days=1 + n % days, minutes=(n * 37) % 600 - 300)
                status = "confirmed" if n % 20 == 3 else "cancelled" if n % 20 == 7 else "scheduled"
                copy.write_row(
                    (
                        n,
                        clinic,
                        f"A{n}",
                        "Bench Patient",
                        phone,
                        "bench",
                        zone if n % 5 == 2 else None,
                        state,
                        zip_code,
                        starts,
                        status,
                        now,
                        now,
                    )
                )
                if n % 50 == 11:  # called before, on voicemail: its next attempt is the 2nd
                    earlier.append((n, clinic, phone, "completed", "voicemail", now - timedelta(1)))
                elif n % 100 == 13:  # a call still open: nothing new
                    earlier.append((n, clinic, phone, "scheduled", None, None))
                elif n % 200 == 17:
                    dnc.add(phone)
        conn.execute("SELECT setval('appointment_id_seq', %s)", (appointments,))
        with conn.cursor().copy(
            "COPY call_attempt (appointment_id, clinic_id, attempt_number, state, outcome,"
            " dialing_at, due_at, number_called, created_at, updated_at) FROM STDIN"
        ) as copy:
            for appointment, clinic, phone, state, outcome, dialed in earlier:
                due = dialed or now + timedelta(hours=3)
                copy.write_row(
                    (appointment, clinic, 1, state, outcome, dialed, due, phone, now, now)
                )
        conn.execute(
            "INSERT INTO dnc_list (name, version, entries, updated_at)"
            " VALUES ('global', 1, %s, %s)",
            (len(dnc), now),
        )
        with conn.cursor().copy(
            "COPY dnc_entry (list_name, phone_e164, source, added_by, added_at) FROM STDIN"
        ) as copy:
            for phone in sorted(dnc):
                copy.write_row(("global", phone, "internal", "bench", now))
        conn.execute(
            "INSERT INTO trunk (sip_trunk_id, name, numbers, calls_per_second, max_concurrent,"
            " created_at) VALUES ('ST_bench', 'bench', '', 10, 100, %s)",
            (now,),
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")


def counts(pipeline: Pipeline) -> tuple[int, int]:
    with pipeline.transaction() as session:
        attempts = session.execute(
            select(func.count())
            .select_from(CallAttempt)
            .where(col(CallAttempt.run_date).is_not(None))
        ).scalar_one()
        events = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    return attempts, events


def timed_run(pipeline: Pipeline, label: str) -> None:
    attempts_before, events_before = counts(pipeline)
    process = psutil.Process()
    cpu = process.cpu_times()
    with rss_sampler() as rss_peak:
        began = time.perf_counter()
        results = pipeline.daily_runs()
        elapsed = time.perf_counter() - began
    cpu_after = process.cpu_times()
    attempts, events = counts(pipeline)
    created = attempts - attempts_before
    considered = sum(r.appointments_considered for r in results)
    skipped = sum(r.skipped for r in results)
    print(
        f"{label}: {len(results):,} clinics run, {considered:,} appointments considered, "
        f"{created:,} attempts created ({skipped:,} of them skipped), "
        f"{events - events_before:,} audit events"
    )
    print(
        f"  {elapsed:.1f} s ({cpu_after.user - cpu.user + cpu_after.system - cpu.system:.1f} s CPU"
        f" in this process) = {created / elapsed:,.0f} attempts/s, "
        f"{considered / elapsed:,.0f} appointments/s; peak RSS {rss_peak():.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinics", type=int, default=2000)
    parser.add_argument("--appointments", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=7, help="appointments spread over N days")
    args = parser.parse_args()
    now = datetime.now(UTC)
    with scratch_postgres("campaigns_daily_bench") as url:
        began = time.perf_counter()
        load(
            url.replace("postgresql+psycopg", "postgresql"),
            args.clinics,
            args.appointments,
            args.days,
            now,
        )
        print(
            f"loaded {args.clinics:,} clinics and {args.appointments:,} appointments over "
            f"{args.days} days in {time.perf_counter() - began:.1f} s"
        )
        engine = make_engine(url)
        settings = Settings(database_url=url)
        pipeline = Pipeline(sessions=session_factory(engine), settings=settings, pacer=LocalPacer())
        try:
            timed_run(pipeline, "first run")
            timed_run(pipeline, "second run")
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
