"""Calls in flight in ONE `campaigns worker` process while every call rings ~20 s,
and that process's memory.

The simulator runs at speed 1 with a scenario where every callee is "no_answer"
(rings for the ringing timeout, 20 s here, then fails); the clinic allows one
attempt, so nothing is retried. A trunk with high limits keeps pacing out of the
way. Once the worker consumes, beat starts; every 0.5 s the bench samples the
simulator's ringing calls (``/_sim/stats``), the attempts in state ``dialing``,
and the worker's RSS. It stops at ``--limit`` seconds or when every attempt is
closed, then prints peak in-flight, the worker's peak RSS, and how many of its
threads waited for a database connection (from the log) or failed.

    .venv/bin/python bench/worker_concurrency.py                    # 600 threads, 700 calls
    .venv/bin/python bench/worker_concurrency.py --concurrency 600 --calls 700 --ring 20
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from pipeline_throughput import (
    Stack,
    attempt_states,
    consumers,
    open_count,
    running_stack,
    seed,
    sim_stats,
    workspace,
)

from campaigns.db import make_engine
from demo.daytime import daytime_zone
from harness.databases import scratch_postgres
from harness.processes import wait_until

NO_ANSWER = {"suffixes": {f"{n:02d}": "no_answer" for n in range(100)}}


def log_counts(stack: Stack, name: str) -> dict[str, int]:
    text = stack.tail(name, 50_000_000)
    return {
        "pool timeouts": text.count("QueuePool limit"),
        "dial raised": text.count("dial raised"),
        "tracebacks": text.count("Traceback"),
        "ambiguous": text.count("problem=ambiguous"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=700)
    parser.add_argument("--concurrency", type=int, default=600)
    parser.add_argument("--ring", type=int, default=20, help="ringing timeout, seconds (>= 15)")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds at most")
    parser.add_argument("--redis-db", type=int, default=14)
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--keep", action="store_true", help="keep the logs directory")
    args = parser.parse_args()
    zone = daytime_zone(datetime.now(UTC))
    with workspace(args.keep) as workdir, scratch_postgres("campaigns_bench_conc") as url:
        engine = make_engine(url)
        try:
            seed(
                engine,
                args.calls,
                clinics=1,
                zone=zone,
                cps=1000.0,
                max_concurrent=10_000,
                max_attempts=1,
                setup="bulk",
            )
            with running_stack(
                database_url=url,
                redis_db=args.redis_db,
                speed=1.0,
                scenario={**NO_ANSWER, "default_ringing_timeout": args.ring},
                workdir=workdir,
                agent="instant",
                extra_env={
                    "CAMPAIGNS_RINGING_TIMEOUT_SECONDS": str(args.ring),
                    "CAMPAIGNS_WORKER_CONCURRENCY": str(args.concurrency),
                    "CAMPAIGNS_RECONCILE_SECONDS": "30",
                },
            ) as (stack, sim_url):
                worker = stack.start(
                    "worker",
                    "worker",
                    f"--concurrency={args.concurrency}",
                    f"--loglevel={args.loglevel}",
                )
                wait_until(
                    lambda: consumers(stack.env["CAMPAIGNS_BROKER_URL"]) >= 1,
                    timeout=60,
                    what="the worker to consume",
                )
                idle_rss = worker.rss_now() / 2**20
                t0 = time.monotonic()
                stack.start("beat", "beat", f"--loglevel={args.loglevel}")
                peak_ringing = peak_dialing = 0
                peak_ringing_at = 0.0
                done = False
                last_print = t0
                while time.monotonic() - t0 < args.limit:
                    stats = sim_stats(sim_url)
                    states = attempt_states(engine)
                    worker.sample()
                    now = time.monotonic() - t0
                    if stats["ringing"] > peak_ringing:
                        peak_ringing, peak_ringing_at = stats["ringing"], now
                    peak_dialing = max(peak_dialing, states["dialing"])
                    if now - (last_print - t0) >= 5:
                        last_print = time.monotonic()
                        print(
                            f"t={now:5.1f}s sim ringing={stats['ringing']:4d} "
                            f"dials={stats['dials']:4d}  db "
                            + " ".join(f"{k}={v}" for k, v in sorted(states.items()))
                            + f"  worker RSS {worker.rss_now() / 2**20:.0f} MB"
                        )
                    if open_count(states) == 0 and sum(states.values()) >= args.calls:
                        done = True
                        break
                    time.sleep(0.5)
                elapsed = time.monotonic() - t0
                worker.sample()
                final = sim_stats(sim_url)
                counts = log_counts(stack, "worker")
            states = attempt_states(engine)
        finally:
            engine.dispose()
    print()
    print(
        f"worker threads {args.concurrency}, {args.calls} calls ringing {args.ring}s "
        f"(simulator speed 1), "
        f"{'all closed' if done else 'stopped'} after {elapsed:.0f}s"
    )
    print(
        f"peak in flight: {peak_ringing} ringing in the simulator (t={peak_ringing_at:.1f}s), "
        f"{peak_dialing} attempts 'dialing' in the DB; simulator max_in_flight "
        f"{final.get('max_in_flight')}; target >= 500"
    )
    print(
        f"worker RSS: idle {idle_rss:.0f} MB, peak {worker.peak_rss / 2**20:.0f} MB "
        f"(target <= 300 MB); worker CPU {worker.cpu:.1f}s"
    )
    print(f"final states {dict(sorted(states.items()))}; worker log: {counts}")


if __name__ == "__main__":
    main()
