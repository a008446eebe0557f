"""`campaigns demo`: the whole pipeline on the embedded default, with no server.

SQLite for the data, Celery's SQLAlchemy transport on a SQLite file as the
broker, and the LiveKit simulator; worker, beat, simulator and the web console
run as the same `campaigns` subprocesses an operator would start. The sample
appointments are placed where it is early afternoon now, so every calling rule
stays on. Answered calls are played by the real confirmation agent (``agent/``)
inside the simulator, so every outcome after an answer, the transfer to staff
included, is the agent's. ``keep=True`` leaves everything running after the
campaign until interrupted, so a person can look around the console.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col, select

from campaigns import appointments, audit, clinics, migrate, users
from campaigns.attempts import daily, status
from campaigns.db import make_engine, session_factory
from campaigns.importing import import_appointments
from campaigns.masking import inert, mask_name, mask_phone
from campaigns.models import OPEN_ATTEMPT_STATES, Appointment, CallAttempt, Trunk
from campaigns.settings import DATA_DIR
from demo.daytime import country_of, daytime_zone, local_number
from demo.real_livekit import CALLS_AT_ONCE, RealLiveKit, real_livekit, start_agent
from harness.processes import free_port, port_open, processes, wait_until

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "appointments.csv"
TRUNK_ID = "ST_demo"
CLINIC = "Lakeside Clinic (demo)"
DEADLINE = timedelta(minutes=2, seconds=30)
LIVE_DEADLINE = timedelta(minutes=20)  # real calls, two at a time
CALLER_ID = "+12125550199"
DEMO_USER = "demo@example.org"


def todays_sample(sample: Path, zone: str, now: datetime) -> bytes:
    """The sample file with its appointments moved to tomorrow, patients living in ``zone``
    (numbers there, ending as in the sample: the simulator's behaviour)."""
    tomorrow = (now.astimezone(ZoneInfo(zone)) + timedelta(days=1)).date().isoformat()
    reader = csv.DictReader(io.StringIO(sample.read_text(encoding="utf-8")))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(reader.fieldnames or []))
    writer.writeheader()
    for row in reader:
        last_four = "".join(ch for ch in row["Phone"] if ch.isdigit())[-4:]
        phone = local_number(zone, last_four)
        writer.writerow(row | {"Date": tomorrow, "Timezone": zone, "Phone": phone})
    return out.getvalue().encode()


@contextmanager
def _services(
    env: dict[str, str],
    workdir: Path,
    port: int,
    console_port: int,
    speed: float,
    real: RealLiveKit | None,
) -> Iterator[None]:
    with processes(env, workdir, grace=15.0) as group:
        ports = [("console", console_port)]
        if real is None:
            group.start(
                "simulator",
                "simulator",
                f"--port={port}",
                f"--speed={speed}",
                f"--trunk={TRUNK_ID}",
                f"--webhook-url=http://127.0.0.1:{console_port}/livekit/webhook",
            )
            ports.append(("simulator", port))
        else:
            start_agent(group)
        group.start("console", "serve", f"--port={console_port}")
        group.worker(loglevel="WARNING")
        group.beat(loglevel="WARNING")
        for service, service_port in ports:
            try:
                wait_until(partial(port_open, service_port), timeout=20.0, what=f"the {service}")
            except TimeoutError:
                raise RuntimeError(f"the {service} did not start (see {service}.log)") from None
        yield


def run_demo(
    console: Console, *, speed: float = 10.0, keep: bool = False, livekit: str = "simulator"
) -> int:
    """The demo against the simulator, or (``livekit="local"``) the real LiveKit on loopback."""
    now = datetime.now(UTC)
    workdir = DATA_DIR / f"demo-{now:%Y%m%d-%H%M%S}"
    workdir.mkdir(parents=True)
    with contextlib.ExitStack() as telephony:
        real = None
        if livekit == "local":
            console.print("starting livekit-server, the SIP bridge and the patients' phones...")
            real = telephony.enter_context(
                real_livekit(
                    workdir, console_port=(console_port := free_port()), caller_id=CALLER_ID
                )
            )
        else:
            console_port = free_port()
        return _run(console, workdir, now, console_port, speed=speed, keep=keep, real=real)


