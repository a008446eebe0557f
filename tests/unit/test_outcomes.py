"""Classification of failed dials: the SPEC section 5 table, by SIP status first."""

from __future__ import annotations

import pytest

from campaigns.telephony.outcomes import (
    AGENT_OUTCOMES,
    RETRYABLE_OUTCOMES,
    TERMINAL_OUTCOMES,
    DialProblem,
    Outcome,
    classify_dial_error,
    is_retryable,
)


def test_vocabulary_is_exact() -> None:
    assert {o.value for o in Outcome} == {
        "confirmed",
        "cancelled",
        "reschedule_requested",
        "voicemail",
        "no_answer",
        "busy",
        "declined",
        "invalid_number",
        "wrong_number",
        "opted_out",
        "transferred",
        "failed",
    }


def test_outcome_sets() -> None:
    assert {o.value for o in AGENT_OUTCOMES} == {
        "confirmed",
        "cancelled",
        "reschedule_requested",
        "voicemail",
        "wrong_number",
        "opted_out",
        "transferred",
    }
    assert {o.value for o in RETRYABLE_OUTCOMES} == {"no_answer", "busy", "voicemail", "failed"}
    assert frozenset(Outcome) == TERMINAL_OUTCOMES | RETRYABLE_OUTCOMES
    assert not TERMINAL_OUTCOMES & RETRYABLE_OUTCOMES
    assert Outcome.DECLINED in TERMINAL_OUTCOMES


@pytest.mark.parametrize(
    ("outcome", "retry_voicemail", "expected"),
    [
        (Outcome.VOICEMAIL, True, True),
        (Outcome.VOICEMAIL, False, False),
        (Outcome.BUSY, False, True),
        (Outcome.FAILED, False, True),
        (Outcome.CONFIRMED, True, False),
        (Outcome.OPTED_OUT, True, False),
        (Outcome.TRANSFERRED, True, False),
    ],
)
def test_is_retryable(outcome: Outcome, retry_voicemail: bool, expected: bool) -> None:
    assert is_retryable(outcome, retry_voicemail=retry_voicemail) is expected


# What a real LiveKit server returns (SPEC section 5), as the simulator reproduces it.
@pytest.mark.parametrize(
    ("status", "code", "msg", "sip", "outcome"),
    [
        (429, "resource_exhausted", "INVITE failed: sip status: 486: Busy Here", 486, "busy"),
        (429, "resource_exhausted", "INVITE failed: sip status: 600", 600, "busy"),
        (429, "resource_exhausted", "INVITE failed: sip status: 480", 480, "no_answer"),
        (408, "canceled", "sip request timed out", None, "no_answer"),
        (409, "aborted", "INVITE failed: sip status: 487", 487, "no_answer"),
        (403, "permission_denied", "INVITE failed: sip status: 603: Decline", 603, "declined"),
        (403, "permission_denied", "INVITE failed", 607, "declined"),
        (403, "permission_denied", "INVITE failed", 608, "declined"),
        (404, "not_found", "INVITE failed: sip status: 404: Not Found", 404, "invalid_number"),
        (400, "invalid_argument", "INVITE failed: sip status: 484", 484, "invalid_number"),
        (404, "not_found", "INVITE failed: sip status: 604", 604, "invalid_number"),
        (412, "failed_precondition", "INVITE failed: sip status: 503", 503, "failed"),
        (412, "failed_precondition", "INVITE failed: sip status: 500", 500, "failed"),
        (412, "failed_precondition", "INVITE failed: sip status: 488", 488, "failed"),
    ],
)
def test_sip_failures(status: int, code: str, msg: str, sip: int | None, outcome: str) -> None:
    result = classify_dial_error(status, code, msg, sip)
    assert result.outcome == outcome
    assert result.problem is None


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "resource_exhausted"),
        (403, "permission_denied"),
        (500, "internal"),
        (None, None),
        (412, "failed_precondition"),
        (200, "unknown"),
    ],
)
def test_sip_status_wins_over_twirp_code(status: int | None, code: str | None) -> None:
    # LiveKit changed the Twirp code of SIP failures in late 2025; the SIP code is stable.
    assert classify_dial_error(status, code, "", 486).outcome is Outcome.BUSY
    assert classify_dial_error(status, code, "", 603).outcome is Outcome.DECLINED


def test_unknown_trunk_is_a_configuration_error() -> None:
    result = classify_dial_error(404, "not_found", "requested sip trunk does not exist", None)
    assert result.outcome is None
    assert result.problem is DialProblem.CONFIGURATION
    assert "trunk" in result.reason
    assert "LIVEKIT_SIP_TRUNK_ID" in result.reason


@pytest.mark.parametrize(
    ("status", "code", "message", "setting"),
    [
        # livekit-server: a token it cannot verify is a plain-text 401 (code read as unknown)
        (401, "unknown", "", "LIVEKIT_API_SECRET"),
        (401, "unauthenticated", "invalid authorization token", "LIVEKIT_API_SECRET"),
        (None, "unauthenticated", "invalid token", "LIVEKIT_API_KEY"),
        # livekit-server: a valid token without the grant is 401 "permissions denied"
        (401, "unauthenticated", "permissions denied", "sip.call"),
        (403, "permission_denied", "permissions denied", "sip.call"),
    ],
)
def test_credentials_and_grants_are_configuration_errors(
    status: int | None, code: str, message: str, setting: str
) -> None:
    result = classify_dial_error(status, code, message, None)
    assert result.problem is DialProblem.CONFIGURATION
    assert result.outcome is None
    assert setting in result.reason


@pytest.mark.parametrize("sip", [401, 407])
def test_trunk_auth_rejected_by_carrier_is_a_configuration_error(sip: int) -> None:
    result = classify_dial_error(412, "failed_precondition", "", sip)
    assert result.problem is DialProblem.CONFIGURATION
    assert result.outcome is None
    assert "auth_password" in result.reason


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (None, None),
        (500, "internal"),
        (502, None),
        (503, "unavailable"),
        (504, None),
        (None, "unavailable"),
        (None, "deadline_exceeded_unknown"),
    ],
)
def test_transport_and_server_errors_are_ambiguous(status: int | None, code: str | None) -> None:
    result = classify_dial_error(status, code, "boom", None)
    assert result.outcome is Outcome.FAILED
    assert result.problem is DialProblem.AMBIGUOUS


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_argument"),
        (429, "resource_exhausted"),
        (412, "failed_precondition"),
        (409, "aborted"),
    ],
)
def test_other_refusals_without_metadata_are_plain_failures(status: int, code: str) -> None:
    result = classify_dial_error(status, code, "nope", None)
    assert result.outcome is Outcome.FAILED
    assert result.problem is None


def test_reason_keeps_the_server_message() -> None:
    assert (
        "sip request timed out"
        in classify_dial_error(408, "canceled", "sip request timed out", None).reason
    )
    assert "486" in classify_dial_error(429, "resource_exhausted", "", 486).reason
