"""The audit log: any change to a stored event is detected and named (chain and seq).

Tamperers here have the database (they drop the append-only triggers and rewrite
rows at will) and, unless a test says so, not ``CAMPAIGNS_AUDIT_KEY``; what a
holder of the key could rewrite, a checkpoint kept elsewhere catches. Events of
clinic 1 (the default here) are clinic 1's chain; events of no clinic, chain 0.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
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


def _write_events(session: Session, count: int = 5, *, clinic_id: int | None = 1) -> None:
    for n in range(count):
        audit.record(
            session,
            "test.event",
            {"n": n, "note": f"event {n}"},
            actor="tester",
            clinic_id=clinic_id,
        )
    session.commit()


def _chain(session: Session, chain: int) -> list[AuditEvent]:
    query = select(AuditEvent).where(col(AuditEvent.chain) == chain).order_by(col(AuditEvent.seq))
    return list(session.execute(query).scalars())


def _rechain(
    session: Session, seal: Seal, *, chain: int = 1, from_seq: int = 1, renumber: bool = True
) -> None:
    """Re-link ``chain``'s events from ``from_seq`` on to their predecessor, hashed with
    ``seal`` (a clinic chain's genesis too, derived as the engine derives it with its key).

    With ``renumber`` the events are numbered on from their predecessor, closing any gap.
    """
    lift_append_only_guard(session)
    genesis = audit.GENESIS_HASH if chain == 0 else seal(f"chain {chain} genesis".encode())
    prev_hash, prev_seq = genesis, 0
    updates = []
    for event in _chain(session, chain):
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
                "WHERE chain = :chain AND seq = :old"
            ),
            update | {"chain": chain},
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
    assert "events 1-2 are missing (the chain starts at 3)" in (result.problem or "")


def test_a_rolled_back_transaction_leaves_no_gap(session: Session) -> None:
    _write_events(session, 2)
    audit.record(session, "rolled.back", {"n": 1}, actor="t")
    audit.write_pending(session)  # inserted, as a commit would, then the commit fails
    session.rollback()
    _write_events(session, 2)

    result = audit.verify(session)

    assert result.ok and result.events == 4


# --------------------------------------------------------------------------- one chain per clinic


def test_each_clinic_has_its_own_gapless_chain_and_events_of_no_clinic_chain_0(
    session: Session,
) -> None:
    for clinic_id in (1, 2, None, 1, 2, 1):
        audit.record(session, "e", {"c": clinic_id}, actor="t", clinic_id=clinic_id)
        session.commit()
    key = audit.chain_key()

    for chain, count in ((0, 1), (1, 3), (2, 2)):
        events = _chain(session, chain)
        assert [e.seq for e in events] == list(range(1, count + 1))
        assert events[0].prev_hash == audit.genesis_hash(chain, key)
        assert all(e.clinic_id == (chain or None) for e in events)
    assert audit.genesis_hash(0, key) == audit.GENESIS_HASH
    assert audit.genesis_hash(1, key) != audit.genesis_hash(2, key)
    listed = audit.list_events(session)["items"]
    assert [(e["chain"], e["seq"]) for e in listed] == [
        (1, 3),
        (2, 2),
        (1, 2),
        (0, 1),
        (2, 1),
        (1, 1),
    ]
    result = audit.verify(session)
    assert (result.ok, result.events, result.chains) == (True, 6, 3)


def test_a_transaction_touching_two_clinics_appends_to_both_chains(session: Session) -> None:
    _write_events(session, 2, clinic_id=2)
    audit.record_many(
        session,
        [
            audit.Entry("batch", {"n": n}, "tick", clinic_id=clinic_id)
            for n, clinic_id in enumerate((2, 1, None, 2, 1))
        ],
    )
    session.commit()

    assert [(e.seq, json.loads(e.payload)) for e in _chain(session, 1)] == [
        (1, {"n": 1}),
        (2, {"n": 4}),
    ]
    assert [e.seq for e in _chain(session, 2)] == [1, 2, 3, 4]
    assert [e.seq for e in _chain(session, 0)] == [1]
    assert audit.verify(session).ok


_SWAP_2_AND_3 = [
    f"UPDATE audit_event SET seq = {new} WHERE chain = 1 AND seq = {old}"
    for old, new in ((2, 100), (3, 2), (100, 3))
]


@pytest.mark.parametrize(
    ("statements", "chain", "seq", "named"),
    [
        pytest.param(
            ["UPDATE audit_event SET actor = 'mallory' WHERE chain = 2 AND seq = 3"],
            2,
            3,
            "content does not match its hash: the event was altered",
            id="edit",
        ),
        pytest.param(
            ["DELETE FROM audit_event WHERE chain = 2 AND seq = 2"],
            2,
            3,
            "event 2 is missing (the sequence jumps from 1 to 3): removed",
            id="delete",
        ),
        pytest.param(_SWAP_2_AND_3, 1, 2, "previous hash does not match", id="reorder"),
        pytest.param(
            # Clinic 1's chain is only shorter (its checkpoint tells); clinic 2's breaks.
            ["UPDATE audit_event SET chain = 2, seq = 6 WHERE chain = 1 AND seq = 5"],
            2,
            6,
            "previous hash does not match",
            id="move-an-event",
        ),
        pytest.param(
            ["UPDATE audit_event SET chain = 9 WHERE chain = 1"],
            9,
            1,
            "previous hash does not match",  # clinic 9's genesis is not clinic 1's
            id="move-a-whole-chain",
        ),
    ],
)
def test_tampering_in_a_clinic_chain_is_named_with_its_chain(
    session: Session, statements: list[str], chain: int, seq: int, named: str
) -> None:
    _write_events(session, 5, clinic_id=1)
    _write_events(session, 5, clinic_id=2)
    for statement in statements:
        _tamper(session, statement)

    result = audit.verify(session)

    assert (result.ok, result.chain, result.first_bad_seq) == (False, chain, seq)
    assert named in (result.problem or "")
    assert result.where == f"event {seq} of clinic {chain}'s chain"


def test_a_chain_moved_and_re_linked_with_the_key_still_names_the_clinic(session: Session) -> None:
    _write_events(session)
    _tamper(session, "UPDATE audit_event SET chain = 9 WHERE chain = 1")
    _rechain(session, the_real_key, chain=9)

    result = audit.verify(session)

    assert (result.ok, result.chain, result.first_bad_seq) == (False, 9, 1)
    assert result.problem == "an event of clinic 1 in clinic 9's chain"


# ------------------------------------------------------------ concurrent writers (PostgreSQL)


@pytest.mark.postgres
def test_concurrent_writers_keep_every_clinic_chain_gapless(pg_database_url: str) -> None:
    """Writers on their own connections, some writing two clinics (in either order) and
    chain 0 in one transaction: no fork, no gap, no deadlock."""
    engine = make_engine(pg_database_url)
    sessions = session_factory(engine)
    clinics = (1, 2, 3, 4)
    written: dict[int, int] = dict.fromkeys((0, *clinics), 0)
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(30):
                touched = [clinics[(n + i) % 4]]
                if i % 3 == 0:
                    touched.append(clinics[(n + i + 1 + n % 2 * 2) % 4])
                if i % 5 == 0:
                    touched.append(0)
                with sessions() as session:
                    for chain in touched:
                        audit.record(
                            session, "w", {"n": n, "i": i}, actor="t", clinic_id=chain or None
                        )
                    session.commit()
                with lock:
                    for chain in touched:
                        written[chain] += 1
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        with sessions() as session:
            for chain, count in written.items():
                assert [e.seq for e in _chain(session, chain)] == list(range(1, count + 1))
            result = audit.verify(session)
        assert (result.ok, result.events, result.chains) == (True, sum(written.values()), 5)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_writer_waits_only_for_writers_of_its_own_chains(pg_database_url: str) -> None:
    engine = make_engine(pg_database_url)
    sessions = session_factory(engine)
    try:
        with sessions() as holder, sessions() as other, sessions() as same:
            audit.record(holder, "held", {}, actor="t", clinic_id=1)
            audit.write_pending(holder)  # as its commit does: clinic 1's chain stays locked

            other.execute(text("SET LOCAL lock_timeout = '5s'"))
            audit.record(other, "other clinic", {}, actor="t", clinic_id=2)
            audit.record(other, "no clinic", {}, actor="t")
            other.commit()  # neither chain waits for clinic 1's

            same.execute(text("SET LOCAL lock_timeout = '200ms'"))
            audit.record(same, "same clinic", {}, actor="t", clinic_id=1)
            with pytest.raises(OperationalError, match="lock timeout"):
                same.commit()
            same.rollback()

            holder.commit()
            audit.record(same, "same clinic", {}, actor="t", clinic_id=1)
            same.commit()

            assert [e.kind for e in _chain(same, 1)] == ["held", "same clinic"]
            assert audit.verify(same).ok
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- checkpoints


def _checkpoint(session: Session) -> audit.Checkpoint:
    checkpoint = audit.take_checkpoint(session, actor="cli:reviewer", out="stdout")
    session.commit()
    return checkpoint


def test_a_checkpoint_is_a_chain_0_event_anchoring_every_clinic_chain(session: Session) -> None:
    _write_events(session, 3)
    _write_events(session, 2, clinic_id=2)
    heads = {chain: _chain(session, chain)[-1] for chain in (1, 2)}

    checkpoint = _checkpoint(session)

    assert (checkpoint.seq, checkpoint.count) == (1, 6)
    [head] = _chain(session, 0)
    assert (head.seq, head.kind, head.actor, head.hash) == (
        1,
        "audit.checkpoint",
        "cli:reviewer",
        checkpoint.hash,
    )
    assert json.loads(head.payload) == {
        "out": "stdout",
        "verified_events": 5,
        "chains": {str(chain): [event.seq, event.hash] for chain, event in heads.items()},
    }
    assert audit.Checkpoint.parse(checkpoint.model_dump_json()) == checkpoint
    assert set(json.loads(checkpoint.model_dump_json())) == {"seq", "hash", "at", "count"}


def test_no_checkpoint_is_taken_of_a_broken_log(session: Session) -> None:
    _write_events(session)
    _tamper(session, "UPDATE audit_event SET payload = '{}' WHERE chain = 1 AND seq = 2")

    with pytest.raises(
        CampaignError, match=r"broken at event 2 of clinic 1's chain: .*; no checkpoint taken"
    ):
        audit.take_checkpoint(session, actor="t", out="stdout")


def test_a_log_whose_chains_only_grew_after_its_checkpoint_verifies(session: Session) -> None:
    _write_events(session)
    _write_events(session, 2, clinic_id=None)
    checkpoint = _checkpoint(session)
    _write_events(session, 4)
    _write_events(session, 3, clinic_id=2)  # a chain born after the checkpoint
    _write_events(session, 1, clinic_id=None)

    result = audit.verify(session, checkpoint)

    assert result.ok and result.events == 16 and result.checkpoint == checkpoint
    assert result.chains == 3


def test_a_truncated_clinic_chain_passes_the_chain_but_not_the_checkpoint(
    session: Session,
) -> None:
    _write_events(session)
    _write_events(session, 2, clinic_id=2)
    checkpoint = _checkpoint(session)
    _write_events(session, 1, clinic_id=2)
    _tamper(session, "DELETE FROM audit_event WHERE chain = 1 AND seq >= 4")
    assert audit.verify(session).ok  # a shorter chain is still a chain

    result = audit.verify(session, checkpoint)

    assert (result.ok, result.chain, result.first_bad_seq) == (False, 1, 4)
    assert "events 4-5 are missing: the chain ends at event 3" in (result.problem or "")
    assert "anchors it at event 5 (truncated)" in (result.problem or "")


@pytest.mark.parametrize(("emptied", "missing"), [(0, "event 1 is missing"), (2, "events 1-2")])
def test_an_emptied_chain_fails_the_checkpoint(
    session: Session, emptied: int, missing: str
) -> None:
    _write_events(session, 2)
    _write_events(session, 2, clinic_id=2)
    _write_events(session, 2, clinic_id=3)
    checkpoint = _checkpoint(session)
    _tamper(session, "DELETE FROM audit_event WHERE chain = :chain", chain=emptied)

    result = audit.verify(session, checkpoint)

    assert (result.ok, result.chain, result.first_bad_seq) == (False, emptied, 1)
    assert missing in (result.problem or "") and "the chain is gone" in (result.problem or "")


def test_an_emptied_log_fails_its_checkpoint(session: Session) -> None:
    _write_events(session, 2)
    checkpoint = _checkpoint(session)
    _tamper(session, "DELETE FROM audit_event")

    result = audit.verify(session, checkpoint)

    assert (result.ok, result.chain) == (False, 0)
    assert "event 1 is missing: the chain is gone" in (result.problem or "")


def test_a_checkpoint_beyond_chain_0s_end_fails(session: Session) -> None:
    _write_events(session, 2)
    checkpoint = _checkpoint(session)
    beyond = checkpoint.model_copy(update={"seq": checkpoint.seq + 2})

    result = audit.verify(session, beyond)

    assert (result.ok, result.chain, result.first_bad_seq) == (False, 0, 2)
    assert "events 2-3 are missing: the chain ends at event 1" in (result.problem or "")


@pytest.mark.parametrize(("chain", "anchored_at"), [(2, 3), (0, 4)])
def test_a_re_chain_by_a_holder_of_the_key_fails_the_checkpoint(
    session: Session, chain: int, anchored_at: int
) -> None:
    """A clinic chain is anchored at its head, chain 0 at the checkpoint's event (which
    holds the clinic chains' anchors): either re-chained with the key no longer matches."""
    _write_events(session, 3, clinic_id=1)
    _write_events(session, 3, clinic_id=2)
    _write_events(session, 3, clinic_id=None)
    checkpoint = _checkpoint(session)  # chain 0's event 4
    edit = "UPDATE audit_event SET payload = '{}' WHERE chain = :chain AND seq = 2"
    _tamper(session, edit, chain=chain)
    _rechain(session, the_real_key, chain=chain, from_seq=2)
    assert audit.verify(session).ok

    result = audit.verify(session, checkpoint)

    assert (result.ok, result.chain, result.first_bad_seq) == (False, chain, anchored_at)
    assert "does not match the checkpoint" in (result.problem or "")


def test_a_deletion_re_chained_and_renumbered_with_the_key_fails_the_checkpoint(
    session: Session,
) -> None:
    _write_events(session)
    checkpoint = _checkpoint(session)
    _write_events(session, 2)
    _tamper(session, "DELETE FROM audit_event WHERE chain = 1 AND seq = 2")
    _rechain(session, the_real_key, from_seq=2)
    assert audit.verify(session).ok

    result = audit.verify(session, checkpoint)

    assert (result.ok, result.chain, result.first_bad_seq) == (False, 1, 5)


def test_a_clinic_chain_moved_by_a_holder_of_the_key_fails_the_checkpoint(
    session: Session,
) -> None:
    _write_events(session)
    checkpoint = _checkpoint(session)
    _tamper(session, "UPDATE audit_event SET chain = 9, clinic_id = 9 WHERE chain = 1")
    _rechain(session, the_real_key, chain=9)
    assert audit.verify(session).ok

    result = audit.verify(session, checkpoint)

    assert (result.ok, result.chain, result.first_bad_seq) == (False, 1, 1)
    assert "events 1-5 are missing: the chain is gone" in (result.problem or "")


def test_a_checkpoint_whose_count_was_edited_fails(session: Session) -> None:
    _write_events(session)
    checkpoint = _checkpoint(session)

    result = audit.verify(session, checkpoint.model_copy(update={"count": 3}))

    assert (result.ok, result.chain, result.first_bad_seq) == (False, 0, 1)
    assert "the checkpoint counted 3 events, its event anchors 6" in (result.problem or "")


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


def _database_at(revision: str, kind: str, tmp_path: Path) -> Iterator[str]:
    """A database of ``kind`` migrated up to ``revision`` only."""
    if kind == "sqlite":
        yield scratch_sqlite(tmp_path / f"at_{revision}.db", revision=revision)
        return
    with scratch_postgres(f"campaigns_at_{revision}", revision=revision) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def unkeyed_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at the revision before the chain was keyed."""
    yield from _database_at("0002", request.param, tmp_path)


def _insert(url: str, rows: list[dict[str, Any]]) -> None:
    """Rows into ``audit_event`` as an earlier revision's writer stored them."""
    names = [name for name in rows[0] if name != "at"]
    table = sa.table("audit_event", *map(sa.column, names), sa.column("at", UTCDateTime()))
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)
    engine.dispose()


