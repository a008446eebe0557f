"""What one call costs, measured, and what 1,000 to 100,000 clinics need.

Measured in this process against a fresh PostgreSQL database, Redis and the LiveKit
simulator (``agent=instant``, speed 1000, through the real LiveKit client): the daily
run makes the first attempts of ``--appointments`` over ``--clinics`` clinics, then
``Pipeline.tick``, ``place_call`` (Redis pacing) and ``record_outcome`` run until every
attempt is closed, retries included. Per call placed: SQL statements and commits (engine
events), rows written by table (``pg_stat_user_tables``), audit events, Redis commands
(``MONITOR`` of the Redis database, so the pacer's Lua and kombu's MULTI blocks count),
and the thread CPU of the steps and the LiveKit I/O thread. Then the real Celery
messages (the tick's ``place_call``, the agent's ``record_outcome`` through its
``CeleryReporter``) are published there and consumed and acknowledged as a worker
does: bytes, Redis commands, client CPU. Celery's own worker overhead is not in the
in-process CPU: ``--worker-cpu-ms`` takes ``bench/pipeline_throughput.py``'s
end-to-end figure instead. The projection's assumptions are the constants below.

    .venv/bin/python bench/scale_model.py                 # 400 appointments, 8 clinics, mix
    .venv/bin/python bench/scale_model.py --scenario confirm --json
    .venv/bin/python bench/scale_model.py --worker-cpu-ms 12.5
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import math
import os
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
from pipeline_throughput import SCENARIO_ATTEMPTS, SCENARIOS, TRUNK, attempt_states, open_count
from pipeline_throughput import seed as seed_clinics
from sqlalchemy import Engine, event

from campaigns.attempts.pipeline import PACING_LEAD, Pipeline
from campaigns.db import make_engine, session_factory
from campaigns.settings import Settings
from campaigns.telephony.livekit_gateway import LiveKitTelephony
from campaigns.telephony.pacing.redis_pacer import RedisPacer
from demo.daytime import daytime_zone
from harness.databases import scratch_postgres
from simulator.scenario import DEFAULT_LATENCY, FAILURES
from simulator.testing import TEST_API_SECRET, running_simulator
from workers.runtime import EventLoopThread

SIZES = (1_000, 10_000, 100_000)  # clinics
APPOINTMENTS_PER_CLINIC_DAY = 200
WINDOW_HOURS = 10.0  # calling hours a day
PEAK_FACTOR = 2.0  # the busiest minutes over the window's average rate
UTILISATION = 0.7  # plan every resource to this share of its ceiling
REDIS_COPIES = 3  # a message crosses Redis three times: publish, delivery, unacked copy
CEILINGS = {  # what one instance carries on ordinary hardware
    "pg_commits_per_s": 5_000.0,  # one primary, synchronous_commit on, SSD
    "pg_rows_written_per_s": 50_000.0,  # WAL, index upkeep, vacuum
    "redis_commands_per_s": 100_000.0,  # one single-threaded Redis
    "redis_bytes_per_s": 100e6,  # about a 1 Gbit/s link
}
TICK_BATCHES = int(inspect.signature(Pipeline.tick).parameters["max_batches"].default)
MARK = "scale-model:"


class RedisCommands:
    """Counts the commands one Redis database runs, by phase (ECHO markers name them)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        db = int(self.client.connection_pool.connection_kwargs.get("db", 0))
        ready = threading.Event()

        def listen() -> None:
            phase = "-"
            with self.client.monitor() as monitor:  # type: ignore[no-untyped-call]
                ready.set()
                for cmd in (c for c in monitor.listen() if c["db"] == db):
                    words = str(cmd["command"]).split(" ")
                    if words[0].upper() == "ECHO" and words[1].startswith(MARK):
                        phase = words[1].removeprefix(MARK)
                        if phase == "stop":
                            return
                    else:
                        lua = "lua " if cmd["client_type"] == "lua" else ""
                        self.counts[phase][lua + words[0].upper()] += 1

        self._thread = threading.Thread(target=listen, name="redis-monitor", daemon=True)
        self._thread.start()
        ready.wait(10)

    def phase(self, name: str) -> None:
        self.client.echo(MARK + name)
        if name == "stop":
            self._thread.join(10)

    def per(self, phase: str, n: int) -> dict[str, float]:
        return {k: round(v / n, 2) for k, v in self.counts[phase].items()}


