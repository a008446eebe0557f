"""Where a callee may be: candidate time zones and US states.

Pure lookups, no I/O: the tables below ship with the code.

- ``locate(...)`` returns a :class:`Location` with the candidate IANA zones, the
  signals that brought each zone, and the US states whose rules apply to a call.
- Zones are the UNION of every signal (a call must be allowed in each, so a stated
  zone never overrides the number: mobile numbers move, data entry errs):
  ``stated_timezone`` (the patient's timezone column); ``zip`` (the ZIP's zones, by
  its 3-digit prefix) else ``address_state`` (every zone of the address state);
  ``number`` (``phonenumbers.timezone.time_zones_for_number``, which resolves to the
  exchange: +1 850 432 is Central, +1 850 222 Eastern), else ``area_code_state``
  (every zone of the state the area code presumes, when phonenumbers knows no zone
  for it). The state an area code presumes brings its state's rules, not all of its
  zones. With no signal at all: ``us_fallback``, :data:`US_FALLBACK_ZONES` (safe in
  every zone of the 50 states + DC, never a guess) for a US number, else
  ``number_country``, the zones of the number's country.
- States: the union of the address state, the ZIP3 state and the area-code state
  (calls to e.g. Florida area codes are presumed to reach Florida residents).

Names: :data:`US_STATES` is the one table of US state and territory names
(:func:`state_for_name` reads a name back to its code); :func:`zone_named` is the
one check of an IANA zone name.

The area-code table was generated from phonenumbers' English geocoder (area-code
level description, else the majority of its exchanges) for numbers whose region is
US; an area code missing from it is looked up in the geocoder at run time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers
from phonenumbers import timezone as pn_timezone

__all__ = [
    "US_FALLBACK_ZONES",
    "US_STATES",
    "US_STATE_ZONES",
    "Location",
    "locate",
    "state_for_area_code",
    "state_for_name",
    "state_for_number",
    "state_for_zip",
    "zone_named",
    "zones_for_number",
    "zones_for_state",
    "zones_for_zip",
]

UNKNOWN_ZONE = "Etc/Unknown"

#: Zones covering the 50 states + DC (Adak: Aleutians, HST with DST; Phoenix: no DST).
US_FALLBACK_ZONES: tuple[str, ...] = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "America/Adak",
    "Pacific/Honolulu",
)

#: Every zone observed in a state (official parts; multi-zone states list all).
US_STATE_ZONES: dict[str, tuple[str, ...]] = {
    "AL": ("America/Chicago",),
    "AK": (
        "America/Anchorage",
        "America/Juneau",
        "America/Sitka",
        "America/Yakutat",
        "America/Nome",
        "America/Metlakatla",
        "America/Adak",
    ),
    "AZ": ("America/Phoenix", "America/Denver"),  # Navajo Nation observes DST
    "AR": ("America/Chicago",),
    "CA": ("America/Los_Angeles",),
    "CO": ("America/Denver",),
    "CT": ("America/New_York",),
    "DE": ("America/New_York",),
    "DC": ("America/New_York",),
    "FL": ("America/New_York", "America/Chicago"),  # panhandle is Central
    "GA": ("America/New_York",),
    "HI": ("Pacific/Honolulu",),
    "ID": ("America/Boise", "America/Los_Angeles"),
    "IL": ("America/Chicago",),
    "IN": ("America/Indiana/Indianapolis", "America/Chicago"),
    "IA": ("America/Chicago",),
    "KS": ("America/Chicago", "America/Denver"),
    "KY": ("America/New_York", "America/Chicago"),
    "LA": ("America/Chicago",),
    "ME": ("America/New_York",),
    "MD": ("America/New_York",),
    "MA": ("America/New_York",),
    "MI": ("America/Detroit", "America/Menominee"),
    "MN": ("America/Chicago",),
    "MS": ("America/Chicago",),
    "MO": ("America/Chicago",),
    "MT": ("America/Denver",),
    "NE": ("America/Chicago", "America/Denver"),
    "NV": ("America/Los_Angeles", "America/Denver"),  # West Wendover is Mountain
    "NH": ("America/New_York",),
    "NJ": ("America/New_York",),
    "NM": ("America/Denver",),
    "NY": ("America/New_York",),
    "NC": ("America/New_York",),
    "ND": ("America/Chicago", "America/Denver"),
    "OH": ("America/New_York",),
    "OK": ("America/Chicago",),
    "OR": ("America/Los_Angeles", "America/Boise"),  # Malheur County is Mountain
    "PA": ("America/New_York",),
    "RI": ("America/New_York",),
    "SC": ("America/New_York",),
    "SD": ("America/Chicago", "America/Denver"),
    "TN": ("America/New_York", "America/Chicago"),
    "TX": ("America/Chicago", "America/Denver"),  # El Paso, Hudspeth are Mountain
    "UT": ("America/Denver",),
    "VT": ("America/New_York",),
    "VA": ("America/New_York",),
    "WA": ("America/Los_Angeles",),
    "WV": ("America/New_York",),
    "WI": ("America/Chicago",),
    "WY": ("America/Denver",),
    # Territories with a USPS code (not in the fallback set).
    "PR": ("America/Puerto_Rico",),
    "VI": ("America/St_Thomas",),
    "GU": ("Pacific/Guam",),
    "MP": ("Pacific/Saipan",),
    "AS": ("Pacific/Pago_Pago",),
}

# ZIP3 prefix ranges (inclusive) -> state. Military (AA/AE/AP) and unassigned
# prefixes are absent: they give no state.
_ZIP3_RANGES: tuple[tuple[int, int, str], ...] = (
    (5, 5, "NY"),
    (6, 7, "PR"),
    (8, 8, "VI"),
    (9, 9, "PR"),
    (10, 27, "MA"),
    (28, 29, "RI"),
    (30, 38, "NH"),
    (39, 49, "ME"),
    (50, 54, "VT"),
    (55, 55, "MA"),
    (56, 59, "VT"),
    (60, 69, "CT"),
    (70, 89, "NJ"),
    (100, 149, "NY"),
    (150, 196, "PA"),
    (197, 199, "DE"),
    (200, 200, "DC"),
    (201, 201, "VA"),
    (202, 205, "DC"),
    (206, 219, "MD"),
    (220, 246, "VA"),
    (247, 268, "WV"),
    (270, 289, "NC"),
    (290, 299, "SC"),
    (300, 319, "GA"),
    (320, 339, "FL"),
    (341, 349, "FL"),
    (350, 369, "AL"),
    (370, 385, "TN"),
    (386, 397, "MS"),
    (398, 399, "GA"),
    (400, 427, "KY"),
    (430, 459, "OH"),
    (460, 479, "IN"),
    (480, 499, "MI"),
    (500, 528, "IA"),
    (530, 549, "WI"),
    (550, 567, "MN"),
    (569, 569, "DC"),
    (570, 577, "SD"),
    (580, 588, "ND"),
    (590, 599, "MT"),
    (600, 629, "IL"),
    (630, 658, "MO"),
    (660, 679, "KS"),
    (680, 693, "NE"),
    (700, 714, "LA"),
    (716, 729, "AR"),
    (730, 732, "OK"),
    (733, 733, "TX"),
    (734, 749, "OK"),
    (750, 799, "TX"),
    (800, 816, "CO"),
    (820, 831, "WY"),
    (832, 838, "ID"),
    (840, 847, "UT"),
    (850, 865, "AZ"),
    (870, 884, "NM"),
    (885, 885, "TX"),
    (889, 898, "NV"),
    (900, 961, "CA"),
    (967, 968, "HI"),
    (969, 969, "GU"),
    (970, 979, "OR"),
    (980, 994, "WA"),
    (995, 999, "AK"),
)

# ZIP3 prefix -> zones, for the states with several zones (generated from the `zipcodes`
# package's per-ZIP zones; a prefix whose ZIPs straddle a zone line lists every zone of
# them). West Wendover, NV (898) keeps Mountain time. Other states: the state's zone.
_ZIP3_BY_ZONE: dict[str, str] = {
    "America/Adak": "995",
    "America/Anchorage": "995 996 997",
    "America/Boise": "832 833 834 835 836 837 979",
    "America/Chicago": (
        "324 325 370 371 372 373 374 375 377 380 381 382 383 384 385 401 420 421 422 423 "
        "424 426 427 463 464 475 476 477 479 570 571 572 573 574 575 576 580 581 582 583 "
        "584 585 587 588 660 661 662 664 665 666 667 668 669 670 671 672 673 674 675 676 "
        "677 678 679 680 681 683 684 685 686 687 688 689 690 691 692 733 739 750 751 752 "
        "753 754 755 756 757 758 759 760 761 762 763 764 765 766 767 768 769 770 772 773 "
        "774 775 776 777 778 779 780 781 782 783 784 785 786 787 788 789 790 791 792 793 "
        "794 795 796 797 798 799"
    ),
    "America/Denver": "575 576 577 585 586 677 678 690 691 692 693 798 799 860 865 885 898",
    "America/Detroit": (
        "480 481 482 483 484 485 486 487 488 489 490 491 492 493 494 495 496 497 498 499"
    ),
    "America/Indiana/Indianapolis": "460 461 462 465 466 467 468 469 470 471 472 473 474 478 479",
    "America/Indiana/Knox": "463 465 469",
    "America/Indiana/Marengo": "471",
    "America/Indiana/Petersburg": "475",
    "America/Indiana/Tell_City": "475",
    "America/Indiana/Vevay": "470",
    "America/Indiana/Vincennes": "475",
    "America/Indiana/Winamac": "469 479",
    "America/Juneau": "998 999",
    "America/Kentucky/Louisville": "400 401 402 471",
    "America/Kentucky/Monticello": "426",
    "America/Los_Angeles": (
        "835 838 889 890 891 893 894 895 897 898 970 971 972 973 974 975 976 977 978 979"
    ),
    "America/Menominee": "498 499",
    "America/Metlakatla": "999",
    "America/New_York": (
        "320 321 322 323 324 326 327 328 329 330 331 332 333 334 335 336 337 338 339 341 "
        "342 344 346 347 349 373 374 376 377 378 379 400 401 403 404 405 406 407 408 409 "
        "410 411 412 413 414 415 416 417 418 425 426 427 470"
    ),
    "America/Nome": "995 996 997",
    "America/North_Dakota/Beulah": "585",
    "America/North_Dakota/Center": "585",
    "America/North_Dakota/New_Salem": "585 586",
    "America/Phoenix": "850 851 852 853 855 856 857 859 860 863 864 865",
    "America/Sitka": "998 999",
    "America/Yakutat": "996",
}
_ZONES_BY_ZIP3: dict[str, tuple[str, ...]] = {
    prefix: tuple(zone for zone, prefixes in _ZIP3_BY_ZONE.items() if prefix in prefixes.split())
    for prefix in {p for prefixes in _ZIP3_BY_ZONE.values() for p in prefixes.split()}
}

# NANP area code -> state for numbers whose region is US (generated, see module doc).
_NPA_BY_STATE: dict[str, str] = {
    "AK": "907",
    "AL": "205 251 256 334 659 938",
    "AR": "327 479 501 870",
    "AZ": "480 520 602 623 928",
    "CA": (
        "209 213 279 310 323 341 350 369 408 415 424 442 510 530 559 562 619 626 628 650 "
        "657 661 669 707 714 738 747 760 805 818 820 831 840 858 909 916 925 949 951"
    ),
    "CO": "303 719 720 748 970 983",
    "CT": "203 475 860 959",
    "DC": "202 771",
    "DE": "302",
    "FL": (
        "239 305 321 324 352 386 407 448 561 645 656 689 727 728 754 772 786 813 850 863 "
        "904 941 954"
    ),
    "GA": "229 404 470 478 678 706 762 770 912 943",
    "HI": "808",
    "IA": "319 515 563 641 712",
    "ID": "208 986",
    "IL": "217 224 309 312 331 447 464 618 630 708 730 773 779 815 847 872",
    "IN": "219 260 317 463 574 765 812 930",
    "KS": "316 620 785 913",
    "KY": "270 364 502 606 859",
    "LA": "225 318 337 504 985",
    "MA": "339 351 413 508 617 774 781 857 978",
    "MD": "227 240 301 410 443 667",
    "ME": "207",
    "MI": "231 248 269 313 517 586 616 734 810 906 947 989",
    "MN": "218 320 507 612 651 763 952",
    "MO": "235 314 417 557 573 636 660 816 975",
    "MS": "228 601 662 769",
    "MT": "406",
    "NC": "252 336 472 704 743 828 910 919 980 984",
    "ND": "701",
    "NE": "308 402 531",
    "NH": "603",
    "NJ": "201 551 609 640 732 848 856 862 908 973",
    "NM": "505 575",
    "NV": "702 725 775",
    "NY": "212 315 329 332 347 363 516 518 585 607 631 646 680 716 718 838 845 914 917 929 934",
    "OH": "216 220 234 283 326 330 380 419 440 513 567 614 740 937",
    "OK": "405 539 572 580 918",
    "OR": "458 503 541 971",
    "PA": "215 223 267 272 412 445 484 570 582 610 717 724 814 835 878",
    "RI": "401",
    "SC": "803 821 839 843 854 864",
    "SD": "605",
    "TN": "423 615 629 731 865 901 931",
    "TX": (
        "210 214 254 281 325 346 361 409 430 432 469 512 682 713 726 737 806 817 830 832 "
        "903 915 936 940 945 956 972 979"
    ),
    "UT": "385 435 801",
    "VA": "276 434 540 571 686 703 757 804 826 948",
    "VT": "802",
    "WA": "206 253 360 425 509 564",
    "WI": "262 274 353 414 534 608 715 920",
    "WV": "304 681",
    "WY": "307",
}

_STATE_BY_NPA: dict[str, str] = {
    npa: state for state, npas in _NPA_BY_STATE.items() for npa in npas.split()
}


def _code_table(text: str) -> dict[str, str]:
    table: dict[str, str] = {}
    for item in text.split("|"):
        code, _, name = item.partition("=")
        table[code] = name
    return table


#: USPS code -> name of every US state, DC and territory with a code.
US_STATES: dict[str, str] = _code_table(
    "AL=Alabama|AK=Alaska|AZ=Arizona|AR=Arkansas|CA=California|CO=Colorado|"
    "CT=Connecticut|DE=Delaware|DC=District of Columbia|FL=Florida|GA=Georgia|HI=Hawaii|"
    "ID=Idaho|IL=Illinois|IN=Indiana|IA=Iowa|KS=Kansas|KY=Kentucky|LA=Louisiana|ME=Maine|"
    "MD=Maryland|MA=Massachusetts|MI=Michigan|MN=Minnesota|MS=Mississippi|MO=Missouri|"
    "MT=Montana|NE=Nebraska|NV=Nevada|NH=New Hampshire|NJ=New Jersey|NM=New Mexico|"
    "NY=New York|NC=North Carolina|ND=North Dakota|OH=Ohio|OK=Oklahoma|OR=Oregon|"
    "PA=Pennsylvania|RI=Rhode Island|SC=South Carolina|SD=South Dakota|TN=Tennessee|"
    "TX=Texas|UT=Utah|VT=Vermont|VA=Virginia|WA=Washington|WV=West Virginia|WI=Wisconsin|"
    "WY=Wyoming|PR=Puerto Rico|GU=Guam|VI=U.S. Virgin Islands|AS=American Samoa|"
    "MP=Northern Mariana Islands"
)


def _name_key(name: str) -> str:
    return "".join(ch for ch in name.casefold() if ch.isalnum())


_STATE_BY_NAME: dict[str, str] = {_name_key(name): code for code, name in US_STATES.items()}
# How phonenumbers' geocoder spells two of them.
_GEOCODER_NAMES: dict[str, str] = {"Washington State": "WA", "Washington D.C.": "DC"}

# A US number's phonenumbers zones longer than this (e.g. toll-free: every NANP zone)
# say nothing about where the callee is.
_MAX_SPECIFIC_ZONES = 3


@dataclass(frozen=True)
class Location:
    """Candidate zones (all must allow a call) and states (all rules apply)."""

    zones: tuple[str, ...]
    states: tuple[str, ...]
    zone_sources: Mapping[str, tuple[str, ...]]  # zone -> the signals that brought it

    @cached_property  # read by every decision about the callee
    def zone_source(self) -> str:
        """The signals behind the zones, e.g. ``stated_timezone+number``; ``unknown``."""
        signals = _dedupe(s for found in self.zone_sources.values() for s in found)
        return "+".join(signals) or "unknown"


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@lru_cache(maxsize=1)
def _zone_names() -> dict[str, str]:
    return {name.casefold(): name for name in available_timezones()}


@lru_cache(maxsize=512)
def zone_named(name: str) -> ZoneInfo | None:
    """The IANA zone named ``name`` (case-insensitively), or None: the one check of a
    zone name, wherever one is given (clinic settings, an import's timezone column)."""
    canonical = _zone_names().get(name.casefold())
    if canonical is None:
        return None
    try:
        return ZoneInfo(canonical)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _valid_zone(name: str) -> bool:
    zone = zone_named(name)
    return zone is not None and zone.key == name


def state_for_name(name: str) -> str | None:
    """USPS code of a US state or territory by its name (case, spaces and punctuation
    ignored, e.g. ``new york`` -> NY); None when unknown."""
    return _STATE_BY_NAME.get(_name_key(name))


def zones_for_state(state: str) -> tuple[str, ...]:
    """Every zone of a US state or territory (USPS code); () when unknown."""
    return US_STATE_ZONES.get(state.strip().upper(), ())


def state_for_zip(zip_code: str) -> str | None:
    """State of a US ZIP code by its 3-digit prefix; None when unknown/invalid."""
    digits = re.sub(r"\D", "", zip_code)
    if len(digits) not in (5, 9):
        return None
    prefix = int(digits[:3])
    for lo, hi, state in _ZIP3_RANGES:
        if lo <= prefix <= hi:
            return state
    return None


def state_for_area_code(npa: str) -> str | None:
    """State of a US NANP area code from the shipped table, None when unknown."""
    return _STATE_BY_NPA.get(npa)


# A NANP number in E.164, the usual callee: parsed without phonenumbers' general parser,
# to the same PhoneNumber (a third of the time of locating a new number).
_NANP_E164 = re.compile(r"\+1[2-9]\d{9}")


def _parse(phone_e164: str, country: str) -> phonenumbers.PhoneNumber | None:
    if _NANP_E164.fullmatch(phone_e164):
        return phonenumbers.PhoneNumber(country_code=1, national_number=int(phone_e164[2:]))
    try:
        return phonenumbers.parse(phone_e164, country.upper() or None)
    except phonenumbers.NumberParseException:
        return None


def _state_from_description(description: str) -> str | None:
    state = _GEOCODER_NAMES.get(description) or state_for_name(description)
    if state is not None:
        return state
    match = re.search(r", ([A-Z]{2})$", description)
    if match and match.group(1) in US_STATE_ZONES:
        return match.group(1)
    return None


def state_for_number(phone_e164: str, country: str = "US") -> str | None:
    """The state a US number's area code presumes (e.g. +1 305 -> FL); None if not US."""
    return _listed_state(phone_e164) or _parsed_state(_parse(phone_e164, country))


def _listed_state(phone_e164: str) -> str | None:
    if phone_e164.startswith("+1") and len(phone_e164) == 12:
        # The shipped table holds US area codes only: a hit settles it without parsing.
        return _STATE_BY_NPA.get(phone_e164[2:5])
    return None


def _parsed_state(number: phonenumbers.PhoneNumber | None) -> str | None:
    # Only a +1 number can be a US one: the region lookup (every NANP region's patterns)
    # is for those alone.
    if (
        number is None
        or number.country_code != 1
        or phonenumbers.region_code_for_number(number) != "US"
    ):
        return None
    npa = str(number.national_number)[:3]
    state = state_for_area_code(npa)
    if state is None:
        # The geocoder's data costs ~100 MB per process; only unlisted area codes need it.
        from phonenumbers import geocoder

        state = _state_from_description(geocoder.description_for_number(number, "en"))
    return state


def _country_zones(region: str) -> tuple[str, ...]:
    code = phonenumbers.country_code_for_region(region.upper())
    if not code:
        return ()
    zones = pn_timezone.time_zones_for_geographical_number(
        phonenumbers.PhoneNumber(country_code=code, national_number=0)
    )
    return tuple(z for z in zones if z != UNKNOWN_ZONE and _valid_zone(z))


def zones_for_number(phone_e164: str, country: str = "US") -> tuple[str, ...]:
    """phonenumbers' zones for the number, () when unknown or too broad for a US number."""
    return _parsed_zones(_parse(phone_e164, country))


def _parsed_zones(number: phonenumbers.PhoneNumber | None) -> tuple[str, ...]:
    if number is None:
        return ()
    zones = tuple(z for z in pn_timezone.time_zones_for_number(number) if z != UNKNOWN_ZONE)
    # The region lookup tries every NANP region's patterns: only ask when it can matter.
    if len(zones) > _MAX_SPECIFIC_ZONES and phonenumbers.region_code_for_number(number) == "US":
        return ()
    return tuple(z for z in zones if _valid_zone(z))


def zones_for_zip(zip_code: str) -> tuple[str, ...]:
    """Zones of a US ZIP code by its 3-digit prefix (its state's zones where the state has
    one zone or the prefix is not listed); () when the ZIP gives no state."""
    state = state_for_zip(zip_code)
    if state is None:
        return ()
    return _ZONES_BY_ZIP3.get(re.sub(r"\D", "", zip_code)[:3]) or zones_for_state(state)


def _address_states(state: str | None, zip_code: str | None) -> tuple[str, ...]:
    found: list[str] = []
    if state and state.strip().upper() in US_STATE_ZONES:
        found.append(state.strip().upper())
    if zip_code:
        zip_state = state_for_zip(zip_code)
        if zip_state:
            found.append(zip_state)
    return _dedupe(found)


def _address_zones(state: str | None, zip_code: str | None) -> list[tuple[str, str]]:
    """(zone, signal) of the address: the ZIP's zones, else every zone of the state; both
    when the ZIP lies in another state than the one stated."""
    stated = state.strip().upper() if state and state.strip().upper() in US_STATE_ZONES else None
    zip_state = state_for_zip(zip_code) if zip_code else None
    found: list[tuple[str, str]] = []
    if zip_code and zip_state is not None:
        found.extend((zone, "zip") for zone in zones_for_zip(zip_code))
    if stated is not None and stated != zip_state:
        found.extend((zone, "address_state") for zone in zones_for_state(stated))
    return found


def _number_zones(
    number: phonenumbers.PhoneNumber | None, number_state: str | None
) -> list[tuple[str, str]]:
    """(zone, signal) of the number: its own zones (to the exchange), else the zones of the
    state its area code presumes."""
    own = _parsed_zones(number)
    if own:
        return [(zone, "number") for zone in own]
    if number_state is not None:
        return [(zone, "area_code_state") for zone in zones_for_state(number_state)]
    return []


@lru_cache(maxsize=65_536)
def locate(
    phone_e164: str,
    country: str,
    timezone: str | None = None,
    state: str | None = None,
    zip_code: str | None = None,
) -> Location:
    """Candidate zones and states for a callee (see the module docstring)."""
    number = _parse(phone_e164, country)  # parsed once: the state, the zones, the fallback
    address = _address_states(state, zip_code)
    number_state = _listed_state(phone_e164) or _parsed_state(number)
    states = tuple(sorted(set(address) | ({number_state} if number_state else set())))

    signals: list[tuple[str, str]] = []
    if timezone and _valid_zone(timezone.strip()):
        signals.append((timezone.strip(), "stated_timezone"))
    signals.extend(_address_zones(state, zip_code))
    signals.extend(_number_zones(number, number_state))
    if not signals:
        region = phonenumbers.region_code_for_number(number) if number is not None else None
        region = region or country.upper()
        if region == "US" or (region in ("ZZ", "001") and country.upper() == "US"):
            signals = [(zone, "us_fallback") for zone in US_FALLBACK_ZONES]
        else:
            signals = [(zone, "number_country") for zone in _country_zones(region)]
    sources: dict[str, tuple[str, ...]] = {}
    for zone, signal in signals:
        if signal not in sources.get(zone, ()):
            sources[zone] = (*sources.get(zone, ()), signal)
    return Location(tuple(sources), states, MappingProxyType(sources))
