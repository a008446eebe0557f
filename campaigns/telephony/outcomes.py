"""Outcomes of a call attempt and the classification of a failed dial.

Pure: :func:`classify_dial_error` maps the error of ``CreateSIPParticipant``
(``wait_until_answered``) to an outcome. It classifies by the ``sip_status_code``
metadata, never by the Twirp code alone: LiveKit changed the Twirp code of SIP
failures in late 2025, the SIP status is the stable signal (SPEC section 5).

==========================================  ==========================  =============
error (HTTP status / Twirp code, metadata)  outcome                     problem
==========================================  ==========================  =============
any status, sip 486 / 600                   busy
any status, sip 480 / 487 / 408             no_answer
any status, sip 603 / 607 / 608             declined
any status, sip 404 / 410 / 484 / 604       invalid_number
any status, sip 401 / 407                   none (trunk auth rejected)  configuration
any status, other sip 1xx..6xx              failed
408 ``canceled``, no metadata               no_answer (ringing timeout)
401, msg "permissions denied"              none (grant ``sip.call``)   configuration
401, any other message                      none (API key/secret)       configuration
403 ``permission_denied``, no metadata      none (grant ``sip.call``)   configuration
404 ``not_found``, no metadata              none (unknown trunk id)     configuration
other 4xx, no metadata                      failed (request refused)
5xx, no metadata                            failed                      ambiguous
no HTTP status (transport error, timeout)   failed                      ambiguous
==========================================  ==========================  =============

A real livekit-server answers a token it cannot verify with a plain-text 401
(the client reads its code as ``unknown``) and a valid token without the
method's grant with 401 ``unauthenticated`` "permissions denied" (see
:func:`classify_refusal`). See :class:`DialProblem` for what each problem
means to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"
    RESCHEDULE_REQUESTED = "reschedule_requested"
    VOICEMAIL = "voicemail"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    DECLINED = "declined"
    INVALID_NUMBER = "invalid_number"
    WRONG_NUMBER = "wrong_number"
    OPTED_OUT = "opted_out"
    TRANSFERRED = "transferred"  # cold transfer to the clinic's staff: a person took over
    FAILED = "failed"


class DialProblem(StrEnum):
    """Why a failed dial is more than an outcome of the call (one at most)."""

    # LiveKit may have dialed the patient: the attempt is failed and never re-sent;
    # the retry policy creates a new attempt later.
    AMBIGUOUS = "ambiguous"
    # Not an outcome of the call: nothing was dialed and every further dial would
    # fail the same way (credentials, grants, trunk id, agent), so the caller pauses
    # and alerts instead of retrying.
    CONFIGURATION = "configuration"
    # Nothing was dialed: the trunk's pacing start had passed once the call was ready.
    MISSED_START = "missed_start"


# What the voice agent may report after the patient (or a voicemail box) answered.
AGENT_OUTCOMES: frozenset[Outcome] = frozenset(
    {
        Outcome.CONFIRMED,
        Outcome.CANCELLED,
        Outcome.RESCHEDULE_REQUESTED,
        Outcome.VOICEMAIL,
        Outcome.WRONG_NUMBER,
        Outcome.OPTED_OUT,
        Outcome.TRANSFERRED,
    }
)

# Outcomes after which another attempt may be scheduled. Voicemail is retried only
# when the clinic says so (``Clinic.retry_voicemail``); see :func:`is_retryable`.
RETRYABLE_OUTCOMES: frozenset[Outcome] = frozenset(
    {Outcome.NO_ANSWER, Outcome.BUSY, Outcome.VOICEMAIL, Outcome.FAILED}
)

# Outcomes that end calling for the appointment, whatever the clinic's settings.
TERMINAL_OUTCOMES: frozenset[Outcome] = frozenset(Outcome) - RETRYABLE_OUTCOMES


def is_retryable(outcome: Outcome, *, retry_voicemail: bool) -> bool:
    """Whether ``outcome`` allows another attempt (attempt caps aside)."""
    if outcome is Outcome.VOICEMAIL:
        return retry_voicemail
    return outcome in RETRYABLE_OUTCOMES


@dataclass(frozen=True)
class DialClassification:
    """How a failed dial is recorded.

    ``outcome`` is ``None`` exactly when ``problem`` is ``CONFIGURATION``: the
    engine's configuration, not the callee, made the dial fail.
    """

    outcome: Outcome | None
    problem: DialProblem | None
    reason: str


# Twirp error codes and the HTTP status Twirp gives them, for an error that
# carries a code but no status.
_TWIRP_HTTP_STATUS: dict[str, int] = {
    "canceled": 408,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unknown": 500,
    "unavailable": 503,
    "dataloss": 500,
}

_SIP_BUSY = frozenset({486, 600})
_SIP_NO_ANSWER = frozenset({408, 480, 487})
_SIP_DECLINED = frozenset({603, 607, 608})
_SIP_INVALID = frozenset({404, 410, 484, 604})
_SIP_TRUNK_AUTH = frozenset({401, 407})


class Refusal(StrEnum):
    """Which setting of the engine made LiveKit refuse a request."""

    CREDENTIALS = "credentials"  # LIVEKIT_API_KEY / LIVEKIT_API_SECRET
    GRANT = "grant"  # the key lacks the method's grant
    NOT_FOUND = "not_found"  # the named trunk (or room) does not exist


# What livekit-server says for a valid token that lacks the method's grant (401).
PERMISSIONS_DENIED = "permissions denied"


def classify_refusal(
    http_status: int | None, twirp_code: str | None, message: str
) -> Refusal | None:
    """The setting to blame for a refused request with no SIP status, if any."""
    if http_status == 403 or twirp_code == "permission_denied":
        return Refusal.GRANT
    if http_status == 401 or twirp_code == "unauthenticated":
        return Refusal.GRANT if message == PERMISSIONS_DENIED else Refusal.CREDENTIALS
    if http_status == 404 or twirp_code == "not_found":
        return Refusal.NOT_FOUND
    return None


# The hint of each refusal on a dial.
_DIAL_REFUSAL_HINTS: dict[Refusal, str] = {
    Refusal.CREDENTIALS: (
        "LiveKit rejected the API credentials; check LIVEKIT_API_KEY and LIVEKIT_API_SECRET"
    ),
    Refusal.GRANT: (
        "LiveKit denied the request; the API key LIVEKIT_API_KEY needs the sip.call grant "
        "(and roomAdmin)"
    ),
    Refusal.NOT_FOUND: (
        "unknown SIP outbound trunk; fix the clinic's trunk id (clinic trunk_id or "
        "LIVEKIT_SIP_TRUNK_ID, list trunks with `campaigns trunk list`)"
    ),
}


def _misconfigured(reason: str) -> DialClassification:
    """Not an outcome of the call: nothing dialed, and the engine's settings to blame."""
    return DialClassification(None, DialProblem.CONFIGURATION, reason)