def _write_unkeyed_chain(url: str, seqs: list[int], *, edit_seq: int | None = None) -> None:
    """Events as the unkeyed SHA-256 chain wrote them (a rolled-back sequence value may skip)."""
    prev = audit.GENESIS_HASH
    rows: list[dict[str, Any]] = []
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
    _insert(url, rows)


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


# ---------------------------------------------------- logs chained before chains per clinic


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def single_chain_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at the revision before chains per clinic."""
    yield from _database_at("0008", request.param, tmp_path)


def _write_single_chain(url: str, clinics: list[int | None], *, edit_seq: int | None = None) -> str:
    """A keyed log as one global chain wrote it (clinic events included), ending with a
    checkpoint event; the checkpoint file's document."""
    key = audit.chain_key()
    prev = audit.GENESIS_HASH
    rows: list[dict[str, Any]] = []
    events: list[tuple[str, int | None, dict[str, Any]]] = [
        ("old", clinic, {"n": n}) for n, clinic in enumerate(clinics)
    ]
    events.append((audit.CHECKPOINT_KIND, None, {"out": "stdout", "verified_events": len(clinics)}))
    for seq, (kind, clinic_id, body) in enumerate(events, start=1):
        at = datetime(2026, 11, 1, 12, seq, tzinfo=UTC)
        payload = audit.canonical_json(body)
        digest = key.seal(
            audit.event_material(seq, prev, at, "t", kind, clinic_id, None, None, payload)
        )
        if seq == edit_seq:
            payload = audit.canonical_json({"n": "edited"})
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": "t",
                "kind": kind,
                "clinic_id": clinic_id,
                "payload": payload,
                "prev_hash": prev,
                "hash": digest,
                "key_id": key.id,
            }
        )
        prev = digest
    _insert(url, rows)
    head = rows[-1]
    return json.dumps(
        {"seq": head["seq"], "hash": head["hash"], "at": head["at"].isoformat(), "count": len(rows)}
    )


