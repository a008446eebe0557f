"""The schema: migrations match the models, and the database enforces the invariants."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from campaigns import migrate
from campaigns.compliance.state_rules import load_seed_state_rules, load_state_rules
from campaigns.db import copy_rows, make_engine, session_factory
from campaigns.models import AttemptState, CallAttempt
from tests.factories import add_appointment, add_clinic


def _attempt(appointment_id: int, clinic_id: int, number: int, state: str) -> CallAttempt:
    return CallAttempt(
        appointment_id=appointment_id,
        clinic_id=clinic_id,
        attempt_number=number,
        state=state,
        due_at=datetime.now(UTC),
        number_called="+12125550100",
    )


def test_migrations_match_models(database_url: str) -> None:
    migrate.check(database_url)


def test_migrated_database_holds_the_packaged_state_rules(session: Session) -> None:
    # The migration seeds its own copy of the rules: editing the packaged file needs a
    # migration too, or decisions would follow other rules than the ones shipped.
    in_database, _version = load_state_rules(session)
    packaged = sorted(load_seed_state_rules(), key=lambda r: (r.state, r.effective_from))
    assert list(in_database) == packaged


def test_database_allows_one_open_attempt_per_appointment(session: Session) -> None:
    clinic = add_clinic(session)
    appointment = add_appointment(session, clinic)
    assert appointment.id and clinic.id
    session.add(_attempt(appointment.id, clinic.id, 1, AttemptState.DIALING))
    session.flush()
    session.add(_attempt(appointment.id, clinic.id, 2, AttemptState.SCHEDULED))
    with pytest.raises(IntegrityError):
        session.flush()


def test_closed_attempts_do_not_block_the_next_one(session: Session) -> None:
    clinic = add_clinic(session)
    appointment = add_appointment(session, clinic)
    assert appointment.id and clinic.id
    session.add(_attempt(appointment.id, clinic.id, 1, AttemptState.COMPLETED))
    session.add(_attempt(appointment.id, clinic.id, 2, AttemptState.FAILED))
    session.add(_attempt(appointment.id, clinic.id, 3, AttemptState.SCHEDULED))
    session.flush()


def test_timestamps_come_back_as_utc(session: Session) -> None:
    clinic = add_clinic(session)
    appointment = add_appointment(
        session, clinic, starts_at=datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
    )
    session.commit()
    session.expire_all()
    fetched = session.execute(text("SELECT id FROM appointment")).scalar_one()
    assert fetched == appointment.id
    session.refresh(appointment)
    assert appointment.starts_at == datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
    assert appointment.starts_at.tzinfo is not None


def test_a_failed_copy_names_its_constraint_but_quotes_no_patient_data(
    pg_database_url: str,
) -> None:
    engine = make_engine(pg_database_url)
    try:
        with session_factory(engine)() as session:
            clinic = add_clinic(session)
            appointment = add_appointment(session, clinic, phone_e164="+12125550100")
            too_long = "+1212555010099999999999"
            columns = ("appointment_id", "clinic_id", "attempt_number", "due_at", "number_called")
            row = (appointment.id, clinic.id, 1, datetime.now(UTC), too_long)
            with pytest.raises(DataError) as raised:
                copy_rows(session, "call_attempt", columns, [row])
            shown = "".join(traceback.format_exception(raised.value))
            assert "value too long" in shown
            assert too_long not in shown
            session.rollback()
    finally:
        engine.dispose()