class Steps:
    """SQL statements, commits and thread CPU ms, by the pipeline step that spent them."""

    def __init__(self, engine: Engine) -> None:
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.local, self.lock = threading.local(), threading.Lock()
        event.listen(engine, "before_cursor_execute", lambda *_: self.add("statements", 1))
        event.listen(engine, "commit", lambda *_: self.add("commits", 1))

    def add(self, what: str, amount: float) -> None:
        if (step := getattr(self.local, "step", None)) is not None:
            with self.lock:
                self.counts[step][what] += amount  # type: ignore[assignment]

    def run(self, step: str, fn: Callable[..., Any], *args: Any) -> Any:
        self.local.step, started = step, time.thread_time()
        try:
            return fn(*args)
        finally:
            self.add("cpu_ms", 1000 * (time.thread_time() - started))
            self.local.step = None


def pg_counts(url: str) -> tuple[dict[str, Counter[str]], Counter[str], float]:
    """Rows written by table, audit events by kind, bytes per audit event (table and
    indexes), read once no other backend is left: a backend reports its counts at exit."""
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        for _ in range(100):
            if conn.execute(others + " AND pid <> pg_backend_pid()").fetchone() == (0,):
                break
            time.sleep(0.1)
        time.sleep(0.3)
        stats = "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
        writes = {t: Counter(ins=i, upd=u, dele=d) for t, i, u, d in conn.execute(stats)}
        by_kind = conn.execute("SELECT kind, count(*) FROM audit_event GROUP BY kind")
        kinds: Counter[str] = Counter(dict(by_kind.fetchall()))
        size = "SELECT pg_relation_size('audit_event') + sum(pg_relation_size(indexrelid)) "
        found = conn.execute(size + "FROM pg_index WHERE indrelid = 'audit_event'::regclass")
        return writes, kinds, float((found.fetchone() or (0,))[0]) / max(1, kinds.total())


def per_table(after: dict[str, Counter[str]], before: dict[str, Counter[str]], n: int) -> Any:
    grown = {t: c - before.get(t, Counter()) for t, c in after.items()}
    return {t: {k: round(v / n, 3) for k, v in c.items()} for t, c in grown.items() if c}


def dial_hold(results: list[str], ringing_timeout: float) -> float:
    """Mean seconds a dial holds its worker thread, at the simulator's real (unscaled) times."""

    def mean(kind: str) -> float:
        return ringing_timeout if kind == "ringing_timeout" else sum(DEFAULT_LATENCY[kind]) / 2

    holds = [mean("answer" if r.startswith("answered") else FAILURES[r].latency) for r in results]
    return PACING_LEAD.total_seconds() + sum(holds) / max(1, len(holds))


def broker_cost(url: str, ids: list[int], reports: list[Any], cmds: RedisCommands) -> Any:
    """Bytes, Redis commands and client CPU ms of the real messages, per message."""
    from agent.ports import Report
    from agent.reporting import CeleryReporter
    from workers.celery_app import app
    from workers.tasks import place_call

    async def agent_reports() -> None:
        reporter = CeleryReporter(url)
        for r in reports:  # with the detail a real agent records
            detail = {"amd": "human", "script_version": "confirm-v1"}
            await reporter(Report(r.attempt_id, r.outcome, r.token, detail))
        reporter.close()

    got: list[int] = []
    name, out = app.conf.task_default_queue, dict[str, dict[str, Any]]()
    for task, count in (("place_call", len(ids)), ("record_outcome", len(reports))):
        cmds.phase(task)
        started = time.thread_time()
        if task == "place_call":  # as the tick sends them: one producer, pipelined
            with app.producer_or_acquire() as producer, producer.batch(max_size=1000):
                for attempt_id in ids:
                    place_call.apply_async((attempt_id,), producer=producer)
        else:
            asyncio.run(agent_reports())
        published = time.thread_time()
        size = sum(len(m) for m in redis.Redis.from_url(url).lrange(name, 0, -1))
        got.clear()
        with (
            app.connection_for_read() as conn,
            conn.Consumer(
                app.amqp.queues[name], callbacks=[lambda _b, m: got.append(m.ack())]
            ) as c,
        ):
            c.qos(prefetch_count=Settings().worker_concurrency)  # as a worker: prefetch, ack late
            while len(got) < count:
                conn.drain_events(timeout=10)
        consumed = time.thread_time()
        cmds.phase("-")
        cpu = {"publish_cpu_ms": published - started, "consume_cpu_ms": consumed - published}
        out[task] = {"bytes": size / count} | {k: 1000 * v / count for k, v in cpu.items()}
    cmds.phase("stop")
    for task, count in (("place_call", len(ids)), ("record_outcome", len(reports))):
        out[task]["redis"] = cmds.per(task, count)
    return out


