"""The compliance decision: may we dial this callee now, and if not, when?

``decide(callee, history, now, policy, dnc) -> Decision`` is pure: no clock reads,
no I/O, no database. The caller builds :class:`Policy` from the clinic row and the
state-rule rows (``load_seed_state_rules()`` reads the packaged seed table for the
migration and the tests), looks the number up in the DNC lists (:class:`DncCheck`)
and counts earlier dials (:class:`History`).

Every rule intersects (SPEC section 4):

- candidate zones and states come from :func:`campaigns.geography.locate`: the
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

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache, partial
from importlib import resources
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import holidays

from campaigns.geography import locate

__all__ = [
    "FEDERAL_WINDOW",
    "TERMINAL_STATUSES",
    "Callee",
    "CallingWindow",
    "Decision",
    "DncCheck",
    "History",
    "Policy",
    "StateRule",
    "decide",
    "load_seed_state_rules",
    "seed_ruleset_version",
]

TERMINAL_STATUSES: frozenset[str] = frozenset(
    {
        "confirmed",
        "cancelled",
        "canceled",
        "reschedule_requested",
        "completed",
        "no_show",
        "opted_out",
        "wrong_number",
        "invalid_number",
        "transferred",
    }
)

SEARCH_HORIZON = timedelta(days=60)
_PROBE_STEP = timedelta(hours=12)
_MAX_UTC_OFFSET = timedelta(hours=14)
_MAX_ITERATIONS = 20_000
_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_SATURDAY = 5
_SUNDAY = 6


@dataclass(frozen=True)
class CallingWindow:
    """Local wall-clock hours, ``start`` inclusive, ``end`` exclusive, same day."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("CallingWindow times are naive local wall times")
        if self.start >= self.end:
            raise ValueError(f"CallingWindow start {self.start} must be before end {self.end}")

    def contains(self, wall: time) -> bool:
        return self.start <= wall < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


FEDERAL_WINDOW = CallingWindow(time(8, 0), time(21, 0))  # 47 CFR 64.1200(c)(1)


@dataclass(frozen=True)
class StateRule:
    """One date-stamped row of the state rule table."""

    state: str
    effective_from: date
    effective_to: date | None
    window: CallingWindow
    sunday_window: CallingWindow | None
    sunday_banned: bool
    holiday_banned: bool
    extra_holidays: tuple[date, ...]
    max_calls_per_24h: int | None
    citation: str
    saturday_window: CallingWindow | None = None

    def effective_on(self, day: date) -> bool:
        return self.effective_from <= day and (self.effective_to is None or day < self.effective_to)


@dataclass(frozen=True)
class Policy:
    """Built by the caller from the clinic row and the state rule rows."""

    clinic_window: CallingWindow  # in the callee's local time
    clinic_weekdays: frozenset[int]  # 0=Mon..6=Sun
    clinic_holidays: tuple[str, str | None] | None  # ("US", "NY"); None = off
    state_rules: tuple[StateRule, ...]
    max_attempts: int
    cutoff: timedelta
    min_gap: timedelta
    max_dials_per_number_24h: int = 3
    max_dials_per_number_7d: int = 6
    registry_max_age: timedelta = timedelta(days=31)
    ruleset_version: str = ""
    federal_window: CallingWindow = FEDERAL_WINDOW
    require_national_registry: bool = False


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


# --------------------------------------------------------------------------- seed data


def _parse_window(raw: list[str] | None) -> CallingWindow | None:
    if raw is None:
        return None
    return CallingWindow(time.fromisoformat(raw[0]), time.fromisoformat(raw[1]))


