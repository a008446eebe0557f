"""Masks for patient data in logs and console output: enough to tell rows apart, no more."""

from __future__ import annotations


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
