"""The compliance decision: may we dial this callee now, and if not, when?

``decide(callee, history, now, policy, dnc) -> Decision`` is pure: no clock reads,
no I/O, no database. The caller builds :class:`~campaigns.compliance.windows.Policy`
from the clinic row and the state-rule rows (:mod:`campaigns.compliance.state_rules`),
looks the number up in the DNC lists (:class:`DncCheck`) and counts earlier dials
(:class:`History`). The windows and per-date limits are in
:mod:`campaigns.compliance.windows`.

Every rule intersects (SPEC section 4):

- candidate zones and states come from :func:`campaigns.compliance.geography.locate`: the
  union of every signal (stated zone, address, the number's own zones), and a call
  must be allowed in EVERY zone, judged by converting the instant to each zone's
  local wall time;
- per local date: the federal window (08:00-21:00), the clinic window, weekdays
  and holidays (``holidays.country_holidays``), and for each callee state the
  :class:`StateRule` effective that date (``effective_from <= d < effective_to``):
  its window (``saturday_window`` / ``sunday_window`` replace it on those days),
  Sunday ban, legal-holiday ban (``holidays`` for ``US``/state plus
  ``extra_holidays``);
- per number: dials in the rolling (t-24h, t] under the strictest of the clinic's
  cap and the states' caps, and in the rolling 7 days under the clinic's cap;
- per appointment: ``min_gap`` since the last attempt, ``max_attempts``, and the
  cut-off ``appointment_start - cutoff`` (nothing at or after it);
- blockers with no future (``next_allowed_at`` None): DNC listing, stale (or, with
  ``require_national_registry``, missing) national-registry data, a terminal
  appointment status, attempts exhausted, past the cut-off, no zone known.

``next_allowed_at`` is the earliest instant >= ``now`` (to the second) at which every
rule passes, found by a fixpoint over lower bounds: each rule proposes the earliest
instant it could pass; a window rule never steps over a UTC-offset change of its
zone, so DST gaps and repeated hours are handled from the instants themselves.
The search stops at 60 days (then None).

``StateRule.saturday_window`` replaces the weekday window on Saturdays (RI);
``Policy.require_national_registry`` blocks calling until registry data is
loaded; ``Decision.zone_sources`` names, per zone, the signals that brought it
(``zone_source`` joins them: ``stated_timezone+number``).

Reason codes (``"code: detail"``):
``within_all_windows`` (allowed), ``dnc_listed``, ``national_registry_stale``,
``national_registry_missing``, ``terminal_status``, ``max_attempts_reached``,
``past_cutoff``, ``unknown_callee_zone``, ``min_gap``, ``number_cap_24h``,
``number_cap_7d``, ``outside_federal_window``, ``outside_clinic_window``,
``clinic_closed_weekday``, ``clinic_holiday``, ``outside_state_window``,
``state_sunday_ban``, ``state_holiday_ban``, ``no_allowed_time`` (blocked now and
no instant passes before the cut-off or within the search horizon).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from types import MappingProxyType
from zoneinfo import ZoneInfo

from campaigns.compliance.geography import locate
from campaigns.compliance.windows import (
    NEVER,
    Policy,
    wall_time,
    zone_failures,
    zone_next,
)
from campaigns.models import AppointmentStatus

__all__ = [
    "TERMINAL_STATUSES",
    "Callee",
    "Decision",
    "DncCheck",
    "History",
    "decide",
]

#: Appointment statuses that end calling: the patient answered, or the number cannot be called.
TERMINAL_STATUSES: frozenset[AppointmentStatus] = frozenset(AppointmentStatus) - {
    AppointmentStatus.SCHEDULED,
    AppointmentStatus.UNREACHED,
}

SEARCH_HORIZON = timedelta(days=60)
_MAX_UTC_OFFSET = timedelta(hours=14)
_MAX_ITERATIONS = 20_000


@dataclass(frozen=True)
class Callee:
    phone_e164: str
    country: str
    timezone: str | None
    state: str | None
    zip_code: str | None
    appointment_start: datetime  # tz-aware
    appointment_status: str


@dataclass(frozen=True)
class DncCheck:
    blocked_by: tuple[str, ...] = ()
    registry_as_of: date | None = None
    list_versions: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class History:
    attempt_number: int
    last_attempt_at: datetime | None = None
    dials_to_number: tuple[datetime, ...] = ()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reasons: tuple[str, ...]
    next_allowed_at: datetime | None
    callee_zones: tuple[str, ...]
    callee_local_times: Mapping[str, str]
    callee_states: tuple[str, ...]
    ruleset_version: str
    dnc_list_versions: Mapping[str, int]
    zone_source: str = ""
    zone_sources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# --------------------------------------------------------------------------- decide


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def _cap_free_at(dials: list[datetime], t: datetime, span: timedelta, cap: int) -> object:
    """None if fewer than ``cap`` dials in (t-span, t]; else when the cap frees up."""
    if cap <= 0:
        return NEVER
    recent = [d for d in dials if t - span < d <= t]
    if len(recent) < cap:
        return None
    return recent[-cap] + span


def _blockers(
    callee: Callee,
    history: History,
    now: datetime,
    policy: Policy,
    dnc: DncCheck,
    *,
    deadline: datetime,
) -> list[str]:
    out: list[str] = []
    if dnc.blocked_by:
        out.append(f"dnc_listed: {','.join(dnc.blocked_by)}")
    if dnc.registry_as_of is not None:
        age = now.date() - dnc.registry_as_of
        if age > policy.registry_max_age:
            out.append(
                f"national_registry_stale: data as of {dnc.registry_as_of.isoformat()} is "
                f"{age.days} days old (max {policy.registry_max_age.days})"
            )
    elif policy.require_national_registry:
        out.append("national_registry_missing: no national registry data loaded")
    if callee.appointment_status.strip().lower() in TERMINAL_STATUSES:
        out.append(f"terminal_status: {callee.appointment_status}")
    if history.attempt_number > policy.max_attempts:
        out.append(
            f"max_attempts_reached: attempt {history.attempt_number} > max {policy.max_attempts}"
        )
    if now >= deadline:
        out.append(
            f"past_cutoff: cut-off {deadline.isoformat()} "
            f"(appointment {_utc(callee.appointment_start, 'appointment_start').isoformat()}, "
            f"cut-off {policy.cutoff})"
        )
    return out


def decide(
    callee: Callee, history: History, now: datetime, policy: Policy, dnc: DncCheck
) -> Decision:
    """May ``callee`` be dialled at ``now`` under ``policy``; if not, the earliest instant."""
    now = _utc(now, "now")
    location = locate(
        callee.phone_e164, callee.country, callee.timezone, callee.state, callee.zip_code
    )
    zones = [ZoneInfo(z) for z in location.zones]
    rules = policy.day_rules(location.states)
    deadline = _utc(callee.appointment_start, "appointment_start") - policy.cutoff
    dials = sorted(_utc(d, "dials_to_number") for d in history.dials_to_number)
    last = (
        _utc(history.last_attempt_at, "last_attempt_at")
        if history.last_attempt_at is not None
        else None
    )
    boundaries = rules.boundaries()

    def cap24(t: datetime) -> tuple[int, str]:
        return rules.cap_24h([wall_time(z, t).date() for z in zones] or [t.date()])

    def gap_check(t: datetime) -> object:
        if last is None or t >= last + policy.min_gap:
            return None
        return last + policy.min_gap

    def next_boundary(t: datetime, free: object) -> object:
        # A state rule with another cap may start before the cap frees up: stop there.
        for day in boundaries:
            earliest = datetime.combine(day, time.min, tzinfo=UTC) - _MAX_UTC_OFFSET
            if earliest > t and (not isinstance(free, datetime) or earliest < free):
                return earliest
        return free

    def cap24_check(t: datetime) -> object:
        free = _cap_free_at(dials, t, timedelta(hours=24), cap24(t)[0])
        return None if free is None else next_boundary(t, free)

    def cap7_check(t: datetime) -> object:
        return _cap_free_at(dials, t, timedelta(days=7), policy.max_dials_per_number_7d)

    # A check that passes at every instant (no earlier dial, no zero cap) is left out.
    checks: list[Callable[[datetime], object]] = [
        check
        for check, needed in (
            (gap_check, last is not None),
            (cap24_check, bool(dials) or rules.some_24h_cap_is_zero()),
            (cap7_check, bool(dials) or policy.max_dials_per_number_7d <= 0),
        )
        if needed
    ]
    horizon = now + SEARCH_HORIZON
    for zone in zones:
        checks.append(partial(zone_next, rules, zone, limit=min(deadline, horizon)))

    # Reasons at `now`.
    reasons = _blockers(callee, history, now, policy, dnc, deadline=deadline)
    permanent = bool(reasons)
    if not zones:
        reasons.append(f"unknown_callee_zone: no zone for country {callee.country}")
        permanent = True
    if last is not None and now < last + policy.min_gap:
        reasons.append(
            f"min_gap: last attempt {last.isoformat()}, gap {policy.min_gap}, "
            f"until {(last + policy.min_gap).isoformat()}"
        )
    cap, cap_source = cap24(now)
    in_24h = sum(1 for d in dials if now - timedelta(hours=24) < d <= now)
    if in_24h >= cap:
        reasons.append(f"number_cap_24h: {in_24h} dials in 24 h (cap {cap}, {cap_source})")
    in_7d = sum(1 for d in dials if now - timedelta(days=7) < d <= now)
    if in_7d >= policy.max_dials_per_number_7d:
        reasons.append(
            f"number_cap_7d: {in_7d} dials in 7 days "
            f"(cap {policy.max_dials_per_number_7d}, clinic max per week)"
        )
    for zone in zones:
        reasons.extend(zone_failures(rules, zone, now))

    allowed = not reasons
    next_allowed: datetime | None
    if allowed:
        next_allowed = now
        states = ",".join(location.states) or "none"
        reasons.append(f"within_all_windows: zones from {location.zone_source}; states {states}")
    elif permanent:
        next_allowed = None
    else:
        next_allowed = _search(now, min(deadline, horizon), checks)
        if next_allowed is None:
            reasons.append(
                f"no_allowed_time: nothing passes before {min(deadline, horizon).isoformat()}"
            )

    return Decision(
        allowed=allowed,
        reasons=tuple(reasons),
        next_allowed_at=next_allowed,
        callee_zones=location.zones,
        callee_local_times=MappingProxyType(
            {z.key: now.astimezone(z).isoformat(timespec="seconds") for z in zones}
        ),
        callee_states=location.states,
        ruleset_version=policy.ruleset_version,
        dnc_list_versions=MappingProxyType(dict(dnc.list_versions)),
        zone_source=location.zone_source,
        zone_sources=location.zone_sources,
    )


def _search(
    start: datetime, limit: datetime, checks: list[Callable[[datetime], object]]
) -> datetime | None:
    """Earliest t in [start, limit) passing every check (each gives a lower bound or None)."""
    t = start
    for _ in range(_MAX_ITERATIONS):
        if t >= limit:
            return None
        candidate = t
        for check in checks:
            result = check(t)
            if result is NEVER:
                return None
            if isinstance(result, datetime) and result > candidate:
                candidate = result
        if candidate == t:
            return t
        t = candidate
    return None
