from campaigns.geography import (
    US_FALLBACK_ZONES,
    locate,
    state_for_area_code,
    state_for_number,
    state_for_zip,
    zones_for_state,
    zones_for_zip,
)


def test_area_codes_map_to_states() -> None:
    assert state_for_number("+13055551234") == "FL"
    assert state_for_number("+12125551234") == "NY"
    assert state_for_number("+14055551234") == "OK"
    assert state_for_number("+13015551234") == "MD"
    assert state_for_number("+12035551234") == "CT"  # no area-code-level geocoder entry
    assert state_for_area_code("850") == "FL"
    assert state_for_number("+447911123456") is None
    assert state_for_number("+18005551234") is None  # toll-free: no state


def test_zip3_states() -> None:
    assert state_for_zip("10001") == "NY"
    assert state_for_zip("33101") == "FL"
    assert state_for_zip("73301") == "TX"  # Austin IRS inside Oklahoma's range
    assert state_for_zip("88510") == "TX"
    assert state_for_zip("96813") == "HI"
    assert state_for_zip("20001-1234") == "DC"
    assert state_for_zip("09001") is None  # military
    assert state_for_zip("123") is None


def test_multi_zone_states() -> None:
    assert set(zones_for_state("TX")) == {"America/Chicago", "America/Denver"}
    assert set(zones_for_state("fl")) == {"America/New_York", "America/Chicago"}
    for state in ("KS", "NE", "ND", "SD", "ID", "OR", "KY", "TN", "IN", "MI", "AK"):
        assert len(zones_for_state(state)) >= 2, state
    assert zones_for_state("XX") == ()


def test_a_stated_zone_adds_to_the_numbers_zones_never_replaces_them() -> None:
    loc = locate("+12125551234", "US", timezone="Pacific/Kiritimati")
    assert set(loc.zones) == {"Pacific/Kiritimati", "America/New_York"}
    assert dict(loc.zone_sources) == {
        "Pacific/Kiritimati": ("stated_timezone",),
        "America/New_York": ("number",),
    }
    loc = locate("+13055551234", "US", timezone="America/Los_Angeles", state="CA")
    assert set(loc.zones) == {"America/Los_Angeles", "America/New_York"}
    assert loc.states == ("CA", "FL")
    assert loc.zone_sources["America/Los_Angeles"] == ("stated_timezone", "address_state")


def test_invalid_timezone_is_ignored() -> None:
    loc = locate("+12125551234", "US", timezone="Mars/Olympus")
    assert loc.zones == ("America/New_York",)


def test_the_numbers_zones_resolve_to_the_exchange() -> None:
    assert locate("+18504321234", "US").zones == ("America/Chicago",)
    assert locate("+18502221234", "US").zones == ("America/New_York",)
    assert locate("+19067741234", "US").zones == ("America/Chicago",)
    assert locate("+15418891234", "US").zones == ("America/Denver",)


def test_a_presumed_state_brings_its_rules_not_its_other_zones() -> None:
    for number, zone, state in (
        ("+13055551234", "America/New_York", "FL"),  # Miami: not Central too
        ("+13135551234", "America/New_York", "MI"),  # Detroit: not Menominee
        ("+12145551234", "America/Chicago", "TX"),  # Dallas: not Mountain
    ):
        loc = locate(number, "US")
        assert loc.zones == (zone,), number
        assert loc.states == (state,)
        assert loc.zone_source == "number"


def test_address_zones_add_to_the_numbers() -> None:
    loc = locate("+13055551234", "US", state="NY")
    assert loc.zones == ("America/New_York",)
    assert loc.zone_sources["America/New_York"] == ("address_state", "number")
    assert loc.states == ("FL", "NY")
    loc = locate("+12125551234", "US", zip_code="79901")  # El Paso ZIP -> TX
    assert set(loc.zones) == {"America/Chicago", "America/Denver", "America/New_York"}
    assert loc.zone_sources["America/Denver"] == ("zip",)
    assert loc.zone_source == "zip+number"


def test_the_zips_zone_else_every_zone_of_the_state() -> None:
    assert zones_for_zip("32501") == ("America/Chicago",)  # Pensacola
    assert zones_for_zip("33101") == ("America/New_York",)  # Miami
    assert zones_for_zip("10001") == ("America/New_York",)
    assert zones_for_zip("09001") == ()
    loc = locate("+13055551234", "US", state="FL", zip_code="32501")
    assert set(loc.zones) == {"America/Chicago", "America/New_York"}
    assert loc.zone_sources["America/Chicago"] == ("zip",)
    loc = locate("+13055551234", "US", state="TX")
    assert set(loc.zones) == {"America/Chicago", "America/Denver", "America/New_York"}


def test_unknown_us_number_falls_back_to_every_us_zone() -> None:
    for number in ("+18005551234", "+15555555555", "not a number"):
        loc = locate(number, "US")
        assert loc.zones == US_FALLBACK_ZONES
        assert loc.zone_source == "us_fallback"


def test_non_us_numbers() -> None:
    assert locate("+447911123456", "US").zones[-1] == "Europe/London"
    assert "Australia/Lord_Howe" in locate("+61412345678", "AU").zones
    assert locate("+33142685300", "FR").zones == ("Europe/Paris",)
