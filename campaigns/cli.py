"""The ``campaigns`` command line: a thin adapter over the domain services.

With ``--json`` stdout carries exactly one JSON document and logs go to stderr.
Every error a user can cause is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session
from typer._click.core import Context as ClickContext
from typer.core import TyperGroup

from campaigns import audit, clinics, compliance, dnc, migrate
from campaigns.attempts import daily, dial
from campaigns.attempts.metadata import agent_metadata, next_attempt_id
from campaigns.attempts.status import status_counts
from campaigns.db import session_scope
from campaigns.errors import CampaignError, InvalidInputError
from campaigns.masking import inert, mask_phone
from campaigns.models import DncSource
from campaigns.phones import to_e164
from campaigns.settings import DATA_DIR, InsecureSecretError, get_settings, require_secrets

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("campaigns")


class _OneLineErrors(TyperGroup):
    """Turns every user-facing error into one line on stderr and exit status 1."""

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except CampaignError as exc:
            _fail(str(exc))
        except (OperationalError, ProgrammingError) as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                _fail("the database has no tables yet: run `campaigns db upgrade`")
            _fail(f"database error: {str(exc.orig).splitlines()[0]}")
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except Exception as exc:
            if os.environ.get("CAMPAIGNS_DEBUG"):
                raise
            _fail(
                f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(inert(f"error: {message}"), highlight=False)
    raise typer.Exit(code)


def _typer(help_text: str) -> typer.Typer:
    return typer.Typer(
        help=help_text, cls=_OneLineErrors, no_args_is_help=True, pretty_exceptions_enable=False
    )


app = _typer("Outbound appointment-confirmation call campaigns.")
db_app = _typer("Database schema.")
clinic_app = _typer("Clinics and their calling rules.")
dnc_app = _typer("Do-not-call lists.")
audit_app = _typer("The tamper-evident audit log.")
trunk_app = _typer("LiveKit SIP outbound trunks and their calling limits.")
agent_app = _typer("The appointment-confirmation voice agent.")
app.add_typer(db_app, name="db")
app.add_typer(trunk_app, name="trunk")
app.add_typer(clinic_app, name="clinic")
app.add_typer(dnc_app, name="dnc")
app.add_typer(audit_app, name="audit")
app.add_typer(agent_app, name="agent")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
MaxPerDay = Annotated[
    int | None, typer.Option(help="Dials per number in any 24 hours, all appointments (3)")
]
MaxPerWeek = Annotated[
    int | None, typer.Option(help="Dials per number in any 7 days, all appointments (6)")
]
HealthcareExemption = Annotated[
    bool,
    typer.Option("--healthcare-exemption", help="FCC healthcare-exemption caps: 1 a day, 3 a week"),
]


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except OSError:
        return "cli"


def print_table(columns: dict[str, str], rows: list[dict[str, Any]], **options: Any) -> None:
    """Rows as a table; ``columns`` maps each heading to its key in the rows."""
    table = Table(*columns, **options)
    for row in rows:
        table.add_row(*(inert("" if row[key] is None else row[key]) for key in columns.values()))
    out.print(table)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


@contextmanager
def unit_of_work() -> Iterator[Session]:
    with session_scope() as session:
        yield session


def parse_instant(text: str, option: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInputError(f"{option}: {text!r} is not an ISO 8601 time") from exc
    if value.tzinfo is None:
        raise InvalidInputError(
            f"{option}: {text!r} needs a UTC offset, e.g. 2026-12-01T15:00:00-05:00"
        )
    return value.astimezone(UTC)


@app.callback()
def _configure(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# --- db ---------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables (the only way tables are made)."""
    migrate.upgrade(get_settings().database_url)
    err.print("database is up to date")


# --- clinics ----------------------------------------------------------------


