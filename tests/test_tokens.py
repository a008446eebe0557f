"""Report tokens: versioned, HMAC-SHA256, bound to one attempt, its room and an expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.tokens import TokenCheck, check_report_token, sign_report_token

SECRET = "s3cret-for-tests-0123456789abcdef"
NOW = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
EXPIRY = NOW + timedelta(minutes=8)
ROOM = "appt-42-0a1b2c3d"


def _check(token: object, attempt_id: int = 42, room: str | None = ROOM, at: datetime = NOW) -> str:
    return check_report_token(token, attempt_id, room, at, SECRET)


def test_round_trip_and_format() -> None:
    token = sign_report_token(42, ROOM, EXPIRY, SECRET)
    assert _check(token) is TokenCheck.VALID
    version, expiry, mac = token.split(".")
    assert (version, int(expiry)) == ("v2", int(EXPIRY.timestamp()))
    assert mac.isascii() and "=" not in mac and len(mac) == 43  # 32 bytes, base64url


def test_bound_to_the_attempt_and_the_room() -> None:
    token = sign_report_token(42, ROOM, EXPIRY, SECRET)
    assert _check(token, attempt_id=43) is TokenCheck.INVALID
    assert _check(token, room="appt-42-ffffffff") is TokenCheck.INVALID
    assert _check(token, room=None) is TokenCheck.INVALID  # an attempt never dialed has no room


def test_expires() -> None:
    token = sign_report_token(42, ROOM, EXPIRY, SECRET)
    assert _check(token, at=EXPIRY) is TokenCheck.VALID
    assert _check(token, at=EXPIRY + timedelta(seconds=1)) is TokenCheck.EXPIRED


def test_a_pushed_back_expiry_breaks_the_mac() -> None:
    token = sign_report_token(42, ROOM, EXPIRY, SECRET)
    version, expiry, mac = token.split(".")
    later = f"{version}.{int(expiry) + 3600}.{mac}"
    assert _check(later, at=EXPIRY + timedelta(minutes=1)) is TokenCheck.INVALID


def test_bound_to_the_secret() -> None:
    token = sign_report_token(42, ROOM, EXPIRY, "another-secret-0123456789abcdef!")
    assert _check(token) is TokenCheck.INVALID


@pytest.mark.parametrize(
    "token", ["", "x", "v2..", "v1.1.abc", "v2.-1.abc", "not a token", "é" * 43, None, 42]
)
def test_garbage_is_refused(token: object) -> None:
    assert _check(token) is TokenCheck.INVALID


def test_tampered_token_is_refused() -> None:
    token = sign_report_token(42, ROOM, EXPIRY, SECRET)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert _check(flipped) is TokenCheck.INVALID


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="CAMPAIGNS_REPORT_SECRET"):
        sign_report_token(1, ROOM, EXPIRY, "")


@given(a=st.integers(min_value=1, max_value=2**62), b=st.integers(min_value=1, max_value=2**62))
def test_a_token_is_valid_for_its_own_attempt_only(a: int, b: int) -> None:
    token = sign_report_token(a, ROOM, EXPIRY, SECRET)
    assert (_check(token, attempt_id=b) is TokenCheck.VALID) == (a == b)
