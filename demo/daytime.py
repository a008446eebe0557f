"""Pick a real place where it is early afternoon now: the demo and the end-to-end
tests run at any hour without switching a calling rule off."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

CITY_ZONES = (
    "Pacific/Honolulu",
    "America/Anchorage",
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "America/Halifax",
    "America/Sao_Paulo",
    "Atlantic/South_Georgia",
    "Atlantic/Cape_Verde",
    "Europe/London",
    "Europe/Paris",
    "Europe/Athens",
    "Europe/Moscow",
    "Asia/Dubai",
    "Asia/Karachi",
    "Asia/Dhaka",
    "Asia/Bangkok",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Australia/Brisbane",
    "Pacific/Noumea",
    "Pacific/Auckland",
    "Pacific/Tongatapu",
    "Pacific/Kiritimati",
)
TARGET = time(13, 0)


def daytime_zone(now: datetime) -> str:
    """The zone whose local time is closest to 13:00 at ``now``."""

    def distance(zone: str) -> float:
        local = now.astimezone(ZoneInfo(zone))
        minutes = local.hour * 60 + local.minute
        return abs(minutes - (TARGET.hour * 60 + TARGET.minute))

    return min(CITY_ZONES, key=distance)
