"""US numbers read without phonenumbers' general parser read exactly as it reads them."""

from __future__ import annotations

import random

import phonenumbers
import pytest

from campaigns import phones
from campaigns.compliance import geography
from campaigns.errors import InvalidInputError

_PREFIXES = ("", "+1", "1", "+1 ", "1 ", "1-", "+1-", "+1.", "1.", "+", "11", "0", "+44 ")
_SEPARATORS = ("", " ", "-", ".", "  ", "/")


def _written_numbers(count: int) -> list[str]:
    """Ten digits written the ways people write them, with a share of near misses."""
    rng = random.Random(20261130)
    out = []
    for _ in range(count):
        digits = "".join(rng.choice("0123456789") for _ in range(10))
        area, exchange, line = digits[:3], digits[3:6], digits[6:]
        area = rng.choice((area, f"({area})", f"({area}", f"{area})", f"({area}) "))
        out.append(
            f"{rng.choice(_PREFIXES)}{area}{rng.choice(_SEPARATORS)}{exchange}"
            f"{rng.choice(_SEPARATORS)}{line}"
        )
    return out


def test_the_us_shortcut_reads_each_number_as_phonenumbers_does() -> None:
    read = 0
    for text in _written_numbers(40_000):
        number = phones._parse_nanp(text)
        if number is not None:
            read += 1
            assert number == phonenumbers.parse(text, "US"), text
    assert read > 2_000


def _verdict(text: str) -> str:
    try:
        return phones.to_callable_e164(text, "US")
    except InvalidInputError as exc:
        return f"refused: {exc}"


def test_callable_numbers_and_refusals_are_the_general_parsers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = [*_written_numbers(5_000), "(900) 555-0100", "+1 876 555 0100", "212 055 0100"]
    fast = [_verdict(text) for text in texts]
    monkeypatch.setattr(phones, "_parse_nanp", lambda text: None)
    assert fast == [_verdict(text) for text in texts]
    assert any(v.startswith("+1") for v in fast) and any(v.startswith("refused") for v in fast)


def test_an_e164_us_number_is_located_as_phonenumbers_parses_it() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        e164 = f"+1{rng.randint(2, 9)}{rng.randint(0, 10**9 - 1):09d}"
        for country in ("US", "CA", "GB"):
            assert geography._parse(e164, country) == phonenumbers.parse(e164, country)
