"""The ``campaigns`` command line: its JSON documents, exit codes and one-line errors.

Most tests exercise the adapter (parsing, output, errors) on SQLite only; those whose
behaviour rests on the database (audit tampering, run-daily, status) run on both.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from campaigns import audit
from campaigns.cli.common import actor
from campaigns.db import get_engine
from campaigns.models import Appointment, AttemptState, AuditEvent, CallAttempt, Clinic
from campaigns.settings import get_settings
from campaigns.telephony.outcomes import Outcome
from tests.factories import lift_append_only_guard
from tests.service.cli_helpers import (
    CLINIC,
    SQLITE_ONLY,
    add_clinic_cli,
    add_patient,
    assert_one_line_error,
    cli,
    cli_json,
    database,
    stored_appointments,
)

# --------------------------------------------------------------------------- clinics


@SQLITE_ONLY
def test_clinic_add_list_and_show_print_the_same_document(app_env: str) -> None:
    added = add_clinic_cli(
        "--window",
        "10:00-18:00",
        "--days",
        "mon,wed,fri",
        "--caller-id",
        "(212) 555-0199",
        "--trunk",
        "ST_abc",
        "--lead-days",
        "2,1",
        "--max-attempts",
        "3",
    )

    assert added["name"] == CLINIC
    assert added["timezone"] == "America/New_York"
    assert added["window"] == "10:00-18:00"
    assert added["days"] == "mon,wed,fri"
    assert added["caller_id"] == "+12125550199"
    assert added["lead_days"] == "1,2"
    assert (added["trunk_id"], added["max_attempts"], added["paused_reason"]) == ("ST_abc", 3, None)
    assert cli_json("clinic", "show", CLINIC) == added
    assert cli_json("clinic", "list") == [added]
    human = cli("clinic", "list")
    assert human.exit_code == 0 and CLINIC in human.stdout


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["clinic", "add", "X", "--timezone", "Mars/Olympus_Mons"], "unknown IANA timezone"),
        (["clinic", "add", "X", "--timezone", "UTC", "--window", "19:00-09:00"], "window"),
        (["clinic", "add", "X", "--timezone", "UTC", "--lead-days", "soon"], "lead days"),
        (["clinic", "add", "X", "--timezone", "UTC", "--caller-id", "12"], "caller_id"),
        (["clinic", "show", "Nowhere"], "no clinic named 'Nowhere'"),
        (["clinic", "add", CLINIC, "--timezone", "UTC"], "already exists"),
    ],
)
def test_bad_clinic_input_is_one_line_and_stores_nothing(
    app_env: str, args: list[str], fragment: str
) -> None:
    add_clinic_cli()

    assert_one_line_error(cli(*args), fragment)

    assert [c["name"] for c in cli_json("clinic", "list")] == [CLINIC]


@SQLITE_ONLY
def test_clinic_resume_clears_a_pause(app_env: str) -> None:
    add_clinic_cli()
    with database(app_env) as session:
        clinic = session.execute(select(Clinic)).scalar_one()
        clinic.paused_reason = "telephony configuration: unknown trunk"

    resumed = cli("clinic", "resume", CLINIC)

    assert resumed.exit_code == 0 and "resumed" in resumed.stderr
    assert cli_json("clinic", "show", CLINIC)["paused_reason"] is None
    again = cli("clinic", "resume", CLINIC)
    assert again.exit_code == 0 and "was not paused" in again.stderr


# --------------------------------------------------------------------------- explain


@SQLITE_ONLY
def test_explain_json_says_when_the_patient_may_be_called(app_env: str) -> None:
    add_clinic_cli()
    add_patient(app_env)

    early = cli_json(
        "explain", "--clinic", CLINIC, "--appointment", "A-1", "--at", "2026-05-12T12:00:00Z"
    )
    on_time = cli_json(
        "explain", "--clinic", CLINIC, "--appointment", "A-1", "--at", "2026-05-12T11:00:00-04:00"
    )

    assert {"allowed", "reasons", "next_allowed_at", "callee_zones", "callee_local_times"} <= set(
        early
    )
    assert early["allowed"] is False
    assert any(r.startswith("outside_clinic_window") for r in early["reasons"])
    assert early["next_allowed_at"] == "2026-05-12T13:00:00Z"  # 09:00 in New York
    assert early["callee_zones"] == ["America/New_York"]
    assert early["callee_local_times"] == {"America/New_York": "2026-05-12T08:00:00-04:00"}
    assert on_time["allowed"] is True
    assert on_time["next_allowed_at"] == "2026-05-12T15:00:00Z"
    human = cli("explain", "--clinic", CLINIC, "--appointment", "A-1", "--at", "2026-05-12T12:00Z")
    assert human.exit_code == 0 and "may not be called" in human.stdout


@SQLITE_ONLY
def test_explain_json_names_the_signal_behind_each_zone(app_env: str) -> None:
    add_clinic_cli("--window", "08:00-21:00", "--days", "mon,tue,wed,thu,fri,sat,sun")
    add_patient(app_env, patient_timezone="Pacific/Kiritimati")

    late = cli_json(  # 23:30 in New York, 17:30 the next day in Kiritimati
        "explain", "--clinic", CLINIC, "--appointment", "A-1", "--at", "2026-05-12T23:30:00-04:00"
    )

    assert late["allowed"] is False
    assert late["zone_sources"] == {
        "Pacific/Kiritimati": ["stated_timezone"],
        "America/New_York": ["number"],
    }
    assert late["zone_source"] == "stated_timezone+number"
    assert set(late["callee_zones"]) == {"Pacific/Kiritimati", "America/New_York"}


@SQLITE_ONLY
def test_explain_for_a_dnc_listed_patient_never_allows_a_call(app_env: str) -> None:
    add_clinic_cli()
    add_patient(app_env)
    assert cli("dnc", "add", "212-555-0100", "--clinic", CLINIC).exit_code == 0

    document = cli_json(
        "explain", "--clinic", CLINIC, "--appointment", "A-1", "--at", "2026-05-12T15:00:00Z"
    )

    assert document["allowed"] is False
    assert document["next_allowed_at"] is None
    assert "dnc_listed: clinic" in document["reasons"]


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--at", "2026-05-12T15:00:00"], "needs a UTC offset"),
        (["--at", "next tuesday"], "not an ISO 8601 time"),
        (["--appointment", "NOPE"], "has no appointment 'NOPE'"),
    ],
)
def test_explain_rejects_bad_input_in_one_line(
    app_env: str, args: list[str], fragment: str
) -> None:
    add_clinic_cli()
    add_patient(app_env)
    base = {"--clinic": CLINIC, "--appointment": "A-1"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))

    result = cli("explain", *[part for pair in base.items() for part in pair])

    assert_one_line_error(result, fragment)


# --------------------------------------------------------------------------- do-not-call


@SQLITE_ONLY
def test_dnc_add_list_and_remove(app_env: str) -> None:
    add_clinic_cli()
    assert (
        cli("dnc", "add", "(212) 555-0100", "--clinic", CLINIC, "--reason", "asked").exit_code == 0
    )
    assert cli("dnc", "add", "+1 305 555 0101").exit_code == 0
    clinic_id = cli_json("clinic", "show", CLINIC)["id"]

    listed = cli_json("dnc", "list", "--clinic", CLINIC)
    assert {(e["phone"], e["list"]) for e in listed} == {
        ("+12125550100", f"clinic:{clinic_id}"),
        ("+13055550101", "global"),
    }
    assert next(e for e in listed if e["phone"] == "+12125550100")["reason"] == "asked"

    removed = cli("dnc", "remove", "212 555 0100", "--clinic", CLINIC)
    assert removed.exit_code == 0, removed.output
    assert [e["phone"] for e in cli_json("dnc", "list", "--clinic", CLINIC)] == ["+13055550101"]
    assert_one_line_error(
        cli("dnc", "remove", "212 555 0100", "--clinic", CLINIC), "not on that list"
    )
    assert_one_line_error(cli("dnc", "add", "12"))
    # Numbers are masked in messages meant for logs and terminals.
    assert "5550101" not in cli("dnc", "add", "+1 305 555 0101").stderr


@SQLITE_ONLY
def test_dnc_import_loads_a_national_registry_snapshot(app_env: str, tmp_path: Path) -> None:
    add_clinic_cli()
    add_patient(app_env)
    registry = tmp_path / "registry.txt"
    registry.write_text("2125550100\n305,5550101\nnot-a-number\n\n")

    document = cli_json(
        "dnc", "import", str(registry), "--source", "national", "--as-of", "2026-05-01"
    )

    assert document["list"] == "national"
    assert document["entries"] == 2
    assert document["rejected_lines"] == [3]
    explained = cli_json(
        "explain", "--clinic", CLINIC, "--appointment", "A-1", "--at", "2026-05-12T15:00:00Z"
    )
    assert "dnc_listed: national_registry" in explained["reasons"]
    assert explained["next_allowed_at"] is None
    # A snapshot replaces the previous one: the number may be called again.
    registry.write_text("3055550101\n")
    assert cli_json("dnc", "import", str(registry), "--as-of", "2026-05-02")["entries"] == 1
    explained = cli_json(
        "explain", "--clinic", CLINIC, "--appointment", "A-1", "--at", "2026-05-12T15:00:00Z"
    )
    assert explained["allowed"] is True
    assert_one_line_error(cli("dnc", "import", str(registry), "--as-of", "May 1st"), "--as-of")


# --------------------------------------------------------------------------- audit


def test_audit_verify_names_the_tampered_event(app_env: str) -> None:
    add_clinic_cli()
    assert cli("dnc", "add", "+1 305 555 0101").exit_code == 0
    verified = cli_json("audit", "verify")
    assert (verified["ok"], verified["chain"], verified["first_bad_seq"]) == (True, None, None)
    assert verified["events"] >= 2 and verified["chains"] == 2  # the clinic's and chain 0
    with database(app_env) as session:
        clinic_id = session.execute(text("SELECT id FROM clinic")).scalar_one()
        lift_append_only_guard(session)
        session.execute(
            text("UPDATE audit_event SET actor = 'mallory' WHERE chain = :chain AND seq = 1"),
            {"chain": clinic_id},
        )

    result = cli("audit", "verify")

    line = assert_one_line_error(
        result, f"audit log broken at event 1 of clinic {clinic_id}'s chain"
    )
    assert "altered" in line
    broken = json.loads(cli("audit", "verify", "--json").stdout)
    assert (broken["ok"], broken["chain"], broken["first_bad_seq"]) == (False, clinic_id, 1)


@SQLITE_ONLY
def test_audit_export_csv_neutralises_formula_cells(app_env: str) -> None:
    with database(app_env) as session:
        audit.record(session, '=HYPERLINK("http://evil")', {"n": 1}, actor="@SUM(A1)")
        audit.record(session, "plain.event", {"n": 2}, actor="tester")

    result = cli("audit", "export", "--format", "csv")

    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["seq"] for r in rows] == ["1", "2"]
    assert rows[0]["kind"] == '\'=HYPERLINK("http://evil")'
    assert rows[0]["actor"] == "'@SUM(A1)"
    assert (rows[1]["kind"], rows[1]["actor"]) == ("plain.event", "tester")
    assert_one_line_error(cli("audit", "export", "--format", "xml"), "--format")
    assert_one_line_error(cli("audit", "export", "--since", "2026-05-01"), "needs a UTC offset")


def _audit_events(url: str, kind: str) -> list[AuditEvent]:
    with database(url) as session:
        query = select(AuditEvent).where(col(AuditEvent.kind) == kind).order_by(col(AuditEvent.id))
        return list(session.execute(query).scalars())


def test_audit_checkpoint_anchors_the_log_until_events_are_removed(
    app_env: str, tmp_path: Path
) -> None:
    add_clinic_cli()
    anchor = tmp_path / "checkpoint.json"

    taken = cli("audit", "checkpoint", "--out", str(anchor))

    assert taken.exit_code == 0, taken.output
    assert anchor.stat().st_mode & 0o777 == 0o600
    checkpoint = json.loads(anchor.read_text())
    assert list(checkpoint) == ["seq", "hash", "at", "count"]
    assert (checkpoint["seq"], checkpoint["count"]) == (1, 2)  # chain 0's first; and the clinic's
    [event] = _audit_events(app_env, "audit.checkpoint")
    assert (event.chain, event.seq, event.actor, event.hash) == (0, 1, actor(), checkpoint["hash"])

    assert cli("dnc", "add", "+1 305 555 0101").exit_code == 0  # the log grows: still fine
    verified = cli_json("audit", "verify", "--checkpoint", str(anchor))
    assert (verified["ok"], verified["events"], verified["first_bad_seq"]) == (True, 3, None)
    assert verified["checkpoint"] == checkpoint

    with database(app_env) as session:
        clinic_id = session.execute(text("SELECT id FROM clinic")).scalar_one()
        lift_append_only_guard(session)
        session.execute(text("DELETE FROM audit_event WHERE chain = :c"), {"c": clinic_id})
    assert cli("audit", "verify").exit_code == 0  # what is left still chains
    result = cli("audit", "verify", "--checkpoint", str(anchor))
    line = assert_one_line_error(
        result, f"audit log broken at event 1 of clinic {clinic_id}'s chain", "event 1 is missing"
    )
    assert "truncated" in line


@SQLITE_ONLY
def test_a_refused_checkpoint_leaves_the_last_one_and_the_log_as_they_were(
    app_env: str, tmp_path: Path
) -> None:
    add_clinic_cli()
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    anchor = anchors / "checkpoint.json"
    assert cli("audit", "checkpoint", "--out", str(anchor)).exit_code == 0
    kept = anchor.read_text()

    nowhere = cli("audit", "checkpoint", "--out", str(tmp_path / "no-such-dir" / "c.json"))
    assert_one_line_error(nowhere, "--out: cannot write")
    assert len(_audit_events(app_env, "audit.checkpoint")) == 1

    with database(app_env) as session:
        lift_append_only_guard(session)
        session.execute(text("UPDATE audit_event SET actor = 'mallory' WHERE seq = 1"))
    broken = cli("audit", "checkpoint", "--out", str(anchor))

    assert_one_line_error(broken, "audit log broken at event 1", "no checkpoint taken")
    assert anchor.read_text() == kept
    assert [path.name for path in anchors.iterdir()] == ["checkpoint.json"]  # no staged file left
    assert len(_audit_events(app_env, "audit.checkpoint")) == 1


@SQLITE_ONLY
def test_audit_checkpoint_prints_to_stdout(app_env: str) -> None:
    add_clinic_cli()

    result = cli("audit", "checkpoint")

    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"seq", "hash", "at", "count"}


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("not json", "Invalid JSON"),
        ('{"seq": 1, "hash": "%s", "at": "2026-11-29T10:00:00+00:00"}' % ("0" * 64), "count"),
        (None, "cannot read"),
    ],
)
def test_a_malformed_checkpoint_file_is_a_one_line_usage_error(
    app_env: str, tmp_path: Path, content: str | None, fragment: str
) -> None:
    path = tmp_path / "checkpoint.json"
    if content is not None:
        path.write_text(content)

    result = cli("audit", "verify", "--checkpoint", str(path))

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: --checkpoint: ") and fragment in line


def test_audit_export_is_itself_audited(app_env: str) -> None:
    add_clinic_cli()
    assert cli("dnc", "add", "+1 305 555 0101").exit_code == 0

    exported = cli("audit", "export", "--since", "2020-01-01T00:00:00+00:00", "--format", "csv")

    assert exported.exit_code == 0, exported.output
    [event] = _audit_events(app_env, "audit.exported")
    assert event.actor == actor()
    assert json.loads(event.payload) == {
        "format": "csv",
        "since": "2020-01-01T00:00:00+00:00",
        "count": 2,
        "complete": True,
    }
    assert cli_json("audit", "verify")["events"] == 3


# --------------------------------------------------------------------------- run-daily, status


def test_run_daily_twice_creates_nothing_the_second_time(app_env: str) -> None:
    add_clinic_cli("--lead-days", "2", "--days", "mon,tue,wed,thu,fri,sat,sun")
    # A week ahead of the real clock (the command's "now"): always callable before the cut-off.
    run_date = datetime.now(ZoneInfo("America/New_York")).date() + timedelta(days=7)
    starts = datetime.combine(
        run_date + timedelta(days=2), time(14, 0), ZoneInfo("America/New_York")
    )
    add_patient(app_env, starts_at=starts)
    add_patient(app_env, "A-2", starts_at=starts + timedelta(days=1), phone_e164="+12125550101")
    args = ("run-daily", "--clinic", CLINIC, "--date", run_date.isoformat())

    first = cli_json(*args)
    second = cli_json(*args)

    assert first == [
        {
            "clinic": CLINIC,
            "date": run_date.isoformat(),
            "created": 1,
            "skipped": 0,
            "appointments_considered": 1,
        }
    ]
    assert (second[0]["created"], second[0]["skipped"]) == (0, 0)
    with database(app_env) as session:
        attempts = session.execute(select(col(CallAttempt.state), col(CallAttempt.run_date))).all()
    assert [tuple(a) for a in attempts] == [(AttemptState.SCHEDULED, run_date)]
    assert_one_line_error(cli("run-daily", "--date", "tomorrow"), "--date")


def test_status_json_has_every_state_and_outcome(app_env: str) -> None:
    add_clinic_cli()
    add_patient(app_env)

    document = cli_json("status")

    assert {"appointments", "attempts", "outcomes"} <= set(document)
    assert set(document["attempts"]) == {
        "scheduled",
        "queued",
        "dialing",
        "answered",
        "completed",
        "failed",
        "skipped",
    }
    assert set(document["outcomes"]) == {o.value for o in Outcome}
    assert document["appointments"] == 1
    assert set(document["attempts"].values()) == {0}
    assert_one_line_error(cli("status", "--clinic", "Nowhere"), "no clinic named")


# --------------------------------------------------------------------------- un-migrated database


@pytest.fixture
def empty_sqlite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    monkeypatch.setenv("CAMPAIGNS_DATABASE_URL", url)
    get_settings.cache_clear()
    get_engine.cache_clear()
    yield url
    get_engine.cache_clear()
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "args",
    [
        ["clinic", "list"],
        ["status", "--json"],
        ["audit", "verify"],
        ["clinic", "add", "X", "--timezone", "UTC"],
    ],
)
def test_an_unmigrated_database_asks_for_db_upgrade(empty_sqlite: str, args: list[str]) -> None:
    assert_one_line_error(cli(*args), "run `campaigns db upgrade`")


def test_db_upgrade_makes_an_empty_database_usable(empty_sqlite: str) -> None:
    upgraded = cli("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert cli_json("clinic", "list") == []
    assert cli("db", "upgrade").exit_code == 0  # idempotent


# --------------------------------------------------------------------------- import


def _future_day(days: int) -> date:
    return datetime.now(ZoneInfo("America/New_York")).date() + timedelta(days=days)


@SQLITE_ONLY
def test_import_reports_each_row_and_reimport_changes_nothing(app_env: str, tmp_path: Path) -> None:
    add_clinic_cli()
    day = _future_day(10)
    upload = tmp_path / "appointments.csv"
    upload.write_text(
        "Appointment ID,Patient Name,Phone,Start\n"
        f"A-1,Ada Lovelace,(212) 555-0100,{day} 10:30\n"
        f"A-2,Alan Turing,12,{day} 11:00\n"
        f"A-3,Grace Hopper,212-555-0102,{day} 11:30\n"
    )

    first = cli_json("import", str(upload), "--clinic", CLINIC)
    again = cli_json("import", str(upload), "--clinic", CLINIC)

    assert (first["imported"], first["updated"], first["unchanged"]) == (2, 0, 0)
    assert len(first["rejected"]) == 1
    rejection = first["rejected"][0]
    assert set(rejection) == {"line", "column", "reason"}
    assert rejection["line"] == 3
    assert "phone" in rejection["column"].lower()
    assert (again["imported"], again["updated"], again["unchanged"]) == (0, 0, 2)
    with database(app_env) as session:
        stored = session.execute(
            select(Appointment.external_id, Appointment.phone_e164, Appointment.starts_at).order_by(
                col(Appointment.external_id)
            )
        ).all()
    local = datetime.combine(day, time(10, 30), ZoneInfo("America/New_York"))
    assert [tuple(r) for r in stored] == [
        ("A-1", "+12125550100", local.astimezone(UTC)),
        ("A-3", "+12125550102", (local + timedelta(hours=1)).astimezone(UTC)),
    ]


@SQLITE_ONLY
def test_import_of_a_file_with_no_usable_row_fails_and_stores_nothing(
    app_env: str, tmp_path: Path
) -> None:
    add_clinic_cli()
    upload = tmp_path / "bad.csv"
    upload.write_text(
        f"Appointment ID,Patient Name,Phone,Start\nA-1,Ada Lovelace,12,{_future_day(10)} 10:30\n"
    )

    result = cli("import", str(upload), "--clinic", CLINIC, "--json")

    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "no usable row" in result.stderr
    assert json.loads(result.stdout)["rejected"][0]["line"] == 2
    assert stored_appointments(app_env) == 0


@SQLITE_ONLY
def test_import_without_a_required_column_is_a_one_line_error(app_env: str, tmp_path: Path) -> None:
    add_clinic_cli()
    upload = tmp_path / "no_phone.csv"
    upload.write_text(
        f"Appointment ID,Patient Name,Start\nA-1,Ada Lovelace,{_future_day(10)} 10:30\n"
    )

    line = assert_one_line_error(cli("import", str(upload), "--clinic", CLINIC, "--json"))

    assert "missing required column" in line and "phone" in line.lower()
    assert stored_appointments(app_env) == 0
    assert_one_line_error(
        cli("import", str(tmp_path / "absent.csv"), "--clinic", CLINIC), "no such file"
    )


def test_import_of_bad_cells_reports_each_and_never_an_unexpected_error(
    app_env: str, tmp_path: Path
) -> None:
    add_clinic_cli()
    day = _future_day(10)
    text = (
        "Appointment ID,Patient Name,Phone,Start\n"
        f"A-1,Ada Lovelace,(212) 555-0100,{day} 10:30\n"
        f"A-2,Alan\x00Turing,212-555-0101,{day} 11:00\n"
        f"A-3,Grace \u202eHopper,212-555-0102,{day} 11:30\n"
        f"A-4,Edsger Dijkstra,212-555-0103 x99,{day} 12:00\n"
        "A-5,Barbara Liskov,212-555-0104,9999-12-31 23:59\n"
        f"A-6,Donald Knuth,1-800-FLOWERS,{day} 12:30\n"
        f"A-7,Frances Allen,+1 876 555 0105,{day} 13:00\n"
    )
    upload = tmp_path / "appointments.csv"
    upload.write_bytes(text.encode())

    report = cli_json("import", str(upload), "--clinic", CLINIC)

    assert report["imported"] == 1
    assert [(r["line"], r["column"]) for r in report["rejected"]] == [
        (3, "Patient Name"),
        (4, "Patient Name"),
        (5, "Phone"),
        (6, "Start"),
        (7, "Phone"),
        (8, "Phone"),
    ]
    assert stored_appointments(app_env) == 1
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes(text.encode("utf-16-le"))
    assert_one_line_error(
        cli("import", str(utf16), "--clinic", CLINIC), "UTF-16-LE", "byte-order mark"
    )
    assert stored_appointments(app_env) == 1
