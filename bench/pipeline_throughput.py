"""End-to-end calls per second: `campaigns worker` + `campaigns beat` + Redis +
PostgreSQL + the LiveKit simulator (a subprocess, speed 1000 so ringing and
talking take milliseconds), all real processes on loopback.

Per configuration (worker processes x thread concurrency) it creates a fresh,
migrated PostgreSQL database, ``--clinics`` clinics where it is daytime now
sharing a trunk with high limits, N appointments spread over them with distinct
valid numbers and their first attempts (``daily.run_daily``, or bulk-inserted scheduled rows with
``--setup bulk``), starts the simulator and the worker(s), waits until every
worker is ready, then starts beat and the clock. The clock stops when no
attempt is open (scheduled / queued / dialing / answered) any more. CPU time
and peak RSS of every process are sampled with psutil. Each run stops by itself
(``--limit`` seconds at most), kills its processes and drops its database.

By default the simulator reports each answered callee's scripted outcome at
once (``--agent instant``), so the figures are the engine's own cost; with
``--agent real`` the voice agent plays every answered call inside the simulator
too (its CPU per call is printed apart, and ``bench/agent_rehearsal.py`` measures it alone).

    .venv/bin/python bench/pipeline_throughput.py                 # 5000 calls, 2 x 100
    .venv/bin/python bench/pipeline_throughput.py --scenario mix  # outcome mix with retries
    .venv/bin/python bench/pipeline_throughput.py --configs 1x100,2x100 --calls 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psutil
import redis
from sqlalchemy import Engine, func, insert
from sqlmodel import col, select

from campaigns.attempts import daily
from campaigns.db import make_engine, session_factory
from campaigns.models import OPEN_ATTEMPT_STATES, Appointment, AttemptState, CallAttempt
from demo.daytime import daytime_zone, local_number
from harness.clinics import always_open_clinic
from harness.databases import scratch_postgres
from harness.processes import Process, ProcessGroup, free_port, http_ok, wait_until

REDIS_HOST_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
TRUNK = "ST_bench"
API_KEY = "benchkey"
API_SECRET = "bench-secret-0123456789abcdef0123456789"  # loopback simulator only

SCENARIOS: dict[str, dict[str, Any]] = {
    # Every callee answers and confirms: the full path (dial, answer, agent report).
    "confirm": {"suffixes": {f"{n:02d}": "confirmed" for n in range(100)}},
    # The simulator's default weights (55% confirmed, 15% no answer, ...), no suffix map.
    "mix": {"suffixes": {f"{n:02d}": None for n in range(12)}},
}
# Attempts per appointment when --max-attempts is not given: the mix retries.
SCENARIO_ATTEMPTS = {"confirm": 1, "mix": 3}


@contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    """A scratch directory for the processes' logs; kept (and named) with ``--keep``."""
    path = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"logs kept in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def seed(
    engine: Engine,
    count: int,
    *,
    clinics: int,
    zone: str,
    cps: float,
    max_concurrent: int,
    max_attempts: int,
    setup: str,
) -> float:
    """Clinic, trunk, ``count`` appointments and their first attempts; returns seconds taken."""
    started = time.monotonic()
    now = datetime.now(UTC)
    with session_factory(engine)() as s:
        made = [
            always_open_clinic(
                s,
                f"Bench Clinic {c:03d}",
                zone,
                TRUNK,
                max_attempts=max_attempts,
                cps=cps,
                max_concurrent=max_concurrent,
                actor="bench",
            )
            for c in range(clinics)
        ]
        ids = [clinic.id for clinic in made if clinic.id is not None]
        starts_at = now + timedelta(days=2)
        s.add_all(
            Appointment(
                clinic_id=ids[n % len(ids)],
                external_id=f"BENCH-{n:05d}",
                patient_name=f"Patient {n:05d}",
                phone_e164=local_number(zone, f"{n:04d}"),
                patient_timezone=zone,
                starts_at=starts_at,
            )
            for n in range(count)
        )
        s.flush()
        if setup == "run_daily":
            local_today = now.astimezone(ZoneInfo(zone)).date()
            created = sum(
                daily.run_daily(s, clinic, local_today, now, actor="bench").created
                for clinic in made
            )
            assert created == count, created
        else:
            rows = [
                {
                    "appointment_id": appointment_id,
                    "clinic_id": clinic_id,
                    "attempt_number": 1,
                    "number_called": phone,
                    "state": AttemptState.SCHEDULED,
                    "due_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for appointment_id, clinic_id, phone in s.execute(
                    select(
                        col(Appointment.id), col(Appointment.clinic_id), col(Appointment.phone_e164)
                    )
                ).all()
            ]
            s.execute(insert(CallAttempt), rows)
        s.commit()
    return time.monotonic() - started