def _seed_document() -> dict[str, Any]:
    text = resources.files("campaigns").joinpath("data/state_rules.json").read_text("utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def seed_ruleset_version() -> str:
    """The version string of the packaged seed table (record it as ``ruleset_version``)."""
    return str(_seed_document()["version"])


def load_seed_state_rules() -> list[StateRule]:
    """The packaged state rule table (``campaigns/data/state_rules.json``)."""
    rules: list[StateRule] = []
    for row in _seed_document()["rules"]:
        window = _parse_window(row["window"])
        assert window is not None
        rules.append(
            StateRule(
                state=row["state"],
                effective_from=date.fromisoformat(row["effective_from"]),
                effective_to=(
                    date.fromisoformat(row["effective_to"]) if row["effective_to"] else None
                ),
                window=window,
                sunday_window=_parse_window(row["sunday_window"]),
                saturday_window=_parse_window(row.get("saturday_window")),
                sunday_banned=bool(row["sunday_banned"]),
                holiday_banned=bool(row["holiday_banned"]),
                extra_holidays=tuple(date.fromisoformat(d) for d in row["extra_holidays"]),
                max_calls_per_24h=row["max_calls_per_24h"],
                citation=row["citation"],
            )
        )
    return rules


# --------------------------------------------------------------------------- calendars


@lru_cache(maxsize=512)
def _holidays_for(country: str, subdiv: str | None, year: int) -> Mapping[date, str]:
    table = holidays.country_holidays(country, subdiv=subdiv, years=year)
    return MappingProxyType(dict(table.items()))


def _holiday_name(country: str, subdiv: str | None, day: date) -> str | None:
    return _holidays_for(country, subdiv, day.year).get(day)


@dataclass(frozen=True)
class _Limit:
    """One rule's limit on a local date: a window, or closed all day (window None)."""

    code: str
    window: CallingWindow | None
    detail: str


class _Rules:
    """The per-decision view of the policy: limits per local date, memoised."""

    def __init__(self, policy: Policy, states: tuple[str, ...]) -> None:
        self.policy = policy
        self.states = states
        self._limits: dict[date, tuple[_Limit, ...]] = {}
        self._windows: dict[date, tuple[time, time] | None] = {}

    def rule_for(self, state: str, day: date) -> StateRule | None:
        matches = [r for r in self.policy.state_rules if r.state == state and r.effective_on(day)]
        return max(matches, key=lambda r: r.effective_from) if matches else None

    def limits(self, day: date) -> tuple[_Limit, ...]:
        cached = self._limits.get(day)
        if cached is not None:
            return cached
        p = self.policy
        out = [_Limit("outside_federal_window", p.federal_window, "")]
        if day.weekday() not in p.clinic_weekdays:
            out.append(_Limit("clinic_closed_weekday", None, _DAY_NAMES[day.weekday()]))
        out.append(_Limit("outside_clinic_window", p.clinic_window, ""))
        if p.clinic_holidays is not None:
            name = _holiday_name(p.clinic_holidays[0], p.clinic_holidays[1], day)
            if name is not None:
                out.append(_Limit("clinic_holiday", None, f"{day.isoformat()} {name}"))
        for state in self.states:
            rule = self.rule_for(state, day)
            if rule is None:
                continue
            weekday = day.weekday()
            if weekday == _SUNDAY and rule.sunday_banned:
                out.append(_Limit("state_sunday_ban", None, f"{state} ({rule.citation})"))
            if rule.holiday_banned:
                name = _holiday_name("US", state, day)
                if name is None and day in rule.extra_holidays:
                    name = "declared holiday"
                if name is not None:
                    detail = f"{state} {day.isoformat()} {name} ({rule.citation})"
                    out.append(_Limit("state_holiday_ban", None, detail))
            window = rule.window
            if weekday == _SUNDAY and rule.sunday_window is not None:
                window = rule.sunday_window
            elif weekday == _SATURDAY and rule.saturday_window is not None:
                window = rule.saturday_window
            out.append(_Limit("outside_state_window", window, f"{state} ({rule.citation})"))
        result = tuple(out)
        self._limits[day] = result
        return result

    def window(self, day: date) -> tuple[time, time] | None:
        """The intersection of every limit on ``day``; None when closed."""
        if day in self._windows:
            return self._windows[day]
        start, end = time.min, time.max
        result: tuple[time, time] | None = None
        limits = self.limits(day)
        if all(limit.window is not None for limit in limits):
            for limit in limits:
                assert limit.window is not None
                start = max(start, limit.window.start)
                end = min(end, limit.window.end)
            result = (start, end) if start < end else None
        self._windows[day] = result
        return result

    def cap_24h(self, days: list[date]) -> tuple[int, str]:
        cap, source = self.policy.max_dials_per_number_24h, "clinic max per day"
        for day in days:
            for state in self.states:
                rule = self.rule_for(state, day)
                rule_cap = rule.max_calls_per_24h if rule is not None else None
                if rule_cap is not None and rule_cap < cap:
                    cap, source = rule_cap, state
        return cap, source

    def boundaries(self) -> list[date]:
        out: set[date] = set()
        for rule in self.policy.state_rules:
            if rule.state in self.states:
                out.add(rule.effective_from)
                if rule.effective_to is not None:
                    out.add(rule.effective_to)
        return sorted(out)


# --------------------------------------------------------------------------- zone maths


def _wall(zone: ZoneInfo, t: datetime) -> datetime:
    return t.astimezone(zone).replace(tzinfo=None)


def _offset(zone: ZoneInfo, t: datetime) -> timedelta | None:
    return t.astimezone(zone).utcoffset()


def _next_offset_change(zone: ZoneInfo, t: datetime, until: datetime) -> datetime | None:
    """First instant in (t, until] where the zone's UTC offset differs from at ``t``."""
    base = _offset(zone, t)
    prev = t
    while prev < until:
        probe = min(prev + _PROBE_STEP, until)
        if _offset(zone, probe) != base:
            # Transitions fall on whole UTC seconds: bisect over integer seconds.
            lo = int(prev.timestamp())
            hi = int(probe.timestamp()) + (0 if probe.timestamp().is_integer() else 1)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, datetime.fromtimestamp(mid, UTC)) != base:
                    hi = mid
                else:
                    lo = mid
            return max(datetime.fromtimestamp(hi, UTC), t + timedelta(microseconds=1))
        prev = probe
    return None


