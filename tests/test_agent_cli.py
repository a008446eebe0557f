"""``campaigns clinic update`` and ``campaigns agent rehearse``: contracts of the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import col, select
from typer.testing import Result

from campaigns.models import AuditEvent, CallAttempt
from campaigns.tokens import TokenCheck, check_report_token
from tests.agent_helpers import call_metadata
from tests.test_cli import (
    CLINIC,
    SQLITE_ONLY,
    add_clinic_cli,
    add_patient,
    assert_one_line_error,
    cli,
    cli_json,
    database,
)

CONFIRM_SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "rehearse-confirm.json"


# --------------------------------------------------------------------------- clinic update


@SQLITE_ONLY
def test_clinic_update_changes_settings_and_audits_before_and_after(app_env: str) -> None:
    add_clinic_cli("--caller-id", "+12125550199", "--transfer-number", "(212) 555-0111")
    assert cli_json("clinic", "show", CLINIC)["transfer_number"] == "+12125550111"

    changed = cli_json(
        "clinic", "update", CLINIC, "--transfer-number", "212-555-0122", "--window", "10:00-17:00"
    )

    assert changed == {
        "transfer_number": {"before": "+12125550111", "after": "+12125550122"},
        "window": {"before": "09:00-19:00", "after": "10:00-17:00"},
    }
    shown = cli_json("clinic", "show", CLINIC)
    assert (shown["transfer_number"], shown["window"], shown["caller_id"]) == (
        "+12125550122",
        "10:00-17:00",
        "+12125550199",
    )
    with database(app_env) as session:
        [payload] = session.execute(
            select(AuditEvent.payload).where(col(AuditEvent.kind) == "clinic.updated")
        ).scalars()
    recorded = json.loads(payload)
    assert recorded["before"] == {key: change["before"] for key, change in changed.items()}
    assert recorded["after"] == {key: change["after"] for key, change in changed.items()}
    assert cli_json("audit", "verify")["ok"] is True


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--window", "19:00-09:00"], "window"),
        (["--transfer-number", "12"], "transfer_number"),
        (["--caller-id", "not a number"], "caller_id"),
        ([], "nothing to update"),
    ],
)
def test_a_bad_clinic_update_is_one_line_and_changes_nothing(
    app_env: str, args: list[str], fragment: str
) -> None:
    before = add_clinic_cli()

    assert_one_line_error(cli("clinic", "update", CLINIC, *args), fragment)

    assert cli_json("clinic", "show", CLINIC) == before


@SQLITE_ONLY
def test_an_update_to_the_same_values_records_nothing(app_env: str) -> None:
    add_clinic_cli("--window", "10:00-17:00")
    assert cli_json("clinic", "update", CLINIC, "--window", "10:00-17:00") == {}
    with database(app_env) as session:
        kinds = session.execute(select(AuditEvent.kind)).scalars().all()
    assert "clinic.updated" not in kinds


# --------------------------------------------------------------------------- rehearse


def write(tmp_path: Path, name: str, document: Any) -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def rehearse(*args: str) -> Result:
    return cli("agent", "rehearse", *args)


def test_rehearse_prints_the_conversation_as_json(tmp_path: Path) -> None:
    metadata = write(tmp_path, "metadata.json", call_metadata(42))

    result = rehearse("--metadata", str(metadata), "--script", str(CONFIRM_SCRIPT), "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == {"transcript", "tool_calls", "reports", "hung_up", "transferred_to"}
    assert document["transcript"][0]["role"] == "agent"
    assert "Lakeside Clinic" in document["transcript"][0]["text"]
    assert document["transcript"][1] == {"role": "callee", "text": "Yes, this is she."}
    assert {line["role"] for line in document["transcript"]} == {"agent", "callee"}
    assert document["tool_calls"] == [
        {"name": "identity_confirmed", "args": {}},
        {"name": "confirm_appointment", "args": {}},
    ]
    [report] = document["reports"]
    assert set(report) == {"attempt_id", "outcome", "token", "detail"}
    assert (report["attempt_id"], report["outcome"]) == (42, "confirmed")
    assert (document["hung_up"], document["transferred_to"]) == (True, None)


def test_rehearse_a_transfer(tmp_path: Path) -> None:
    metadata = write(tmp_path, "metadata.json", call_metadata(3))
    script = write(
        tmp_path,
        "script.json",
        {"turns": [{"callee": "Can I speak to a person?", "llm": [{"tool": "transfer_to_staff"}]}]},
    )

    document = json.loads(
        rehearse("--metadata", str(metadata), "--script", str(script), "--json").stdout
    )

    assert document["transferred_to"] == "+12125550111"
    assert document["hung_up"] is False
    assert [r["outcome"] for r in document["reports"]] == ["transferred"]


@pytest.mark.parametrize(
    ("script", "metadata", "fragment"),
    [
        ("{not json", call_metadata(), "cannot read script"),
        ({"turns": [{"llm": []}]}, call_metadata(), "turn 1: needs a 'callee' line"),
        ({"turns": [], "amd": "robot"}, call_metadata(), "amd must be one of"),
        ({"turns": [{"callee": "hi", "llm": [{"sing": "x"}]}]}, call_metadata(), "llm entry"),
        ({"turns": []}, "[]", "not a JSON object"),
        ({"turns": []}, call_metadata(clinic_name=""), "clinic_name"),
    ],
)
def test_a_bad_script_or_metadata_is_one_line_and_exit_2(
    tmp_path: Path, script: Any, metadata: Any, fragment: str
) -> None:
    result = rehearse(
        "--metadata",
        str(write(tmp_path, "metadata.json", metadata)),
        "--script",
        str(write(tmp_path, "script.json", script)),
    )

    assert result.exit_code == 2
    assert "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and fragment in line


def test_rehearse_needs_metadata_or_an_appointment(tmp_path: Path) -> None:
    result = rehearse("--script", str(CONFIRM_SCRIPT))
    assert result.exit_code == 2
    assert "--metadata FILE or --clinic C --appointment ID" in result.stderr


@SQLITE_ONLY
def test_rehearse_an_appointment_uses_what_the_engine_would_dispatch_and_stores_nothing(
    app_env: str,
) -> None:
    add_clinic_cli("--caller-id", "+12125550199", "--transfer-number", "+12125550111")
    thursday = datetime(2030, 5, 16, 15, 0, tzinfo=UTC)  # 11:00 EDT
    add_patient(app_env, "A-7", provider="Dr. Who", starts_at=thursday)
    cli_json("run-daily", "--clinic", CLINIC, "--date", "2030-05-15")
    with database(app_env) as session:
        events = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
        [attempt_id] = session.execute(select(CallAttempt.id)).scalars()

    document = cli_json(
        "agent",
        "rehearse",
        "--clinic",
        CLINIC,
        "--appointment",
        "A-7",
        "--script",
        str(CONFIRM_SCRIPT),
    )

    opening, details = document["transcript"][0]["text"], document["transcript"][2]["text"]
    assert "Ada" in opening and "Lovelace" not in opening
    assert "Thursday, May 16 at 11:00 AM EDT with Dr. Who" in details
    [report] = document["reports"]
    assert report["attempt_id"] == attempt_id
    room, now = f"appt-{attempt_id}-rehearsal", datetime.now(UTC)
    check = check_report_token(report["token"], attempt_id, room, now, "change-me-report-secret")
    assert check is TokenCheck.VALID
    with database(app_env) as session:
        assert session.execute(select(func.count()).select_from(AuditEvent)).scalar_one() == events
        [state] = session.execute(select(CallAttempt.state)).scalars()
    assert state == "scheduled"


def test_agent_start_without_a_livekit_server_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LIVEKIT_URL", raising=False)
    assert_one_line_error(cli("agent", "start"), "set LIVEKIT_URL")
