"""Properties of decide(): allowed means inside every window in every candidate zone
(every signal's: stated zone, address, the number's own), and next_allowed_at is itself
allowed with nothing earlier allowed (DST days included)."""

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import timezone as pn_timezone

from campaigns.compliance.geography import US_FALLBACK_ZONES, zones_for_state, zones_for_zip
from campaigns.compliance.policy import Callee, Decision, DncCheck, History, decide
from campaigns.compliance.state_rules import load_seed_state_rules
from campaigns.compliance.windows import CallingWindow, Policy

ZONES = [
    *US_FALLBACK_ZONES,
    "Europe/London",
    "Europe/Berlin",
    "Europe/Moscow",
    "Australia/Lord_Howe",
    "Australia/Sydney",
    "Asia/Kolkata",
    "America/Santiago",
    "Pacific/Chatham",
    "UTC",
]
# Explicit zones, plus numbers giving several zones (TX, FL, AK, toll-free -> every US zone).
PHONES = [
    "+12125551234",
    "+12145551234",
    "+13055551234",
    "+19075551234",
    "+18005551234",
    "+16015551234",
    "+14015551234",
    "+18504321234",  # FL panhandle exchange: Central
    "+18502221234",  # Tallahassee: Eastern
    "+19067741234",  # MI Upper Peninsula exchange: Central
    "+15418891234",  # OR exchange: Mountain
    "+13135551234",
]
STATES = [None, "FL", "TX", "NY", "CA", "AK", "HI"]
ZIPS = [None, "32501", "79901", "10001", "99501", "96813"]
# DST transition days (and neighbours) for the zones above.
DAYS = [
    date(2026, 3, 8),
    date(2026, 11, 1),
    date(2026, 3, 29),
    date(2026, 10, 25),
    date(2026, 4, 5),
    date(2026, 10, 4),
    date(2026, 9, 27),
    date(2026, 12, 24),
    date(2026, 2, 15),
    date(2026, 7, 3),
]
RULES = tuple(load_seed_state_rules())
DNC = DncCheck(list_versions={"global": 1})


@st.composite
def windows(draw: st.DrawFn) -> CallingWindow:
    start = draw(st.integers(0, 23 * 60 - 1))
    end = draw(st.integers(start + 1, 24 * 60 - 1))
    return CallingWindow(time(start // 60, start % 60), time(end // 60, end % 60))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Callee, Policy, datetime, History]:
    callee = Callee(
        draw(st.sampled_from(PHONES)),
        "US",
        draw(st.one_of(st.none(), st.sampled_from(ZONES))),
        draw(st.sampled_from(STATES)),
        draw(st.sampled_from(ZIPS)),
        datetime(2099, 1, 1, tzinfo=UTC),
        "scheduled",
    )
    day = draw(st.sampled_from(DAYS))
    seconds = draw(st.integers(-36 * 3600, 60 * 3600))
    now = datetime.combine(day, time(0), tzinfo=UTC) + timedelta(seconds=seconds)
    weekdays = draw(st.frozensets(st.integers(0, 6), min_size=1))
    policy = Policy(
        clinic_window=draw(windows()),
        clinic_weekdays=weekdays,
        clinic_holidays=draw(st.sampled_from([None, ("US", None), ("US", "LA")])),
        state_rules=RULES,
        max_attempts=5,
        cutoff=timedelta(hours=1),
        min_gap=timedelta(minutes=draw(st.integers(0, 600))),
        max_dials_per_number_24h=draw(st.integers(1, 3)),
        max_dials_per_number_7d=draw(st.integers(3, 6)),
    )
    offsets = draw(st.lists(st.integers(1, 7 * 24 * 3600), max_size=5))
    dials = tuple(sorted(now - timedelta(seconds=s) for s in offsets))
    history = History(1, dials[-1] if dials else None, dials)
    return callee, policy, now, history


def _every_signals_zones(callee: Callee) -> set[str]:
    """The zones each signal gives on its own, looked up one signal at a time."""
    zones: set[str] = set()
    if callee.timezone:
        zones.add(callee.timezone)
    if callee.zip_code:
        zones.update(zones_for_zip(callee.zip_code))
    elif callee.state:
        zones.update(zones_for_state(callee.state))
    own = pn_timezone.time_zones_for_number(phonenumbers.parse(callee.phone_e164))
    if len(own) <= 3 and "Etc/Unknown" not in own:  # longer: toll-free, every NANP zone
        zones.update(own)
    return zones


def _run(callee: Callee, policy: Policy, t: datetime, history: History) -> Decision:
    return decide(callee, history, t, policy, DNC)


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_allowed_means_inside_every_window_in_every_zone(
    scenario: tuple[Callee, Policy, datetime, History],
) -> None:
    callee, policy, now, history = scenario
    decision = _run(callee, policy, now, history)
    assert decision.callee_zones
    if not _every_signals_zones(callee):  # no signal: the hours safe in every US zone
        assert decision.callee_zones == US_FALLBACK_ZONES
    if not decision.allowed:
        return
    assert decision.next_allowed_at == now
    assert _every_signals_zones(callee) <= set(decision.callee_zones)
    for name in decision.callee_zones:
        local = now.astimezone(ZoneInfo(name))
        wall = local.time().replace(tzinfo=None)
        assert time(8) <= wall < time(21), (name, local)
        assert policy.clinic_window.start <= wall < policy.clinic_window.end
        assert local.weekday() in policy.clinic_weekdays
        for state in decision.callee_states:
            for rule in RULES:
                if rule.state == state and rule.effective_on(local.date()):
                    assert not (rule.sunday_banned and local.weekday() == 6)
                    window = rule.window
                    if local.weekday() == 6 and rule.sunday_window:
                        window = rule.sunday_window
                    elif local.weekday() == 5 and rule.saturday_window:
                        window = rule.saturday_window
                    assert window.start <= wall < window.end


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.data())
def test_next_allowed_at_is_allowed_and_earliest(
    scenario: tuple[Callee, Policy, datetime, History],
    data: st.DataObject,
) -> None:
    callee, policy, now, history = scenario
    decision = _run(callee, policy, now, history)
    nxt = decision.next_allowed_at
    if nxt is None or decision.allowed:
        return
    assert nxt > now
    assert _run(callee, policy, nxt, history).allowed
    assert not _run(callee, policy, nxt - timedelta(seconds=1), history).allowed
    span = (nxt - now).total_seconds()
    fractions = data.draw(st.lists(st.floats(0, 1, exclude_max=True), min_size=3, max_size=8))
    for fraction in [0.0, *fractions]:
        earlier = now + timedelta(seconds=int(span * fraction))
        if earlier < nxt:
            assert not _run(callee, policy, earlier, history).allowed, earlier
