"""Phone numbers: parsed with the clinic's country as default region, stored as E.164."""

from __future__ import annotations

import phonenumbers

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


def to_e164(raw: str, default_region: str) -> str:
    """Return the E.164 form of ``raw`` or raise :class:`InvalidInputError` saying why.

    The reason never repeats the number, so it is safe in logs and reports.
    """
    text = raw.strip()
    if not text:
        raise InvalidInputError("phone number is missing")
    region = default_region.upper()
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        reason = _PARSE_ERRORS.get(exc.error_type, "unparseable")
        raise InvalidInputError(f"not a phone number ({reason})") from exc
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible != phonenumbers.ValidationResult.IS_POSSIBLE:
        reason = _IMPOSSIBLE.get(possible, "wrong length")
        raise InvalidInputError(f"impossible phone number ({reason})")
    # The clinic's own region first: is_valid_number alone tries every region of a
    # shared country code (25 for +1), the bulk of an import's time.
    if not (
        phonenumbers.is_valid_number_for_region(number, region)
        or phonenumbers.is_valid_number(number)
    ):
        raise InvalidInputError("invalid phone number (no such number range in its country)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
