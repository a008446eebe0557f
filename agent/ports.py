"""What the agent needs from the world, as small interfaces.

The agent never touches the room, the broker or the classifier directly: the
worker plugs in LiveKit and Celery adapters, the rehearsal and the simulator plug
in observable in-process ones. That keeps every outcome path testable offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from campaigns.attempts.reports import (
    DETAIL_KEYS,
)  # the only keys the engine keeps in a report's detail


@dataclass(frozen=True)
class Report:
    """One outcome report, authenticated by the token the engine signed for the attempt."""

    attempt_id: int
    outcome: str
    token: str
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.detail) - DETAIL_KEYS
        if unknown:
            raise ValueError(f"report detail keys not allowed: {sorted(unknown)}")


class Reporter(Protocol):
    async def __call__(self, report: Report, /) -> None:
        """Deliver ``report`` to the engine (raises if it could not be handed over)."""
        ...


class CallControl(Protocol):
    async def wait_until_answered(self) -> None:
        """Return once the callee's SIP participant is answered (``sip.callStatus`` active)."""
        ...

    async def hang_up(self) -> None:
        """End the call for everyone (the room is deleted)."""
        ...

    async def transfer(self, to: str) -> None:
        """Cold-transfer the callee to ``to`` (E.164); raises if the transfer failed."""
        ...

    async def leave(self) -> None:
        """Leave the call to the others (after a transfer): the room stays."""
        ...


class Screener(Protocol):
    async def screen(self) -> str:
        """The answering-machine verdict: an AMD category (human, machine-vm, ...)."""
        ...
