"""Per-trunk pacing through RedisPacer: two worker processes, one shared pool of calls,
measured where the callee is.

Two processes (each with a pool of threads, like Celery workers with threads)
pull calls from one shared queue and place each as a worker does: acquire a
slot on one trunk ``PACING_LEAD`` ahead, spend a random time preparing it
(``--prep-max``: a slow agent dispatch, here a sleep), then dispatch
the agent and dial through the real LiveKit client against the simulator in
this process, the dial held back until the slot's start. Every callee is busy
after a random ring (``--hold-min``/``--hold-max``), then the slot is released.
A refused acquire or a missed start puts the call back in the pool and that
thread idles for ``--requeue-delay`` (the next tick). Per run it prints the
worst one-second window of dials as the simulator received them (and as the
workers sent them, and as granted) against the CPS limit, how late dials
arrived after their granted start, the mean rate as a share of the limit, and
the most concurrent calls against the cap. Loopback Redis only; each run stops
by itself (``--limit`` seconds at most) and deletes its keys.

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
from functools import partial
from typing import Any
from urllib.parse import urlparse

import redis

from campaigns.attempts.pipeline import PACING_LEAD
from campaigns.telephony.livekit_gateway import LiveKitTelephony
from campaigns.telephony.outcomes import DialProblem
from campaigns.telephony.pacing.pacer import Slot, wait_for_start
from campaigns.telephony.pacing.redis_pacer import RedisPacer
from campaigns.telephony.port import CallRequest
from harness.measure import max_in_window, max_overlap
from simulator.scenario import DEFAULT_SUFFIXES
from simulator.testing import running_simulator
from workers.runtime import EventLoopThread

TRUNK = "bench-trunk"


def now_us() -> int:
    return time.time_ns() // 1000


def _request(call: int, run_id: str) -> CallRequest:
    return CallRequest(
        attempt_id=call,
        room_name=f"bench-{run_id}-{call}",
        participant_identity=f"callee-{call}",
        trunk_id=TRUNK,
        call_to=f"+1212555{call % 10_000:04d}",
        caller_id=None,
        agent_name="bench-agent",
        agent_metadata={"report_token": "bench"},
        ringing_timeout=timedelta(seconds=15),
        max_call_duration=timedelta(seconds=60),
    )


def worker_process(cfg: dict[str, Any], pool: Any, done: Any, requeued: Any, out: Any) -> None:
    client = redis.Redis.from_url(cfg["redis_url"])
    pacer = RedisPacer(client, prefix=cfg["prefix"])
    io = EventLoopThread()
    telephony = LiveKitTelephony(cfg["sim_url"], cfg["sim_key"], cfg["sim_secret"])
    deadline = time.monotonic() + cfg["limit"]
    records: list[tuple[int, int, int, str]] = []
    lock = threading.Lock()
    rng = random.Random()

    async def sent_on_time(slot: Slot, sent: list[int]) -> bool:
        if not await wait_for_start(slot):
            return False
        sent.append(now_us())
        return True

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
                lead=PACING_LEAD,
            )
            if slot is not None:
                time.sleep(rng.uniform(0, cfg["prep_max"]))
                request = _request(call, cfg["prefix"][-8:])
                sent: list[int] = []
                result = io.run(telephony.place_call(request, partial(sent_on_time, slot, sent)))
                ended = now_us()
                pacer.release(TRUNK, call)
            if slot is None or result.problem is DialProblem.MISSED_START:
                pool.put(call)
                with requeued.get_lock():
                    requeued.value += 1
                time.sleep(cfg["requeue_delay"])
                continue
            granted = int(slot.start.timestamp() * 1_000_000 + 0.5)
            with lock:
                records.append((granted, sent[0], ended, request.room_name))
            with done.get_lock():
                done.value += 1

    threads = [threading.Thread(target=work) for _ in range(cfg["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    io.run(telephony.aclose())
    out.put(records)
    client.close()


def run(args: argparse.Namespace, cps: float) -> bool:
    scenario = {
        "weights": {"busy": 1},
        "suffixes": dict.fromkeys(DEFAULT_SUFFIXES),
        "latency": {"reject": [args.hold_min, args.hold_max], "api": [0, 0]},
    }
    with running_simulator(speed=1.0, default_trunk_id=TRUNK, scenario=scenario) as sim:
        return _run(args, cps, sim)


def _run(args: argparse.Namespace, cps: float, sim: Any) -> bool:
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
        "prep_max": args.prep_max,
        "limit": args.limit,
        "sim_url": sim.url,
        "sim_key": sim.api_key,
        "sim_secret": sim.api_secret,
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
        records: list[tuple[int, int, int, str]] = []
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

    received_at = {
        c["room_name"]: round(c["received_at"] * 1_000_000)
        for c in sim.calls()
        if c["room_name"].startswith("bench-")
    }
    received = sorted(received_at.values())
    granted = sorted(r[0] for r in records)
    sent = sorted(r[1] for r in records)
    worst_received = max_in_window(received)
    worst_granted, worst_sent = max_in_window(granted), max_in_window(sent)
    span = (received[-1] - received[0]) / 1e6 if len(received) > 1 else 0.0
    rate = (len(received) - 1) / span if span else 0.0
    overlap = max_overlap([(r[1], r[2]) for r in records])
    at_callee = sim.stats()["max_in_flight"]
    ok = (
        len(records) == args.calls == len(received)
        and worst_received <= cps
        and worst_sent <= cps
        and worst_granted <= cps
        and overlap <= args.max_concurrent
        and in_flight_max <= args.max_concurrent
        and at_callee <= args.max_concurrent
    )
    print(
        f"cps={cps:g} max_concurrent={args.max_concurrent}: {len(records)}/{args.calls} calls "
        f"in {elapsed:.1f}s, {requeued.value} requeued (max_wait {args.max_wait:g}s)"
    )
    print(
        f"  worst 1-s window: {worst_received} dials received by the simulator, "
        f"{worst_sent} sent, {worst_granted} granted (limit {cps:g})"
    )
    for what, lags in (
        ("dial sent", sorted(r[1] - r[0] for r in records)),
        ("dial received", sorted(received_at[r[3]] - r[0] for r in records)),
    ):
        print(
            f"  {what} after granted start: median {lags[len(lags) // 2] / 1000:.1f} ms, "
            f"p99 {lags[len(lags) * 99 // 100] / 1000:.1f} ms, max {lags[-1] / 1000:.1f} ms, "
            f"{sum(d > 10_000 for d in lags)} over 10 ms"
        )
    print(f"  mean rate at the simulator: {rate:.2f}/s = {100 * rate / cps:.1f}% of the limit")
    print(
        f"  max concurrency: {overlap} calls held, {in_flight_max} slots in Redis, "
        f"{at_callee} at the simulator (cap {args.max_concurrent})"
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
    parser.add_argument(
        "--prep-max", type=float, default=0.3, help="seconds of work before the dial, at most"
    )
    parser.add_argument("--limit", type=float, default=240.0, help="seconds per run, at most")
    args = parser.parse_args()
    host = urlparse(args.redis_url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback Redis only")
    results = [run(args, cps) for cps in args.cps or [20.0, 50.0]]
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
