"""The database side of the compliance policy: gathers the pure inputs of
:func:`campaigns.compliance.policy.decide` from rows (:func:`gather`, :func:`decide_for`),
and the helpers of ``explain`` (:func:`decision_document`, :func:`next_attempt_number`,
:func:`find_appointment`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.orm import Session
from sqlmodel import col, func, select

from campaigns import dnc
from campaigns.clinics import get_clinic, parse_holidays, parse_weekdays
from campaigns.compliance.policy import Callee, Decision, DncCheck, History, decide
from campaigns.compliance.state_rules import load_state_rules
from campaigns.compliance.windows import CallingWindow, Policy, StateRule
from campaigns.db import one_of
from campaigns.errors import NotFoundError
from campaigns.models import OPEN_ATTEMPT_STATES, Appointment, CallAttempt, Clinic

NUMBER_CAP_SPAN = timedelta(days=7)


def policy_for(clinic: Clinic, rules: Sequence[StateRule], ruleset_version: str) -> Policy:
    window = CallingWindow(clinic.window_start, clinic.window_end)
    return Policy(
        clinic_window=window,
        clinic_weekdays=frozenset(parse_weekdays(clinic.weekdays)),
        clinic_holidays=parse_holidays(clinic.holidays) if clinic.holidays else None,
        state_rules=tuple(rules),
        max_attempts=clinic.max_attempts,
        cutoff=timedelta(minutes=clinic.cutoff_minutes),
        min_gap=timedelta(seconds=clinic.min_gap_seconds),
        max_dials_per_number_24h=clinic.dials_per_number_24h,
        max_dials_per_number_7d=clinic.dials_per_number_7d,
        ruleset_version=ruleset_version,
    )


class CalleeFacts(Protocol):
    """What the policy reads of an appointment (an ``Appointment`` row or a claimed row)."""

    @property
    def phone_e164(self) -> str: ...
    @property
    def patient_timezone(self) -> str | None: ...
    @property
    def patient_state(self) -> str | None: ...
    @property
    def patient_zip(self) -> str | None: ...
    @property
    def starts_at(self) -> datetime: ...
    @property
    def status(self) -> str: ...


def callee_for(appointment: CalleeFacts, clinic: Clinic) -> Callee:
    return Callee(
        phone_e164=appointment.phone_e164,
        country=clinic.country,
        timezone=appointment.patient_timezone,
        state=appointment.patient_state,
        zip_code=appointment.patient_zip,
        appointment_start=appointment.starts_at,
        appointment_status=appointment.status,
    )


@dataclass(frozen=True)
class Question:
    """One attempt the policy is asked about."""

    appointment_id: int
    clinic_id: int
    attempt_number: int
    callee: CalleeFacts


@dataclass(frozen=True)
class PolicyInputs:
    """Everything the policy reads from the database for some attempts, read at once."""

    rules: tuple[tuple[StateRule, ...], str]
    clinics: Mapping[int, Clinic]
    policies: Mapping[int, Policy]
    dnc: dnc.DncSnapshot
    dials: Mapping[str, tuple[datetime, ...]]
    last_dial: Mapping[int, datetime]

    def decide(self, question: Question, now: datetime) -> Decision:
        found = self.dnc.lookup(question.callee.phone_e164, question.clinic_id)
        return decide(
            callee_for(question.callee, self.clinics[question.clinic_id]),
            History(
                attempt_number=question.attempt_number,
                last_attempt_at=self.last_dial.get(question.appointment_id),
                dials_to_number=self.dials.get(question.callee.phone_e164, ()),
            ),
            now,
            self.policies[question.clinic_id],
            DncCheck(found.blocked_by, found.registry_as_of, found.list_versions),
        )


def gather(
    session: Session,
    questions: Sequence[Question],
    clinics: Iterable[Clinic],
    now: datetime,
    rules: tuple[tuple[StateRule, ...], str] | None = None,
) -> PolicyInputs:
    """Read the inputs of the policy for ``questions``: the DNC lists, every dial to
    their numbers in the last week, each appointment's last dial, the rules."""
    state_rules, version = rules = rules or load_state_rules(session)
    by_id = {clinic.id: clinic for clinic in clinics if clinic.id is not None}
    phones = sorted({q.callee.phone_e164 for q in questions})
    dials: dict[str, list[datetime]] = {}
    for phone, dialed in session.execute(
        select(CallAttempt.number_called, CallAttempt.dialing_at).where(
            one_of(session, col(CallAttempt.number_called), phones),
            col(CallAttempt.dialing_at) > now - NUMBER_CAP_SPAN,
        )
    ).all():
        if dialed is not None:
            dials.setdefault(phone, []).append(dialed)
    last_dial = {
        appointment_id: last
        for appointment_id, last in session.execute(
            select(CallAttempt.appointment_id, func.max(CallAttempt.dialing_at))
            .where(
                one_of(
                    session,
                    col(CallAttempt.appointment_id),
                    sorted({q.appointment_id for q in questions}),
                ),
                col(CallAttempt.dialing_at).is_not(None),
            )
            .group_by(col(CallAttempt.appointment_id))
        ).all()
        if last is not None
    }
    return PolicyInputs(
        rules=rules,
        clinics=by_id,
        policies={cid: policy_for(clinic, state_rules, version) for cid, clinic in by_id.items()},
        dnc=dnc.snapshot(session, phones),
        dials={phone: tuple(sorted(times)) for phone, times in dials.items()},
        last_dial=last_dial,
    )


