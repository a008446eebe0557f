"""Audit benchmark: the cost of appending keyed events (every transaction pays it)
and of re-walking the chains, on SQLite and PostgreSQL.

Times batches of 1,000 events per commit (a tick's claim), single-event commits
(a call's transition) and one ``verify`` over everything written. Then, on
PostgreSQL, concurrent appenders (one process and connection each, as workers
are): each commits single-event transactions for one clinic drawn at random from
N clinics, against all of them appending for the same clinic. Appends to one
clinic's chain are serialised by design; appends to different clinics' chains are
not. The target is some 300 audited transactions/s (100 calls/s, ~3 each).

A commit holds its chains' locks until its WAL flush is durable. ``--flush-ms``
stands in for a slower disk than this machine's (network storage: a few ms per
flush) by delaying each appender's WAL flush (PostgreSQL's ``commit_delay``, set
per connection; needs a superuser, as the scratch databases are).

    .venv/bin/python bench/audit_bench.py [--batches 20] [--singles 500]
        [--writers 6] [--transactions 400] [--clinics 1000] [--flush-ms 0 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from sqlalchemy import text

from campaigns import audit, migrate
from campaigns.db import make_engine, session_factory
from harness.databases import scratch_postgres


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


def _appender(
    url: str,
    clinics: int,
    transactions: int,
    flush_ms: float,
    seed: int,
    start: Barrier,
    took: Queue[float],
) -> None:
    """Commit ``transactions`` single-event transactions, each for a random clinic in
    1..``clinics``; put the seconds it took once every appender was ready."""
    engine = make_engine(url, pool_size=1, max_overflow=0)
    draw = random.Random(seed)
    try:
        with session_factory(engine)() as session:
            # Connected (and the flush delayed) before the clock starts.
            session.execute(text(f"SET commit_delay = {int(flush_ms * 1000)}"))
            session.execute(text("SET commit_siblings = 0"))
            session.commit()
            start.wait()
            started = time.perf_counter()
            for n in range(transactions):
                clinic_id = draw.randint(1, clinics)
                payload = {"n": n, "note": "x" * 80}
                audit.record(session, "bench.call", payload, actor="bench", clinic_id=clinic_id)
                session.commit()
            took.put(time.perf_counter() - started)
    finally:
        engine.dispose()


def run_concurrent(
    url: str, writers: int, transactions: int, clinics: int, flush_ms: float
) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(writers)
    took: Queue[float] = context.Queue()
    appenders = [
        context.Process(
            target=_appender,
            args=(url, clinics, transactions, flush_ms, seed, start, took),
        )
        for seed in range(writers)
    ]
    for appender in appenders:
        appender.start()
    seconds = max(took.get() for _ in appenders)
    for appender in appenders:
        appender.join()
    engine = make_engine(url)
    with session_factory(engine)() as session:
        result = audit.verify(session)
    engine.dispose()
    spread = "1 clinic   " if clinics == 1 else f"{clinics} clinics"
    print(
        f"postgresql {writers} concurrent appenders, {spread}, flush +{flush_ms:g} ms: "
        f"{writers * transactions / seconds:6.0f} appends/s "
        f"({seconds / transactions * 1000:5.2f} ms per commit each; "
        f"verify ok={result.ok}, {result.events} events)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--singles", type=int, default=500)
    parser.add_argument("--writers", type=int, default=6)
    parser.add_argument("--transactions", type=int, default=400, help="per appender")
    parser.add_argument("--clinics", type=int, default=1000)
    parser.add_argument("--flush-ms", type=float, nargs="+", default=[0.0, 2.0])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run(f"sqlite:///{folder}/bench.db", args.batches, args.singles)
    with scratch_postgres("campaigns_audit_bench") as url:
        run(url, args.batches, args.singles)
    for flush_ms in args.flush_ms:
        for clinics in (1, args.clinics):
            with scratch_postgres("campaigns_audit_bench") as url:
                migrate.upgrade(url)
                run_concurrent(url, args.writers, args.transactions, clinics, flush_ms)


if __name__ == "__main__":
    main()