def test_a_single_chain_log_stays_chain_0_and_verifies_after_the_upgrade(
    single_chain_database_url: str,
) -> None:
    url = single_chain_database_url
    checkpoint = audit.Checkpoint.parse(_write_single_chain(url, [1, 2, None, 1]))

    migrate.upgrade(url)

    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            old = _chain(session, 0)
            assert [(e.id, e.seq, e.clinic_id) for e in old] == [
                (1, 1, 1),
                (2, 2, 2),
                (3, 3, None),
                (4, 4, 1),
                (5, 5, None),
            ]
            assert audit.verify(session, checkpoint).ok
            audit.record(session, "new", {}, actor="t", clinic_id=1)
            audit.record(session, "new", {}, actor="t")
            session.commit()
            assert [(e.id, e.chain, e.seq) for e in audit.iter_events(session)][-2:] == [
                (7, 0, 6),
                (6, 1, 1),
            ]
            result = audit.verify(session, checkpoint)
            assert (result.ok, result.events, result.chains) == (True, 7, 2)
            newer = audit.take_checkpoint(session, actor="t", out="stdout")
            session.commit()
            assert (newer.seq, newer.count) == (7, 8)
            assert audit.verify(session, newer).ok
    finally:
        engine.dispose()


def test_a_broken_single_chain_log_stays_broken_after_the_upgrade(
    single_chain_database_url: str,
) -> None:
    _write_single_chain(single_chain_database_url, [1, None, 2], edit_seq=2)

    migrate.upgrade(single_chain_database_url)

    result = _verify(single_chain_database_url)
    assert (result.ok, result.chain, result.first_bad_seq) == (False, 0, 2)
    assert "altered" in (result.problem or "")


def _downgrade(url: str, revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = migrate.alembic_config(url)
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def test_downgrading_keeps_a_chain_0_log_and_refuses_clinic_chains(
    single_chain_database_url: str,
) -> None:
    url = single_chain_database_url
    document = _write_single_chain(url, [1, None])
    migrate.upgrade(url)

    _downgrade(url, "0008")  # only chain 0: the single chain it was
    migrate.upgrade(url)

    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            assert audit.verify(session, audit.Checkpoint.parse(document)).ok
            audit.record(session, "new", {}, actor="t", clinic_id=1)
            session.commit()
    finally:
        engine.dispose()
    with pytest.raises(RuntimeError, match="holds clinic chains"):
        _downgrade(url, "0008")