def attempt_states(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(col(CallAttempt.state), func.count()).group_by(col(CallAttempt.state))
        ).all()
    return Counter({str(state): int(n) for state, n in rows})


def open_count(states: Counter[str]) -> int:
    return sum(states[str(s)] for s in OPEN_ATTEMPT_STATES)


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A started process and its resource use, sampled with psutil."""

    process: Process
    ps: psutil.Process | None = None
    peak_rss: int = 0
    cpu: float = 0.0  # user + system seconds, last sample

    @property
    def name(self) -> str:
        return self.process.name

    def sample(self) -> None:
        try:
            if self.ps is None:
                self.ps = psutil.Process(self.process.pid)
            procs = [self.ps, *self.ps.children(recursive=True)]
            rss = cpu = 0.0
            for p in procs:
                with suppress(psutil.NoSuchProcess):
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu += t.user + t.system
            self.peak_rss = max(self.peak_rss, int(rss))
            self.cpu = max(self.cpu, cpu)
        except psutil.NoSuchProcess:
            pass

    def rss_now(self) -> int:
        try:
            return int(psutil.Process(self.process.pid).memory_info().rss)
        except psutil.NoSuchProcess:
            return 0


@dataclass
class Stack:
    group: ProcessGroup
    procs: list[Proc] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    @property
    def env(self) -> dict[str, str]:
        return self.group.env

    def start(self, name: str, *args: str) -> Proc:
        proc = Proc(self.group.start(name, *args))
        self.procs.append(proc)
        return proc

    def start_sampling(self, every: float = 0.25) -> None:
        def loop() -> None:
            while not self._stop.wait(every):
                for proc in list(self.procs):
                    proc.sample()

        self._sampler = threading.Thread(target=loop, name="sampler", daemon=True)
        self._sampler.start()

    def stop(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)
        for proc in self.procs:
            proc.sample()
        self.group.stop_all()

    def tail(self, name: str, chars: int = 3000) -> str:
        return self.group.tail(name, chars)


def sim_stats(url: str) -> dict[str, Any]:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url + "/_sim/stats", timeout=5) as resp:
        document: dict[str, Any] = json.loads(resp.read())
        return document


# Emulates a proposed engine fix without editing the engine: every aiohttp
# TCPConnector built with the default limit (100 connections, the one inside the
# ClientSession LiveKitAPI makes for itself) gets this limit instead.
@contextmanager
def running_stack(
    *,
    database_url: str,
    redis_db: int,
    speed: float,
    scenario: dict[str, Any],
    workdir: Path,
    agent: str,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[Stack, str]]:
    """Simulator subprocess plus the environment for worker and beat; stops everything."""
    broker_url = f"{REDIS_HOST_URL}/{redis_db}"
    redis.Redis.from_url(broker_url).flushdb()
    port = free_port()
    sim_url = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(workdir)),
        "NO_PROXY": "127.0.0.1,localhost",
        "CAMPAIGNS_DATABASE_URL": database_url,
        "CAMPAIGNS_BROKER_URL": broker_url,
        "CAMPAIGNS_REDIS_URL": broker_url,
        "LIVEKIT_URL": sim_url,
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
        "CAMPAIGNS_REPORT_SECRET": "bench-report-secret-0123456789abcdef",
        "CAMPAIGNS_AUDIT_KEY": "bench-audit-key-0123456789abcdef0123",
        "CAMPAIGNS_TICK_SECONDS": "0.5",
        "CAMPAIGNS_TICK_BATCH": "1000",
        "CAMPAIGNS_RECONCILE_SECONDS": "5",
        **(extra_env or {}),
    }
    scenario_path = workdir / "scenario.json"
    scenario_path.write_text(json.dumps(scenario))
    stack = Stack(ProcessGroup(env, workdir))
    try:
        stack.start(
            "simulator",
            "simulator",
            f"--port={port}",
            f"--speed={speed}",
            f"--trunk={TRUNK}",
            f"--scenario={scenario_path}",
            f"--agent={agent}",
        )
        wait_until(
            lambda: http_ok(sim_url + "/_sim/stats"), timeout=30, what="the simulator", every=0.1
        )
        stack.start_sampling()
        yield stack, sim_url
    finally:
        stack.stop()
        redis.Redis.from_url(broker_url).flushdb()


def consumers(broker_url: str) -> int:
    """Clients blocked on the broker's queues: one per ready worker (kombu polls with BRPOP)."""
    return sum(1 for c in redis.Redis.from_url(broker_url).client_list() if c.get("cmd") == "brpop")


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    config: str
    calls: int
    seconds: float
    states: Counter[str]
    outcomes: Counter[str]
    procs: list[tuple[str, float, float]]  # name, cpu s, peak RSS MB
    first_dial_s: float | None
    sim: dict[str, Any]
    finished: bool

    @property
    def dials(self) -> int:
        """Calls placed, retries included."""
        return int(self.sim.get("dials") or 0)

    @property
    def rate(self) -> float:
        return self.dials / self.seconds if self.seconds else 0.0

    def cpu_ms_per_call(self, prefix: str) -> float:
        """CPU of the processes whose name starts with ``prefix``, per call placed."""
        cpu = sum(seconds for name, seconds, _ in self.procs if name.startswith(prefix))
        return 1000 * cpu / self.dials if self.dials else 0.0


