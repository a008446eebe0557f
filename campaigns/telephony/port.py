"""The telephony port: what the calling pipeline needs from a telephony provider.

Nothing here knows LiveKit; :mod:`campaigns.telephony.livekit_gateway` is the LiveKit
adapter. The pipeline depends only on :class:`Telephony`, so tests and a
dry-run can plug in another implementation.

Contract of :meth:`Telephony.place_call` (one call per attempt, never two dials):

* ``answered=True``: the callee picked up (a person or a voicemail box); the
  outcome comes later from the agent's report, ``outcome`` is ``None``.
* ``answered=False`` and ``outcome`` set: the dial failed; record the outcome
  and let the retry policy decide. ``problem=AMBIGUOUS`` means the provider may
  have dialed the patient: never re-send this attempt.
* ``problem=CONFIGURATION`` (``outcome`` is ``None``): nothing was dialed and every
  further dial would fail the same way (credentials, grants, trunk id, agent);
  ``error`` names the setting to fix. Pause and alert; do not retry.
* ``problem=MISSED_START`` (``outcome`` is ``None``): nothing was dialed because
  the trunk's pacing start had passed; the attempt goes back to the queue.

Admin operations (trunks, hang-up, participants) raise :class:`ConfigurationError`
for the same causes and :class:`TelephonyError` for anything else. Both are
:class:`~campaigns.errors.CampaignError`: their message is meant for the operator
(the CLI prints it as one line).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from campaigns.errors import CampaignError
from campaigns.telephony.outcomes import DialProblem, Outcome


class TelephonyError(CampaignError):
    """The provider could not carry out a request (unreachable, server error, ...)."""


class ConfigurationError(TelephonyError):
    """The engine's configuration makes every such request fail; the message
    names the setting to fix (e.g. LIVEKIT_API_KEY, the clinic's trunk id)."""


@dataclass(frozen=True)
class CallRequest:
    attempt_id: int
    room_name: str  # unique per attempt
    participant_identity: str  # unique per attempt: a reused identity cancels the call
    trunk_id: str
    call_to: str  # E.164
    caller_id: str | None  # E.164 shown to the callee; None: the trunk's first number
    agent_name: str
    # JSON-serialisable; the agent needs at least ``report_token``
    # (campaigns.tokens.sign_report_token). ``attempt_id`` is added by the adapter.
    agent_metadata: dict[str, Any]
    ringing_timeout: timedelta  # at least 15 s (adapters raise shorter values to 15 s)
    max_call_duration: timedelta


@dataclass(frozen=True)
class CallResult:
    answered: bool
    outcome: Outcome | None
    dispatch_id: str | None = None
    sip_call_id: str | None = None
    sip_status_code: int | None = None
    sip_status: str | None = None
    error: str | None = None
    problem: DialProblem | None = None


@dataclass(frozen=True, kw_only=True)
class TrunkDetails:
    """What an outbound SIP trunk is at the provider, apart from its id and password."""

    name: str
    address: str  # the carrier's SIP host, e.g. "example.pstn.twilio.com"
    numbers: tuple[str, ...]  # caller-ID numbers (E.164) the trunk may present
    auth_username: str | None = None
    destination_country: str | None = None  # ISO 3166-1 alpha-2, e.g. "US"


@dataclass(frozen=True, kw_only=True)
class TrunkSpec(TrunkDetails):
    """An outbound SIP trunk to create at the provider."""

    auth_password: str | None = field(default=None, repr=False)  # never logged or returned


@dataclass(frozen=True, kw_only=True)
class TrunkInfo(TrunkDetails):
    """An outbound trunk as listed by the provider (it never returns the password)."""

    trunk_id: str


# Awaited right before the dial is sent; False: send nothing.
BeforeDial = Callable[[], Awaitable[bool]]


class Telephony(Protocol):
    async def place_call(
        self, req: CallRequest, before_dial: BeforeDial | None = None
    ) -> CallResult:
        """Dispatch the agent into ``req.room_name`` and dial ``req.call_to`` once,
        waiting until answered or failed. Never raises for a failed dial.
        ``before_dial`` (pacing) may hold the dial back or cancel it, which ends
        in ``CallResult(problem=DialProblem.MISSED_START)`` with the room discarded."""
        ...

    async def hang_up(self, room_name: str) -> None:
        """End the call by closing its room; a room already gone is fine."""
        ...

    async def room_participants(self, room_name: str) -> list[str]:
        """Identities in the room; empty when the room is gone."""
        ...

    async def create_outbound_trunk(self, spec: TrunkSpec) -> str:
        """Create an outbound trunk; returns its id."""
        ...

    async def list_outbound_trunks(self) -> list[TrunkInfo]: ...

    async def aclose(self) -> None: ...
