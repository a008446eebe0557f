"""Report tokens: HMAC-SHA256, bound to one attempt."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.tokens import sign_report_token, verify_report_token

SECRET = "s3cret-for-tests"


def test_round_trip() -> None:
    token = sign_report_token(42, SECRET)
    assert verify_report_token(42, token, SECRET)
    assert token == sign_report_token(42, SECRET)
    assert token.isascii()
    assert "=" not in token
    assert len(token) == 43  # 32 bytes, base64url without padding


def test_bound_to_the_attempt() -> None:
    assert not verify_report_token(43, sign_report_token(42, SECRET), SECRET)


def test_bound_to_the_secret() -> None:
    assert not verify_report_token(42, sign_report_token(42, SECRET), "another-secret")


@pytest.mark.parametrize("token", ["", "x", "not a token", "é" * 43, None, 42])
def test_garbage_is_rejected(token: object) -> None:
    assert not verify_report_token(42, token, SECRET)  # type: ignore[arg-type]


def test_tampered_token_is_rejected() -> None:
    token = sign_report_token(42, SECRET)
    flipped = ("A" if token[0] != "A" else "B") + token[1:]
    assert not verify_report_token(42, flipped, SECRET)


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="CAMPAIGNS_REPORT_SECRET"):
        sign_report_token(1, "")


@given(a=st.integers(min_value=1, max_value=2**62), b=st.integers(min_value=1, max_value=2**62))
def test_distinct_attempts_have_distinct_tokens(a: int, b: int) -> None:
    assert (sign_report_token(a, SECRET) == sign_report_token(b, SECRET)) == (a == b)
