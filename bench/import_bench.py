"""Throughput and memory of the CSV import on SQLite and PostgreSQL.

Generates a CSV of N rows (mixed phone and date formats, some optional columns)
in a temporary directory, migrates a fresh SQLite file and a fresh PostgreSQL
database, imports the file into each in one transaction, and prints rows/s and
memory. Each database gets a timed run (RSS sampled with psutil) and, unless
``--no-tracemalloc``, a second run into a fresh database under tracemalloc
(slower, so it is not timed) for the Python heap peak. Then it re-imports the
same file (all rows unchanged) to time the update path.

    .venv/bin/python bench/import_bench.py --rows 100000
    CAMPAIGNS_BENCH_PG_URL=postgresql+psycopg://postgres@127.0.0.1:5432 \\
        .venv/bin/python bench/import_bench.py --only postgresql

PostgreSQL: a database ``campaigns_bench_<pid>`` is created and dropped through
``CAMPAIGNS_TEST_PG_ADMIN`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg
from sqlalchemy import func
from sqlmodel import col, select

from campaigns import migrate
from campaigns.db import make_engine, session_factory
from campaigns.importing import ImportReport, import_appointments
from campaigns.models import Appointment, Clinic
from harness.measure import rss_sampler

PG_ADMIN_DSN = os.environ.get(
    "CAMPAIGNS_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test"
)
PG_HOST_URL = os.environ.get(
    "CAMPAIGNS_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432"
)
AREA_CODES = (212, 617, 305, 312, 415, 713, 206, 303, 404, 602)
ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
STATES = ("NY", "MA", "FL", "IL", "CA", "TX", "WA", "CO", "GA", "AZ")


def write_csv(path: Path, rows: int, now: datetime) -> None:
    first_day = (now + timedelta(days=2)).date()
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("Appointment ID,Patient Name,Phone,Start,Provider,Location,Timezone,State,ZIP\n")
        for i in range(rows):
            area = AREA_CODES[i % len(AREA_CODES)]
            exchange = 200 + (i * 7) % 800
            if i % 3 == 0:
                phone = f"({area}) {exchange:03d}-{i % 10000:04d}"
            elif i % 3 == 1:
                phone = f"+1 {area}-{exchange:03d}-{i % 10000:04d}"
            else:
                phone = f"{area}{exchange:03d}{i % 10000:04d}"
            day = first_day + timedelta(days=i % 60)
            minutes = 8 * 60 + (i * 15) % (10 * 60)
            hour, minute = divmod(minutes, 60)
            if i % 2:
                start = f"{day.isoformat()} {hour:02d}:{minute:02d}"
            else:
                meridiem = "AM" if hour < 12 else "PM"
                start = f"{day:%m/%d/%Y} {(hour - 1) % 12 + 1}:{minute:02d} {meridiem}"
            zone = ZONES[i % len(ZONES)] if i % 5 == 0 else ""
            state = STATES[i % len(STATES)] if i % 4 == 0 else ""
            zip_code = f"{10000 + i % 89999:05d}" if i % 4 == 0 else ""
            location = '"Building A, Floor 2"' if i % 10 == 0 else "Main"
            out.write(
                f"BENCH-{i:07d},Patient {i} Example,{phone},{start},Dr. {i % 37},"
                f"{location},{zone},{state},{zip_code}\n"
            )


def import_once(
    url: str, csv_path: Path, now: datetime, clinic_name: str
) -> tuple[ImportReport, float]:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            clinic = session.execute(
                select(Clinic).where(col(Clinic.name) == clinic_name)
            ).scalar_one_or_none()
            if clinic is None:
                clinic = Clinic(name=clinic_name, timezone="America/New_York", country="US")
                session.add(clinic)
                session.commit()
            began = time.perf_counter()
            report = import_appointments(
                session, clinic, csv_path, filename=csv_path.name, now=now, actor="bench"
            )
            session.commit()
            elapsed = time.perf_counter() - began
            stored = session.execute(select(func.count()).select_from(Appointment)).scalar_one()
            assert stored >= report.imported, (stored, report.imported)
            return report, elapsed
    finally:
        engine.dispose()


def bench(
    name: str, make_url: Callable[[str], str], csv_path: Path, rows: int, now: datetime, heap: bool
) -> None:
    url = make_url("timed")
    migrate.upgrade(url)
    with rss_sampler() as rss_peak:
        rss_before = psutil.Process().memory_info().rss / 2**20
        report, elapsed = import_once(url, csv_path, now, "Bench Clinic")
    if report.rejected:
        print(f"  {len(report.rejected)} rejected, first: {report.rejected[0]}")
    print(
        f"{name:<10} import  {rows:>7} rows in {elapsed:6.2f} s = {rows / elapsed:8.0f} rows/s; "
        f"RSS {rss_before:.0f} -> peak {rss_peak():.0f} MiB "
        f"(imported {report.imported}, rejected {len(report.rejected)})"
    )
    report, elapsed = import_once(url, csv_path, now, "Bench Clinic")
    print(
        f"{name:<10} re-import {rows:>5} rows in {elapsed:6.2f} s = {rows / elapsed:8.0f} rows/s "
        f"(unchanged {report.unchanged})"
    )
    if heap:
        url = make_url("heap")
        migrate.upgrade(url)
        tracemalloc.start()
        try:
            import_once(url, csv_path, now, "Bench Clinic")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        print(f"{name:<10} tracemalloc peak during import: {peak / 2**20:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--no-tracemalloc", action="store_true")
    args = parser.parse_args()
    now = datetime.now(UTC)
    heap = not args.no_tracemalloc

    with tempfile.TemporaryDirectory(prefix="import-bench-") as tmp:
        directory = Path(tmp)
        csv_path = directory / "appointments.csv"
        began = time.perf_counter()
        write_csv(csv_path, args.rows, now)
        size = csv_path.stat().st_size / 2**20
        print(f"generated {args.rows} rows ({size:.1f} MiB) in {time.perf_counter() - began:.1f} s")

        if args.only in (None, "sqlite"):
            bench(
                "sqlite",
                lambda tag: f"sqlite:///{directory / tag}.db",
                csv_path,
                args.rows,
                now,
                heap,
            )

        if args.only in (None, "postgresql"):
            created: list[str] = []

            def pg_url(tag: str) -> str:
                name = f"campaigns_bench_{os.getpid()}_{tag}"
                with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    conn.execute(f'CREATE DATABASE "{name}"')
                created.append(name)
                return f"{PG_HOST_URL}/{name}"

            try:
                bench("postgresql", pg_url, csv_path, args.rows, now, heap)
            finally:
                with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
                    for name in created:
                        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
