"""The agent's report after an answered call: authenticated, idempotent, always audited.

Only a report under the token signed for the attempt and its room is applied;
its ``detail`` is cut down to :data:`DETAIL_KEYS` before it is kept. A report
that is not applied is audited with the reason. Callers own the transaction.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit
from campaigns.attempts import closing, transitions
from campaigns.attempts.transitions import AGENT
from campaigns.masking import mask_phone
from campaigns.models import AttemptState, CallAttempt, Clinic
from campaigns.telephony.outcomes import AGENT_OUTCOMES, Outcome, is_retryable
from campaigns.tokens import TokenCheck, check_report_token

log = logging.getLogger(__name__)

DETAIL_KEYS = frozenset({"preferred_times", "transferred_to", "amd", "reason", "script_version"})
DETAIL_STRING_LIMIT = 500  # characters of one string
DETAIL_SIZE_LIMIT = 4096  # bytes of the whole, as JSON
_DROP = object()


def _clean_detail_value(value: Any) -> Any:
    if isinstance(value, str):
        return value[:DETAIL_STRING_LIMIT]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _DROP
    if isinstance(value, list):
        items = [_clean_detail_value(item) for item in value if not isinstance(item, list)]
        return [item for item in items if item is not _DROP]
    return _DROP


def clean_detail(detail: Any) -> transitions.AgentReport:
    """The part of an agent's ``detail`` the engine keeps, and how many keys it dropped.

    Only :data:`DETAIL_KEYS` with scalar or list-of-scalar values are kept,
    strings cut to :data:`DETAIL_STRING_LIMIT` characters; while the whole is
    over :data:`DETAIL_SIZE_LIMIT` bytes of JSON its largest value is dropped.
    """
    if not isinstance(detail, dict):
        return transitions.AgentReport({}, 0 if detail is None else 1)
    kept: dict[str, Any] = {}
    for key, value in detail.items():
        cleaned = _clean_detail_value(value) if key in DETAIL_KEYS else _DROP
        if cleaned is not _DROP:
            kept[key] = cleaned
    while len(audit.canonical_json(kept).encode()) > DETAIL_SIZE_LIMIT:
        del kept[max(kept, key=lambda k: len(audit.canonical_json(kept[k]).encode()))]
    return transitions.AgentReport(kept, len(detail) - len(kept))


REPORT_IGNORED = "report.ignored"  # authentic, but the attempt already has its outcome
REPORT_REFUSED = "report.refused"  # not authentic, expired, or not an outcome an agent reports


@dataclass(frozen=True)
class ReportResult:
    attempt_id: int
    accepted: bool
    duplicate: bool
    release_slot: bool
    trunk_id: str | None
    # Why the report was not applied (audited as report.ignored / report.refused).
    reason: str | None = None


def _agent_outcome(outcome: Any) -> Outcome | None:
    try:
        reported = Outcome(outcome)
    except ValueError:
        return None
    return reported if reported in AGENT_OUTCOMES else None


def _not_applied(
    session: Session,
    kind: str,
    attempt_id: int,
    attempt: CallAttempt | None,
    outcome: Any,
    reason: str,
    now: datetime,
    *,
    opted_out: bool = False,
) -> ReportResult:
    """Audit a report that is not applied; an opt-out in it still reaches the DNC list."""
    if opted_out and attempt is not None:
        closing.record_opt_out(session, attempt, actor=AGENT)
    audit.record(
        session,
        kind,
        {
            "reason": reason,
            # As sent; an unauthenticated sender may put anything here, so only a short prefix.
            "outcome": str(outcome)[:40],
            "opt_out_recorded": opted_out and attempt is not None,
        },
        actor=AGENT,
        clinic_id=attempt.clinic_id if attempt else None,
        appointment_id=attempt.appointment_id if attempt else None,
        attempt_id=attempt_id,
        at=now,
    )
    log.warning("attempt %s: %s: %s", attempt_id, kind, reason)
    return ReportResult(
        attempt_id,
        accepted=False,
        duplicate=kind == REPORT_IGNORED,
        release_slot=False,
        trunk_id=attempt.trunk_id if attempt else None,
        reason=reason,
    )


def record_outcome(
    session: Session,
    attempt_id: int,
    outcome: str,
    token: str,
    now: datetime,
    *,
    secret: str,
    jitter: float,
    detail: dict[str, Any] | None = None,
) -> ReportResult:
    """The agent's report after an answered call: authenticated, idempotent, always audited.

    The token must be the one signed for this attempt and its room, and not
    expired. An authentic report replaces the engine's own ``failed`` (an
    ambiguous dial, or reconciliation giving up on a silent call), whatever the
    outcome, without calling the patient again for it. A report that is not
    applied is audited with the reason (``report.refused`` / ``report.ignored``);
    an opt-out under an authentic token reaches the do-not-call list even then.
    """
    attempt = transitions.load_for_update(session, attempt_id, with_context=True)
    if attempt is None:
        return _not_applied(
            session, REPORT_REFUSED, attempt_id, None, outcome, "no such attempt", now
        )
    check = check_report_token(token, attempt_id, attempt.room_name, now, secret)
    if check is TokenCheck.INVALID:
        invalid = "bad token: not signed for this attempt and room"
        return _not_applied(session, REPORT_REFUSED, attempt_id, attempt, outcome, invalid, now)
    reported = _agent_outcome(outcome)
    opted_out = reported is Outcome.OPTED_OUT
    supersedes = attempt.state == AttemptState.FAILED and attempt.outcome == Outcome.FAILED
    kind: str = REPORT_REFUSED
    reason: str | None = None
    if check is TokenCheck.EXPIRED or reported is None:
        reason = "token expired" if check is TokenCheck.EXPIRED else "not an agent outcome"
    elif not supersedes and (
        attempt.outcome is not None
        or attempt.state not in (AttemptState.DIALING, AttemptState.ANSWERED)
    ):
        kind = REPORT_IGNORED
        reason = f"duplicate: the attempt is already {attempt.state} ({attempt.outcome})"
    if reason is not None:
        return _not_applied(
            session, kind, attempt_id, attempt, outcome, reason, now, opted_out=opted_out
        )
    assert reported is not None
    clinic = session.get(Clinic, attempt.clinic_id)
    assert clinic is not None
    later_attempt_exists = supersedes and _settle_later_attempts(
        session, attempt, clinic, reported, now
    )
    # A report can beat the worker's own write after an answer; then the worker frees the slot.
    release = attempt.state == AttemptState.ANSWERED
    closing.close(
        session,
        attempt,
        clinic,
        reported,
        now,
        error=None,
        jitter=jitter,
        actor=AGENT,
        report=clean_detail(detail),
        schedule_next=not later_attempt_exists,
    )
    log.info(
        "attempt %s: agent reported %s for %s",
        attempt_id,
        reported,
        mask_phone(attempt.number_called),
    )
    return ReportResult(attempt_id, True, False, release, attempt.trunk_id)


def _settle_later_attempts(
    session: Session, attempt: CallAttempt, clinic: Clinic, reported: Outcome, now: datetime
) -> bool:
    """The attempts after a ``failed`` one that an authentic report now replaces.

    A retry still waiting is kept when the report allows one (voicemail) and
    skipped when it ends calling. Returns whether a later attempt exists: then
    the report schedules no retry of its own.
    """
    later = (col(CallAttempt.appointment_id) == attempt.appointment_id) & (
        col(CallAttempt.attempt_number) > attempt.attempt_number
    )
    if not is_retryable(reported, retry_voicemail=clinic.retry_voicemail):
        reason = f"superseded: the agent reported {reported} for attempt {attempt.attempt_number}"
        transitions.skip_scheduled(session, later, reason, now, actor=AGENT)
    return session.execute(select(CallAttempt.id).where(later).limit(1)).first() is not None