@clinic_app.command("add")
def clinic_add(
    name: str,
    timezone: Annotated[str, typer.Option(help="IANA zone of the clinic, e.g. America/New_York")],
    country: Annotated[str, typer.Option(help="Default region for phone numbers")] = "US",
    window: Annotated[
        str, typer.Option(help="Calling hours in the callee's local time")
    ] = "09:00-19:00",
    days: Annotated[str, typer.Option(help="Calling weekdays")] = "mon,tue,wed,thu,fri",
    holidays: Annotated[
        str | None, typer.Option(help="No calls on these holidays: US or US-NY")
    ] = None,
    caller_id: Annotated[str | None, typer.Option(help="Number shown to patients (E.164)")] = None,
    transfer_number: Annotated[
        str | None, typer.Option(help="Staff line the agent transfers callers to (E.164)")
    ] = None,
    trunk: Annotated[str | None, typer.Option(help="LiveKit SIP outbound trunk id")] = None,
    agent_name: Annotated[str | None, typer.Option(help="LiveKit agent to dispatch")] = None,
    max_attempts: Annotated[int, typer.Option(help="Calls per appointment at most")] = 4,
    lead_days: Annotated[str, typer.Option(help="Call this many days before: 1,2")] = "1",
    daily_run_time: Annotated[str, typer.Option(help="Local time of the daily run")] = "10:00",
    max_per_day: MaxPerDay = None,
    max_per_week: MaxPerWeek = None,
    healthcare_exemption: HealthcareExemption = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a clinic."""
    caps = clinics.cap_settings(max_per_day, max_per_week, healthcare_exemption)
    spec = clinics.validate_spec(
        caps
        | {
            "name": name,
            "timezone": timezone,
            "country": country,
            "window": window,
            "days": days,
            "holidays": holidays,
            "caller_id": caller_id,
            "transfer_number": transfer_number,
            "trunk_id": trunk,
            "agent_name": agent_name,
            "max_attempts": max_attempts,
            "lead_days": lead_days,
            "daily_run_time": daily_run_time,
        }
    )
    with unit_of_work() as session:
        clinic = clinics.create_clinic(session, spec, actor=actor())
        described = clinics.describe(clinic)
    if as_json:
        emit_json(described)
    else:
        out.print(inert(f"clinic {clinic.name!r} created (id {clinic.id})"))


@clinic_app.command("update")
def clinic_update(
    name: str,
    transfer_number: Annotated[
        str | None, typer.Option(help="Staff line the agent transfers callers to (E.164)")
    ] = None,
    caller_id: Annotated[str | None, typer.Option(help="Number shown to patients (E.164)")] = None,
    window: Annotated[
        str | None, typer.Option(help="Calling hours in the callee's local time, HH:MM-HH:MM")
    ] = None,
    max_per_day: MaxPerDay = None,
    max_per_week: MaxPerWeek = None,
    healthcare_exemption: HealthcareExemption = False,
    as_json: JsonFlag = False,
) -> None:
    """Change a clinic's settings (audited with their values before and after)."""
    changes: dict[str, Any] = clinics.cap_settings(max_per_day, max_per_week, healthcare_exemption)
    changes |= {
        key: value
        for key, value in {
            "transfer_number": transfer_number,
            "caller_id": caller_id,
            "window": window,
        }.items()
        if value is not None
    }
    if not changes:
        raise InvalidInputError(
            "nothing to update: give --transfer-number, --caller-id, --window, "
            "--max-per-day, --max-per-week or --healthcare-exemption"
        )
    with unit_of_work() as session:
        changed = clinics.update_clinic(
            session, clinics.get_clinic(session, name), changes, actor=actor()
        )
    if as_json:
        emit_json(changed)
        return
    if not changed:
        out.print(inert(f"clinic {name!r}: nothing changed"))
    for key, change in changed.items():
        out.print(inert(f"{key}: {change['before']} -> {change['after']}"))


@clinic_app.command("list")
def clinic_list(as_json: JsonFlag = False) -> None:
    """List clinics."""
    with unit_of_work() as session:
        rows = [clinics.describe(c) for c in clinics.list_clinics(session)]
    if as_json:
        emit_json(rows)
        return
    print_table(
        {
            "name": "name",
            "timezone": "timezone",
            "window": "window",
            "days": "days",
            "lead days": "lead_days",
            "max attempts": "max_attempts",
            "paused": "paused_reason",
        },
        rows,
    )


@clinic_app.command("show")
def clinic_show(name: str, as_json: JsonFlag = False) -> None:
    """Show one clinic's settings."""
    with unit_of_work() as session:
        described = clinics.describe(clinics.get_clinic(session, name))
    if as_json:
        emit_json(described)
        return
    print_table(
        {"setting": "setting", "value": "value"},
        [{"setting": key, "value": value} for key, value in described.items()],
        show_header=False,
    )


@clinic_app.command("resume")
def clinic_resume(name: str) -> None:
    """Resume calling for a clinic paused by a configuration error."""
    with unit_of_work() as session:
        resumed = dial.resume_clinic(session, clinics.get_clinic(session, name), actor=actor())
    err.print(inert(f"clinic {name!r} {'resumed' if resumed else 'was not paused'}"))


# --- import -----------------------------------------------------------------


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(dir_okay=False, help="CSV of appointments")],
    clinic: Annotated[str, typer.Option(help="Clinic name")],
    as_json: JsonFlag = False,
) -> None:
    """Import appointments; valid rows are committed together, invalid ones reported by line."""
    from campaigns.importer import import_appointments

    if not file.is_file():
        raise InvalidInputError(f"{file}: no such file")
    show_progress = sys.stdout.isatty() and not as_json
    with unit_of_work() as session, _import_progress(show_progress, file.name) as progress:
        found = clinics.get_clinic(session, clinic)
        report = import_appointments(
            session,
            found,
            file,
            filename=file.name,
            now=datetime.now(UTC),
            actor=actor(),
            progress=progress,
        )
        if report.usable_rows == 0:
            # Roll back: an unusable file leaves no trace but its report.
            session.rollback()
    document = report.to_json()
    if as_json:
        emit_json(document)
    else:
        out.print(
            inert(
                f"{file.name}: {report.imported} imported, {report.updated} updated, "
                f"{report.unchanged} unchanged, {len(report.rejected_lines)} rows rejected"
            )
        )
        for rejection in report.rejected[:50]:
            out.print(inert(f"  line {rejection.line}, {rejection.column}: {rejection.reason}"))
        if len(report.rejected) > 50:
            out.print(f"  ... and {len(report.rejected) - 50} more (use --json for all)")
    if report.usable_rows == 0:
        _fail(f"{file.name} has no usable row; nothing was imported")