def _run(
    console: Console,
    workdir: Path,
    now: datetime,
    console_port: int,
    *,
    speed: float,
    keep: bool,
    real: RealLiveKit | None,
) -> int:
    database_url = f"sqlite:///{workdir / 'campaigns.db'}"
    port = free_port()
    password = secrets.token_urlsafe(12)
    zone = daytime_zone(now)
    trunk_id = real.trunk_id if real is not None else TRUNK_ID
    telephony = (
        real.env()
        if real is not None
        else {
            "LIVEKIT_URL": f"http://127.0.0.1:{port}",
            "LIVEKIT_API_KEY": "demo-key",
            "LIVEKIT_API_SECRET": "demo-secret-that-is-long-enough-for-hs256",
        }
    )
    env = (
        dict(os.environ)
        | telephony
        | {
            "CAMPAIGNS_DATABASE_URL": database_url,
            "CAMPAIGNS_BROKER_URL": f"sqla+sqlite:///{workdir / 'broker.db'}",
            "CAMPAIGNS_REPORT_SECRET": "demo-report-secret",
            "CAMPAIGNS_TICK_SECONDS": "1",
            "CAMPAIGNS_RECONCILE_SECONDS": "5",
            "CAMPAIGNS_DIAL_GRACE_SECONDS": "10",
            "CAMPAIGNS_REPORT_GRACE_SECONDS": "15",
            "CAMPAIGNS_MAX_CALL_DURATION_SECONDS": "60",
        }
    )
    env.pop("CAMPAIGNS_REDIS_URL", None)
    console.print(f"[bold]clinic-campaigns demo[/] in {workdir}")
    console.print(
        f"patients live in {zone}, where it is {now.astimezone(ZoneInfo(zone)):%A %H:%M} now"
    )

    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    with sessions() as session:
        spec = clinics.validate_spec(
            {
                "name": CLINIC,
                "timezone": zone,
                "country": country_of(zone),
                "window": "09:00-19:00",
                "days": "mon,tue,wed,thu,fri,sat,sun",
                "trunk_id": trunk_id,
                "caller_id": CALLER_ID,
                "transfer_number": "+12125550123",
                # Real calls last tens of seconds, two at a time: one retry is shown, not two.
                "max_attempts": 3 if real is None else 2,
                "lead_days": "1",
            }
        )
        clinic = clinics.create_clinic(session, spec, actor="demo")
        # Short backoff so the retries happen while you watch.
        clinic.retry_base_seconds, clinic.retry_cap_seconds, clinic.min_gap_seconds = 5, 20, 2
        session.add(
            Trunk(sip_trunk_id=trunk_id, name="demo trunk", calls_per_second=5, max_concurrent=20)
            if real is None
            else Trunk(
                sip_trunk_id=trunk_id,
                name="patients' phones (sipp)",
                calls_per_second=1,
                max_concurrent=CALLS_AT_ONCE,
            )
        )
        report = import_appointments(
            session,
            clinic,
            io.BytesIO(todays_sample(SAMPLE, zone, now)),
            filename=SAMPLE.name,
            now=now,
            actor="demo",
        )
        users.add_user(session, DEMO_USER, "admin", password, actor="demo")
        session.commit()
        console.print(
            f"imported {SAMPLE.name}: {report.imported} appointments tomorrow, "
            f"{len(report.rejected_lines)} rejected"
        )
    with _services(env, workdir, port, console_port, speed, real):
        console.print(
            f"web console: [bold]http://127.0.0.1:{console_port}[/]  "
            f"sign in as {DEMO_USER} with password {password}",
            highlight=False,
        )
        with sessions() as session:
            clinic = clinics.get_clinic(session, CLINIC)
            local_today = datetime.now(UTC).astimezone(ZoneInfo(zone)).date()
            result = daily.run_daily(session, clinic, local_today, datetime.now(UTC), actor="demo")
            session.commit()
        where = (
            "the LiveKit simulator, where the confirmation agent talks to each scripted patient"
            if real is None
            else "livekit-server and the SIP bridge to the patients' phones, where the "
            "confirmation agent talks to each of them (local voice models)"
        )
        console.print(f"daily run: {result.created} calls scheduled; calling through {where}...")
        deadline = DEADLINE if real is None else LIVE_DEADLINE
        finished = _watch(console, sessions, deadline=time.monotonic() + deadline.total_seconds())
        if keep:
            _keep_running(console, console_port, password)
    with sessions() as session:
        _summary(console, session)
        verified = audit.verify(session)
    engine.dispose()
    console.print(
        f"audit log: {'intact' if verified.ok else 'BROKEN'} ({verified.events} events). "
        f"Logs and data: {workdir}"
    )
    if not finished:
        console.print("[red]the demo did not finish in time[/]")
        return 1
    return 0 if verified.ok else 1


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _keep_running(console: Console, console_port: int, password: str) -> None:
    console.print()
    console.print(
        f"the campaign is over; everything keeps running. Console: http://127.0.0.1:{console_port} "
        f"({DEMO_USER} / {password}). Press Ctrl-C to stop.",
        highlight=False,
    )
    # Ctrl-C, or a TERM from a supervisor: either way the services are stopped on the way out.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(1)


def _progress(session: Session) -> Table:
    counts = status.status_counts(session)
    table = Table("state", "attempts", "outcome", "calls", title="progress")
    states = list(counts["attempts"].items())
    outcomes = [(k, v) for k, v in counts["outcomes"].items() if v]
    for i in range(max(len(states), len(outcomes))):
        state = states[i] if i < len(states) else ("", "")
        outcome = outcomes[i] if i < len(outcomes) else ("", "")
        table.add_row(state[0], str(state[1]), outcome[0], str(outcome[1]))
    return table


def _open_attempts(session: Session) -> int:
    return len(
        session.execute(
            select(CallAttempt.id).where(col(CallAttempt.state).in_(OPEN_ATTEMPT_STATES))
        ).all()
    )


def _watch(console: Console, sessions: sessionmaker[Session], *, deadline: float) -> bool:
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while time.monotonic() < deadline:
            with sessions() as session:
                live.update(_progress(session))
                if _open_attempts(session) == 0:
                    return True
            time.sleep(0.5)
    return False


def _summary(console: Console, session: Session) -> None:
    table = Table(
        "appointment", "patient", "phone", "attempts", "outcomes", "status", title="results"
    )
    for appointment in session.execute(
        select(Appointment).order_by(col(Appointment.external_id))
    ).scalars():
        attempts = appointments.attempts_of(session, appointment)
        table.add_row(
            inert(appointment.external_id),
            inert(mask_name(appointment.patient_name)),
            mask_phone(appointment.phone_e164),
            str(len(attempts)),
            inert(", ".join(a.outcome or a.state for a in attempts)),
            inert(appointment.status),
        )
    console.print(table)
    counts = status.status_counts(session)
    totals = Table("outcome", "calls", title=f"outcomes ({counts['retries']} were retries)")
    for outcome, count in counts["outcomes"].items():
        if count:
            totals.add_row(outcome, str(count))
    console.print(Group(totals))
