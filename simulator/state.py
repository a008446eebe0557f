"""The simulator's bookkeeping: rooms, their SIP participants, trunks and logs.

Everything lives on the server's event loop (no locks). A call moves
``new -> ringing -> active -> ended``; the ringing/active counters and
``max_in_flight`` follow :meth:`Simulator.set_state`. A room closes once its
last participant has left (after ``departure_timeout``), or after
:data:`EMPTY_ROOM_TIMEOUT` if it got a dispatch but never a call.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from livekit.protocol import agent_dispatch as pb_dispatch
from livekit.protocol import models as pb_models
from livekit.protocol import sip as pb_sip
from livekit.protocol import webhook as pb_webhook

from agent.ports import Report
from simulator.scenario import FAILURES, Scenario, SimulatorConfig, SipFailure
from simulator.twirp import Reply
from simulator.webhooks import post_webhook

# Rooms that got a dispatch but never a call are dropped after this (real seconds).
EMPTY_ROOM_TIMEOUT = 300.0


@dataclass(frozen=True)
class OutcomeReport(Report):
    """An agent's report, with the room of the call it was made in."""

    room_name: str = ""


Reporter = Callable[[OutcomeReport], Awaitable[None]]


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(6)


def mask(number: str) -> str:
    return "..." + number[-2:] if len(number) > 2 else "..."


