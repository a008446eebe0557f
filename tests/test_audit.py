"""The audit log: any change to a stored event is detected and named."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from campaigns import audit


def _write_events(session: Session, count: int = 5) -> None:
    for n in range(count):
        audit.record(
            session, "test.event", {"n": n, "note": f"event {n}"}, actor="tester", clinic_id=1
        )
    session.commit()


def _lift_append_only_guard(session: Session) -> None:
    # A tamperer with database access can drop the trigger; the chain must still tell.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only"))
    else:
        session.execute(text("DROP TRIGGER audit_event_no_update"))
        session.execute(text("DROP TRIGGER audit_event_no_delete"))


def test_an_untouched_log_verifies(session: Session) -> None:
    _write_events(session)
    result = audit.verify(session)
    assert result.ok and result.events == 5 and result.first_bad_seq is None


def test_the_database_refuses_edits_and_deletes(session: Session) -> None:
    _write_events(session, 2)
    with pytest.raises(DBAPIError, match="append-only"):
        session.execute(text("UPDATE audit_event SET actor = 'someone else'"))
    session.rollback()
    with pytest.raises(DBAPIError, match="append-only"):
        session.execute(text("DELETE FROM audit_event"))
    session.rollback()


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("payload", '{"n":2,"note":"edited"}'),
        ("actor", "mallory"),
        ("kind", "other.kind"),
        ("at", "2020-01-01 00:00:00"),
        ("clinic_id", "7"),
    ],
)
def test_editing_any_field_of_an_event_breaks_the_chain_there(
    session: Session, column: str, value: str
) -> None:
    _write_events(session)
    _lift_append_only_guard(session)
    session.execute(
        text(f"UPDATE audit_event SET {column} = :value WHERE seq = 3"), {"value": value}
    )
    session.commit()
    result = audit.verify(session)
    assert not result.ok
    assert result.first_bad_seq == 3
    assert "altered" in (result.problem or "")


def test_deleting_an_event_is_detected(session: Session) -> None:
    _write_events(session)
    _lift_append_only_guard(session)
    session.execute(text("DELETE FROM audit_event WHERE seq = 2"))
    session.commit()
    result = audit.verify(session)
    assert not result.ok and result.first_bad_seq == 3
    assert "removed" in (result.problem or "")


def test_rewriting_an_event_with_a_fresh_hash_is_still_detected(session: Session) -> None:
    _write_events(session)
    _lift_append_only_guard(session)
    session.execute(text("UPDATE audit_event SET hash = :h WHERE seq = 2"), {"h": "f" * 64})
    session.commit()
    result = audit.verify(session)
    assert not result.ok and result.first_bad_seq == 2


def test_csv_export_neutralises_formula_cells(session: Session) -> None:
    audit.record(session, '=HYPERLINK("http://x")', {"x": 1}, actor="+cmd", clinic_id=None)
    session.commit()
    rows = list(csv.DictReader(io.StringIO("".join(audit.export_csv(audit.iter_events(session))))))
    assert rows[0]["kind"].startswith("'=")
    assert rows[0]["actor"] == "'+cmd"


def test_jsonl_export_round_trips_payloads_and_honours_since(session: Session) -> None:
    old = datetime.now(UTC) - timedelta(days=3)
    audit.record(session, "old.event", {"n": 0}, actor="t", at=old)
    audit.record(session, "new.event", {"n": 1}, actor="t")
    session.commit()
    since = datetime.now(UTC) - timedelta(days=1)
    lines = "".join(audit.export_jsonl(audit.iter_events(session, since))).splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["new.event"]
    assert json.loads(lines[0])["payload"] == {"n": 1}


def test_an_event_rolled_back_with_a_savepoint_does_not_break_the_chain(session: Session) -> None:
    audit.record(session, "kept.before", {"n": 1}, actor="t")
    savepoint = session.begin_nested()
    audit.record(session, "rolled.back", {"n": 2}, actor="t")
    savepoint.rollback()
    audit.record(session, "kept.after", {"n": 3}, actor="t")
    session.commit()
    result = audit.verify(session)
    assert result.ok and result.events == 2


def test_several_transactions_of_one_session_keep_one_chain(session: Session) -> None:
    for n in range(3):
        audit.record(session, "one", {"n": n}, actor="t")
        audit.record(session, "two", {"n": n}, actor="t")
        session.commit()
    assert audit.verify(session).ok
