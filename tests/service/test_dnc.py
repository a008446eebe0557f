"""Do-not-call lists: scopes, versions, registry snapshots, and bad lines."""

from __future__ import annotations

import threading
import time
from datetime import date

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from campaigns import dnc
from campaigns.db import session_factory
from campaigns.errors import InvalidInputError
from campaigns.models import DncList, DncSource
from tests.factories import add_clinic


def test_clinic_entry_blocks_only_that_clinic(session: Session) -> None:
    north, south = add_clinic(session, name="North"), add_clinic(session, name="South")
    assert north.id and south.id
    dnc.add(
        session,
        "+13055550100",
        clinic_id=north.id,
        source=DncSource.INTERNAL,
        reason=None,
        actor="t",
    )
    assert dnc.lookup(session, "+13055550100", north.id).blocked_by == ("clinic",)
    assert dnc.lookup(session, "+13055550100", south.id).blocked_by == ()


def test_global_entry_blocks_every_clinic_and_versions_move(session: Session) -> None:
    clinic = add_clinic(session)
    assert clinic.id
    before = dnc.lookup(session, "+13055550100", clinic.id).list_versions["global"]
    dnc.add(
        session,
        "+13055550100",
        clinic_id=None,
        source=DncSource.PATIENT_REQUEST,
        reason="asked",
        actor="t",
    )
    dnc.add(
        session,
        "+13055550100",
        clinic_id=None,
        source=DncSource.PATIENT_REQUEST,
        reason="asked",
        actor="t",
    )
    found = dnc.lookup(session, "+13055550100", clinic.id)
    assert found.blocked_by == ("global",)
    assert found.list_versions["global"] == before + 1  # adding twice is one change
    assert dnc.remove(session, "+13055550100", clinic_id=None, actor="t")
    assert dnc.lookup(session, "+13055550100", clinic.id).blocked_by == ()
    assert not dnc.remove(session, "+13055550100", clinic_id=None, actor="t")


def test_registry_import_is_a_snapshot_with_a_data_date(session: Session) -> None:
    clinic = add_clinic(session)
    assert clinic.id
    first = dnc.import_file(
        session,
        ["3055550100", "212,5550101", "", "not-a-number", "12"],
        source="national",
        as_of=date(2026, 11, 1),
        actor="t",
    )
    assert first.entries == 2 and first.rejected_lines == (4, 5)
    second = dnc.import_file(
        session, ["2125550101"], source="national", as_of=date(2026, 11, 20), actor="t"
    )
    assert second.entries == 1 and second.version == first.version + 1
    dropped = dnc.lookup(session, "+13055550100", clinic.id)
    kept = dnc.lookup(session, "+12125550101", clinic.id)
    assert dropped.blocked_by == ()
    assert kept.blocked_by == ("national_registry",)
    assert kept.registry_as_of == date(2026, 11, 20)


@pytest.mark.parametrize("line", ["555010", "abc", "30555501001234"])
def test_bad_registry_lines_are_rejected(line: str) -> None:
    with pytest.raises(InvalidInputError):
        dnc.parse_registry_line(line)


def test_two_first_opt_outs_of_a_clinic_at_once_both_reach_its_list(engine: Engine) -> None:
    sessions = session_factory(engine)
    with sessions() as s:
        clinic_id = add_clinic(s).id
        s.commit()
    assert clinic_id is not None
    first_added = threading.Event()
    errors: list[BaseException] = []

    def opt_out(number: str, *, hold: bool) -> None:
        try:
            with sessions() as s:
                dnc.add(
                    s,
                    number,
                    clinic_id=clinic_id,
                    source=DncSource.PATIENT_REQUEST,
                    reason="asked during the call",
                    actor="agent",
                )
                if hold:  # the list is created but not committed while the other one adds
                    first_added.set()
                    time.sleep(0.5)
                s.commit()
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=opt_out, args=("+12125550101",), kwargs={"hold": True})
    first.start()
    assert first_added.wait(10)
    second = threading.Thread(target=opt_out, args=("+12125550102",), kwargs={"hold": False})
    second.start()
    first.join(10)
    second.join(10)

    assert errors == []
    with sessions() as s:
        listed = dnc.snapshot(s, ["+12125550101", "+12125550102"])
        assert all(listed.lookup(n, clinic_id).blocked_by for n in ("+12125550101", "+12125550102"))
        clinic_list = s.get(DncList, dnc.clinic_list(clinic_id))
        assert clinic_list is not None and clinic_list.entries == 2
