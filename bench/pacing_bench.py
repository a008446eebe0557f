"""Per-trunk pacing through RedisPacer: two worker processes, one shared pool of calls.

Two processes (each with a pool of threads, like Celery workers with threads)
pull pseudo-calls from one shared queue, acquire a slot on one trunk, "hold the
call" for a random short time, and release. A refused acquire puts the call back
in the pool and that thread idles for ``--requeue-delay`` (the next tick). Per
run it prints the worst one-second window of call starts against the CPS limit,
the mean rate as a share of it, and the most concurrent calls against the cap.
Loopback Redis only; each run stops by itself (``--limit`` seconds at most) and
deletes its keys.

    .venv/bin/python bench/pacing_bench.py                 # cps 20, then cps 50
    .venv/bin/python bench/pacing_bench.py --cps 5 --calls 200
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import random
import threading
import time
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import redis

from campaigns.pacing import RedisPacer

TRUNK = "bench-trunk"


def now_us() -> int:
    return time.time_ns() // 1000


def max_in_window(times_us: list[int], window_us: int = 1_000_000) -> int:
    times = sorted(times_us)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_us:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def worker_process(cfg: dict[str, Any], pool: Any, done: Any, requeued: Any, out: Any) -> None:
    client = redis.Redis.from_url(cfg["redis_url"])
    pacer = RedisPacer(client, prefix=cfg["prefix"])
    deadline = time.monotonic() + cfg["limit"]
    records: list[tuple[int, int, int]] = []
    lock = threading.Lock()
    rng = random.Random()

    def work() -> None:
        while done.value < cfg["calls"] and time.monotonic() < deadline:
            try:
                call = pool.get(timeout=0.1)
            except queue.Empty:
                continue
            slot = pacer.acquire(
                TRUNK,
                call,
                cps=cfg["cps"],
                max_concurrent=cfg["max_concurrent"],
                lease=timedelta(seconds=30),
                max_wait=timedelta(seconds=cfg["max_wait"]),
            )
            if slot is None:
                pool.put(call)
                with requeued.get_lock():
                    requeued.value += 1
                time.sleep(cfg["requeue_delay"])
                continue
            began = now_us()
            time.sleep(rng.uniform(cfg["hold_min"], cfg["hold_max"]))
            ended = now_us()
            pacer.release(TRUNK, call)
            granted = int(slot.start.timestamp() * 1_000_000 + 0.5)
            with lock:
                records.append((granted, began, ended))
            with done.get_lock():
                done.value += 1

    threads = [threading.Thread(target=work) for _ in range(cfg["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(records)
    client.close()


def run(args: argparse.Namespace, cps: float) -> bool:
    ctx = mp.get_context("spawn")
    prefix = f"bench:pacing:{uuid.uuid4().hex}"
    cfg = {
        "redis_url": args.redis_url,
        "prefix": prefix,
        "calls": args.calls,
        "cps": cps,
        "max_concurrent": args.max_concurrent,
        "max_wait": args.max_wait,
        "hold_min": args.hold_min,
        "hold_max": args.hold_max,
        "threads": args.threads,
        "requeue_delay": args.requeue_delay,
        "limit": args.limit,
    }
    pool = ctx.Queue()
    for call in range(args.calls):
        pool.put(call)
    done, requeued, out = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Queue()
    procs = [
        ctx.Process(target=worker_process, args=(cfg, pool, done, requeued, out)) for _ in range(2)
    ]
    client = redis.Redis.from_url(args.redis_url)
    sampler = RedisPacer(client, prefix=prefix)
    in_flight_max = 0
    started = time.monotonic()
    for proc in procs:
        proc.start()
    try:
        records: list[tuple[int, int, int]] = []
        pending = len(procs)
        while pending:
            in_flight_max = max(in_flight_max, sampler.in_flight(TRUNK))
            try:
                records += out.get(timeout=0.05)
                pending -= 1
            except queue.Empty:
                pass
        for proc in procs:
            proc.join(timeout=10)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    elapsed = time.monotonic() - started

    granted = sorted(r[0] for r in records)
    observed = sorted(r[1] for r in records)
    worst_granted, worst_observed = max_in_window(granted), max_in_window(observed)
    span = (observed[-1] - observed[0]) / 1e6 if len(observed) > 1 else 0.0
    rate = (len(observed) - 1) / span if span else 0.0
    overlap = max_overlap([(r[1], r[2]) for r in records])
    ok = (
        len(records) == args.calls
        and worst_observed <= cps
        and worst_granted <= cps
        and overlap <= args.max_concurrent
        and in_flight_max <= args.max_concurrent
    )
    print(
        f"cps={cps:g} max_concurrent={args.max_concurrent}: {len(records)}/{args.calls} calls "
        f"in {elapsed:.1f}s, {requeued.value} requeued (max_wait {args.max_wait:g}s)"
    )
    print(
        f"  worst 1-s window: {worst_observed} real starts, {worst_granted} granted (limit {cps:g})"
    )
    late = sorted(r[1] - r[0] for r in records)
    print(
        f"  real start after granted start: median {late[len(late) // 2] / 1000:.1f} ms, "
        f"p99 {late[len(late) * 99 // 100] / 1000:.1f} ms, max {late[-1] / 1000:.1f} ms, "
        f"{sum(d > 10_000 for d in late)} over 10 ms"
    )
    print(f"  mean rate: {rate:.2f}/s = {100 * rate / cps:.1f}% of the limit")
    print(
        f"  max concurrency: {overlap} calls held, {in_flight_max} slots in Redis "
        f"(cap {args.max_concurrent})"
    )
    print(f"  {'OK' if ok else 'LIMIT EXCEEDED OR CALLS LOST'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--cps", type=float, action="append", help="repeatable; default 20, 50")
    parser.add_argument("--max-concurrent", type=int, default=50)
    parser.add_argument("--threads", type=int, default=25, help="per process")
    parser.add_argument("--hold-min", type=float, default=0.1, help="seconds")
    parser.add_argument("--hold-max", type=float, default=0.9, help="seconds")
    parser.add_argument("--max-wait", type=float, default=2.0, help="seconds")
    parser.add_argument("--requeue-delay", type=float, default=0.5, help="seconds")
    parser.add_argument("--limit", type=float, default=240.0, help="seconds per run, at most")
    args = parser.parse_args()
    host = urlparse(args.redis_url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback Redis only")
    results = [run(args, cps) for cps in args.cps or [20.0, 50.0]]
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
