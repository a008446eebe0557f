"""Pick a real place where it is early afternoon now, and patients' numbers there: the
demo and the end-to-end tests run at any hour without switching a calling rule off.

A callee's candidate zones include the number's own, so each place comes with a range
of numbers whose zones (phonenumbers, to the exchange) are the place's, and the country
they belong to (a clinic imports only its own country's numbers)."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as pn_timezone

# Zone -> (country, E.164 prefix): the prefix and any four digits is a valid number there.
CITY_NUMBERS: dict[str, tuple[str, str]] = {
    "Pacific/Honolulu": ("US", "+1808555"),
    "America/Anchorage": ("US", "+1907555"),  # the number's zones: Anchorage and Adak
    "America/Los_Angeles": ("US", "+1213555"),
    "America/Denver": ("US", "+1303555"),
    "America/Chicago": ("US", "+1312555"),
    "America/New_York": ("US", "+1212555"),
    "America/Halifax": ("CA", "+1902555"),
    "America/Sao_Paulo": ("BR", "+55112345"),
    "Atlantic/Cape_Verde": ("CV", "+238221"),
    "Europe/London": ("GB", "+44121234"),
    "Europe/Paris": ("FR", "+3312345"),
    "Europe/Athens": ("GR", "+30212345"),
    "Europe/Moscow": ("RU", "+7495123"),
    "Asia/Dubai": ("AE", "+9712234"),
    "Asia/Karachi": ("PK", "+92212345"),
    "Asia/Dhaka": ("BD", "+8802711"),
    "Asia/Bangkok": ("TH", "+662123"),
    "Asia/Singapore": ("SG", "+656123"),
    "Asia/Tokyo": ("JP", "+8131234"),
    "Australia/Brisbane": ("AU", "+6173123"),
    "Pacific/Noumea": ("NC", "+68720"),
    "Pacific/Auckland": ("NZ", "+643234"),
    "Pacific/Tongatapu": ("TO", "+6762"),
}
CITY_ZONES = tuple(CITY_NUMBERS)
TARGET = time(13, 0)


def local_number(zone: str, last_four: str) -> str:
    """A valid number in ``zone`` ending in ``last_four`` (the simulator's behaviour
    is picked by the last two digits)."""
    return CITY_NUMBERS[zone][1] + last_four


def country_of(zone: str) -> str:
    """The country of :func:`local_number`'s numbers in ``zone``."""
    return CITY_NUMBERS[zone][0]


def _number_zones(zone: str) -> tuple[str, ...]:
    number = phonenumbers.parse(local_number(zone, "0100"))
    return (zone, *pn_timezone.time_zones_for_number(number))


def daytime_zone(now: datetime) -> str:
    """The zone whose local time (in every zone of its numbers) is closest to 13:00."""

    def distance(zone: str) -> float:
        local = now.astimezone(ZoneInfo(zone))
        minutes = local.hour * 60 + local.minute
        return abs(minutes - (TARGET.hour * 60 + TARGET.minute))

    return min(CITY_ZONES, key=lambda zone: max(distance(z) for z in _number_zones(zone)))