def run_calls(
    pipeline: Pipeline, steps: Steps, engine: Engine, reports: queue.Queue[Any], args: Any
) -> tuple[list[int], list[Any], Counter[str]]:
    """Tick, place and record until no attempt is open: the queued ids, the reports, and
    the steps that raised (each runs again, as a redelivered message would)."""
    queued, got, errors = [], [], Counter[str]()
    pending: dict[Future[Any], tuple[Any, ...]] = {}
    with ThreadPoolExecutor(args.threads) as pool:

        def submit(*job: Any) -> None:
            pending[pool.submit(steps.run, *job)] = job

        for _ in range(int(args.limit / 0.2)):
            tick = steps.run("tick", pipeline.tick, lambda _id: None)
            queued += tick.queued
            for attempt_id in tick.queued:
                submit("place_call", pipeline.place_call, attempt_id)
            while not reports.empty():
                got.append(r := reports.get())
                job = (r.attempt_id, r.outcome, r.token, r.detail)
                submit("record_outcome", pipeline.record_outcome, *job)
            for done in [f for f in pending if f.done()]:
                job = pending.pop(done)
                if (exc := done.exception()) is not None:
                    errors[f"{job[0]}: {type(exc).__name__}"] += 1
                    submit(*job)
            if not pending and reports.empty() and open_count(attempt_states(engine)) == 0:
                return queued, got, errors
            time.sleep(0.2)
    raise SystemExit(f"attempts still open after {args.limit:.0f}s")


