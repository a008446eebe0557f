"""Dialing a queued attempt: the last policy check, the dial request, its result.

``begin_dial`` moves the attempt to ``dialing`` and returns the one request to
dial; the caller commits that state before any dial, so whatever crashes, the
database says whether a dial may have happened, and an ambiguous attempt is
never dialed again. ``finish_dial`` records what LiveKit answered. A clinic
whose configuration makes every call fail is paused here (no retry storm).

Callers own the transaction: nothing here commits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from campaigns import audit
from campaigns.attempts import closing, transitions
from campaigns.attempts.metadata import agent_metadata
from campaigns.attempts.transitions import WORKER
from campaigns.compliance import service as compliance
from campaigns.models import Appointment, AttemptState, Clinic, Trunk
from campaigns.telephony.outcomes import DialProblem, Outcome
from campaigns.telephony.port import CallRequest, CallResult
from campaigns.telephony.trunks import DEFAULT_CPS, DEFAULT_MAX_CONCURRENT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DialSettings:
    default_trunk: str | None
    default_agent: str
    report_secret: str
    ringing_timeout: timedelta
    max_call_duration: timedelta
    agent_script_version: str
    # How long after the longest call the agent's report token stays valid.
    report_grace: timedelta


@dataclass(frozen=True)
class DialPlan:
    """The one request to dial, and the limits of the trunk it goes through."""

    request: CallRequest
    calls_per_second: float
    max_concurrent: int


def begin_dial(
    session: Session,
    attempt_id: int,
    now: datetime,
    config: DialSettings,
    *,
    worker_id: str | None = None,
) -> DialPlan | None:
    """queued -> dialing after a last policy check; the returned request is dialed exactly once.

    None when there is nothing to dial: not queued any more (a duplicate task),
    the policy now says no (a DNC entry added a second ago wins), or the clinic
    has no trunk (the clinic is paused until an operator fixes it). ``worker_id``
    marks the attempt as this worker's, so reconciliation notices if it dies.
    """
    attempt = transitions.load_for_update(session, attempt_id, with_context=True)
    if attempt is None or attempt.state != AttemptState.QUEUED:
        return None
    appointment = session.get(Appointment, attempt.appointment_id)
    clinic = session.get(Clinic, attempt.clinic_id)
    assert appointment is not None and clinic is not None
    if clinic.paused_reason:
        transitions.hold(attempt, now)
        return None
    decision = compliance.decide_for(session, appointment, clinic, attempt.attempt_number, now)
    document = compliance.decision_document(decision)
    attempt.decision = transitions.decision_json(document)
    if not decision.allowed:
        transitions.refuse(session, attempt, decision, now)
        return None
    trunk_id = clinic.trunk_id or config.default_trunk
    if not trunk_id:
        pause_clinic(
            session,
            clinic,
            "no SIP outbound trunk: set it with `campaigns clinic add --trunk` "
            "or LIVEKIT_SIP_TRUNK_ID",
            now,
        )
        transitions.hold(attempt, now)
        return None
    transitions.dialing(
        session,
        attempt,
        now,
        trunk_id=trunk_id,
        caller_id=clinic.caller_id,
        worker_id=worker_id,
        payload={
            "number_source": appointment.phone_source,
            "agent_name": clinic.agent_name or config.default_agent,
            "agent_script_version": config.agent_script_version,
            "decision": document,
        },
    )
    assert attempt.id is not None and attempt.room_name and attempt.participant_identity
    request = CallRequest(
        attempt_id=attempt.id,
        room_name=attempt.room_name,
        participant_identity=attempt.participant_identity,
        trunk_id=trunk_id,
        call_to=attempt.number_called,
        caller_id=clinic.caller_id,
        agent_name=clinic.agent_name or config.default_agent,
        agent_metadata=agent_metadata(
            attempt.id,
            attempt.room_name,
            attempt.participant_identity,
            now + config.ringing_timeout + config.max_call_duration + config.report_grace,
            appointment,
            clinic,
            config.report_secret,
            config.agent_script_version,
        ),
        ringing_timeout=config.ringing_timeout,
        max_call_duration=config.max_call_duration,
    )
    trunk = session.get(Trunk, trunk_id)
    return DialPlan(
        request,
        trunk.calls_per_second if trunk else DEFAULT_CPS,
        trunk.max_concurrent if trunk else DEFAULT_MAX_CONCURRENT,
    )


def not_dialed(
    session: Session, attempt_id: int, now: datetime, *, why: str, due_at: datetime
) -> None:
    """dialing -> scheduled, due at ``due_at``: the worker sent no dial (its trunk was full)."""
    attempt = transitions.load_for_update(session, attempt_id)
    if attempt is not None and attempt.state == AttemptState.DIALING:
        transitions.undialed(session, attempt, now, why=why, error=None, due_at=due_at)


def pause_clinic(
    session: Session, clinic: Clinic, reason: str, now: datetime, *, actor: str = WORKER
) -> None:
    """Stop calling for a clinic: by hand, or when its configuration makes every call fail."""
    if clinic.paused_reason == reason:
        return
    clinic.paused_reason = reason
    clinic.updated_at = now
    log.error("clinic %s paused: %s", clinic.name, reason)
    audit.record(
        session, "clinic.paused", {"reason": reason}, actor=actor, clinic_id=clinic.id, at=now
    )


def resume_clinic(session: Session, clinic: Clinic, *, actor: str) -> bool:
    if clinic.paused_reason is None:
        return False
    audit.record(
        session, "clinic.resumed", {"was": clinic.paused_reason}, actor=actor, clinic_id=clinic.id
    )
    clinic.paused_reason = None
    return True


@dataclass(frozen=True)
class FinishedDial:
    """What the worker learned; ``release_slot`` is False while the call goes on."""

    state: str
    outcome: str | None
    release_slot: bool


def finish_dial(
    session: Session, attempt_id: int, result: CallResult, now: datetime, *, jitter: float
) -> FinishedDial:
    """Record the result of CreateSIPParticipant and, for a failed dial, the next attempt."""
    if result.answered and transitions.answered(session, attempt_id, now, result):
        return FinishedDial(AttemptState.ANSWERED, None, release_slot=False)
    attempt = transitions.load_for_update(session, attempt_id)
    assert attempt is not None
    attempt.dispatch_id = result.dispatch_id or attempt.dispatch_id
    attempt.sip_call_id = result.sip_call_id or attempt.sip_call_id
    attempt.sip_status_code = result.sip_status_code
    attempt.sip_status = result.sip_status
    attempt.updated_at = now
    if attempt.state != AttemptState.DIALING:
        # The agent's report (or reconciliation) got here first; keep its outcome.
        return FinishedDial(attempt.state, attempt.outcome, attempt.state != AttemptState.ANSWERED)
    clinic = session.get(Clinic, attempt.clinic_id)
    assert clinic is not None
    if result.problem in (DialProblem.CONFIGURATION, DialProblem.MISSED_START):
        # Nothing was dialed: the attempt goes back; on a configuration error the
        # clinic stops until fixed.
        if result.problem is DialProblem.CONFIGURATION:
            pause_clinic(session, clinic, f"telephony configuration: {result.error}", now)
            transitions.undialed(
                session, attempt, now, why="configuration error", error=result.error
            )
        else:
            transitions.undialed(
                session, attempt, now, why="trunk at its limit", error=result.error, due_at=now
            )
        return FinishedDial(attempt.state, None, release_slot=True)
    outcome = result.outcome or Outcome.FAILED
    closing.close(
        session,
        attempt,
        clinic,
        outcome,
        now,
        error=result.error,
        ambiguous=result.problem is DialProblem.AMBIGUOUS,
        jitter=jitter,
        actor=WORKER,
    )
    return FinishedDial(attempt.state, outcome, release_slot=True)