@dataclass(eq=False)
class Call:
    record: dict[str, Any]
    behaviour: str
    room_name: str
    identity: str
    participant_sid: str
    sip_call_id: str
    sip_call_to: str
    ringing_timeout: float
    max_call_duration: float | None
    attributes: dict[str, str]
    state: str = "new"  # new -> ringing -> active -> ended
    joined_at: float = field(default_factory=time.time)
    answer: asyncio.Future[SipFailure | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class Room:
    name: str
    sid: str = field(default_factory=lambda: new_id("RM_"))
    created_at: float = field(default_factory=time.time)
    calls: dict[str, Call] = field(default_factory=dict)  # by participant identity
    dispatches: list[pb_dispatch.AgentDispatch] = field(default_factory=list)
    expiry: asyncio.TimerHandle | None = None


class Simulator:
    """All state of one simulator; lives on the server's event loop."""

    def __init__(self, config: SimulatorConfig, reporter: Reporter | None) -> None:
        self.config = config
        self.scenario: Scenario = config.scenario
        self.reporter = reporter
        self.trunks: dict[str, pb_sip.SIPOutboundTrunkInfo] = {}
        self.rooms: dict[str, Room] = {}
        self.calls: deque[dict[str, Any]] = deque(maxlen=config.max_call_log)
        self.reports: list[dict[str, Any]] = []
        self.dispatch_log: deque[dict[str, Any]] = deque(maxlen=config.max_call_log)
        self.replies: OrderedDict[tuple[str, str], asyncio.Future[Reply]] = OrderedDict()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.agents = asyncio.Semaphore(config.agent_concurrency)
        self._reset_counters()
        self._install_default_trunk()

    def _reset_counters(self) -> None:
        self.storm_seen = 0
        self.counters = {"requests": 0, "rejected_5xx": 0, "dials": 0, "deduplicated": 0}
        self.ringing = 0
        self.active = 0
        self.max_in_flight = 0

    def _install_default_trunk(self) -> None:
        trunk_id = self.config.default_trunk_id
        if trunk_id:
            self.trunks[trunk_id] = pb_sip.SIPOutboundTrunkInfo(
                sip_trunk_id=trunk_id,
                name="simulator default trunk",
                address="sip.simulator.invalid",
                numbers=["+15550100000"],
            )

    # -- lifecycle --

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _end_everything(self, why: str) -> None:
        for room in list(self.rooms.values()):
            self.drop_room(room, why)
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def shutdown(self) -> None:
        await self._end_everything("shutdown")
        close = getattr(self.reporter, "close", None)
        if callable(close):
            await asyncio.get_running_loop().run_in_executor(None, close)

    async def reset(self) -> None:
        await self._end_everything("reset")
        self.trunks.clear()
        self._install_default_trunk()
        self.calls.clear()
        self.reports.clear()
        self.dispatch_log.clear()
        self.replies.clear()
        self._reset_counters()

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "ringing": self.ringing,
            "active": self.active,
            "in_flight": self.ringing + self.active,
            "max_in_flight": self.max_in_flight,
            "rooms": len(self.rooms),
            "reports": len(self.reports),
            "reports_sent": sum(1 for report in self.reports if report["sent"]),
            "reports_failed": sum(1 for report in self.reports if report["error"]),
            "speed": self.config.speed,
        }

    # -- request ids --

    def remember(self, key: tuple[str, str], fut: asyncio.Future[Reply]) -> None:
        self.replies[key] = fut
        while len(self.replies) > self.config.request_id_cache_size:
            self.replies.popitem(last=False)

    # -- rooms --

    def room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
        if room.expiry is not None:
            room.expiry.cancel()
            room.expiry = None
        return room

    def schedule_expiry(self, room: Room, delay: float) -> None:
        if room.expiry is not None:
            room.expiry.cancel()
        room.expiry = asyncio.get_running_loop().call_later(delay, self._expire, room)

    def _expire(self, room: Room) -> None:
        room.expiry = None
        if not room.calls and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self._room_finished(room)

    def drop_room(self, room: Room, why: str) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        if room.expiry is not None:
            room.expiry.cancel()
        for call in list(room.calls.values()):
            self.end_call(call, why)
        if why != "shutdown":
            self._room_finished(room)

    # -- webhooks --

    def _room_finished(self, room: Room) -> None:
        info = pb_models.Room(name=room.name, sid=room.sid)
        self._webhook(pb_webhook.WebhookEvent(event="room_finished", room=info))

    def _webhook(self, event: pb_webhook.WebhookEvent) -> None:
        """Send a LiveKit webhook to ``config.webhook_url``, if set; failures are logged."""
        if self.config.webhook_url is None:
            return
        event.id = new_id("EV_")
        event.created_at = int(time.time())
        self.spawn(
            post_webhook(
                self.config.webhook_url, event, self.config.api_key, self.config.api_secret
            )
        )

    # -- calls --

    def end_call(self, call: Call, why: str) -> None:
        """Hang ``call`` up from outside (room deleted, identity reused, reset)."""
        if call.state != "ended" and call.record.get("end") is None:
            call.record["end"] = why
        if not call.answer.done():
            call.answer.set_result(FAILURES["aborted"])
        if call.task is not None and not call.task.done():
            call.task.cancel()
        # A task cancelled before it first ran never reaches its finally: hang up here.
        self.hang_up(call)

    def set_state(self, call: Call, state: str) -> None:
        if call.state == "ringing":
            self.ringing -= 1
        elif call.state == "active":
            self.active -= 1
        call.state = state
        if state == "ringing":
            self.ringing += 1
        elif state == "active":
            self.active += 1
        self.max_in_flight = max(self.max_in_flight, self.ringing + self.active)
        call.record["state"] = state

    def hang_up(self, call: Call) -> None:
        if call.state == "ended":
            return
        self.set_state(call, "ended")
        call.attributes["sip.callStatus"] = "hangup"
        if "answered_at" in call.record:
            left = pb_models.ParticipantInfo(
                identity=call.identity, sid=call.participant_sid, kind=pb_models.ParticipantInfo.SIP
            )
            self._webhook(
                pb_webhook.WebhookEvent(
                    event="participant_left",
                    room=pb_models.Room(name=call.room_name),
                    participant=left,
                )
            )
        room = self.rooms.get(call.room_name)
        if room is None or room.calls.get(call.identity) is not call:
            return
        del room.calls[call.identity]
        if not room.calls:
            # Like a real room: it closes once the last participant has left.
            self.schedule_expiry(room, self.config.departure_timeout)

    def log_dial(
        self,
        req: pb_sip.CreateSIPParticipantRequest,
        request_id: str,
        result: str,
        sip_number: str,
        end: str | None,
        received_at: float | None,
    ) -> dict[str, Any]:
        at = time.time()
        record: dict[str, Any] = {
            "at": at,
            # when the request reached the server, before any scripted API latency
            "received_at": received_at or at,
            "request_id": request_id,
            "sip_trunk_id": req.sip_trunk_id,
            "sip_number": sip_number,
            "sip_call_to": req.sip_call_to,
            "room_name": req.room_name,
            "participant_identity": req.participant_identity,
            "result": result,
            "wait_until_answered": req.wait_until_answered,
            "sip_call_id": "",
            "state": "ended" if end else "ringing",
            "end": end,
        }
        self.calls.append(record)
        return record