def measure(args: Any) -> dict[str, Any]:
    reports: queue.Queue[Any] = queue.Queue()

    async def collect(report: Any) -> None:
        reports.put(report)

    redis.Redis.from_url(args.redis_url).flushdb()
    cmds = RedisCommands(args.redis_url)
    n, scenario = args.appointments, args.scenario
    with scratch_postgres("campaigns_scale") as url:
        engine = make_engine(url)
        before, audit0, _ = pg_counts(url)
        zone, attempts = daytime_zone(datetime.now(UTC)), SCENARIO_ATTEMPTS[scenario]
        trunk: dict[str, Any] = {"cps": 1000.0, "max_concurrent": 10**4, "setup": "run_daily"}
        seed_clinics(engine, n, clinics=args.clinics, zone=zone, max_attempts=attempts, **trunk)
        engine.dispose()
        seeded, audit1, _ = pg_counts(url)
        steps = Steps(engine)
        sim_config: dict[str, Any] = {"agent": "instant", "scenario": SCENARIOS[scenario]}
        sim_config["speed"] = 1000
        with running_simulator(reporter=collect, default_trunk_id=TRUNK, **sim_config) as sim:
            secrets: dict[str, Any] = {"report_secret": "r" * 40, "audit_key": "a" * 40}
            secrets["livekit_api_secret"] = TEST_API_SECRET
            settings = Settings(database_url=url, livekit_url=sim.url, **secrets)
            io, pacer = EventLoopThread(), RedisPacer(redis.Redis.from_url(args.redis_url))
            telephony = LiveKitTelephony.from_settings(settings)
            pipeline = Pipeline(session_factory(engine), settings, pacer, telephony, io.run)
            io_clock = time.pthread_getcpuclockid(io._thread.ident or 0)
            io_started = time.clock_gettime(io_clock)
            cmds.phase("pipeline")
            ids, got, errors = run_calls(pipeline, steps, engine, reports, args)
            io.run(telephony.aclose())
            cmds.phase("-")
            io_ms = 1000 * (time.clock_gettime(io_clock) - io_started)
            results = [str(c["result"]) for c in sim.calls()]
        engine.dispose()
        after, audit2, audit_bytes = pg_counts(url)
    broker = broker_cost(args.redis_url, ids, got, cmds)
    calls = len(results)
    work = {s: {k: v / calls for k, v in c.items()} for s, c in steps.counts.items()}
    messages = {"place_call": len(ids) / calls, "record_outcome": len(got) / calls}
    kombu_ms = messages["place_call"] * broker["place_call"]["publish_cpu_ms"] + sum(
        messages[t] * broker[t]["consume_cpu_ms"] for t in messages
    )
    writes, daily_run = per_table(after, seeded, calls), per_table(seeded, before, n)
    return {
        "scenario": scenario,
        "appointments": n,
        "clinics": args.clinics,
        "calls": calls,
        "calls_per_appointment": calls / n,
        "statements": sum(c["statements"] for c in work.values()),
        "commits": sum(c["commits"] for c in work.values()),
        "rows_written": sum(sum(c.values()) for c in writes.values()),
        "audit_events": (audit2 - audit1).total() / calls,
        "audit_bytes_per_event": audit_bytes,
        "daily_run_rows_per_appointment": sum(sum(c.values()) for c in daily_run.values()),
        "daily_run_audit_per_appointment": (audit1 - audit0).total() / n,
        "redis_commands": cmds.counts["pipeline"].total() / calls
        + sum(messages[t] * sum(broker[t]["redis"].values()) for t in messages),
        "message_bytes": sum(messages[t] * broker[t]["bytes"] for t in messages),
        "cpu_ms": sum(c["cpu_ms"] for c in work.values()) + io_ms / calls + kombu_ms,
        "dial_hold_s": dial_hold(results, settings.ringing_timeout_seconds),
        "detail": {
            "outcomes": dict(Counter(results)),
            "step_errors": dict(errors),
            "per_step": work,
            "cpu_ms": {"livekit_io_thread": io_ms / calls, "kombu": kombu_ms},
            "rows_by_table": writes,
            "daily_run_rows_by_table": daily_run,
            "audit_by_kind": {k: round(v / calls, 3) for k, v in (audit2 - audit1).items()},
            "pacer_redis": cmds.per("pipeline", calls),
            "messages_per_call": messages,
            "messages": broker,
        },
    }


def project(m: dict[str, Any], cpu_ms: float, clinics: int) -> dict[str, Any]:
    s = Settings()
    appointments = clinics * APPOINTMENTS_PER_CLINIC_DAY
    calls_day = appointments * m["calls_per_appointment"]
    peak = calls_day / (WINDOW_HOURS * 3600) * PEAK_FACTOR
    cores = math.ceil(peak * cpu_ms / 1000 / UTILISATION)
    in_flight = peak * m["dial_hold_s"]  # a dial holds its worker thread until answered
    processes = max(1, cores, math.ceil(in_flight / s.worker_concurrency))
    heartbeats = processes / (s.worker_lost_seconds / 4)  # a row update and a commit each
    pool = make_engine("postgresql+psycopg://scale/model").pool
    audit_day = calls_day * m["audit_events"] + appointments * m["daily_run_audit_per_appointment"]
    load = {
        "pg_commits_per_s": peak * m["commits"] + heartbeats,
        "pg_rows_written_per_s": peak * m["rows_written"] + heartbeats,
        "redis_commands_per_s": peak * m["redis_commands"],
        "redis_bytes_per_s": peak * m["message_bytes"] * REDIS_COPIES,
        "tick_claims_per_s": peak,
    }
    ceilings = CEILINGS | {"tick_claims_per_s": s.tick_batch * TICK_BATCHES / s.tick_seconds}
    share = {k: v / ceilings[k] for k, v in load.items()}
    first = max(share, key=lambda k: share[k])
    return {
        "clinics": clinics,
        "calls_per_day": calls_day,
        "peak_calls_per_s": peak,
        "worker_cores": cores,
        "calls_in_flight": in_flight,
        "worker_processes": processes,
        **load,
        "pg_statements_per_s": peak * m["statements"],
        "pg_connections_max": processes * (pool.size() + pool._max_overflow),  # type: ignore[attr-defined]
        "audit_rows_per_day": audit_day,
        "audit_gb_per_day": audit_day * m["audit_bytes_per_event"] / 1e9,
        "audit_tb_per_year": 365 * audit_day * m["audit_bytes_per_event"] / 1e12,
        "share_of_ceiling": share,
        "first_bottleneck": first,
        "deployments": math.ceil(share[first] / UTILISATION),
    }