_NEVER = object()


def _zone_failures(rules: _Rules, zone: ZoneInfo, t: datetime) -> list[str]:
    wall = _wall(zone, t)
    out: list[str] = []
    stamp = f"{wall:%Y-%m-%d %H:%M} {zone.key}"
    for limit in rules.limits(wall.date()):
        if limit.window is None:
            out.append(f"{limit.code}: {limit.detail} {zone.key}")
        elif not limit.window.contains(wall.time()):
            extra = f" {limit.detail}" if limit.detail else ""
            out.append(f"{limit.code}: {stamp} not in {limit.window}{extra}")
    return out


def _zone_next(rules: _Rules, zone: ZoneInfo, t: datetime, *, limit: datetime) -> object:
    """None if ``t`` passes in ``zone``; else a lower bound > t on the next pass, or _NEVER."""
    wall = _wall(zone, t)
    day = wall.date()
    today = rules.window(day)
    if today is not None and today[0] <= wall.time() < today[1]:
        return None
    target: datetime | None = None
    if today is not None and wall.time() < today[0]:
        target = datetime.combine(day, today[0])
    else:
        last_day = _wall(zone, limit).date() + timedelta(days=1)
        probe = day + timedelta(days=1)
        while probe <= last_day:
            window = rules.window(probe)
            if window is not None:
                target = datetime.combine(probe, window[0])
                break
            probe += timedelta(days=1)
    if target is None:
        return _NEVER
    reach = t + (target - wall)  # valid while the offset stays the same
    change = _next_offset_change(zone, t, reach)
    return change if change is not None else reach


# --------------------------------------------------------------------------- decide


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def _cap_free_at(dials: list[datetime], t: datetime, span: timedelta, cap: int) -> object:
    """None if fewer than ``cap`` dials in (t-span, t]; else when the cap frees up."""
    if cap <= 0:
        return _NEVER
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
    rules = _Rules(policy, location.states)
    deadline = _utc(callee.appointment_start, "appointment_start") - policy.cutoff
    dials = sorted(_utc(d, "dials_to_number") for d in history.dials_to_number)
    last = (
        _utc(history.last_attempt_at, "last_attempt_at")
        if history.last_attempt_at is not None
        else None
    )
    boundaries = rules.boundaries()

    def cap24(t: datetime) -> tuple[int, str]:
        return rules.cap_24h([_wall(z, t).date() for z in zones] or [t.date()])

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

    checks: list[Callable[[datetime], object]] = [gap_check, cap24_check, cap7_check]
    horizon = now + SEARCH_HORIZON
    for zone in zones:
        checks.append(partial(_zone_next, rules, zone, limit=min(deadline, horizon)))

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
        reasons.extend(_zone_failures(rules, zone, now))

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
            if result is _NEVER:
                return None
            if isinstance(result, datetime) and result > candidate:
                candidate = result
        if candidate == t:
            return t
        t = candidate
    return None