def classify_sip_status(sip_status_code: int) -> DialClassification:
    """The outcome of a dial the carrier answered with a final SIP status."""
    code = sip_status_code
    if code in _SIP_BUSY:
        return DialClassification(Outcome.BUSY, None, f"sip {code}: callee busy")
    if code in _SIP_NO_ANSWER:
        return DialClassification(Outcome.NO_ANSWER, None, f"sip {code}: not answered")
    if code in _SIP_DECLINED:
        return DialClassification(Outcome.DECLINED, None, f"sip {code}: call declined")
    if code in _SIP_INVALID:
        return DialClassification(
            Outcome.INVALID_NUMBER, None, f"sip {code}: number does not exist"
        )
    if code in _SIP_TRUNK_AUTH:
        return _misconfigured(
            f"sip {code}: the carrier rejected the trunk's credentials; fix auth_username/"
            "auth_password of the clinic's outbound trunk (CLI: campaigns trunk create)"
        )
    if 500 <= code < 600:
        return DialClassification(Outcome.FAILED, None, f"sip {code}: carrier failure")
    return DialClassification(Outcome.FAILED, None, f"sip {code}: call not completed")


def classify_dial_error(
    http_status: int | None,
    twirp_code: str | None,
    message: str,
    sip_status_code: int | None,
) -> DialClassification:
    """Classify a failed ``CreateSIPParticipant`` (see the module's table).

    ``http_status`` is ``None`` for a transport error (connection lost, timeout)
    where no response was read. A refused connection proves nothing was sent; the
    gateway handles that case itself, before asking this function.
    """
    if sip_status_code is not None:
        return classify_sip_status(sip_status_code)
    status = http_status
    if status is None and twirp_code is not None:
        status = _TWIRP_HTTP_STATUS.get(twirp_code)
    detail = f"{status or 'no response'} {twirp_code or ''}: {message}".strip()
    if status is None:
        reason = f"transport error, the call may have been placed ({detail})"
        return DialClassification(Outcome.FAILED, DialProblem.AMBIGUOUS, reason)
    if status >= 500:
        reason = f"LiveKit server error, the call may have been placed ({detail})"
        return DialClassification(Outcome.FAILED, DialProblem.AMBIGUOUS, reason)
    if status == 408 or twirp_code == "canceled":
        return DialClassification(Outcome.NO_ANSWER, None, f"ringing timeout ({detail})")
    refusal = classify_refusal(status, twirp_code, message)
    if refusal is not None:
        return _misconfigured(f"{_DIAL_REFUSAL_HINTS[refusal]} ({detail})")
    reason = f"request refused by LiveKit, nothing dialed ({detail})"
    return DialClassification(Outcome.FAILED, None, reason)