def decide_for(
    session: Session,
    appointment: Appointment,
    clinic: Clinic,
    attempt_number: int,
    now: datetime,
    rules: tuple[tuple[StateRule, ...], str] | None = None,
) -> Decision:
    """Everything the policy needs, read in the caller's transaction, then the pure decision."""
    assert appointment.id is not None and clinic.id is not None
    question = Question(appointment.id, clinic.id, attempt_number, appointment)
    return gather(session, [question], [clinic], now, rules).decide(question, now)


def decision_document(decision: Decision) -> dict[str, Any]:
    """The decision as an auditor reads it (and as ``explain --json`` prints it)."""
    return {
        "allowed": decision.allowed,
        "reasons": list(decision.reasons),
        "next_allowed_at": decision.next_allowed_at.isoformat().replace("+00:00", "Z")
        if decision.next_allowed_at
        else None,
        "callee_zones": list(decision.callee_zones),
        "callee_local_times": dict(decision.callee_local_times),
        "callee_states": list(decision.callee_states),
        "zone_source": decision.zone_source,
        "zone_sources": {zone: list(found) for zone, found in decision.zone_sources.items()},
        "ruleset_version": decision.ruleset_version,
        "dnc_list_versions": dict(decision.dnc_list_versions),
    }


def explain(session: Session, clinic_name: str, external_id: str, now: datetime) -> dict[str, Any]:
    """Why the appointment's next attempt may or may not be called at ``now``, and when
    next: the document ``explain`` prints (``decision_document`` plus the question)."""
    clinic = get_clinic(session, clinic_name)
    return explain_appointment(session, clinic, find_appointment(session, clinic, external_id), now)


def explain_appointment(
    session: Session, clinic: Clinic, appointment: Appointment, now: datetime
) -> dict[str, Any]:
    """:func:`explain` for an appointment already loaded (the console's pages and API)."""
    number = next_attempt_number(session, appointment)
    decision = decide_for(session, appointment, clinic, number, now)
    document = {
        "appointment": appointment.external_id,
        "attempt_number": number,
        "at": now.isoformat(),
    }
    return document | decision_document(decision)


def next_attempt_number(session: Session, appointment: Appointment) -> int:
    """The attempt the policy is asked about: the open one, else the one after the last."""
    numbers = session.execute(
        select(CallAttempt.attempt_number, CallAttempt.state).where(
            col(CallAttempt.appointment_id) == appointment.id
        )
    ).all()
    open_numbers = [n for n, state in numbers if state in OPEN_ATTEMPT_STATES]
    if open_numbers:
        return max(open_numbers)
    return max((n for n, _ in numbers), default=0) + 1


def find_appointment(session: Session, clinic: Clinic, external_id: str) -> Appointment:
    appointment = session.execute(
        select(Appointment).where(
            col(Appointment.clinic_id) == clinic.id, col(Appointment.external_id) == external_id
        )
    ).scalar_one_or_none()
    if appointment is None:
        raise NotFoundError(f"clinic {clinic.name!r} has no appointment {external_id!r}")
    return appointment
