"""Bad CSV input is a per-row reason or a one-line file error, the same on both databases,
and a clinic imports only numbers it may call."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from campaigns.importer import (
    MAX_START_AHEAD,
    ImportFileError,
    ImportReport,
    Rejection,
    import_appointments,
)
from campaigns.models import Appointment, Clinic
from tests.conftest import add_clinic

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HEADER = ["Appointment ID", "Patient Name", "Phone", "Start", "Provider"]


def csv_bytes(rows: list[list[str]], header: list[str] = HEADER) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # quotes a cell holding \r or \n
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def run(session: Session, clinic: Clinic, data: bytes) -> ImportReport:
    return import_appointments(
        session, clinic, io.BytesIO(data), filename="a.csv", now=NOW, actor="test"
    )


def stored(session: Session) -> dict[str, Appointment]:
    return {a.external_id: a for a in session.execute(select(Appointment)).scalars()}


def only_reason(session: Session, clinic: Clinic, row: list[str]) -> Rejection:
    report = run(session, clinic, csv_bytes([["OK-1", "Ada Lovelace", "212-555-0100", START], row]))
    assert report.imported == 1, report.rejected
    assert len(report.rejected) == 1, report.rejected
    assert report.rejected[0].line == 3
    assert set(stored(session)) == {"OK-1"}
    return report.rejected[0]


START = "2026-03-10 09:30"


@pytest.mark.parametrize(
    ("phone", "reason"),
    [
        ("+1 900 555 1234", "premium-rate"),
        ("+1 500 555 1234", "personal"),
        ("+1 876 555 1234", "another country (JM"),
        ("+1 416 555 1234", "another country (CA"),
        ("+44 20 7946 0958", "another country (GB"),
        ("212-555-0100 x99", "extension"),
        ("212-555-0100 ext 5", "extension"),
        ("1-800-FLOWERS", "letters"),
        ("212-555-0100, 212-555-0101", "several phone numbers"),
        ("212-555-0100 / 212-555-0101", "several phone numbers"),
        ("2125550100 2125550101", "several phone numbers"),
    ],
)
def test_a_us_clinic_imports_only_one_number_it_may_call_per_row(
    session: Session, phone: str, reason: str
) -> None:
    clinic = add_clinic(session)

    rejection = only_reason(session, clinic, ["BAD-1", "Alan Turing", phone, START])

    assert rejection.column == "Phone"
    assert reason in rejection.reason
    assert "555" not in rejection.reason  # reasons never repeat the number


def test_a_clinic_outside_the_us_calls_its_own_country(session: Session) -> None:
    clinic = add_clinic(session, timezone="Europe/London", country="GB")

    report = run(
        session,
        clinic,
        csv_bytes(
            [["UK-1", "Ada", "020 7946 0958", START], ["US-1", "Bob", "+1 212 555 0100", START]]
        ),
    )

    assert set(stored(session)) == {"UK-1"}
    assert [(r.line, r.column) for r in report.rejected] == [(3, "Phone")]


@pytest.mark.parametrize(
    ("row", "column", "reason"),
    [
        (["B-1", "Ada\x00Lovelace", "212-555-0101", START], "Patient Name", "NUL"),
        (["B-1", "Ada \x1b[31mLovelace", "212-555-0101", START], "Patient Name", "U+001B"),
        (["B-1", "Ada\u202eecalevoL", "212-555-0101", START], "Patient Name", "U+202E"),
        (["B-1", "Ada\nLovelace", "212-555-0101", START], "Patient Name", "U+000A"),
        (["B-1", "Ada", "212-555-0101", START, "Dr \u2066X"], "Provider", "U+2066"),
        (["B-1", "Ada", "212-555-0101", "9999-12-31 23:30"], "Start", "supported range"),
        (["B-1", "Ada", "212-555-0101", "9999-12-31T23:30:00-05:00"], "Start", "supported range"),
        (["B-1", "Ada", "212-555-0101", "2062-03-10 09:30"], "Start", "supported range"),
    ],
)
def test_bad_cells_are_rejected_with_line_column_and_reason(
    session: Session, row: list[str], column: str, reason: str
) -> None:
    clinic = add_clinic(session)

    rejection = only_reason(session, clinic, row)

    assert rejection.column == column
    assert reason in rejection.reason


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_a_one_line_file_error(
    session: Session, encoding: str
) -> None:
    clinic = add_clinic(session)
    data = csv_bytes([["A-1", "Ada", "212-555-0100", START]]).decode().encode(encoding)

    with pytest.raises(ImportFileError) as raised:
        run(session, clinic, data)

    message = str(raised.value)
    assert encoding.upper() in message and "byte-order mark" in message
    assert "\n" not in message
    assert stored(session) == {}


# --------------------------------------------------------------------------- property

_PHONES = [
    "212-555-0100",
    "(305) 555-0142",
    "+1 850 432 1234",
    "+1 787 555 1234",
    "+1 900 555 1234",
    "+1 876 555 1234",
    "+44 20 7946 0958",
    "212-555-0100 x99",
    "1-800-FLOWERS",
    "212-555-0100; 212-555-0101",
    "not a phone",
    "",
]
_STARTS = [
    "2026-03-10 09:30",
    "03/11/2026 2:30 PM",
    "2026-03-08 02:30",  # does not exist in New York
    "2026-03-12T10:00:00-05:00",
    "2026-02-01 10:00",  # past
    "9999-12-31 23:59",
    "0001-01-01 00:00",
    "2100-01-01 10:00",
    "31/31/2026 10:00",
    "",
]
_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("\x00\u202e\n[]=+-@"),
    max_size=30,
)


@st.composite
def rows(draw: st.DrawFn) -> list[list[str]]:
    count = draw(st.integers(1, 6))
    return [
        [
            f"R-{i}",
            draw(_TEXT),
            draw(st.sampled_from(_PHONES)),
            draw(st.sampled_from(_STARTS)),
            draw(_TEXT),
        ]
        for i in range(count)
    ]


def start_lines(rows: list[list[str]]) -> list[int]:
    """The physical line each row starts on in ``csv_bytes(rows)`` (as an editor counts)."""
    starts, line = [], 2
    for row in rows:
        starts.append(line)
        line += len(list(io.StringIO(csv_bytes([row], header=[]).decode(), newline="")))
    return starts


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(generated=rows())
def test_every_generated_row_is_imported_intact_or_rejected_with_a_reason(
    session: Session, generated: list[list[str]]
) -> None:
    clinic = add_clinic(session)
    try:
        report = run(session, clinic, csv_bytes(generated))  # never a file error here
        found = stored(session)
        rejected = {r.line: r for r in report.rejected}
        assert report.rows == len(generated)
        for row, line in zip(generated, start_lines(generated), strict=True):
            external_id, name, _, _, provider = row
            if line in rejected:
                assert rejected[line].reason and rejected[line].column
                assert external_id not in found  # nothing half-written
                continue
            appointment = found[external_id]
            assert appointment.patient_name == " ".join(name.split())
            assert appointment.provider == (provider.strip() or None)
            assert appointment.starts_at > NOW
            assert appointment.starts_at <= NOW + MAX_START_AHEAD
        assert report.imported == len(found)
    finally:
        session.rollback()
