"""Calling windows and what a policy allows on each local date and in each zone.

Pure: no clock reads, no I/O. :class:`CallingWindow` is local wall-clock hours;
:class:`StateRule` one date-stamped row of the state rule table; :class:`Policy`
everything the caller configures (clinic row + state rules). :class:`DayRules` is
one decision's view of a policy: per local date, every limit (federal window, clinic
window, weekdays and holidays, each state's window, Sunday and holiday bans) and
their intersection. :func:`zone_failures` says why an instant fails in a zone;
:func:`zone_next` gives a lower bound on the next instant that passes there, never
stepping over a change of the zone's UTC offset (DST gaps and repeated hours are
handled from the instants themselves).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property, lru_cache
from types import MappingProxyType
from zoneinfo import ZoneInfo

import holidays

_PROBE_STEP = timedelta(hours=12)
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

    def day_rules(self, states: tuple[str, ...]) -> DayRules:
        """The policy's :class:`DayRules` for callees in ``states``, shared by every
        decision under this policy (what they memoise depends on nothing else)."""
        shared = self._day_rules
        found = shared.get(states)
        if found is None:
            found = shared.setdefault(states, DayRules(self, states))
        return found

    @cached_property
    def _day_rules(self) -> dict[tuple[str, ...], DayRules]:
        return {}

    @cached_property
    def rules_by_state(self) -> Mapping[str, tuple[StateRule, ...]]:
        by_state: dict[str, list[StateRule]] = {}
        for rule in self.state_rules:
            by_state.setdefault(rule.state, []).append(rule)
        return {state: tuple(rules) for state, rules in by_state.items()}


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


class DayRules:
    """The policy's view for callees in some states: limits per local date, memoised."""

    def __init__(self, policy: Policy, states: tuple[str, ...]) -> None:
        self.policy = policy
        self.states = states
        self._limits: dict[date, tuple[_Limit, ...]] = {}
        self._windows: dict[date, tuple[time, time] | None] = {}
        self._caps: dict[tuple[date, ...], tuple[int, str]] = {}
        self._boundaries: list[date] | None = None
        self._zero_cap: bool | None = None

    def rule_for(self, state: str, day: date) -> StateRule | None:
        rules = self.policy.rules_by_state.get(state, ())
        matches = [r for r in rules if r.effective_on(day)]
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
        key = tuple(days)
        cached = self._caps.get(key)
        if cached is not None:
            return cached
        cap, source = self.policy.max_dials_per_number_24h, "clinic max per day"
        for day in days:
            for state in self.states:
                rule = self.rule_for(state, day)
                rule_cap = rule.max_calls_per_24h if rule is not None else None
                if rule_cap is not None and rule_cap < cap:
                    cap, source = rule_cap, state
        self._caps[key] = (cap, source)
        return cap, source

    def some_24h_cap_is_zero(self) -> bool:
        """Whether the 24-hour cap is 0 on some day: the clinic's, or a state rule's."""
        if self._zero_cap is None:
            self._zero_cap = self.policy.max_dials_per_number_24h <= 0 or any(
                rule.max_calls_per_24h is not None and rule.max_calls_per_24h <= 0
                for state in self.states
                for rule in self.policy.rules_by_state.get(state, ())
            )
        return self._zero_cap

    def boundaries(self) -> list[date]:
        if self._boundaries is None:
            out: set[date] = set()
            for rule in self.policy.state_rules:
                if rule.state in self.states:
                    out.add(rule.effective_from)
                    if rule.effective_to is not None:
                        out.add(rule.effective_to)
            self._boundaries = sorted(out)
        return self._boundaries


# --------------------------------------------------------------------------- zone maths


def wall_time(zone: ZoneInfo, t: datetime) -> datetime:
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


# What a check returns when no instant will ever pass it.
NEVER = object()


def zone_failures(rules: DayRules, zone: ZoneInfo, t: datetime) -> list[str]:
    wall = wall_time(zone, t)
    out: list[str] = []
    clock = wall.time()
    for limit in rules.limits(wall.date()):
        if limit.window is None:
            out.append(f"{limit.code}: {limit.detail} {zone.key}")
        elif not limit.window.contains(clock):
            stamp = f"{wall:%Y-%m-%d %H:%M} {zone.key}"
            extra = f" {limit.detail}" if limit.detail else ""
            out.append(f"{limit.code}: {stamp} not in {limit.window}{extra}")
    return out


def zone_next(rules: DayRules, zone: ZoneInfo, t: datetime, *, limit: datetime) -> object:
    """None if ``t`` passes in ``zone``; else a lower bound > t on the next pass, or NEVER."""
    wall = wall_time(zone, t)
    day = wall.date()
    today = rules.window(day)
    if today is not None and today[0] <= wall.time() < today[1]:
        return None
    target: datetime | None = None
    if today is not None and wall.time() < today[0]:
        target = datetime.combine(day, today[0])
    else:
        last_day = wall_time(zone, limit).date() + timedelta(days=1)
        probe = day + timedelta(days=1)
        while probe <= last_day:
            window = rules.window(probe)
            if window is not None:
                target = datetime.combine(probe, window[0])
                break
            probe += timedelta(days=1)
    if target is None:
        return NEVER
    reach = t + (target - wall)  # valid while the offset stays the same
    change = _next_offset_change(zone, t, reach)
    return change if change is not None else reach
