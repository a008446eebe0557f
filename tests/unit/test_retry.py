"""Retry timing: exponential, capped, jittered, and never for terminal outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.telephony.outcomes import TERMINAL_OUTCOMES, Outcome
from campaigns.telephony.retry import JITTER_SPREAD, next_retry_due, retry_delay

ENDED = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
BASE = timedelta(minutes=60)
CAP = timedelta(hours=24)


def due(
    outcome: Outcome,
    n: int,
    *,
    jitter: float = 0.5,
    retry_voicemail: bool = True,
    max_attempts: int = 10,
) -> datetime | None:
    return next_retry_due(
        outcome,
        n,
        ENDED,
        base=BASE,
        cap=CAP,
        retry_voicemail=retry_voicemail,
        max_attempts=max_attempts,
        jitter=jitter,
    )


@pytest.mark.parametrize(
    ("n", "hours"),
    [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 20), (7, 20), (40, 20), (10_000, 20)],
)
def test_exponential_then_capped_without_jitter(n: int, hours: int) -> None:
    assert due(Outcome.NO_ANSWER, n, max_attempts=100_000) == ENDED + timedelta(hours=hours)


def test_jitter_spreads_twenty_percent_either_side() -> None:
    assert due(Outcome.BUSY, 2, jitter=0.0) == ENDED + timedelta(hours=2) * (1 - JITTER_SPREAD)
    assert due(Outcome.BUSY, 2, jitter=1.0) == ENDED + timedelta(hours=2) * (1 + JITTER_SPREAD)
    assert JITTER_SPREAD == 0.2


def test_jitter_never_exceeds_the_cap_and_still_spreads_there() -> None:
    # The step is capped at cap / 1.2 so that +20 % lands exactly on the cap.
    assert due(Outcome.FAILED, 6, jitter=1.0) == ENDED + CAP
    assert due(Outcome.FAILED, 6, jitter=0.0) == ENDED + CAP / 1.2 * 0.8
    assert due(Outcome.FAILED, 60, jitter=0.5, max_attempts=100) == ENDED + CAP / 1.2


@pytest.mark.parametrize("outcome", sorted(TERMINAL_OUTCOMES))
def test_terminal_outcomes_stop(outcome: Outcome) -> None:
    assert due(outcome, 1) is None


def test_voicemail_is_configurable() -> None:
    assert due(Outcome.VOICEMAIL, 1, retry_voicemail=True) is not None
    assert due(Outcome.VOICEMAIL, 1, retry_voicemail=False) is None


def test_stops_at_max_attempts() -> None:
    assert due(Outcome.NO_ANSWER, 3, max_attempts=4) is not None
    assert due(Outcome.NO_ANSWER, 4, max_attempts=4) is None
    assert due(Outcome.NO_ANSWER, 5, max_attempts=4) is None
    assert due(Outcome.NO_ANSWER, 1, max_attempts=1) is None


def test_accepts_the_outcome_string() -> None:
    assert (
        next_retry_due(
            "busy",  # type: ignore[arg-type]
            1,
            ENDED,
            base=BASE,
            cap=CAP,
            retry_voicemail=False,
            max_attempts=3,
            jitter=0.5,
        )
        is not None
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"jitter": -0.1}, {"jitter": 1.5}, {"n": 0}],
)
def test_rejects_bad_input(kwargs: dict[str, float]) -> None:
    n = int(kwargs.pop("n", 1))
    with pytest.raises(ValueError, match=r"attempt_number|jitter"):
        next_retry_due(
            Outcome.BUSY,
            n,
            ENDED,
            base=BASE,
            cap=CAP,
            retry_voicemail=True,
            max_attempts=3,
            jitter=kwargs.get("jitter", 0.5),
        )


def test_rejects_naive_end_time() -> None:
    with pytest.raises(ValueError, match="timezone"):
        next_retry_due(
            Outcome.BUSY,
            1,
            datetime(2026, 3, 2, 15, 0),
            base=BASE,
            cap=CAP,
            retry_voicemail=True,
            max_attempts=3,
            jitter=0.5,
        )


@given(
    n=st.integers(min_value=1, max_value=500),
    jitter=st.floats(min_value=0, max_value=1),
    base_min=st.integers(min_value=1, max_value=600),
    cap_min=st.integers(min_value=1, max_value=7 * 24 * 60),
)
def test_delay_bounds(n: int, jitter: float, base_min: int, cap_min: int) -> None:
    base, cap = timedelta(minutes=base_min), timedelta(minutes=cap_min)
    delay = retry_delay(n, base=base, cap=cap, jitter=jitter)
    assert timedelta(0) < delay <= cap
    raw = base * 2 ** min(n - 1, 30)
    nominal = min(raw, cap / (1 + JITTER_SPREAD))
    tolerance = timedelta(microseconds=2)
    assert nominal * (1 - JITTER_SPREAD) - tolerance <= delay
    assert delay <= nominal * (1 + JITTER_SPREAD) + tolerance


@given(n=st.integers(min_value=1, max_value=60), jitter=st.floats(min_value=0, max_value=1))
def test_delay_grows_with_attempts(n: int, jitter: float) -> None:
    first = retry_delay(n, base=BASE, cap=CAP, jitter=jitter)
    second = retry_delay(n + 1, base=BASE, cap=CAP, jitter=jitter)
    assert second >= first
