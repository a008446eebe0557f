from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from campaigns.policy import (
    TERMINAL_STATUSES,
    Callee,
    CallingWindow,
    Decision,
    DncCheck,
    History,
    Policy,
    StateRule,
    decide,
    load_seed_state_rules,
    seed_ruleset_version,
)

NY = ZoneInfo("America/New_York")
CHI = ZoneInfo("America/Chicago")
RULES = tuple(load_seed_state_rules())
DNC = DncCheck(registry_as_of=date(2026, 1, 1), list_versions={"global": 4, "clinic": 2})

POLICY = Policy(
    clinic_window=CallingWindow(time(8), time(21)),
    clinic_weekdays=frozenset(range(7)),
    clinic_holidays=None,
    state_rules=RULES,
    max_attempts=3,
    cutoff=timedelta(hours=2),
    min_gap=timedelta(hours=1),
    ruleset_version="v7",
)


def callee(phone: str = "+12125551234", **kw: object) -> Callee:
    base = Callee(
        phone_e164=phone,
        country="US",
        timezone=None,
        state=None,
        zip_code=None,
        appointment_start=datetime(2099, 1, 1, tzinfo=UTC),
        appointment_status="scheduled",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def at(zone: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=zone, fold=fold).astimezone(UTC)  # type: ignore[arg-type, misc]


def run(
    c: Callee,
    now: datetime,
    policy: Policy = POLICY,
    history: History | None = None,
    dnc: DncCheck | None = None,
) -> Decision:
    if dnc is None:  # fresh registry data unless a test says otherwise
        dnc = replace(DNC, registry_as_of=now.date())
    return decide(c, history or History(1), now, policy, dnc)


def codes(decision: Decision) -> set[str]:
    return {r.split(":")[0] for r in decision.reasons}


# ------------------------------------------------------------------ basics


def test_allowed_inside_every_window() -> None:
    now = at(NY, 2026, 1, 15, 12)
    d = run(callee(), now)
    assert d.allowed
    assert d.next_allowed_at == now
    assert codes(d) == {"within_all_windows"}
    assert d.callee_zones == ("America/New_York",)
    assert d.callee_local_times == {"America/New_York": "2026-01-15T12:00:00-05:00"}
    assert d.callee_states == ("NY",)
    assert d.ruleset_version == "v7"
    assert d.dnc_list_versions == {"global": 4, "clinic": 2}


def test_naive_now_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        run(callee(), datetime(2026, 1, 15, 12))


def test_federal_window_and_exact_next() -> None:
    d = run(callee(), at(NY, 2026, 1, 15, 7, 12))
    assert not d.allowed
    reason = "outside_federal_window: 2026-01-15 07:12 America/New_York not in 08:00-21:00"
    assert reason in d.reasons
    assert d.next_allowed_at == at(NY, 2026, 1, 15, 8)
    d = run(callee(), at(NY, 2026, 1, 15, 21))
    assert d.next_allowed_at == at(NY, 2026, 1, 16, 8)
    assert run(callee(), at(NY, 2026, 1, 15, 20, 59, 59)).allowed


def test_clinic_window_weekdays_and_holidays() -> None:
    policy = replace(
        POLICY,
        clinic_window=CallingWindow(time(9), time(17)),
        clinic_weekdays=frozenset(range(5)),
        clinic_holidays=("US", "NY"),
    )
    d = run(callee(), at(NY, 2026, 1, 15, 17), policy)
    assert codes(d) == {"outside_clinic_window"}
    assert d.next_allowed_at == at(NY, 2026, 1, 16, 9)
    d = run(callee(), at(NY, 2026, 1, 17, 12), policy)  # Saturday
    assert "clinic_closed_weekday: Saturday America/New_York" in d.reasons
    assert d.next_allowed_at == at(NY, 2026, 1, 20, 9)  # Monday 19th is MLK Day
    d = run(callee(), at(NY, 2026, 1, 19, 12), policy)
    assert any(r.startswith("clinic_holiday: 2026-01-19 Martin Luther King") for r in d.reasons)


def test_clinic_holiday_uses_callee_local_date() -> None:
    policy = replace(POLICY, clinic_holidays=("US", None))
    # 2026-12-25 03:00 UTC is still Christmas Eve in Honolulu and Christmas in UTC.
    c = callee("+18085551234", timezone="Pacific/Honolulu")
    d = run(c, datetime(2026, 12, 25, 3, tzinfo=UTC), policy)  # 17:00 HST on the 24th
    assert d.allowed


# ------------------------------------------------------------------ states


def test_florida_area_code_presumption_8_to_8() -> None:
    c = callee("+13055551234")  # Miami: Eastern only, Florida's rules
    assert run(c, at(NY, 2026, 1, 15, 12)).callee_zones == ("America/New_York",)
    d = run(c, at(NY, 2026, 1, 15, 20, 30))
    assert "outside_state_window" in codes(d)
    assert any("FL" in r and "501.616" in r for r in d.reasons)
    assert d.next_allowed_at == at(NY, 2026, 1, 16, 8)
    assert run(c, at(NY, 2026, 1, 16, 8)).allowed  # not held to 08:00 Central


def test_florida_panhandle_exchange_is_central() -> None:
    c = callee("+18504321234")  # Pensacola exchange
    assert run(c, at(CHI, 2026, 1, 15, 12)).callee_zones == ("America/Chicago",)
    assert run(c, at(CHI, 2026, 1, 15, 19, 30)).allowed  # 20:30 in New York
    assert not run(c, at(CHI, 2026, 1, 15, 20)).allowed


def test_florida_rule_has_effective_date() -> None:
    c = callee("+13055551234", timezone="America/New_York")
    assert run(c, at(NY, 2021, 6, 30, 20, 30)).allowed  # before the FTSA amendment
    assert not run(c, at(NY, 2021, 7, 1, 20, 30)).allowed


def test_address_state_and_area_code_both_apply() -> None:
    c = callee("+13055551234", state="NY")  # NY address, FL number
    assert run(c, at(NY, 2026, 1, 15, 12)).callee_states == ("FL", "NY")
    assert "outside_state_window" in codes(run(c, at(NY, 2026, 1, 15, 20, 15)))


def test_oklahoma_and_maryland_windows() -> None:
    assert not run(callee("+14055551234"), at(CHI, 2026, 1, 15, 20)).allowed
    assert not run(callee("+13015551234"), at(NY, 2026, 1, 15, 20)).allowed
    assert run(callee("+13015551234"), at(NY, 2026, 1, 15, 19, 59)).allowed


def test_tx_number_with_el_paso_zip_intersects_chicago_and_denver() -> None:
    c = callee("+12145551234", zip_code="79901")
    d = run(c, at(CHI, 2026, 1, 15, 9, 30))  # 08:30 in Denver: TX says 9:00
    assert not d.allowed
    assert any("America/Denver" in r and r.startswith("outside_state_window") for r in d.reasons)
    assert d.next_allowed_at == at(CHI, 2026, 1, 15, 10)
    d = run(c, at(CHI, 2026, 1, 15, 21, 0))
    assert d.next_allowed_at == at(CHI, 2026, 1, 16, 10)


def test_texas_sunday_from_noon() -> None:
    c = callee("+12145551234", timezone="America/Chicago")
    d = run(c, at(CHI, 2026, 1, 18, 11))  # Sunday
    assert codes(d) == {"outside_state_window"}
    assert d.next_allowed_at == at(CHI, 2026, 1, 18, 12)
    assert run(c, at(CHI, 2026, 1, 17, 11)).allowed  # Saturday


def test_mississippi_sunday_ban() -> None:
    c = callee("+16015551234")
    d = run(c, at(CHI, 2026, 1, 18, 12))
    assert any(r.startswith("state_sunday_ban: MS") for r in d.reasons)
    assert d.next_allowed_at == at(CHI, 2026, 1, 19, 8) + timedelta(days=1)  # MLK day too


def test_state_holiday_bans() -> None:
    # Mardi Gras 2026-02-17 is a Louisiana legal holiday, not a New York one.
    la = callee("+15045551234")
    d = run(la, at(CHI, 2026, 2, 17, 12))
    assert any(r.startswith("state_holiday_ban: LA 2026-02-17 Mardi Gras") for r in d.reasons)
    assert d.next_allowed_at == at(CHI, 2026, 2, 18, 8)
    assert run(callee(), at(NY, 2026, 2, 17, 12)).allowed
    ut = callee("+18015551234")  # Pioneer Day
    assert "state_holiday_ban" in codes(run(ut, at(ZoneInfo("America/Denver"), 2026, 7, 24, 12)))
    al = callee("+12055551234")
    assert "state_holiday_ban" in codes(run(al, at(CHI, 2026, 12, 25, 12)))


def test_rhode_island_hours() -> None:
    ri = callee("+14015551234")
    assert codes(run(ri, at(NY, 2026, 1, 15, 18))) == {"outside_state_window"}
    d = run(ri, at(NY, 2026, 1, 17, 9, 30))  # Saturday 10-17
    assert d.next_allowed_at == at(NY, 2026, 1, 17, 10)
    assert "state_sunday_ban" in codes(run(ri, at(NY, 2026, 1, 18, 12)))


def test_extra_holiday_is_data() -> None:
    rules = tuple(
        replace(r, extra_holidays=(date(2026, 1, 15),)) if r.state == "UT" else r for r in RULES
    )
    ut = callee("+18015551234")
    now = at(ZoneInfo("America/Denver"), 2026, 1, 15, 12)
    assert run(ut, now).allowed
    d = run(ut, now, replace(POLICY, state_rules=rules))
    assert any("declared holiday" in r for r in d.reasons)


def test_rule_effective_to_switches_rules() -> None:
    old = StateRule(
        "NY",
        date(2020, 1, 1),
        date(2026, 1, 16),
        CallingWindow(time(10), time(12)),
        None,
        False,
        False,
        (),
        None,
        "test",
    )
    policy = replace(POLICY, state_rules=(old,))
    assert not run(callee(), at(NY, 2026, 1, 15, 13), policy).allowed
    assert run(callee(), at(NY, 2026, 1, 16, 13), policy).allowed
    assert run(callee(), at(NY, 2026, 1, 15, 13), policy).next_allowed_at == at(NY, 2026, 1, 16, 8)


# ------------------------------------------------------------------ unknown zone


def test_unknown_zone_safe_everywhere() -> None:
    c = callee("+18005551234")
    d = run(c, datetime(2026, 1, 15, 14, tzinfo=UTC))  # 09:00 NY, 04:00 Honolulu
    assert not d.allowed
    assert len(d.callee_zones) == 8
    # Honolulu 08:00 = 18:00 UTC; New York then 13:00.
    assert d.next_allowed_at == datetime(2026, 1, 15, 18, tzinfo=UTC)
    # New York 21:00 EST = 02:00 UTC ends the day.
    assert run(c, datetime(2026, 1, 16, 1, 59, tzinfo=UTC)).allowed
    assert not run(c, datetime(2026, 1, 16, 2, tzinfo=UTC)).allowed


def test_non_us_country_zone() -> None:
    c = callee("+33142685300", country="FR")
    paris = ZoneInfo("Europe/Paris")
    d = run(c, at(paris, 2026, 1, 15, 7))
    assert d.callee_zones == ("Europe/Paris",)
    assert d.next_allowed_at == at(paris, 2026, 1, 15, 8)


# ------------------------------------------------------------------ DST


def test_spring_forward_window_start_in_gap() -> None:
    policy = replace(
        POLICY,
        federal_window=CallingWindow(time(0), time(21)),
        clinic_window=CallingWindow(time(2, 30), time(5)),
    )
    d = run(callee(), at(NY, 2026, 3, 8, 1, 0), policy)
    # 02:30 does not exist; 03:00 EDT (07:00 UTC) is the first instant at or after it.
    assert d.next_allowed_at == datetime(2026, 3, 8, 7, tzinfo=UTC)
    assert run(callee(), d.next_allowed_at, policy).allowed
    assert not run(callee(), d.next_allowed_at - timedelta(seconds=1), policy).allowed


def test_spring_forward_normal_window() -> None:
    d = run(callee(), at(NY, 2026, 3, 8, 1, 30))
    assert d.next_allowed_at == datetime(2026, 3, 8, 12, tzinfo=UTC)  # 08:00 EDT


def test_fall_back_repeated_hour_reopens_window() -> None:
    policy = replace(
        POLICY,
        federal_window=CallingWindow(time(0), time(21)),
        clinic_window=CallingWindow(time(0), time(1, 30)),
    )
    first_145 = at(NY, 2026, 11, 1, 1, 45)  # EDT, outside
    d = run(callee(), first_145, policy)
    # the wall clock returns to 01:00 EST at 06:00 UTC: inside again
    assert d.next_allowed_at == datetime(2026, 11, 1, 6, tzinfo=UTC)
    second_145 = at(NY, 2026, 11, 1, 1, 45, fold=1)
    assert run(callee(), second_145, policy).next_allowed_at == at(NY, 2026, 11, 2, 0)


def test_fall_back_day_normal_window() -> None:
    d = run(callee(), at(NY, 2026, 11, 1, 1, 30))
    assert d.next_allowed_at == datetime(2026, 11, 1, 13, tzinfo=UTC)  # 08:00 EST


# ------------------------------------------------------------------ caps and gaps


def test_min_gap() -> None:
    now = at(NY, 2026, 1, 15, 12)
    d = run(callee(), now, history=History(2, now - timedelta(minutes=20)))
    assert codes(d) == {"min_gap"}
    assert d.next_allowed_at == now + timedelta(minutes=40)


def test_min_gap_then_window() -> None:
    now = at(NY, 2026, 1, 15, 20, 30)
    d = run(callee(), now, history=History(2, now))
    assert d.next_allowed_at == at(NY, 2026, 1, 16, 8)


def test_per_number_24h_cap_exact_free_time() -> None:
    now = at(NY, 2026, 1, 15, 12)
    dials = (now - timedelta(hours=23), now - timedelta(hours=5), now - timedelta(hours=1))
    d = run(callee(), now, history=History(1, None, dials))
    assert codes(d) == {"number_cap_24h"}
    assert d.next_allowed_at == now + timedelta(hours=1)
    d = run(callee(), now, history=History(1, None, dials[1:]))
    assert d.allowed


def test_florida_cap_stricter_than_clinic() -> None:
    now = at(NY, 2026, 1, 15, 12)
    policy = replace(POLICY, max_dials_per_number_24h=5)
    dials = tuple(now - timedelta(hours=h) for h in (1, 2, 3))
    assert run(callee(), now, policy, History(1, None, dials)).allowed
    d = run(callee("+13055551234"), now, policy, History(1, None, dials))
    assert any(r.startswith("number_cap_24h") and "FL" in r for r in d.reasons)
    assert d.next_allowed_at == now + timedelta(hours=21)


def test_healthcare_preset_and_7d_cap() -> None:
    policy = replace(POLICY, max_dials_per_number_24h=1, max_dials_per_number_7d=3)
    now = at(NY, 2026, 1, 15, 12)
    dials = (now - timedelta(days=6), now - timedelta(days=3), now - timedelta(days=2))
    d = run(callee(), now, policy, History(1, None, dials))
    assert codes(d) == {"number_cap_7d"}
    assert d.next_allowed_at == now + timedelta(days=1)
    d = run(callee(), now, policy, History(1, None, (now - timedelta(hours=2),)))
    assert d.next_allowed_at == now + timedelta(hours=22)


def test_cap_free_time_outside_window_moves_to_window() -> None:
    now = at(NY, 2026, 1, 15, 12)
    dials = tuple(at(NY, 2026, 1, 14, 21) - timedelta(minutes=m) for m in (1, 2, 3))
    d = run(callee(), now, history=History(1, None, dials))
    assert d.next_allowed_at == at(NY, 2026, 1, 15, 20, 57)  # the 3rd most recent dial + 24 h


# ------------------------------------------------------------------ no future


def test_cutoff() -> None:
    start = at(NY, 2026, 1, 15, 14)
    c = callee(appointment_start=start)
    d = run(c, start - timedelta(hours=2))
    assert "past_cutoff" in codes(d)
    assert d.next_allowed_at is None
    assert run(c, start - timedelta(hours=2, seconds=1)).allowed
    # blocked now and the next window opens after the cut-off -> None
    c = callee(appointment_start=at(NY, 2026, 1, 16, 9))
    d = run(c, at(NY, 2026, 1, 15, 21, 30))
    assert d.next_allowed_at is None
    assert "no_allowed_time" in codes(d)


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES))
def test_terminal_statuses(status: str) -> None:
    d = run(callee(appointment_status=status), at(NY, 2026, 1, 15, 12))
    assert not d.allowed
    assert d.next_allowed_at is None
    assert "terminal_status" in codes(d)


