"""The audit log: any change to a stored event is detected and named.

Tamperers here have the database (they drop the append-only triggers and rewrite
rows at will) and, unless a test says so, not ``CAMPAIGNS_AUDIT_KEY``; what a
holder of the key could rewrite, a checkpoint kept elsewhere catches.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit, migrate
from campaigns.db import UTCDateTime, make_engine, session_factory
from campaigns.errors import CampaignError
from campaigns.models import AuditEvent
from campaigns.settings import get_settings
from harness.databases import scratch_postgres, scratch_sqlite
from tests.factories import lift_append_only_guard

Seal = Callable[[bytes], str]


def plain_sha256(material: bytes) -> str:
    return hashlib.sha256(material).hexdigest()


def wrong_key(material: bytes) -> str:
    return hmac.new(b"a key the tamperer made up", material, hashlib.sha256).hexdigest()


def the_real_key(material: bytes) -> str:
    return audit.chain_key().seal(material)


def _write_events(session: Session, count: int = 5) -> None:
    for n in range(count):
        audit.record(
            session, "test.event", {"n": n, "note": f"event {n}"}, actor="tester", clinic_id=1
        )
    session.commit()


def _rechain(session: Session, seal: Seal, *, from_seq: int = 1, renumber: bool = True) -> None:
    """Re-link every event from ``from_seq`` on to its predecessor, hashed with ``seal``.

    With ``renumber`` the events are numbered on from their predecessor, closing any gap.
    """
    lift_append_only_guard(session)
    rows = session.execute(select(AuditEvent).order_by(col(AuditEvent.seq))).scalars().all()
    prev_hash, prev_seq = audit.GENESIS_HASH, 0
    updates = []
    for event in rows:
        assert event.seq is not None
        if event.seq >= from_seq:
            seq = prev_seq + 1 if renumber else event.seq
            material = audit.event_material(
                seq,
                prev_hash,
                event.at,
                event.actor,
                event.kind,
                event.clinic_id,
                event.appointment_id,
                event.attempt_id,
                event.payload,
            )
            digest = seal(material)
            updates.append({"old": event.seq, "seq": seq, "prev": prev_hash, "hash": digest})
            prev_hash, prev_seq = digest, seq
        else:
            prev_hash, prev_seq = event.hash, event.seq
    for update in updates:
        session.execute(
            text(
                "UPDATE audit_event SET seq = :seq, prev_hash = :prev, hash = :hash "
                "WHERE seq = :old"
            ),
            update,
        )
    session.commit()
    session.expire_all()


def _tamper(session: Session, statement: str, **params: object) -> None:
    lift_append_only_guard(session)
    session.execute(text(statement), params)
    session.commit()
    session.expire_all()


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
    lift_append_only_guard(session)
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
    lift_append_only_guard(session)
    session.execute(text("DELETE FROM audit_event WHERE seq = 2"))
    session.commit()
    result = audit.verify(session)
    assert not result.ok and result.first_bad_seq == 3
    assert "removed" in (result.problem or "")


def test_rewriting_an_event_with_a_fresh_hash_is_still_detected(session: Session) -> None:
    _write_events(session)
    lift_append_only_guard(session)
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


def test_an_export_cut_short_is_audited_with_what_left(engine: sa.Engine) -> None:
    sessions = session_factory(engine)
    with sessions() as session:
        _write_events(session, count=3)
    chunks = audit.export("jsonl", since=None, actor="auditor", sessions=sessions)
    next(chunks)
    chunks.close()  # the reader went away after one event
    with sessions() as session:
        exported = session.execute(
            select(AuditEvent).where(col(AuditEvent.kind) == audit.EXPORT_KIND)
        ).scalar_one()
    assert exported.actor == "auditor"
    assert json.loads(exported.payload) == {
        "format": "jsonl",
        "since": None,
        "count": 1,
        "complete": False,
    }


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


def test_sessions_the_engine_did_not_open_get_no_audit_hooks(database_url: str) -> None:
    """Another library's session in the same process (Celery's broker transport
    opens its own) commits untouched: the audit log's hooks are the engine's only."""
    other_engine = make_engine(database_url)
    try:
        with Session(other_engine) as other:
            audit.record(other, "not.written", {"n": 1}, actor="t")
            other.commit()
        with session_factory(other_engine)() as own:
            assert own.execute(select(AuditEvent)).scalars().all() == []
            audit.record(own, "written", {"n": 2}, actor="t")
            own.commit()
            assert [e.kind for e in own.execute(select(AuditEvent)).scalars()] == ["written"]
    finally:
        other_engine.dispose()


# --------------------------------------------------------------------------- keyed chain


def test_a_log_re_chained_with_plain_sha256_after_a_deletion_fails(session: Session) -> None:
    _write_events(session)
    _tamper(session, "DELETE FROM audit_event WHERE seq = 3")
    _rechain(session, plain_sha256, from_seq=3)

    result = audit.verify(session)

    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "altered" in (result.problem or "")


def test_a_log_re_chained_with_a_wrong_key_after_a_deletion_fails(session: Session) -> None:
    _write_events(session)
    _tamper(session, "DELETE FROM audit_event WHERE seq = 3")
    _rechain(session, wrong_key, from_seq=3)

    result = audit.verify(session)

    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "altered" in (result.problem or "")


def test_a_log_re_chained_entirely_with_a_wrong_key_fails_at_its_first_event(
    session: Session,
) -> None:
    _write_events(session)
    _rechain(session, wrong_key)

    result = audit.verify(session)

    assert (result.ok, result.first_bad_seq) == (False, 1)


def test_a_log_chained_under_another_key_names_the_key(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_events(session, 2)
    written_with = audit.chain_key().id
    monkeypatch.setenv("CAMPAIGNS_AUDIT_KEY", "the operator's production key, not the dev one")
    get_settings.cache_clear()
    try:
        result = audit.verify(session)
    finally:
        get_settings.cache_clear()

    assert (result.ok, result.first_bad_seq) == (False, 1)
    assert f"chained with key id {written_with}" in (result.problem or "")


def test_a_gap_in_the_sequence_fails_even_when_the_chain_is_re_linked(session: Session) -> None:
    # Only a holder of the key can re-link the chain; the numbering still tells.
    _write_events(session)
    _tamper(session, "DELETE FROM audit_event WHERE seq = 3")
    _rechain(session, the_real_key, from_seq=3, renumber=False)

    result = audit.verify(session)

    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "event 3 is missing (the sequence jumps from 2 to 4)" in (result.problem or "")


def test_missing_first_events_are_named(session: Session) -> None:
    _write_events(session)
    _tamper(session, "DELETE FROM audit_event WHERE seq <= 2")
    _rechain(session, the_real_key, renumber=False)

    result = audit.verify(session)

    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "events 1-2 are missing (the log starts at 3)" in (result.problem or "")


def test_a_rolled_back_transaction_leaves_no_gap(session: Session) -> None:
    _write_events(session, 2)
    audit.record(session, "rolled.back", {"n": 1}, actor="t")
    audit.write_pending(session)  # inserted, as a commit would, then the commit fails
    session.rollback()
    _write_events(session, 2)

    result = audit.verify(session)

    assert result.ok and result.events == 4


# --------------------------------------------------------------------------- checkpoints


def _checkpoint(session: Session) -> audit.Checkpoint:
    checkpoint = audit.take_checkpoint(session, actor="cli:reviewer", out="stdout")
    session.commit()
    return checkpoint


def test_a_checkpoint_is_the_head_and_an_audited_event(session: Session) -> None:
    _write_events(session, 3)

    checkpoint = _checkpoint(session)

    assert (checkpoint.seq, checkpoint.count) == (4, 4)
    head = session.execute(select(AuditEvent).where(AuditEvent.seq == 4)).scalar_one()
    assert (head.kind, head.actor, head.hash) == (
        "audit.checkpoint",
        "cli:reviewer",
        checkpoint.hash,
    )
    assert json.loads(head.payload) == {"out": "stdout", "verified_events": 3}
    assert audit.Checkpoint.parse(checkpoint.model_dump_json()) == checkpoint


def test_no_checkpoint_is_taken_of_a_broken_log(session: Session) -> None:
    _write_events(session)
    _tamper(session, "UPDATE audit_event SET payload = '{}' WHERE seq = 2")

    with pytest.raises(CampaignError, match=r"broken at event 2: .*; no checkpoint taken"):
        audit.take_checkpoint(session, actor="t", out="stdout")


def test_a_log_that_only_grew_after_its_checkpoint_verifies(session: Session) -> None:
    _write_events(session)
    checkpoint = _checkpoint(session)
    _write_events(session, 4)

    result = audit.verify(session, checkpoint)

    assert result.ok and result.events == 10 and result.checkpoint == checkpoint


def test_a_truncated_tail_passes_the_chain_but_not_the_checkpoint(session: Session) -> None:
    _write_events(session)
    checkpoint = _checkpoint(session)  # event 6
    _tamper(session, "DELETE FROM audit_event WHERE seq >= 5")
    assert audit.verify(session).ok  # a shorter chain is still a chain

    result = audit.verify(session, checkpoint)

    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "events 5-6 are missing: the log ends at event 4" in (result.problem or "")
    assert "truncated" in (result.problem or "")


def test_an_emptied_log_fails_its_checkpoint(session: Session) -> None:
    _write_events(session, 2)
    checkpoint = _checkpoint(session)
    _tamper(session, "DELETE FROM audit_event")

    result = audit.verify(session, checkpoint)

    assert not result.ok and "events 1-3 are missing" in (result.problem or "")


def test_a_re_chain_by_a_holder_of_the_key_fails_the_checkpoint(session: Session) -> None:
    _write_events(session)
    checkpoint = _checkpoint(session)
    _tamper(session, "UPDATE audit_event SET payload = :edited WHERE seq = 2", edited='{"n":9}')
    _rechain(session, the_real_key, from_seq=2)
    assert audit.verify(session).ok

    result = audit.verify(session, checkpoint)

    assert (result.ok, result.first_bad_seq) == (False, checkpoint.seq)
    assert "does not match the checkpoint" in (result.problem or "")


def test_a_deletion_re_chained_and_renumbered_with_the_key_fails_the_checkpoint(
    session: Session,
) -> None:
    _write_events(session)
    checkpoint = _checkpoint(session)
    _write_events(session, 2)
    _tamper(session, "DELETE FROM audit_event WHERE seq = 2")
    _rechain(session, the_real_key, from_seq=2)
    assert audit.verify(session).ok

    result = audit.verify(session, checkpoint)

    assert (result.ok, result.first_bad_seq) == (False, checkpoint.seq)


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ("", "^checkpoint: Invalid JSON"),
        ("[1, 2]", "^checkpoint: Input should be an object"),
        (
            '{"seq": 1, "hash": "%s", "at": "2026-11-29T10:00:00+00:00"}' % ("a" * 64),
            "^count: Field required",
        ),
        (
            '{"seq": 1, "hash": "%s", "at": "2026-11-29T10:00:00+00:00", "count": 1, "x": 1}'
            % ("a" * 64),
            "^x: Extra inputs",
        ),
        (
            '{"seq": "1", "hash": "%s", "at": "2026-11-29T10:00:00+00:00", "count": 1}'
            % ("a" * 64),
            "^seq: Input should be a valid integer",
        ),
        (
            '{"seq": 1, "hash": "abc", "at": "2026-11-29T10:00:00+00:00", "count": 1}',
            "^hash: String should match",
        ),
        (
            '{"seq": 1, "hash": "%s", "at": "2026-11-29T10:00:00", "count": 1}' % ("a" * 64),
            "^at: Input should have timezone",
        ),
    ],
)
def test_a_malformed_checkpoint_is_refused_naming_the_field(document: str, named: str) -> None:
    with pytest.raises(audit.InvalidCheckpointError, match=named):
        audit.Checkpoint.parse(document)


# ------------------------------------------------------------ logs chained before the key


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def unkeyed_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at the revision before the chain was keyed."""
    if request.param == "sqlite":
        yield scratch_sqlite(tmp_path / "unkeyed.db", revision="0002")
        return
    with scratch_postgres("campaigns_unkeyed", revision="0002") as url:
        yield url


