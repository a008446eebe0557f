"""Phone numbers: parsed with the clinic's country as default region, stored as E.164.

One number per cell, digits only: a cell holding several numbers, an extension
(``x99``, ``ext 5``: the dialler cannot reach it) or letters (vanity numbers such as
``1-800-FLOWERS``) is refused rather than guessed at. :func:`to_callable_e164` also
refuses what a clinic may not call: numbers outside its country's calling area
(for a US clinic: other NANP countries such as +1 876 Jamaica or +1 416 Canada, and
every non-NANP number; US territories are in), premium-rate (900), shared-cost and
personal numbers. Reasons never repeat the number, so they are safe in logs and reports.
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import PhoneNumberType

from campaigns.errors import InvalidInputError

_PARSE_ERRORS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}
_IMPOSSIBLE = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.ValidationResult.TOO_SHORT: "too short",
    phonenumbers.ValidationResult.TOO_LONG: "too long",
    phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "no area code",
    phonenumbers.ValidationResult.INVALID_LENGTH: "wrong length for its country",
}
# Regions a clinic of a country may call; any other country calls its own numbers only.
_CALLING_AREA: dict[str, frozenset[str]] = {
    "US": frozenset({"US", "PR", "VI", "GU", "MP", "AS"}),
}
_UNCALLABLE_TYPES = {
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.SHARED_COST: "a shared-cost number",
    PhoneNumberType.PERSONAL_NUMBER: "a personal (follow-me) number",
}
_SEPARATORS = re.compile(r"[,;/|&\n]|\s(?:or|and)\s", re.IGNORECASE)
_MIN_NUMBER_DIGITS = 7
_MAX_E164_DIGITS = 15
_LETTER = re.compile(r"[A-Za-z]")


def _digits(text: str) -> int:
    return sum(map(str.isdigit, text))


def _several_numbers(text: str, region: str) -> bool:
    parts = [p for p in _SEPARATORS.split(text) if _digits(p) >= _MIN_NUMBER_DIGITS]
    if len(parts) > 1:
        return True
    if _digits(text) <= _MAX_E164_DIGITS:
        return False
    return len(list(phonenumbers.PhoneNumberMatcher(text, region))) > 1


# A US number written the usual ways: 2125550100, (212) 555-0100, +1 212-555-0100,
# 1.212.555.0100. phonenumbers.parse(text, "US") reads each as this country code and
# national number (tests compare the two); its general parser costs a quarter of an
# import's time.
_NANP_TEXT = re.compile(r"(?:\+?1[ .-]?)?(?:\(([2-9]\d\d)\)|([2-9]\d\d))[ .-]?(\d{3})[ .-]?(\d{4})")


def _parse_nanp(text: str) -> phonenumbers.PhoneNumber | None:
    found = _NANP_TEXT.fullmatch(text)
    if found is None:
        return None
    area = found.group(1) or found.group(2)
    return phonenumbers.PhoneNumber(
        country_code=1, national_number=int(area + found.group(3) + found.group(4))
    )


def _parse(raw: str, default_region: str) -> tuple[phonenumbers.PhoneNumber, bool]:
    """One valid number and whether it is the default region's, or
    :class:`InvalidInputError` saying why not."""
    text = raw.strip()
    if not text:
        raise InvalidInputError("phone number is missing")
    region = default_region.upper()
    if _several_numbers(text, region):
        raise InvalidInputError("several phone numbers in one cell (give one number)")
    try:
        number = _parse_nanp(text) if region == "US" else None
        number = number or phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        reason = _PARSE_ERRORS.get(exc.error_type, "unparseable")
        raise InvalidInputError(f"not a phone number ({reason})") from exc
    if number.extension:
        raise InvalidInputError("phone number has an extension (calls cannot dial it)")
    if _LETTER.search(text):
        raise InvalidInputError(
            "phone number has letters (vanity numbers such as 1-800-FLOWERS are not dialled)"
        )
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible != phonenumbers.ValidationResult.IS_POSSIBLE:
        reason = _IMPOSSIBLE.get(possible, "wrong length")
        raise InvalidInputError(f"impossible phone number ({reason})")
    # The clinic's own region first: is_valid_number alone tries every region of a
    # shared country code (25 for +1), the bulk of an import's time.
    in_region = phonenumbers.is_valid_number_for_region(number, region)
    if not (in_region or phonenumbers.is_valid_number(number)):
        raise InvalidInputError("invalid phone number (no such number range in its country)")
    return number, in_region


def _e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def to_e164(raw: str, default_region: str) -> str:
    """Return the E.164 form of ``raw`` or raise :class:`InvalidInputError` saying why."""
    return _e164(_parse(raw, default_region)[0])


def to_callable_e164(raw: str, clinic_country: str) -> str:
    """The E.164 form of a patient's number that a clinic of ``clinic_country`` may call,
    or :class:`InvalidInputError` saying why not."""
    country = clinic_country.upper()
    number, in_region = _parse(raw, country)
    area = _CALLING_AREA.get(country, frozenset({country}))
    if not in_region:
        region = phonenumbers.region_code_for_number(number)
        if region not in area:
            raise InvalidInputError(
                f"a number of another country ({region}, +{number.country_code}): "
                f"this clinic calls {country} numbers only"
            )
    kind = _UNCALLABLE_TYPES.get(phonenumbers.number_type(number))  # NANP 900: premium
    if kind is not None:
        raise InvalidInputError(f"{kind}: not called")
    return _e164(number)