def si(x: float | str) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (0, "")):
        if isinstance(x, int | float) and abs(x) >= div:
            return f"{x / (div or 1):.3g}{unit}"
    return str(x)


def print_report(m: dict[str, Any], rows: list[dict[str, Any]], cpu_ms: float, source: str) -> None:
    d = m["detail"]
    print(
        f"measured, per call placed ({m['scenario']}: {m['appointments']} appointments, "
        f"{m['clinics']} clinics, {m['calls']} calls {d['outcomes']}, errors {d['step_errors']})"
    )
    for key, value in m.items():
        if isinstance(value, float):
            print(f"  {key:<32} {value:9.2f}")
    for key in ("rows_by_table", "audit_by_kind", "pacer_redis", "messages", "cpu_ms"):
        print(f"  {key}: {json.dumps(d[key], default=lambda x: round(x, 2))}")
    print(
        f"\nprojection: {APPOINTMENTS_PER_CLINIC_DAY} appointments/clinic/day, "
        f"{WINDOW_HOURS:g} h window, peak x{PEAK_FACTOR:g}, {UTILISATION:.0%} utilisation, "
        f"worker CPU {cpu_ms:.2f} ms/call ({source}); (%) of one instance's ceiling"
    )
    for key in (k for k in rows[0] if k != "share_of_ceiling"):
        print(f"  {key:<28}" + "".join(f"{cell(r, key):>18}" for r in rows))


def cell(row: dict[str, Any], key: str) -> str:
    share = row["share_of_ceiling"].get(key)
    return si(row[key]) + ("" if share is None else f" ({share:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appointments", type=int, default=400)
    parser.add_argument("--clinics", type=int, default=8)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="mix")
    parser.add_argument("--threads", type=int, default=24, help="steps running at once")
    parser.add_argument("--worker-cpu-ms", type=float, help="end-to-end worker CPU per call")
    parser.add_argument("--limit", type=float, default=90.0, help="seconds for the calls at most")
    default_redis = os.environ.get("CAMPAIGNS_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
    parser.add_argument("--redis-url", default=default_redis, help="a database of its own")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    os.environ["CAMPAIGNS_BROKER_URL"] = args.redis_url  # the Celery app's, once imported
    m = measure(args)
    cpu_ms = args.worker_cpu_ms or m["cpu_ms"]
    source = "end to end, given" if args.worker_cpu_ms else "in-process, measured"
    rows = [project(m, cpu_ms, n) for n in SIZES]
    if args.json:
        assumed = "SIZES APPOINTMENTS_PER_CLINIC_DAY WINDOW_HOURS PEAK_FACTOR UTILISATION"
        names = [*assumed.split(), "REDIS_COPIES", "CEILINGS", "TICK_BATCHES"]
        assumptions = {name: globals()[name] for name in names}
        document = {"measured": m, "worker_cpu_ms": cpu_ms, "cpu_source": source}
        print(json.dumps(document | {"assumptions": assumptions, "projection": rows}))
    else:
        print_report(m, rows, cpu_ms, source)


if __name__ == "__main__":
    main()