def outcome_counts(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(col(CallAttempt.outcome), func.count()).group_by(col(CallAttempt.outcome))
        ).all()
    return Counter({str(o): int(n) for o, n in rows})


def run_once(args: argparse.Namespace, workers: int, concurrency: int) -> RunResult:
    config = f"{workers}x{concurrency}"
    zone = daytime_zone(datetime.now(UTC))
    with workspace(args.keep) as workdir, scratch_postgres("campaigns_bench_tput") as url:
        engine = make_engine(url)
        try:
            setup_s = seed(
                engine,
                args.calls,
                clinics=args.clinics,
                zone=zone,
                cps=args.cps,
                max_concurrent=args.max_concurrent,
                max_attempts=args.max_attempts,
                setup=args.setup,
            )
            print(
                f"[{config}] seeded {args.calls} attempts over {args.clinics} clinics "
                f"({args.setup}) in {setup_s:.1f}s"
            )
            with running_stack(
                database_url=url,
                redis_db=args.redis_db,
                speed=args.speed,
                scenario=SCENARIOS[args.scenario],
                workdir=workdir,
                agent=args.agent,
            ) as (stack, sim_url):
                names = [f"worker{i + 1}" for i in range(workers)]
                for name in names:
                    stack.start(
                        name,
                        "worker",
                        f"--concurrency={concurrency}",
                        f"--loglevel={args.loglevel}",
                    )
                wait_until(
                    lambda: consumers(stack.env["CAMPAIGNS_BROKER_URL"]) >= workers,
                    timeout=60,
                    what="the workers to consume",
                    every=0.1,
                )
                baseline = {p.name: p.cpu for p in stack.procs}
                t0 = time.monotonic()
                t0_wall = time.time()
                stack.start("beat", "beat", f"--loglevel={args.loglevel}")
                deadline = t0 + args.limit
                finished = False
                last_print = t0
                while time.monotonic() < deadline:
                    states = attempt_states(engine)
                    if open_count(states) == 0 and sum(states.values()) >= args.calls:
                        finished = True
                        break
                    if time.monotonic() - last_print >= 5:
                        last_print = time.monotonic()
                        print(
                            f"[{config}] t={last_print - t0:5.1f}s "
                            + " ".join(f"{k}={v}" for k, v in sorted(states.items()))
                        )
                    time.sleep(0.1)
                elapsed = time.monotonic() - t0
                for proc in stack.procs:
                    proc.sample()
                sim = sim_stats(sim_url)
                first_dial = None
                if sim.get("dials"):
                    import urllib.request

                    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                    with opener.open(sim_url + "/_sim/calls", timeout=30) as resp:
                        dials = json.loads(resp.read())
                    if dials:
                        first_dial = min(d["at"] for d in dials) - t0_wall
                procs = [
                    (p.name, p.cpu - baseline.get(p.name, 0.0), p.peak_rss / 2**20)
                    for p in stack.procs
                ]
                if not finished:
                    print(f"[{config}] NOT FINISHED in {args.limit:.0f}s; worker log tail:")
                    print(stack.tail(names[0]))
            states = attempt_states(engine)
            outcomes = outcome_counts(engine)
        finally:
            engine.dispose()
    return RunResult(
        config, args.calls, elapsed, states, outcomes, procs, first_dial, sim, finished
    )


