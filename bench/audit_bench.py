"""Audit benchmark: the cost of appending keyed events (every transaction pays it)
and of re-walking the chain, on SQLite and PostgreSQL.

Times batches of 1,000 events per commit (a tick's claim), single-event commits
(a call's transition) and one ``verify`` over everything written.

    .venv/bin/python bench/audit_bench.py [--batches 20] [--singles 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import psycopg

from campaigns import audit, migrate
from campaigns.db import make_engine, session_factory

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
DB = "campaigns_audit_bench"


def run(url: str, batches: int, singles: int) -> None:
    migrate.upgrade(url)
    engine = make_engine(url)
    with session_factory(engine)() as session:
        started = time.perf_counter()
        for _ in range(batches):
            audit.record_many(
                session,
                [
                    audit.Entry("bench.batch", {"n": n, "note": "x" * 80}, "bench", 1, 2, 3)
                    for n in range(1000)
                ],
            )
            session.commit()
        batched = time.perf_counter() - started
        started = time.perf_counter()
        for n in range(singles):
            audit.record(session, "bench.single", {"n": n}, actor="bench")
            session.commit()
        single = time.perf_counter() - started
        started = time.perf_counter()
        result = audit.verify(session)
        walked = time.perf_counter() - started
    engine.dispose()
    print(
        f"{engine.dialect.name:10} batches of 1000: {batches * 1000 / batched:7.0f} events/s | "
        f"single-event commit: {single / singles * 1000:5.2f} ms | "
        f"verify: {result.events / walked:7.0f} events/s (ok={result.ok})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--singles", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run(f"sqlite:///{folder}/bench.db", args.batches, args.singles)
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    try:
        run(f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}", args.batches, args.singles)
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


if __name__ == "__main__":
    main()