@contextmanager
def _import_progress(enabled: bool, name: str) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed} rows"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"importing {name}", total=None)
        yield lambda rows: bar.update(task, completed=rows)


# --- explain ----------------------------------------------------------------


@app.command("explain")
def explain(
    clinic: Annotated[str, typer.Option(help="Clinic name")],
    appointment: Annotated[str, typer.Option(help="The clinic's appointment id")],
    at: Annotated[
        str | None, typer.Option(help="ISO 8601 instant with offset (default now)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Why this patient may or may not be called at that time, and when next."""
    now = parse_instant(at, "--at") if at else datetime.now(UTC)
    with unit_of_work() as session:
        found_clinic = clinics.get_clinic(session, clinic)
        found = compliance.find_appointment(session, found_clinic, appointment)
        number = compliance.next_attempt_number(session, found)
        decision = compliance.decide_for(session, found, found_clinic, number, now)
        document = {"appointment": appointment, "attempt_number": number, "at": now.isoformat()}
        document |= compliance.decision_document(decision)
    if as_json:
        emit_json(document)
        return
    verdict = "[green]may be called[/]" if decision.allowed else "[red]may not be called[/]"
    out.print(
        inert(f"appointment {appointment} (attempt {number}) "),
        verdict,
        inert(f" at {now.isoformat()}"),
        sep="",
    )
    for reason in decision.reasons:
        out.print(inert(f"  - {reason}"))
    for zone, local in decision.callee_local_times.items():
        sources = ", ".join(decision.zone_sources.get(zone, ()))
        out.print(inert(f"  callee local time in {zone} (from {sources}): {local}"))
    out.print(inert(f"  next allowed at: {document['next_allowed_at'] or 'never (see reasons)'}"))


# --- do-not-call ------------------------------------------------------------


def _clinic_id(session: Session, name: str | None) -> int | None:
    return clinics.get_clinic(session, name).id if name else None


def _dnc_scope(session: Session, phone: str, clinic: str | None) -> tuple[str, int | None]:
    """The number in E.164 (the clinic's country as default region) and the list's clinic."""
    if clinic is None:
        return to_e164(phone, "US"), None
    found = clinics.get_clinic(session, clinic)
    return to_e164(phone, found.country), found.id


@dnc_app.command("add")
def dnc_add(
    phone: str,
    clinic: Annotated[
        str | None, typer.Option(help="Only for this clinic (default: every clinic)")
    ] = None,
    reason: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Never call this number again (for one clinic or all)."""
    with unit_of_work() as session:
        number, clinic_id = _dnc_scope(session, phone, clinic)
        dnc.add(
            session,
            number,
            clinic_id=clinic_id,
            source=DncSource.INTERNAL,
            reason=reason,
            actor=actor(),
        )
    err.print(f"{mask_phone(number)} is on the do-not-call list")


@dnc_app.command("remove")
def dnc_remove(phone: str, clinic: Annotated[str | None, typer.Option()] = None) -> None:
    """Take a number off an internal list."""
    with unit_of_work() as session:
        number, clinic_id = _dnc_scope(session, phone, clinic)
        if not dnc.remove(session, number, clinic_id=clinic_id, actor=actor()):
            raise InvalidInputError(f"{mask_phone(number)} is not on that list")
    err.print(f"{mask_phone(number)} removed")


@dnc_app.command("list")
def dnc_list(
    clinic: Annotated[str | None, typer.Option()] = None, as_json: JsonFlag = False
) -> None:
    """Internal do-not-call entries (numbers shown in full: this list is for staff)."""
    with unit_of_work() as session:
        rows = [
            {
                "phone": e.phone_e164,
                "list": e.list_name,
                "source": e.source,
                "reason": e.reason,
                "added_by": e.added_by,
                "added_at": e.added_at.isoformat(),
            }
            for e in dnc.entries(session, clinic_id=_clinic_id(session, clinic))
        ]
    if as_json:
        emit_json(rows)
        return
    print_table(
        {
            "phone": "phone",
            "list": "list",
            "source": "source",
            "reason": "reason",
            "added by": "added_by",
            "added at": "added_at",
        },
        rows,
    )


@dnc_app.command("import")
def dnc_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    source: Annotated[
        str, typer.Option(help="national (registry snapshot) or internal")
    ] = "national",
    as_of: Annotated[
        str | None, typer.Option(help="Data date of the registry file (default today)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Load a registry flat file: one number per line, or areacode,number."""
    try:
        data_date = date.fromisoformat(as_of) if as_of else datetime.now(UTC).date()
    except ValueError as exc:
        raise InvalidInputError(f"--as-of: {as_of!r} is not YYYY-MM-DD") from exc
    try:
        with file.open(encoding="utf-8-sig") as lines, unit_of_work() as session:
            result = dnc.import_file(session, lines, source=source, as_of=data_date, actor=actor())
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{file.name} is not UTF-8 text") from exc
    document = {
        "list": result.list_name,
        "version": result.version,
        "entries": result.entries,
        "rejected_lines": list(result.rejected_lines),
    }
    if as_json:
        emit_json(document)
    else:
        out.print(
            f"{result.list_name}: {result.entries} numbers (version {result.version}), "
            f"{len(result.rejected_lines)} lines rejected"
        )


# --- audit ------------------------------------------------------------------


CheckpointOption = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="A file written by `audit checkpoint`: fail if the events it covers changed.",
    ),
]


def _read_checkpoint(path: Path) -> audit.Checkpoint:
    """The checkpoint in ``path``; an unreadable or malformed file is a usage error (exit 2)."""
    try:
        return audit.Checkpoint.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"--checkpoint: cannot read {path}: {getattr(exc, 'strerror', None) or exc}", 2)
    except audit.InvalidCheckpointError as exc:
        _fail(f"--checkpoint: {path} is not a checkpoint ({exc})", 2)


@audit_app.command("verify")
def audit_verify(checkpoint_file: CheckpointOption = None, as_json: JsonFlag = False) -> None:
    """Re-walk the keyed chain; exit 1 naming the first event that does not hold."""
    checkpoint = _read_checkpoint(checkpoint_file) if checkpoint_file else None
    with unit_of_work() as session:
        result = audit.verify(session, checkpoint)
    if as_json:
        emit_json(
            {
                "ok": result.ok,
                "events": result.events,
                "first_bad_seq": result.first_bad_seq,
                "problem": result.problem,
                "checkpoint": checkpoint.model_dump(mode="json") if checkpoint else None,
            }
        )
    if not result.ok:
        _fail(f"audit log broken at event {result.first_bad_seq}: {result.problem}")
    if not as_json:
        anchored = f"; checkpoint at event {checkpoint.seq} holds" if checkpoint else ""
        out.print(f"audit log intact: {result.events} events{anchored}")


@audit_app.command("checkpoint")
def audit_checkpoint(
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Write to this file (owner-only) instead of stdout."),
    ] = None,
) -> None:
    """Verify the log and print its head as {"seq", "hash", "at", "count"}; keep it elsewhere."""
    if out_file is None:
        with unit_of_work() as session:
            checkpoint = audit.take_checkpoint(session, actor=actor(), out="stdout")
        sys.stdout.write(checkpoint.model_dump_json() + "\n")
        return
    if out_file.is_dir():
        raise InvalidInputError(f"--out: {out_file} is a directory")
    # Staged (mkstemp: owner-only) before the checkpoint is recorded, so a bad path leaves
    # no event behind, then moved into place: a failure never clobbers the last checkpoint.
    try:
        descriptor, staged = tempfile.mkstemp(dir=out_file.parent, prefix=f".{out_file.name}.")
    except OSError as exc:
        raise InvalidInputError(f"--out: cannot write {out_file}: {exc.strerror}") from exc
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as staging:
            with unit_of_work() as session:
                checkpoint = audit.take_checkpoint(session, actor=actor(), out=str(out_file))
            staging.write(checkpoint.model_dump_json() + "\n")
        os.replace(staged, out_file)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    err.print(f"checkpoint at event {checkpoint.seq} written to {out_file}", markup=False)


