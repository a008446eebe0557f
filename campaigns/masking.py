"""Masks for patient data in logs and console output: enough to tell rows apart, no more;
and stored text made inert for the terminal."""

from __future__ import annotations

import re

from rich.text import Text

# Characters a terminal would act on or that reorder text: shown as escapes instead.
_INVISIBLE = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def inert(value: object) -> Text:
    """A stored value as literal terminal text: rich markup and emoji codes are not
    interpreted, and control and bidi characters show as escapes (``\\x1b``)."""
    return Text(_INVISIBLE.sub(lambda m: m.group().encode("unicode_escape").decode(), str(value)))


def mask_phone(phone: str | None) -> str:
    """``+13055550100`` -> ``+1305*****00``: country and area code, last two digits."""
    if not phone:
        return ""
    if len(phone) <= 6:
        return "*" * len(phone)
    return phone[:5] + "*" * (len(phone) - 7) + phone[-2:]


def mask_name(name: str | None) -> str:
    """``Ada Lovelace`` -> ``A** L*******``."""
    if not name:
        return ""
    return " ".join(part[:1] + "*" * (len(part) - 1) for part in name.split())
