"""The two LiveKit targets every conformance test runs against.

``simulator``: the project's LiveKit simulator, in-process, scripted callees by
number. ``livekit``: the real livekit-server and SIP bridge on loopback
(``harness.livekit``), with sipp answering as every callee. Both dial the same
numbers: the last two digits pick the callee's behaviour
(``harness.livekit.phones.BEHAVIOURS``, the simulator's ``DEFAULT_SUFFIXES``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Protocol

from harness.livekit.phones import BEHAVIOURS, Phones
from harness.livekit.stack import LiveKitStack
from simulator.testing import SimulatorHandle

CALLER_ID = "+15550100000"
SUFFIX = {behaviour: suffix for suffix, behaviour in BEHAVIOURS.items()}
_serial = itertools.count(1)


def number(behaviour: str) -> str:
    """A number no other test dials whose callee behaves as ``behaviour``."""
    return f"+1212{next(_serial) % 100_000:05d}{SUFFIX[behaviour]}"


class Target(Protocol):
    name: str
    url: str
    api_key: str
    api_secret: str
    trunk_id: str

    def dials_to(self, to: str) -> int:
        """How many calls reached the callee ``to``."""
        ...

    def hung_up(self, to: str) -> bool:
        """Whether the callee ``to`` saw the call end from the caller's side (BYE)."""
        ...


@dataclass
class SimulatorTarget:
    sim: SimulatorHandle
    trunk_id: str
    name: str = "simulator"

    @property
    def url(self) -> str:
        return self.sim.url

    @property
    def api_key(self) -> str:
        return self.sim.api_key

    @property
    def api_secret(self) -> str:
        return self.sim.api_secret

    def dials_to(self, to: str) -> int:
        # The simulator logs refused requests too; only these reached a callee.
        return len(
            [
                c
                for c in self.sim.calls()
                if c["sip_call_to"] == to and c["result"] != "unknown_trunk"
            ]
        )

    def hung_up(self, to: str) -> bool:
        return any(
            c.get("end") == "room_deleted" for c in self.sim.calls() if c["sip_call_to"] == to
        )


@dataclass
class LiveKitTarget:
    stack: LiveKitStack
    phones: Phones
    trunk_id: str
    name: str = "livekit"
    _messages: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def api_key(self) -> str:
        return self.stack.api_key

    @property
    def api_secret(self) -> str:
        return self.stack.api_secret

    def _invites(self, to: str) -> set[str]:
        """Call-IDs of the INVITEs sipp received for ``to`` (retransmissions are one)."""
        calls = set()
        for block in self.phones.messages().split("message received")[1:]:
            if re.search(rf"^INVITE sip:{re.escape(to)}@", block, re.MULTILINE):
                found = re.search(r"^Call-ID: *(\S+)", block, re.MULTILINE)
                if found:
                    calls.add(found.group(1))
        return calls

    def dials_to(self, to: str) -> int:
        return len(self._invites(to))

    def hung_up(self, to: str) -> bool:
        calls = self._invites(to)
        for block in self.phones.messages().split("message received")[1:]:
            if re.search(r"^BYE sip:", block, re.MULTILINE):
                found = re.search(r"^Call-ID: *(\S+)", block, re.MULTILINE)
                if found and found.group(1) in calls:
                    return True
        return False
