"""The agent's report after the engine closed the attempt itself, and reports it refuses.

An authentic report replaces the engine's `failed` (an ambiguous dial, or
reconciliation giving up on a silent call) whatever the outcome, and never
calls the patient once more for it. A report that is not applied says why in
the audit log, and an opt-out under an authentic token always reaches the
do-not-call list. None of it puts a patient's number in the logs.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import dnc
from campaigns.attempts import dial, reconcile, reports
from campaigns.models import (
    Appointment,
    AppointmentStatus,
    AttemptState,
    AuditEvent,
    CallAttempt,
)
from campaigns.telephony.outcomes import AGENT_OUTCOMES, DialProblem, Outcome
from campaigns.telephony.port import CallResult
from campaigns.tokens import sign_report_token
from tests.factories import add_appointment, add_clinic

SECRET = "late-report-test-secret-0123456789abcdef"
NOW = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)  # a Tuesday, 11:00 in New York
PHONE = "+12125550147"
ROOM = "appt-1-x"


def _dialing_attempt(session: Session, **clinic_settings: Any) -> CallAttempt:
    clinic = add_clinic(
        session, trunk_id="ST_x", retry_base_seconds=60, min_gap_seconds=0, **clinic_settings
    )
    appointment = add_appointment(
        session,
        clinic,
        phone_e164=PHONE,
        patient_timezone="America/New_York",
        starts_at=NOW + timedelta(days=2),
    )
    assert appointment.id is not None and clinic.id is not None
    attempt = CallAttempt(
        appointment_id=appointment.id,
        clinic_id=clinic.id,
        attempt_number=1,
        state=AttemptState.DIALING,
        due_at=NOW - timedelta(minutes=5),
        dialing_at=NOW - timedelta(minutes=5),
        number_called=appointment.phone_e164,
        room_name=ROOM,
        participant_identity="callee-1-x",
    )
    session.add(attempt)
    session.flush()
    return attempt


def _token(attempt: CallAttempt, expires_at: datetime = NOW + timedelta(minutes=10)) -> str:
    assert attempt.id is not None and attempt.room_name is not None
    return sign_report_token(attempt.id, attempt.room_name, expires_at, SECRET)


def _report(
    session: Session,
    attempt: CallAttempt,
    outcome: str,
    *,
    token: str | None = None,
    at: datetime = NOW + timedelta(minutes=1),
    detail: dict[str, Any] | None = None,
) -> reports.ReportResult:
    assert attempt.id is not None
    result = reports.record_outcome(
        session,
        attempt.id,
        outcome,
        _token(attempt) if token is None else token,
        at,
        secret=SECRET,
        jitter=0.5,
        detail=detail,
    )
    session.commit()
    session.expire_all()
    return result


def _reconciled(session: Session, attempt: CallAttempt) -> None:
    assert attempt.id is not None
    stale = reconcile.StaleAttempt(
        attempt.id, attempt.state, attempt.room_name, attempt.participant_identity, None
    )
    assert reconcile.reconcile_attempt(session, stale, [], NOW, jitter=0.5) == "failed"
    session.commit()


def _ambiguous_dial(session: Session, attempt: CallAttempt) -> None:
    assert attempt.id is not None
    result = CallResult(
        answered=False,
        outcome=Outcome.FAILED,
        error="ReadTimeout: no answer",
        problem=DialProblem.AMBIGUOUS,
    )
    dial.finish_dial(session, attempt.id, result, NOW, jitter=0.5)
    session.commit()


STATUS_AFTER = {
    Outcome.CONFIRMED: AppointmentStatus.CONFIRMED,
    Outcome.CANCELLED: AppointmentStatus.CANCELLED,
    Outcome.RESCHEDULE_REQUESTED: AppointmentStatus.RESCHEDULE_REQUESTED,
    Outcome.WRONG_NUMBER: AppointmentStatus.WRONG_NUMBER,
    Outcome.OPTED_OUT: AppointmentStatus.OPTED_OUT,
    Outcome.TRANSFERRED: AppointmentStatus.TRANSFERRED,
    Outcome.VOICEMAIL: AppointmentStatus.SCHEDULED,  # the waiting retry calls again
}
CLOSED_BY_THE_ENGINE = {"reconciliation": _reconciled, "ambiguous dial": _ambiguous_dial}


def _attempts(session: Session) -> list[CallAttempt]:
    return list(
        session.execute(select(CallAttempt).order_by(col(CallAttempt.attempt_number))).scalars()
    )


def _audited(session: Session, kind: str) -> list[dict[str, Any]]:
    return [
        json.loads(payload)
        for payload in session.execute(
            select(AuditEvent.payload)
            .where(col(AuditEvent.kind) == kind)
            .order_by(col(AuditEvent.id))
        ).scalars()
    ]


def _on_dnc_list(session: Session, attempt: CallAttempt) -> bool:
    return dnc.lookup(session, PHONE, attempt.clinic_id).blocked_by == ("clinic",)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.mark.parametrize("closed_by", CLOSED_BY_THE_ENGINE)
@pytest.mark.parametrize("outcome", sorted(AGENT_OUTCOMES))
def test_an_authentic_report_replaces_the_engines_failed_for_every_outcome(
    session: Session, closed_by: str, outcome: Outcome, logs: pytest.LogCaptureFixture
) -> None:
    attempt = _dialing_attempt(session, retry_voicemail=True)
    CLOSED_BY_THE_ENGINE[closed_by](session, attempt)
    (_, waiting_retry) = _attempts(session)
    assert waiting_retry.state == AttemptState.SCHEDULED

    result = _report(session, attempt, outcome)

    assert result.accepted
    first, *later = _attempts(session)
    assert (first.state, first.outcome) == (AttemptState.COMPLETED, outcome)
    # One retry at most, the one already waiting: the report never adds a call.
    assert [a.attempt_number for a in later] == [2]
    expected = AttemptState.SCHEDULED if outcome == Outcome.VOICEMAIL else AttemptState.SKIPPED
    assert later[0].state == expected
    assert _on_dnc_list(session, attempt) == (outcome == Outcome.OPTED_OUT)
    appointment = session.get(Appointment, attempt.appointment_id)
    assert appointment is not None
    assert appointment.status == STATUS_AFTER[outcome]
    assert PHONE not in logs.text


def test_a_late_report_after_the_retry_was_dialed_adds_no_call(session: Session) -> None:
    attempt = _dialing_attempt(session, retry_voicemail=True)
    _reconciled(session, attempt)
    (_, retry) = _attempts(session)
    retry.state = AttemptState.COMPLETED
    retry.outcome = Outcome.NO_ANSWER
    session.commit()

    assert _report(session, attempt, "voicemail").accepted
    assert [(a.attempt_number, a.outcome) for a in _attempts(session)] == [
        (1, Outcome.VOICEMAIL),
        (2, Outcome.NO_ANSWER),
    ]


def test_a_report_on_an_exhausted_failed_attempt_may_schedule_the_retry(
    session: Session,
) -> None:
    """When the failure left no retry (none was due), a voicemail gets its own."""
    attempt = _dialing_attempt(session, retry_voicemail=True, max_attempts=2)
    _ambiguous_dial(session, attempt)
    (_, retry) = _attempts(session)
    session.delete(retry)  # as if the policy had dropped it
    session.commit()

    assert _report(session, attempt, "voicemail").accepted
    assert [(a.attempt_number, a.state) for a in _attempts(session)] == [
        (1, AttemptState.COMPLETED),
        (2, AttemptState.SCHEDULED),
    ]


def test_a_report_an_agent_cannot_make_is_refused_and_audited(
    session: Session, logs: pytest.LogCaptureFixture
) -> None:
    attempt = _dialing_attempt(session)
    _reconciled(session, attempt)

    for outcome in ("busy", "no_answer", "hung-up", ""):
        result = _report(session, attempt, outcome)
        assert not result.accepted and result.reason == "not an agent outcome"

    assert _attempts(session)[0].outcome == Outcome.FAILED
    refused = _audited(session, reports.REPORT_REFUSED)
    assert [(p["reason"], p["outcome"]) for p in refused] == [
        ("not an agent outcome", "busy"),
        ("not an agent outcome", "no_answer"),
        ("not an agent outcome", "hung-up"),
        ("not an agent outcome", ""),
    ]
    assert PHONE not in logs.text


def test_an_opt_out_lands_on_the_dnc_list_even_as_a_duplicate(
    session: Session, logs: pytest.LogCaptureFixture
) -> None:
    attempt = _dialing_attempt(session)
    assert _report(session, attempt, "confirmed").accepted

    again = _report(session, attempt, "opted_out", at=NOW + timedelta(minutes=2))

    assert again.duplicate and not again.accepted
    assert _attempts(session)[0].outcome == Outcome.CONFIRMED
    assert _on_dnc_list(session, attempt)
    [ignored] = _audited(session, reports.REPORT_IGNORED)
    assert ignored["opt_out_recorded"] is True
    assert ignored["reason"].startswith("duplicate")
    assert PHONE not in logs.text


def test_an_expired_token_is_refused_but_its_opt_out_is_honoured(session: Session) -> None:
    attempt = _dialing_attempt(session)
    expired = _token(attempt, expires_at=NOW)

    confirmed = _report(session, attempt, "confirmed", token=expired)
    opted_out = _report(session, attempt, "opted_out", token=expired)

    assert (confirmed.reason, opted_out.reason) == ("token expired", "token expired")
    first = _attempts(session)[0]
    assert (first.state, first.outcome) == (AttemptState.DIALING, None)
    assert _on_dnc_list(session, attempt)
    assert [p["opt_out_recorded"] for p in _audited(session, reports.REPORT_REFUSED)] == [
        False,
        True,
    ]


def test_a_token_of_another_attempt_or_room_is_refused_and_changes_nothing(
    session: Session,
) -> None:
    attempt = _dialing_attempt(session)
    assert attempt.id is not None
    expiry = NOW + timedelta(minutes=10)
    other_attempt = sign_report_token(attempt.id + 1, ROOM, expiry, SECRET)
    other_room = sign_report_token(attempt.id, "appt-1-y", expiry, SECRET)

    for token in (other_attempt, other_room):
        result = _report(session, attempt, "opted_out", token=token)
        assert not result.accepted

    assert _attempts(session)[0].state == AttemptState.DIALING
    assert not _on_dnc_list(session, attempt)  # not authentic: no opt-out either
    refused = _audited(session, reports.REPORT_REFUSED)
    assert [p["reason"] for p in refused] == ["bad token: not signed for this attempt and room"] * 2


def test_a_report_for_no_attempt_is_refused_and_audited(session: Session) -> None:
    result = reports.record_outcome(
        session, 999_999, "confirmed", "v2.1.x", NOW, secret=SECRET, jitter=0.5
    )
    session.commit()
    assert (result.accepted, result.reason) == (False, "no such attempt")
    event = session.execute(
        select(AuditEvent).where(col(AuditEvent.kind) == reports.REPORT_REFUSED)
    ).scalar_one()
    assert event.attempt_id == 999_999


# --------------------------------------------------------------------------- detail


def _completed_payload(session: Session) -> dict[str, Any]:
    [payload] = _audited(session, "attempt.completed")
    return payload


def test_detail_keeps_only_the_allowed_keys_and_counts_the_rest(session: Session) -> None:
    attempt = _dialing_attempt(session)
    detail = {
        "preferred_times": ["monday morning", "x" * 900],
        "reason": "r" * 600,
        "amd": "human",
        "script_version": "confirm-v1",
        "transferred_to": None,
        "patient_said": "my date of birth is ...",
        "nested": {"a": 1},
        "transcript": "t" * 100,
    }

    assert _report(session, attempt, "reschedule_requested", detail=detail).accepted

    payload = _completed_payload(session)
    assert payload["detail"] == {
        "preferred_times": ["monday morning", "x" * 500],
        "reason": "r" * 500,
        "amd": "human",
        "script_version": "confirm-v1",
        "transferred_to": None,
    }
    assert payload["dropped_detail_keys"] == 3


def test_detail_is_capped_at_4_kb_as_a_whole(session: Session) -> None:
    attempt = _dialing_attempt(session)
    detail = {"preferred_times": ["é" * 500] * 40, "reason": "short", "amd": "machine"}

    assert _report(session, attempt, "voicemail", detail=detail).accepted

    payload = _completed_payload(session)
    assert payload["detail"] == {"reason": "short", "amd": "machine"}
    assert payload["dropped_detail_keys"] == 1


@pytest.mark.parametrize("detail", [["a", "list"], "text", 42])
def test_a_detail_that_is_not_an_object_is_dropped(session: Session, detail: Any) -> None:
    attempt = _dialing_attempt(session)
    assert _report(session, attempt, "confirmed", detail=detail).accepted
    payload = _completed_payload(session)
    assert (payload["detail"], payload["dropped_detail_keys"]) == ({}, 1)