def _write_unkeyed_chain(url: str, seqs: list[int], *, edit_seq: int | None = None) -> None:
    """Events as the unkeyed SHA-256 chain wrote them (a rolled-back sequence value may skip)."""
    table = sa.table(
        "audit_event",
        *(sa.column(name) for name in ("seq", "actor", "kind", "payload", "prev_hash", "hash")),
        sa.column("at", UTCDateTime()),
    )
    prev = audit.GENESIS_HASH
    rows = []
    for n, seq in enumerate(seqs):
        at = datetime(2026, 11, 1, 12, n, tzinfo=UTC)
        payload = audit.canonical_json({"n": n})
        material = audit.canonical_json(
            [prev, at.isoformat(), "t", "old", None, None, None, payload]
        )
        digest = hashlib.sha256(material.encode()).hexdigest()
        if seq == edit_seq:
            payload = audit.canonical_json({"n": "edited"})
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": "t",
                "kind": "old",
                "payload": payload,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)
    engine.dispose()


def _verify(url: str) -> audit.VerifyResult:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            return audit.verify(session)
    finally:
        engine.dispose()


def test_an_intact_unkeyed_log_is_keyed_and_numbered_by_the_upgrade(
    unkeyed_database_url: str,
) -> None:
    _write_unkeyed_chain(unkeyed_database_url, [1, 2, 4])

    migrate.upgrade(unkeyed_database_url)

    result = _verify(unkeyed_database_url)
    assert result.ok and result.events == 3


def test_a_broken_unkeyed_log_is_not_laundered_by_the_upgrade(unkeyed_database_url: str) -> None:
    _write_unkeyed_chain(unkeyed_database_url, [1, 2, 3], edit_seq=2)

    migrate.upgrade(unkeyed_database_url)

    result = _verify(unkeyed_database_url)
    assert (result.ok, result.first_bad_seq) == (False, 1)
    assert "chained with key id (none)" in (result.problem or "")
