"""The database side of the compliance policy: builds the pure inputs of
:func:`campaigns.policy.decide` from rows, and stores the state rule table."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, time, timedelta
from time import monotonic
from typing import Any, Protocol

from sqlalchemy import Connection, delete, insert
from sqlalchemy.orm import Session
from sqlmodel import col, func, select

from campaigns import dnc
from campaigns.clinics import parse_holidays, parse_weekdays
from campaigns.db import one_of
from campaigns.errors import NotFoundError
from campaigns.models import OPEN_ATTEMPT_STATES, Appointment, CallAttempt, Clinic, StateRuleRow
from campaigns.policy import (
    Callee,
    CallingWindow,
    Decision,
    DncCheck,
    History,
    Policy,
    StateRule,
    decide,
    load_seed_state_rules,
)

NUMBER_CAP_SPAN = timedelta(days=7)


def _window(start: time | None, end: time | None) -> CallingWindow | None:
    return CallingWindow(start, end) if start is not None and end is not None else None


def _rule_from_row(row: StateRuleRow) -> StateRule:
    window = _window(row.window_start, row.window_end)
    assert window is not None
    return StateRule(
        state=row.state,
        effective_from=row.effective_from,
        effective_to=row.effective_to,
        window=window,
        sunday_window=_window(row.sunday_start, row.sunday_end),
        saturday_window=_window(row.saturday_start, row.saturday_end),
        sunday_banned=row.sunday_banned,
        holiday_banned=row.holiday_banned,
        extra_holidays=tuple(
            datetime.fromisoformat(d).date() for d in json.loads(row.extra_holidays)
        ),
        max_calls_per_24h=row.max_calls_per_24h,
        citation=row.citation,
    )


def _row_values(rule: StateRule) -> dict[str, Any]:
    return {
        "state": rule.state,
        "effective_from": rule.effective_from,
        "effective_to": rule.effective_to,
        "window_start": rule.window.start,
        "window_end": rule.window.end,
        "saturday_start": rule.saturday_window.start if rule.saturday_window else None,
        "saturday_end": rule.saturday_window.end if rule.saturday_window else None,
        "sunday_start": rule.sunday_window.start if rule.sunday_window else None,
        "sunday_end": rule.sunday_window.end if rule.sunday_window else None,
        "sunday_banned": rule.sunday_banned,
        "holiday_banned": rule.holiday_banned,
        "extra_holidays": json.dumps([d.isoformat() for d in rule.extra_holidays]),
        "max_calls_per_24h": rule.max_calls_per_24h,
        "citation": rule.citation,
    }


def sync_seed_state_rules(connection: Connection) -> None:
    """Replace the state rule table with the packaged one (run by migrations)."""
    connection.execute(delete(StateRuleRow))
    connection.execute(insert(StateRuleRow), [_row_values(r) for r in load_seed_state_rules()])


# Workers re-check the policy at every dial; the table changes rarely (a new holiday),
# so each process re-reads it at most this often.
RULES_MAX_AGE_SECONDS = 30.0
_rules_cache: dict[str, tuple[float, tuple[tuple[StateRule, ...], str]]] = {}
_rules_lock = threading.Lock()


def load_state_rules(session: Session) -> tuple[tuple[StateRule, ...], str]:
    """The rules in force and their version (a digest of the table, so any change shows),
    read at most every :data:`RULES_MAX_AGE_SECONDS` per database."""
    key = session.get_bind().engine.url.render_as_string(hide_password=True)
    with _rules_lock:
        cached = _rules_cache.get(key)
    if cached is not None and monotonic() - cached[0] < RULES_MAX_AGE_SECONDS:
        return cached[1]
    loaded = _read_state_rules(session)
    with _rules_lock:
        _rules_cache[key] = (monotonic(), loaded)
    return loaded


def _read_state_rules(session: Session) -> tuple[tuple[StateRule, ...], str]:
    rows = session.execute(
        select(StateRuleRow).order_by(col(StateRuleRow.state), col(StateRuleRow.effective_from))
    ).scalars()
    rules = tuple(_rule_from_row(r) for r in rows)
    digest = hashlib.sha256(
        json.dumps([asdict(r) for r in rules], default=str, sort_keys=True).encode()
    ).hexdigest()
    return rules, f"rules-{digest[:12]}"


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