def print_table(results: list[RunResult]) -> None:
    print()
    print(
        f"{'config':>7} {'appts':>6} {'calls':>6} {'wall s':>7} {'calls/s':>8} {'1st dial':>8}  "
        "CPU ms per call: workers / beat / simulator"
    )
    for r in results:
        first = f"{r.first_dial_s:.2f}s" if r.first_dial_s is not None else "-"
        flag = "" if r.finished else "  (timed out)"
        print(
            f"{r.config:>7} {r.calls:>6} {r.dials:>6} {r.seconds:7.1f} {r.rate:8.1f} {first:>8}  "
            f"{r.cpu_ms_per_call('worker'):.1f} / {r.cpu_ms_per_call('beat'):.1f} / "
            f"{r.cpu_ms_per_call('simulator'):.1f}{flag}"
        )
    for r in results:
        outcomes = ", ".join(f"{k}={v}" for k, v in sorted(r.outcomes.items()))
        cells = "  ".join(f"{name} {cpu:.1f}s/{rss:.0f}MB" for name, cpu, rss in r.procs)
        print(
            f"  {r.config}: states {dict(sorted(r.states.items()))}; outcomes {outcomes}; "
            f"simulator max_in_flight={r.sim.get('max_in_flight')}, reports={r.sim.get('reports')} "
            f"(sent {r.sim.get('reports_sent')}, failed {r.sim.get('reports_failed')})"
        )
        print(f"  {r.config}: per process cpu s / peak RSS MB: {cells}")
    best = max(results, key=lambda r: r.rate if r.finished else 0.0)
    print(f"best: {best.config} (workers x threads) at {best.rate:.1f} calls/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="appointments to call")
    parser.add_argument("--clinics", type=int, default=20, help="clinics they belong to")
    parser.add_argument(
        "--configs",
        default="2x100",
        help="comma-separated WORKERSxTHREADS, e.g. 1x50,1x100,2x100",
    )
    parser.add_argument("--speed", type=float, default=1000.0)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="confirm")
    parser.add_argument(
        "--max-attempts", type=int, help="attempts per appointment (confirm: 1, mix: 3)"
    )
    parser.add_argument(
        "--agent",
        choices=["instant", "real"],
        default="instant",
        help="instant: the callee's outcome is reported at once; real: the agent plays it",
    )
    parser.add_argument("--setup", choices=["run_daily", "bulk"], default="bulk")
    parser.add_argument("--cps", type=float, default=500.0)
    parser.add_argument("--max-concurrent", type=int, default=1000)
    parser.add_argument("--limit", type=float, default=180.0, help="seconds per run at most")
    parser.add_argument("--redis-db", type=int, default=13)
    parser.add_argument("--keep", action="store_true", help="keep the logs directory")
    parser.add_argument("--loglevel", default="INFO", help="worker and beat log level")
    args = parser.parse_args()
    if args.max_attempts is None:
        args.max_attempts = SCENARIO_ATTEMPTS[args.scenario]
    if args.calls > 10_000:
        parser.error("--calls: at most 10000 distinct numbers")
    results = []
    for item in args.configs.split(","):
        workers, concurrency = (int(x) for x in item.lower().split("x"))
        results.append(run_once(args, workers, concurrency))
    print_table(results)


if __name__ == "__main__":
    main()