def test_max_attempts() -> None:
    now = at(NY, 2026, 1, 15, 12)
    assert run(callee(), now, history=History(3)).allowed
    d = run(callee(), now, history=History(4))
    assert "max_attempts_reached: attempt 4 > max 3" in d.reasons
    assert d.next_allowed_at is None


def test_dnc_blocks() -> None:
    dnc = replace(DNC, registry_as_of=date(2026, 1, 15), blocked_by=("global", "national_registry"))
    d = run(callee(), at(NY, 2026, 1, 15, 12), dnc=dnc)
    assert "dnc_listed: global,national_registry" in d.reasons
    assert d.next_allowed_at is None


def test_stale_and_missing_registry() -> None:
    now = at(NY, 2026, 2, 1, 12)
    assert run(callee(), now, dnc=DncCheck(registry_as_of=date(2026, 1, 1))).allowed
    d = run(callee(), now + timedelta(days=1), dnc=DncCheck(registry_as_of=date(2026, 1, 1)))
    assert "national_registry_stale" in codes(d)
    assert d.next_allowed_at is None
    assert run(callee(), now, dnc=DncCheck()).allowed
    strict = replace(POLICY, require_national_registry=True)
    d = run(callee(), now, strict, dnc=DncCheck())
    assert "national_registry_missing" in codes(d)
    assert d.next_allowed_at is None