@audit_app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option(help="ISO 8601 time with offset")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "jsonl",
) -> None:
    """Write the audit log to stdout; the export itself is audited."""
    writers: dict[str, Callable[..., Iterator[str]]] = {
        "csv": audit.export_csv,
        "jsonl": audit.export_jsonl,
    }
    if fmt not in writers:
        raise InvalidInputError("--format must be csv or jsonl")
    start = parse_instant(since, "--since") if since else None
    exported = 0
    complete = False

    def counted(events: Iterator[Any]) -> Iterator[Any]:
        nonlocal exported
        for event in events:
            exported += 1
            yield event

    try:
        with unit_of_work() as session:
            for chunk in writers[fmt](counted(audit.iter_events(session, start))):
                sys.stdout.write(chunk)
        complete = True
    finally:
        # Its own transaction: an export cut short (a closed pipe) still left data.
        if complete or exported:
            with unit_of_work() as session:
                audit.record_export(
                    session, actor=actor(), fmt=fmt, since=start, count=exported, complete=complete
                )


# --- pipeline ---------------------------------------------------------------


@app.command("run-daily")
def run_daily(
    clinic: Annotated[str | None, typer.Option(help="One clinic (default: all)")] = None,
    run_date: Annotated[
        str | None, typer.Option("--date", help="Clinic-local run date YYYY-MM-DD (default today)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create first call attempts for appointments lead-days ahead; running twice adds nothing."""
    try:
        day = date.fromisoformat(run_date) if run_date else None
    except ValueError as exc:
        raise InvalidInputError(f"--date: {run_date!r} is not YYYY-MM-DD") from exc
    now = datetime.now(UTC)
    results = []
    with unit_of_work() as session:
        targets = [clinics.get_clinic(session, clinic)] if clinic else clinics.list_clinics(session)
        for target in targets:
            local_day = day or now.astimezone(ZoneInfo(target.timezone)).date()
            results.append(daily.run_daily(session, target, local_day, now, actor=actor()))
    documents = [
        {
            "clinic": r.clinic,
            "date": r.run_date.isoformat(),
            "created": r.created,
            "skipped": r.skipped,
            "appointments_considered": r.appointments_considered,
        }
        for r in results
    ]
    if as_json:
        emit_json(documents)
        return
    for d in documents:
        out.print(
            inert(
                f"{d['clinic']} {d['date']}: {d['created']} calls scheduled, "
                f"{d['skipped']} not callable"
            )
        )


@app.command("status")
def status(clinic: Annotated[str | None, typer.Option()] = None, as_json: JsonFlag = False) -> None:
    """Appointments, call attempts by state, and outcomes."""
    with unit_of_work() as session:
        clinic_id = _clinic_id(session, clinic)
        counts = status_counts(session, clinic_id)
    if as_json:
        emit_json(counts)
        return
    out.print(f"appointments: {counts['appointments']}   retries: {counts['retries']}")
    print_table(
        {"attempt state": "state", "count": "count"},
        [{"state": k, "count": v} for k, v in counts["attempts"].items()],
    )
    print_table(
        {"outcome": "outcome", "count": "count"},
        [{"outcome": k, "count": v} for k, v in counts["outcomes"].items()],
    )


def _refuse_insecure_secrets() -> None:
    """Every process that acts on real data calls this first: one line and exit 2 on failure."""
    try:
        require_secrets(get_settings())
    except InsecureSecretError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None


@app.command("worker")
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Calls in flight (threads)")] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Start a Celery worker that places calls."""
    _refuse_insecure_secrets()
    from workers.celery_app import app as celery_app
    from workers.runtime import SoleWorkerError, claim_sole_worker

    settings = get_settings()
    try:
        claim_sole_worker(settings)
    except SoleWorkerError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    celery_app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command("beat")
def beat(loglevel: Annotated[str, typer.Option()] = "INFO") -> None:
    """Start the scheduler: the tick, reconciliation and daily runs (run one)."""
    _refuse_insecure_secrets()
    from workers.celery_app import app as celery_app

    schedule = DATA_DIR / "beat-schedule"
    schedule.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    celery_app.start(["beat", f"--schedule={schedule}", f"--loglevel={loglevel}"])


@app.command("simulator")
def simulator(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 7880,
    speed: Annotated[float, typer.Option(help="Divide every simulated duration by this")] = 1.0,
    scenario: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
    trunk: Annotated[
        str | None, typer.Option(help="Pre-create an outbound trunk with this id")
    ] = None,
    no_report: Annotated[
        bool, typer.Option(help="Do not send agent reports to the engine")
    ] = False,
) -> None:
    """Serve the LiveKit simulator (Twirp API; scripted callees talk to the real agent)."""
    from simulator.server import run

    settings = get_settings()
    if speed <= 0:
        raise InvalidInputError("--speed must be positive")
    run(
        host,
        port,
        speed,
        str(scenario) if scenario else None,
        trunk=trunk,
        no_report=no_report,
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret.get_secret_value(),
        broker_url=settings.broker_url,
    )


# --- trunks -----------------------------------------------------------------


TRUNK_PASSWORD_VARIABLE = "CAMPAIGNS_TRUNK_AUTH_PASSWORD"  # noqa: S105 - a variable name


def _trunk_password(
    username: str | None, password: str | None, password_file: Path | None
) -> str | None:
    """The SIP password: the command line, else the environment, else a hidden prompt.

    ``--auth-password-file`` keeps it out of the shell history and the process list.
    """
    if password_file is not None:
        if password is not None:
            raise InvalidInputError("give --auth-password or --auth-password-file, not both")
        try:
            password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"--auth-password-file: cannot read {password_file}") from exc
        if not password:
            raise InvalidInputError(f"--auth-password-file: {password_file} is empty")
    password = password or os.environ.get(TRUNK_PASSWORD_VARIABLE) or None
    if username and password is None:
        # On stderr: with --json, stdout carries the JSON document only.
        password = typer.prompt(f"SIP password for {username}", hide_input=True, err=True)
    return password


@trunk_app.command("create")
def trunk_create(
    name: Annotated[str, typer.Option()],
    address: Annotated[str, typer.Option(help="Carrier SIP host")],
    numbers: Annotated[str, typer.Option(help="Caller-ID numbers, E.164, comma separated")],
    auth_username: Annotated[str | None, typer.Option()] = None,
    auth_password: Annotated[
        str | None,
        typer.Option(
            help="Seen by other users of this machine: prefer --auth-password-file, "
            f"${TRUNK_PASSWORD_VARIABLE} or the prompt"
        ),
    ] = None,
    auth_password_file: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Read the SIP password from this file")
    ] = None,
    destination_country: Annotated[str | None, typer.Option(help="Region pinning, e.g. US")] = None,
    cps: Annotated[float, typer.Option(help="Calls started per second at most")] = 1.0,
    max_concurrent: Annotated[int, typer.Option(help="Calls in progress at most")] = 10,
    as_json: JsonFlag = False,
) -> None:
    """Create a LiveKit SIP outbound trunk and store its calling limits.

    The password is never printed or logged."""
    from campaigns import trunks
    from campaigns.livekit_gateway import LiveKitTelephony

    password = _trunk_password(auth_username, auth_password, auth_password_file)
    spec = trunks.trunk_spec(name, address, numbers, auth_username, password, destination_country)
    trunks.check_limits(cps, max_concurrent)

    async def create() -> str:
        async with LiveKitTelephony.from_settings(get_settings()) as telephony:
            return await telephony.create_outbound_trunk(spec)

    trunk_id = asyncio.run(create())
    with unit_of_work() as session:
        trunks.save_limits(session, trunk_id, spec, cps, max_concurrent, actor=actor())
    if as_json:
        emit_json({"sip_trunk_id": trunk_id})
    else:
        out.print(f"trunk created: {trunk_id}")


@trunk_app.command("list")
def trunk_list(as_json: JsonFlag = False) -> None:
    """Outbound trunks at LiveKit, with the engine's limits for each."""
    from campaigns import trunks
    from campaigns.livekit_gateway import LiveKitTelephony

    async def listing() -> list[Any]:
        async with LiveKitTelephony.from_settings(get_settings()) as telephony:
            return await telephony.list_outbound_trunks()

    found = asyncio.run(listing())
    with unit_of_work() as session:
        rows = trunks.describe(session, found)
    if as_json:
        emit_json(rows)
        return
    print_table(
        {
            "sip_trunk_id": "sip_trunk_id",
            "name": "name",
            "address": "address",
            "numbers": "numbers",
            "cps": "cps",
            "max concurrent": "max_concurrent",
        },
        [row | {"numbers": ",".join(row["numbers"])} for row in rows],
    )


# --- agent ------------------------------------------------------------------

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _agent_cli(command: str, ctx: typer.Context) -> None:
    from agent.worker import run

    run(command, list(ctx.args))


@agent_app.command("start", context_settings=_PASS_THROUGH, add_help_option=False)
def agent_start(ctx: typer.Context) -> None:
    """Run the agent worker in production mode (the framework's `start`)."""
    _agent_cli("start", ctx)


@agent_app.command("dev", context_settings=_PASS_THROUGH, add_help_option=False)
def agent_dev(ctx: typer.Context) -> None:
    """Run the agent worker with reload and debug logs (the framework's `dev`)."""
    _agent_cli("dev", ctx)


@agent_app.command("console", context_settings=_PASS_THROUGH, add_help_option=False)
def agent_console(ctx: typer.Context) -> None:
    """Talk to the agent in the terminal (the framework's `console`)."""
    _agent_cli("console", ctx)


@agent_app.command("rehearse")
def agent_rehearse(
    script: Annotated[Path, typer.Option(dir_okay=False, help="Rehearsal script (JSON)")],
    metadata: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Job metadata (JSON) to rehearse with")
    ] = None,
    clinic: Annotated[str | None, typer.Option(help="Clinic name (with --appointment)")] = None,
    appointment: Annotated[
        str | None, typer.Option(help="The clinic's appointment id: its next call's metadata")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the real agent offline on a scripted call; nothing is dialed, reported or stored."""
    from agent.metadata import MetadataError, parse_metadata
    from agent.rehearsal import Script, ScriptError, rehearse

    if (metadata is None) == (clinic is None or appointment is None) or (
        metadata is not None and (clinic or appointment)
    ):
        _usage_error("give either --metadata FILE or --clinic C --appointment ID")
    try:
        rehearsal_script = Script.load(script)
        if metadata is not None:
            try:
                raw = metadata.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise MetadataError(f"cannot read metadata {metadata}: {exc}", None, None) from None
            meta = parse_metadata(raw)
        else:
            assert clinic is not None and appointment is not None
            meta = parse_metadata(_next_call_metadata(clinic, appointment))
    except (ScriptError, MetadataError) as exc:
        _usage_error(str(exc))
    result = asyncio.run(rehearse(meta, rehearsal_script))
    if as_json:
        emit_json(result.to_json())
        return
    for line in result.transcript:
        out.print(f"{line['role']:>6}: {line['text']}", markup=False, highlight=False)
    for call in result.tool_calls:
        out.print(f"  tool: {call['name']} {json.dumps(call['args'])}", markup=False)
    for report in result.reports:
        out.print(f"report: {report.outcome} {json.dumps(report.detail)}", markup=False)
    ending = (
        f"transferred to {result.transferred_to}"
        if result.transferred_to
        else ("hung up" if result.hung_up else "call still open at the end of the script")
    )
    out.print(ending, markup=False)


def _usage_error(message: str) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False)
    raise typer.Exit(2)


def _next_call_metadata(clinic: str, appointment: str) -> dict[str, Any]:
    """The metadata the engine would dispatch for the appointment's next call; read only."""
    settings = get_settings()
    with unit_of_work() as session:
        found_clinic = clinics.get_clinic(session, clinic)
        found = compliance.find_appointment(session, found_clinic, appointment)
        attempt_id = next_attempt_id(session, found)
        longest_call = (
            settings.ringing_timeout_seconds
            + settings.max_call_duration_seconds
            + settings.report_grace_seconds
        )
        document = agent_metadata(
            attempt_id,
            f"appt-{attempt_id}-rehearsal",
            f"callee-{attempt_id}-rehearsal",
            datetime.now(UTC) + timedelta(seconds=longest_call),
            found,
            found_clinic,
            settings.report_secret.get_secret_value(),
            settings.agent_script_version,
        )
        session.rollback()
    return document


@app.command("demo")
def demo(speed: Annotated[float, typer.Option(help="Simulated call speed-up")] = 10.0) -> None:
    """Run a whole campaign on the embedded default against the LiveKit simulator."""
    from demo.runner import run_demo

    raise typer.Exit(run_demo(out, speed=speed))


# Files this process creates (SQLite database and broker, beat's schedule, logs,
# exports) are readable by their owner only: they hold patient data.
OWNER_ONLY_UMASK = 0o077


def main() -> None:
    os.umask(OWNER_ONLY_UMASK)
    app()
