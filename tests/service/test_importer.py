"""CSV import: header aliases, delimiters, per-row rejections, re-import, atomicity."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.importing import (
    FIELD_ALIASES,
    ImportFileError,
    ImportReport,
    Rejection,
    import_appointments,
)
from campaigns.importing.columns import normalized
from campaigns.models import (
    Appointment,
    AppointmentStatus,
    AttemptState,
    AuditEvent,
    CallAttempt,
    Clinic,
)
from tests.factories import add_attempt, add_clinic

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HEADER = "Appointment ID,Patient Name,Phone,Start,Provider,Location,Timezone,State,ZIP,Status"


def run(
    session: Session,
    clinic: Clinic,
    content: str | bytes,
    *,
    filename: str = "appointments.csv",
    **kwargs: Any,
) -> ImportReport:
    data = content.encode() if isinstance(content, str) else content
    return import_appointments(
        session,
        clinic,
        io.BytesIO(data),
        filename=filename,
        now=NOW,
        actor="test",
        **kwargs,
    )


def appointments(session: Session) -> dict[str, Appointment]:
    rows = session.execute(select(Appointment)).scalars()
    return {a.external_id: a for a in rows}


def count(session: Session) -> int:
    return session.execute(select(func.count()).select_from(Appointment)).scalar_one()


@pytest.fixture
def clinic(session: Session) -> Clinic:
    return add_clinic(session)


def test_imports_rows_as_e164_and_utc(session: Session, clinic: Clinic) -> None:
    content = (
        f"{HEADER}\n"
        "A-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30,Dr. Who,Main St,,NY,10001,\n"
        "A-2,Alan Turing,+1 617 253 1000,2026-03-10T09:30:00-08:00,,,America/Chicago,,,\n"
        "A-3,Grace Hopper,212.555.0101,03/10/2026 2:15 PM,,,America/Chicago,Texas,75001-1234,\n"
    )
    report = run(session, clinic, content)
    session.commit()

    assert report.to_json() == {
        "imported": 3,
        "updated": 0,
        "unchanged": 0,
        "rejected": [],
        "rows": 3,
        "rejected_rows": 0,
        "cancelled": 0,
        "attempts_skipped": 0,
    }
    assert report.usable_rows == 3
    stored = appointments(session)
    ada = stored["A-1"]
    assert ada.phone_e164 == "+12125550100"
    assert ada.starts_at == datetime(2026, 3, 10, 13, 30, tzinfo=UTC)  # EDT, the clinic zone
    assert (ada.provider, ada.location, ada.patient_state, ada.patient_zip) == (
        "Dr. Who",
        "Main St",
        "NY",
        "10001",
    )
    assert ada.status == AppointmentStatus.SCHEDULED
    sha = hashlib.sha256(content.encode()).hexdigest()
    assert ada.phone_source == f"import:appointments.csv:{sha[:16]}"
    # An explicit offset wins over the row's timezone.
    assert stored["A-2"].starts_at == datetime(2026, 3, 10, 17, 30, tzinfo=UTC)
    assert stored["A-2"].patient_timezone == "America/Chicago"
    grace = stored["A-3"]
    assert grace.starts_at == datetime(2026, 3, 10, 19, 15, tzinfo=UTC)  # 14:15 CDT
    assert (grace.patient_state, grace.patient_zip) == ("TX", "75001-1234")


def test_one_audit_event_without_patient_data(session: Session, clinic: Clinic) -> None:
    content = (
        f"{HEADER}\nA-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30,,,,,,\nA-2,Bob,x,,,,,,,\n"
    )
    run(session, clinic, content)
    session.commit()
    events = session.execute(select(AuditEvent)).scalars().all()
    assert [e.kind for e in events] == ["appointments.imported"]
    payload = json.loads(events[0].payload)
    assert payload["filename"] == "appointments.csv"
    assert payload["sha256"] == hashlib.sha256(content.encode()).hexdigest()
    assert (payload["imported"], payload["rejected_rows"], payload["rejected_lines"]) == (1, 1, [3])
    assert events[0].clinic_id == clinic.id
    assert "Ada" not in events[0].payload
    assert "5550100" not in events[0].payload


def test_each_rejection_names_line_and_column(session: Session, clinic: Clinic) -> None:
    good = "2026-03-10 09:30"
    cases: list[tuple[str, str, str]] = [
        (f"R-1,,(212) 555-0100,{good},,,,,,", "Patient Name", "patient name is missing"),
        (f"R-2,Bad Phone,call me maybe,{good},,,,,,", "Phone", "not a phone number"),
        (f"R-3,Short Phone,12345,{good},,,,,,", "Phone", "impossible phone number (too short)"),
        (f"R-4,No Range,+1 999 555 0100,{good},,,,,,", "Phone", "invalid phone number"),
        ("R-5,Bad Date,(212) 555-0100,next tuesday,,,,,,", "Start", "unrecognised date/time"),
        ("R-6,No Date,(212) 555-0100,02/30/2026 10:00,,,,,,", "Start", "not a real date"),
        ("R-7,Past,(212) 555-0100,2026-02-28 10:00,,,,,,", "Start", "in the past"),
        ("R-8,Date Only,(212) 555-0100,2026-03-10,,,,,,", "Start", "has no time of day"),
        (f"R-9,Bad Zone,(212) 555-0100,{good},,,Mars/Olympus,,,", "Timezone", "unknown timezone"),
        (f"R-10,Bad State,(212) 555-0100,{good},,,,ZZ,,", "State", "unknown US state 'ZZ'"),
        (f"R-11,Bad Zip,(212) 555-0100,{good},,,,,1234,", "ZIP", "invalid ZIP code '1234'"),
        (f"A-1,Dup,(212) 555-0100,{good},,,,,,", "Appointment ID", "first seen on line 2"),
        ("R-12,Gap,(212) 555-0100,2026-03-08 02:30,,,,,,", "Start", "does not exist"),
        (f"R-13,Status,(212) 555-0100,{good},,,,,,maybe", "Status", "unknown status 'maybe'"),
        (f",No Id,(212) 555-0100,{good},,,,,,", "Appointment ID", "appointment id is missing"),
        (f"R-14,No Phone,,{good},,,,,,", "Phone", "phone number is missing"),
        (f"R-15,Wide,(212) 555-0100,{good},,,,,,,extra", "", "row has 11 fields"),
    ]
    lines = [HEADER, f"A-1,Ada Lovelace,(212) 555-0100,{good},,,,,,"]
    lines += [row for row, _, _ in cases]
    report = run(session, clinic, "\n".join(lines) + "\n")

    assert report.imported == 1
    assert len(report.rejected) == len(cases)
    for line, (rejection, (_, column, reason)) in enumerate(
        zip(report.rejected, cases, strict=True), start=3
    ):
        assert (rejection.line, rejection.column) == (line, column), rejection
        assert reason in rejection.reason, rejection
    # Reasons never repeat a phone number.
    assert not any("555" in r.reason for r in report.rejected)
    assert count(session) == 1


def test_a_row_with_several_problems_reports_each(session: Session, clinic: Clinic) -> None:
    content = f"{HEADER}\nB-1,,12345,2020-01-01 10:00,,,,XX,abc,\n"
    report = run(session, clinic, content)
    assert {r.column for r in report.rejected} == {"Patient Name", "Phone", "Start", "State", "ZIP"}
    assert report.rejected_lines == [2]
    assert report.usable_rows == 0


def test_ambiguous_fall_back_time_is_the_first_occurrence(session: Session, clinic: Clinic) -> None:
    run(session, clinic, f"{HEADER}\nF-1,Fall Back,(212) 555-0100,2026-11-01 01:30,,,,,,\n")
    assert appointments(session)["F-1"].starts_at == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_quoted_multiline_field_keeps_physical_line_numbers(
    session: Session, clinic: Clinic
) -> None:
    content = (
        f"{HEADER}\n"
        'M-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30,,"Building A\nFloor 2\nRoom 7",,,,\n'
        "\n"
        "M-2,Alan Turing,not a phone,2026-03-10 09:30,,,,,,\n"
    )
    report = run(session, clinic, content)
    assert report.rejected == [Rejection(6, "Phone", "not a phone number (not a phone number)")]
    assert appointments(session)["M-1"].location == "Building A\nFloor 2\nRoom 7"


def test_excel_csv_with_bom_semicolons_and_crlf(session: Session, clinic: Clinic) -> None:
    content = (
        "\ufeffAppointment ID;Patient Name;Phone;Start\r\n"
        'S-1;"Lovelace, Ada";(212) 555-0100;2026-03-10 09:30\r\n'
        "S-2;Alan Turing;(212) 555-0101;2026-03-10 10:30\r\n"
        "S-3;Grace Hopper;(212) 555-0102;soon\r\n"
    )
    report = run(session, clinic, content)
    assert report.imported == 2
    assert [(r.line, r.column) for r in report.rejected] == [(4, "Start")]
    assert appointments(session)["S-1"].patient_name == "Lovelace, Ada"


def test_tabs_first_last_name_and_date_time_columns(session: Session, clinic: Clinic) -> None:
    content = (
        "Appt No\tFirst Name\tSurname\tMobile\tAppointment Date\tAppointment Time\tMRN\tDoctor\n"
        "T-1\tAda\tLovelace\t212-555-0100\t03/10/2026\t9:30 AM\tP-77\tDr. Who\n"
        "T-2\tAlan\tTuring\t212-555-0101\t2026-03-10\t13:45\t\t\n"
        "T-3\tGrace\tHopper\t212-555-0102\t2026-03-10\t25:00\t\t\n"
    )
    report = run(session, clinic, content)
    assert report.imported == 2
    assert report.rejected == [Rejection(4, "Appointment Time", "not a real time '25:00'")]
    ada = appointments(session)["T-1"]
    assert ada.patient_name == "Ada Lovelace"
    assert ada.starts_at == datetime(2026, 3, 10, 13, 30, tzinfo=UTC)
    assert (ada.patient_ref, ada.provider) == ("P-77", "Dr. Who")
    assert appointments(session)["T-2"].starts_at == datetime(2026, 3, 10, 17, 45, tzinfo=UTC)


@pytest.mark.parametrize(
    "header",
    [
        "appointment_id,patient,phone_number,appointment_start",
        "APPT ID,Full Name,Cell,DateTime",
        "External-ID,name,Telephone,Start Time",
        "Appointment Number,Given Name,Family Name,Phone,Date,Time",
    ],
)
def test_header_aliases(session: Session, clinic: Clinic, header: str) -> None:
    values = "X-1,Ada,Lovelace,(212) 555-0100,2026-03-10,09:30"
    if header.count(",") == 3:
        values = "X-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30"
    report = run(session, clinic, f"{header}\n{values}\n")
    assert (report.imported, report.rejected) == (1, [])
    ada = appointments(session)["X-1"]
    assert (ada.patient_name, ada.starts_at) == (
        "Ada Lovelace",
        datetime(2026, 3, 10, 13, 30, tzinfo=UTC),
    )


def test_aliases_do_not_collide_between_fields() -> None:
    owners: dict[str, str] = {}
    for key, aliases in FIELD_ALIASES.items():
        for alias in aliases:
            assert owners.setdefault(normalized(alias), key) == key, alias


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "Appointment ID,Patient Name,Start\nA-1,Ada,2026-03-10 09:30\n",
            "'phone' (accepted: phone,",
        ),
        ("ID,First Name,Phone,Start\n", "'patient name'"),
        ("ID,Name,Phone,Date\n", "'time' for the date column 'Date'"),
        ("ID,Name,Phone\n", "'appointment start' (accepted: start,"),
        ("A-1,Ada,(212) 555-0100,2026-03-10 09:30\n", "no header row"),
        ("", "file is empty"),
        ("\ufeff\n\n  \n", "file is empty"),
        (b"ID,Name,Phone,Start\nA-1,Ad\xe9,1,2\n", "not UTF-8 text (invalid byte on line 2)"),
        ("ID,Name,Phone,Start\n".encode("utf-16"), "UTF-16"),
        ('ID,Name,Phone,Start\nA-1,"Ada' + "x" * 200_000 + "\n", "line 2: malformed CSV"),
    ],
)
def test_unusable_files_raise(
    session: Session, clinic: Clinic, content: str | bytes, message: str
) -> None:
    with pytest.raises(ImportFileError) as info:
        run(session, clinic, content)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert count(session) == 0


def test_missing_columns_are_all_named(session: Session, clinic: Clinic) -> None:
    with pytest.raises(ImportFileError) as info:
        run(session, clinic, "Appointment ID,Notes\nA-1,x\n")
    message = str(info.value)
    assert message.startswith("missing required columns: 'patient name'")
    assert "'phone' (accepted: phone, phone number, mobile" in message
    assert "'appointment start'" in message


def test_no_usable_rows(session: Session, clinic: Clinic) -> None:
    header_only = run(session, clinic, f"{HEADER}\n")
    assert (header_only.rows, header_only.usable_rows) == (0, 0)
    all_bad = run(session, clinic, f"{HEADER}\nA-1,Ada,123,2026-03-10 09:30,,,,,,\n")
    assert (all_bad.rows, all_bad.usable_rows, len(all_bad.rejected)) == (1, 0, 1)
    assert count(session) == 0


def test_reimport_updates_by_appointment_id(session: Session, clinic: Clinic) -> None:
    first = (
        f"{HEADER}\n"
        "U-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30,Dr. A,,,,,\n"
        "U-2,Alan Turing,(212) 555-0101,2026-03-10 10:30,Dr. A,,,,,\n"
        "U-3,Grace Hopper,(212) 555-0102,2026-03-10 11:30,Dr. A,,,,,\n"
    )
    run(session, clinic, first)
    session.commit()
    before = appointments(session)
    rescheduled_attempt = add_attempt(
        session, before["U-1"], AttemptState.SCHEDULED, due_at=NOW + timedelta(days=1)
    )
    untouched_attempt = add_attempt(
        session, before["U-2"], AttemptState.SCHEDULED, due_at=NOW + timedelta(days=1)
    )
    queued_attempt = add_attempt(
        session, before["U-3"], AttemptState.QUEUED, due_at=NOW + timedelta(days=1)
    )
    session.commit()

    again = run(session, clinic, first, filename="again.csv")
    assert (again.imported, again.updated, again.unchanged) == (0, 0, 3)

    second = (
        f"{HEADER}\n"
        "U-1,Ada Lovelace,(212) 555-0100,2026-03-11 09:30,Dr. A,,,,,\n"  # new time
        "U-2,Alan Turing,(212) 555-0101,2026-03-10 10:30,Dr. B,,,,,\n"  # new provider
        "U-3,Grace Hopper,(212) 555-0102,2026-03-10 11:30,Dr. A,,,,,\n"  # same
        "U-4,Edsger Dijkstra,(212) 555-0103,2026-03-12 08:00,Dr. A,,,,,\n"
    )
    report = run(session, clinic, second, filename="second.csv")
    session.commit()
    assert (report.imported, report.updated, report.unchanged) == (1, 2, 1)
    assert report.attempts_skipped == 1
    after = appointments(session)
    assert len(after) == 4
    assert after["U-1"].id == before["U-1"].id
    assert after["U-1"].starts_at == datetime(2026, 3, 11, 13, 30, tzinfo=UTC)
    assert after["U-1"].updated_at == NOW
    assert after["U-2"].provider == "Dr. B"
    # The number did not change, so neither does its recorded source.
    assert after["U-2"].phone_source == before["U-2"].phone_source

    skipped = session.get(CallAttempt, rescheduled_attempt)
    assert skipped is not None
    assert (skipped.state, skipped.skip_reasons) == (
        AttemptState.SKIPPED,
        "appointment_rescheduled",
    )
    assert session.get(CallAttempt, untouched_attempt).state == AttemptState.SCHEDULED  # type: ignore[union-attr]
    assert session.get(CallAttempt, queued_attempt).state == AttemptState.QUEUED  # type: ignore[union-attr]


def test_optional_columns_absent_from_a_reimport_are_kept(session: Session, clinic: Clinic) -> None:
    run(
        session,
        clinic,
        f"{HEADER}\nK-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30,Dr. A,Main,,NY,10001,\n",
    )
    report = run(
        session, clinic, "ID,Name,Phone,Start\nK-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30\n"
    )
    assert report.unchanged == 1
    ada = appointments(session)["K-1"]
    assert (ada.provider, ada.location, ada.patient_state) == ("Dr. A", "Main", "NY")


def test_cancelled_rows_cancel_and_skip_scheduled_attempts(
    session: Session, clinic: Clinic
) -> None:
    first = (
        f"{HEADER}\n"
        "C-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30,,,,,,\n"
        "C-2,Alan Turing,(212) 555-0101,2026-03-10 10:30,,,,,,\n"
    )
    run(session, clinic, first)
    stored = appointments(session)
    scheduled = add_attempt(session, stored["C-1"], AttemptState.SCHEDULED)
    dialing = add_attempt(session, stored["C-2"], AttemptState.DIALING)
    session.commit()

    second = (
        f"{HEADER}\n"
        "C-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30,,,,,,Cancelled\n"
        "C-2,Alan Turing,(212) 555-0101,2026-03-10 10:30,,,,,,canceled\n"
        "C-3,Grace Hopper,(212) 555-0102,2026-03-10 11:30,,,,,,CANCELLED\n"
    )
    report = run(session, clinic, second)
    session.commit()
    assert (report.imported, report.updated, report.cancelled) == (1, 2, 3)
    assert {a.status for a in appointments(session).values()} == {AppointmentStatus.CANCELLED}
    attempt = session.get(CallAttempt, scheduled)
    assert attempt is not None
    assert (attempt.state, attempt.skip_reasons) == (AttemptState.SKIPPED, "appointment_cancelled")
    # In flight: the pipeline re-checks the appointment's status at dial time.
    assert session.get(CallAttempt, dialing).state == AttemptState.DIALING  # type: ignore[union-attr]


def test_cancelled_rows_audit_each_skipped_attempt(session: Session, clinic: Clinic) -> None:
    first = (
        f"{HEADER}\n"
        "A-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30,,,,,,\n"
        "A-2,Alan Turing,(212) 555-0101,2026-03-10 10:30,,,,,,\n"
        "A-3,Grace Hopper,(212) 555-0102,2026-03-10 11:30,,,,,,\n"
    )
    run(session, clinic, first)
    stored = appointments(session)
    skipped = {add_attempt(session, stored[key], AttemptState.SCHEDULED) for key in ("A-1", "A-2")}
    dialing = add_attempt(session, stored["A-3"], AttemptState.DIALING)
    session.commit()

    second = first.replace(",,,,,,\n", ",,,,,,cancelled\n")
    assert run(session, clinic, second).attempts_skipped == 2
    session.commit()
    events = session.execute(
        select(col(AuditEvent.attempt_id), col(AuditEvent.payload)).where(
            col(AuditEvent.kind) == "attempt.skipped"
        )
    ).all()
    assert {attempt_id for attempt_id, _ in events} == skipped
    assert all(json.loads(payload)["reason"] == "appointment_cancelled" for _, payload in events)
    in_flight = session.execute(
        select(func.count()).where(col(AuditEvent.attempt_id) == dialing)
    ).scalar_one()
    assert in_flight == 0


def test_status_from_calls_survives_a_plain_reimport(session: Session, clinic: Clinic) -> None:
    content = f"{HEADER}\nQ-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30,,,,,,scheduled\n"
    run(session, clinic, content)
    ada = appointments(session)["Q-1"]
    ada.status = AppointmentStatus.CONFIRMED
    session.commit()

    assert run(session, clinic, content).unchanged == 1
    assert appointments(session)["Q-1"].status == AppointmentStatus.CONFIRMED

    moved = content.replace("2026-03-10 09:30", "2026-03-12 09:30")
    assert run(session, clinic, moved).updated == 1
    assert appointments(session)["Q-1"].status == AppointmentStatus.SCHEDULED


def _rows(n: int, *, start: int = 0) -> str:
    out = [HEADER]
    for i in range(start, start + n):
        minute = i % 600
        out.append(
            f"G-{i},Patient {i},(212) 555-{i % 10000:04d},"
            f"2026-04-{1 + i % 28:02d} {8 + minute // 60:02d}:{minute % 60:02d},Dr. {i % 7},,,,,"
        )
    return "\n".join(out) + "\n"


def test_progress_error_after_flushed_chunks_leaves_nothing(
    session: Session, clinic: Clinic
) -> None:
    session.commit()
    calls: list[int] = []

    def progress(done: int) -> None:
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(session, clinic, _rows(50), progress=progress, chunk_rows=10)
    assert calls == [10, 20, 30]
    assert count(session) == 30  # flushed, not committed
    session.rollback()
    assert count(session) == 0
    assert session.execute(select(func.count()).select_from(AuditEvent)).scalar_one() == 0


def test_database_failure_mid_file_leaves_nothing(session: Session, clinic: Clinic) -> None:
    session.commit()
    engine = session.get_bind()
    lookups = 0

    # The third chunk's read fails, after two chunks were written (with COPY on
    # PostgreSQL, which passes no SQLAlchemy cursor event, else with INSERT).
    def fail_third_chunk(*args: Any) -> None:
        nonlocal lookups
        if args[2].lstrip().upper().startswith("SELECT APPOINTMENT.ID, APPOINTMENT.EXTERNAL_ID"):
            lookups += 1
            if lookups == 3:
                raise RuntimeError("database went away")

    event.listen(engine, "before_cursor_execute", fail_third_chunk)
    try:
        with pytest.raises(RuntimeError, match="database went away"):
            run(session, clinic, _rows(50), chunk_rows=10)
    finally:
        event.remove(engine, "before_cursor_execute", fail_third_chunk)
    session.rollback()
    assert count(session) == 0


def test_ten_thousand_rows(session: Session, clinic: Clinic, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text(_rows(10_000))
    progress: list[int] = []
    report = import_appointments(
        session,
        clinic,
        path,
        filename=path.name,
        now=NOW,
        actor="test",
        progress=progress.append,
    )
    session.commit()
    assert (report.imported, report.rejected) == (10_000, [])
    assert progress[-1] == 10_000
    assert progress == sorted(progress)
    assert len(progress) >= 10
    assert count(session) == 10_000


class _Pipe(io.RawIOBase):
    """A stream that cannot seek, like stdin."""

    def __init__(self, data: bytes) -> None:
        self._chunks: Iterator[bytes] = iter([data[i : i + 7] for i in range(0, len(data), 7)])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = next(self._chunks, b"")
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_unseekable_stream_and_unreadable_path(
    session: Session, clinic: Clinic, tmp_path: Path
) -> None:
    data = f"{HEADER}\nP-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30,,,,,,\n".encode()
    stream = io.BufferedReader(_Pipe(data))
    report = import_appointments(session, clinic, stream, filename="stdin", now=NOW, actor="test")
    assert report.imported == 1
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(ImportFileError, match=r"cannot read missing\.csv"):
        import_appointments(
            session, clinic, tmp_path / "missing.csv", filename="missing.csv", now=NOW, actor="t"
        )


def test_rows_go_to_their_own_clinic(session: Session) -> None:
    one = add_clinic(session, name="One")
    two = add_clinic(session, name="Two", timezone="America/Los_Angeles")
    content = f"{HEADER}\nO-1,Ada Lovelace,(212) 555-0100,2026-03-10 09:30,,,,,,\n"
    assert run(session, one, content).imported == 1
    assert run(session, two, content).imported == 1
    starts = {a.clinic_id: a.starts_at for a in session.execute(select(Appointment)).scalars()}
    assert starts == {
        one.id: datetime(2026, 3, 10, 13, 30, tzinfo=UTC),
        two.id: datetime(2026, 3, 10, 16, 30, tzinfo=UTC),
    }
