"""When the next attempt of an appointment is due, from the outcome of the last one.

Pure: the caller passes the end of the attempt and a jitter fraction it drew
(``random.random()``), so the same inputs always give the same answer. The
pipeline then moves the result forward to the compliance policy's
``next_allowed_at`` and drops it when it falls past the appointment's cut-off.

Delay of attempt ``n`` (the attempt that just ended, 1-based)::

    nominal = min(base * 2**(n-1), cap / (1 + JITTER_SPREAD))
    delay   = nominal * (1 + JITTER_SPREAD * (2 * jitter - 1))

i.e. +/-20 % around the exponential step, and never more than ``cap``: once the
step reaches the cap the retries spread over [cap * 0.8 / 1.2, cap] instead of
all landing on the cap at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from campaigns.telephony.outcomes import Outcome, is_retryable

# Fraction by which a delay is spread either side of base * 2**(n-1).
JITTER_SPREAD = 0.2

# Beyond 2**62 every step is past any cap; keeps the arithmetic bounded.
_MAX_EXPONENT = 62


def retry_delay(
    attempt_number: int, *, base: timedelta, cap: timedelta, jitter: float
) -> timedelta:
    """The jittered, capped exponential delay after attempt ``attempt_number``."""
    if attempt_number < 1:
        raise ValueError("attempt_number starts at 1")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter is a fraction in [0, 1]")
    if base < timedelta(0) or cap < timedelta(0):
        raise ValueError("base and cap must not be negative")
    exponent = min(attempt_number - 1, _MAX_EXPONENT)
    step = base.total_seconds() * float(2**exponent)
    nominal = min(step, cap.total_seconds() / (1.0 + JITTER_SPREAD))
    seconds = nominal * (1.0 + JITTER_SPREAD * (2.0 * jitter - 1.0))
    return min(cap, timedelta(seconds=seconds))


def next_retry_due(
    outcome: Outcome,
    attempt_number: int,
    ended_at: datetime,
    *,
    base: timedelta,
    cap: timedelta,
    retry_voicemail: bool,
    max_attempts: int,
    jitter: float,
) -> datetime | None:
    """Earliest time of the next attempt, or ``None`` when calling stops.

    ``None`` for a terminal outcome (confirmed, declined, invalid number, ...),
    for voicemail unless ``retry_voicemail``, and once ``attempt_number`` has
    reached ``max_attempts``.
    """
    if ended_at.tzinfo is None or ended_at.utcoffset() is None:
        raise ValueError("ended_at must be timezone-aware")
    delay = retry_delay(attempt_number, base=base, cap=cap, jitter=jitter)
    if not is_retryable(Outcome(outcome), retry_voicemail=retry_voicemail):
        return None
    if attempt_number >= max_attempts:
        return None
    return ended_at + delay
