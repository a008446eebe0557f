"""Phone numbers: parsed with the clinic's country as default region, stored as E.164."""

from __future__ import annotations

import phonenumbers

from campaigns.errors import InvalidInputError


def to_e164(raw: str, default_region: str) -> str:
    """Return the E.164 form of ``raw`` or raise :class:`InvalidInputError` saying why."""
    text = raw.strip()
    if not text:
        raise InvalidInputError("phone number is empty")
    try:
        number = phonenumbers.parse(text, default_region.upper())
    except phonenumbers.NumberParseException as exc:
        raise InvalidInputError(f"not a phone number ({exc._msg})") from exc
    if not phonenumbers.is_possible_number(number):
        raise InvalidInputError("impossible phone number (wrong length for its country)")
    if not phonenumbers.is_valid_number(number):
        raise InvalidInputError("invalid phone number (no such number range)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