def test_all_reasons_reported() -> None:
    now = at(NY, 2026, 1, 15, 7)
    d = run(
        callee(appointment_status="confirmed"),
        now,
        dnc=replace(DNC, registry_as_of=date(2026, 1, 15), blocked_by=("clinic",)),
    )
    assert {"dnc_listed", "terminal_status", "outside_federal_window"} <= codes(d)


def test_seed_table() -> None:
    by_state = {r.state: r for r in RULES}
    assert {"FL", "OK", "MD", "TX", "LA", "AL", "RI", "UT", "MS"} <= set(by_state)
    for state in ("FL", "OK", "MD"):
        assert by_state[state].window == CallingWindow(time(8), time(20))
        assert by_state[state].max_calls_per_24h == 3
    assert by_state["TX"].sunday_window == CallingWindow(time(12), time(21))
    assert by_state["MS"].sunday_banned
    assert all(by_state[s].holiday_banned for s in ("LA", "AL", "RI", "UT"))
    assert all(r.citation for r in RULES)
    assert seed_ruleset_version()


def test_window_validation() -> None:
    with pytest.raises(ValueError, match="before end"):
        CallingWindow(time(9), time(9))


def test_a_stated_zone_never_overrides_the_number() -> None:
    c = callee("+12125551234", timezone="Pacific/Kiritimati")
    now = at(NY, 2026, 1, 15, 23, 30)  # 18:30 next day in Kiritimati
    d = run(c, now)
    assert not d.allowed
    assert any("America/New_York not in 08:00-21:00" in r for r in d.reasons)
    assert dict(d.zone_sources) == {
        "Pacific/Kiritimati": ("stated_timezone",),
        "America/New_York": ("number",),
    }
    nxt = d.next_allowed_at
    assert nxt is not None
    for zone in ("America/New_York", "Pacific/Kiritimati"):
        assert time(8) <= nxt.astimezone(ZoneInfo(zone)).time() < time(21)


def test_no_signal_uses_the_hours_safe_in_every_us_zone() -> None:
    c = callee("+18005551234")  # toll-free: no zone, no state
    assert not run(c, at(NY, 2026, 1, 15, 12)).allowed  # 07:00 in Honolulu
    assert not run(c, at(NY, 2026, 1, 15, 9)).allowed  # 04:00 in Honolulu
    d = run(c, at(NY, 2026, 1, 15, 13))  # 08:00 Honolulu, 09:00 Anchorage, 13:00 NY
    assert d.allowed
    assert d.zone_source == "us_fallback"
