"""A LiveKit look-alike speaking the Twirp endpoints the engine uses.

The engine's real ``livekit.api.LiveKitAPI`` talks to this server over HTTP:
``POST /twirp/livekit.<Service>/<Method>`` with a protobuf (or JSON) body and a
``Authorization: Bearer <JWT>`` header; errors come back as Twirp JSON
``{"code", "msg", "meta"}`` with the HTTP status a real LiveKit server uses.

Calls are asyncio tasks (no thread per call): a ringing call is a sleep, so
thousands can ring at once. After an answered call has lasted its simulated
duration, the real agent (``agent.rehearsal``) plays it with the room's dispatch
metadata and the scripted persona of the callee (``simulator.personas``); its
reports go to a pluggable :data:`Reporter` (by default the agent's Celery
adapter, task ``campaigns.record_outcome``), its hang-up ends the call and its
transfer (as ``TransferSIPParticipant``) hands the callee over.

Test endpoints: ``GET /_sim/calls``, ``GET /_sim/reports``,
``GET /_sim/dispatches``, ``GET /_sim/stats``, ``POST /_sim/reset``,
``POST /_sim/scenario`` (replace the scenario at run time).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from jwt.utils import base64url_decode
from livekit.api.access_token import AccessToken, Claims, TokenVerifier
from livekit.protocol import agent_dispatch as pb_dispatch
from livekit.protocol import models as pb_models
from livekit.protocol import room as pb_room
from livekit.protocol import sip as pb_sip
from livekit.protocol import webhook as pb_webhook

from agent.metadata import MetadataError, parse_metadata
from agent.ports import Report
from agent.rehearsal import RehearsalCall, rehearse
from agent.reporting import CeleryReporter
from simulator.personas import PERSONAS
from simulator.scenario import (
    FAILURES,
    Scenario,
    ScenarioError,
    SimulatorConfig,
    SipFailure,
    result_string,
)

logger = logging.getLogger("simulator")

REQUEST_ID_HEADER = "X-Livekit-Request-Id"
# Rooms that got a dispatch but never a call are dropped after this (real seconds).
EMPTY_ROOM_TIMEOUT = 300.0
TOKEN_LEEWAY = 60.0  # seconds of clock skew accepted, as livekit's TokenVerifier


# --- agent outcome reports -----------------------------------------------------


@dataclass(frozen=True)
class OutcomeReport(Report):
    """An agent's report, with the room of the call it was made in."""

    room_name: str = ""


Reporter = Callable[[OutcomeReport], Awaitable[None]]


class SimulatedCall(RehearsalCall):
    """The agent's call control on a simulated call: hang-up and transfer act on it."""

    def __init__(self, sim: Simulator, call: Call, amd: str) -> None:
        super().__init__(amd=amd)
        self._sim = sim
        self._call = call

    async def hang_up(self) -> None:
        await super().hang_up()
        self._call.record["end"] = "completed"

    async def transfer(self, to: str) -> None:
        self._sim.transfer(self._call, to)
        await super().transfer(to)


# --- Twirp plumbing -------------------------------------------------------------


class TwirpError(Exception):
    def __init__(
        self, status: int, code: str, msg: str, meta: dict[str, str] | None = None
    ) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg
        self.meta = meta or {}

    @classmethod
    def from_sip(cls, failure: SipFailure) -> TwirpError:
        return cls(failure.http_status, failure.code, failure.msg, failure.meta())


@dataclass(frozen=True)
class Reply:
    """A finished HTTP answer, cached per ``X-Livekit-Request-Id``."""

    status: int
    body: bytes
    content_type: str

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, content_type=self.content_type)


def error_reply(err: TwirpError) -> Reply:
    payload: dict[str, Any] = {"code": err.code, "msg": err.msg}
    if err.meta:
        payload["meta"] = err.meta
    return Reply(err.status, json.dumps(payload).encode(), "application/json")


def message_reply(message: Message, as_json: bool) -> Reply:
    if as_json:
        body = json_format.MessageToJson(message, preserving_proto_field_name=True).encode()
        return Reply(200, body, "application/json")
    return Reply(200, message.SerializeToString(), "application/protobuf")


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(6)


def _mask(number: str) -> str:
    return "..." + number[-2:] if len(number) > 2 else "..."


# --- state ------------------------------------------------------------------------


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

    def info(self) -> pb_sip.SIPParticipantInfo:
        return pb_sip.SIPParticipantInfo(
            participant_id=self.participant_sid,
            participant_identity=self.identity,
            room_name=self.room_name,
            sip_call_id=self.sip_call_id,
        )


@dataclass(eq=False)
class Room:
    name: str
    sid: str = field(default_factory=lambda: _new_id("RM_"))
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
        self.verifier = TokenVerifier(config.api_key, config.api_secret)
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

    async def shutdown(self) -> None:
        for room in list(self.rooms.values()):
            self._drop_room(room, "shutdown")
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        close = getattr(self.reporter, "close", None)
        if callable(close):
            await asyncio.get_running_loop().run_in_executor(None, close)

    async def reset(self) -> None:
        for room in list(self.rooms.values()):
            self._drop_room(room, "reset")
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
            "speed": self.config.speed,
        }

    # -- auth --

    def authenticate(self, request: web.Request) -> Claims:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise TwirpError(
                401, "unauthenticated", "invalid authorization header. Must start with Bearer "
            )
        token = header[len("Bearer ") :].strip()
        try:
            self._check_token(token)
            # Signature and time claims checked above; this only parses grants.
            return self.verifier.verify(token, verify_signature=False)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise TwirpError(401, "unauthenticated", f"invalid token: {exc}") from None

    def _check_token(self, token: str) -> None:
        """HS256 signature by the API secret, issuer = API key, exp required.

        Checked by hand rather than by ``jwt.decode`` so a short dev secret
        ("secret") does not raise PyJWT's InsecureKeyLengthWarning in this thread
        (fatal under ``filterwarnings = error``).
        """
        header = jwt.get_unverified_header(token)
        if header.get("alg") != "HS256":
            raise jwt.InvalidAlgorithmError("alg must be HS256")
        signing_input, _, signature = token.rpartition(".")
        expected = hmac.new(
            self.config.api_secret.encode(), signing_input.encode(), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(expected, base64url_decode(signature)):
            raise jwt.InvalidSignatureError("signature verification failed")
        claims = jwt.decode(token, options={"verify_signature": False})
        if claims.get("iss") != self.config.api_key:
            raise jwt.InvalidIssuerError("unknown API key")
        now = time.time()
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise jwt.MissingRequiredClaimError("exp")
        if exp < now - TOKEN_LEEWAY:
            raise jwt.ExpiredSignatureError("token has expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + TOKEN_LEEWAY:
            raise jwt.ImmatureSignatureError("token is not yet valid")

    def deny(self) -> TwirpError:
        if self.config.grant_error == "unauthenticated":
            return TwirpError(401, "unauthenticated", "permissions denied")
        return TwirpError(403, "permission_denied", "permissions denied")

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

    def _schedule_expiry(self, room: Room, delay: float) -> None:
        if room.expiry is not None:
            room.expiry.cancel()
        room.expiry = asyncio.get_running_loop().call_later(delay, self._expire, room)

    def _expire(self, room: Room) -> None:
        room.expiry = None
        if not room.calls and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self._room_finished(room)

    def _drop_room(self, room: Room, why: str) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        if room.expiry is not None:
            room.expiry.cancel()
        for call in list(room.calls.values()):
            self._end_call(call, why)
        if why != "shutdown":
            self._room_finished(room)

    def _room_finished(self, room: Room) -> None:
        info = pb_models.Room(name=room.name, sid=room.sid)
        self._webhook(pb_webhook.WebhookEvent(event="room_finished", room=info))

    def _webhook(self, event: pb_webhook.WebhookEvent) -> None:
        """Send a LiveKit webhook to ``config.webhook_url``, if set; failures are logged."""
        if self.config.webhook_url is None:
            return
        event.id = _new_id("EV_")
        event.created_at = int(time.time())
        self.spawn(
            post_webhook(
                self.config.webhook_url, event, self.config.api_key, self.config.api_secret
            )
        )

    def _end_call(self, call: Call, why: str) -> None:
        """Hang ``call`` up from outside (room deleted, identity reused, reset)."""
        if call.state != "ended" and call.record.get("end") is None:
            call.record["end"] = why
        if not call.answer.done():
            call.answer.set_result(FAILURES["aborted"])
        if call.task is not None and not call.task.done():
            call.task.cancel()
        # A task cancelled before it first ran never reaches its finally: hang up here.
        self._hang_up(call)

    def _set_state(self, call: Call, state: str) -> None:
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

    # -- calls --

    def start_call(
        self,
        req: pb_sip.CreateSIPParticipantRequest,
        request_id: str,
        received_at: float | None = None,
    ) -> Call:
        trunk_id = req.sip_trunk_id
        sip_number = req.sip_number
        if trunk_id:
            trunk = self.trunks.get(trunk_id)
            if trunk is None:
                self._log_dial(req, request_id, "unknown_trunk", sip_number, "failed", received_at)
                raise TwirpError(404, "not_found", "requested sip trunk does not exist")
            if not sip_number and trunk.numbers:
                sip_number = trunk.numbers[0]
        elif req.HasField("trunk"):
            trunk_id = ""
        else:
            raise TwirpError(400, "invalid_argument", "missing sip trunk id")
        if not req.sip_call_to:
            raise TwirpError(400, "invalid_argument", "missing sip callee number")
        if not req.room_name:
            raise TwirpError(400, "invalid_argument", "missing room name")

        scenario = self.scenario
        behaviour = scenario.behaviour_for(req.sip_call_to, req.room_name)
        ringing_timeout = (
            req.ringing_timeout.seconds + req.ringing_timeout.nanos / 1e9
            if req.HasField("ringing_timeout")
            else scenario.default_ringing_timeout
        )
        max_call = (
            req.max_call_duration.seconds + req.max_call_duration.nanos / 1e9
            if req.HasField("max_call_duration")
            else 0.0
        )
        identity = req.participant_identity or f"sip_{req.sip_call_to}"
        record = self._log_dial(
            req, request_id, result_string(behaviour), sip_number, None, received_at
        )
        record["participant_identity"] = identity
        call = Call(
            record=record,
            behaviour=behaviour,
            room_name=req.room_name,
            identity=identity,
            participant_sid=_new_id("PA_"),
            sip_call_id=_new_id("SCL_"),
            sip_call_to=req.sip_call_to,
            ringing_timeout=ringing_timeout,
            max_call_duration=max_call or None,
            attributes={
                **dict(req.participant_attributes),
                "sip.callStatus": "dialing",
                "sip.phoneNumber": req.sip_call_to,
                "sip.trunkPhoneNumber": sip_number,
                "sip.trunkID": trunk_id,
            },
        )
        record["sip_call_id"] = call.sip_call_id
        existing = self.rooms.get(req.room_name)
        previous = existing.calls.get(identity) if existing else None
        if previous is not None:  # a reused identity replaces the participant
            self._end_call(previous, "replaced")
        room = self.room(req.room_name)
        room.calls[identity] = call
        self.counters["dials"] += 1
        self._set_state(call, "ringing")
        call.task = self.spawn(self._run_call(call))
        logger.info(
            "dial room=%s to=%s behaviour=%s", req.room_name, _mask(req.sip_call_to), behaviour
        )
        return call

    def _log_dial(
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

    async def _run_call(self, call: Call) -> None:
        cfg, scenario = self.config, self.scenario
        number, room = call.sip_call_to, call.room_name
        try:
            failure = FAILURES.get(call.behaviour)
            if failure is not None:
                if failure.latency == "ringing_timeout":
                    delay = call.ringing_timeout
                else:
                    delay = min(
                        scenario.duration(failure.latency, number, room), call.ringing_timeout
                    )
                await asyncio.sleep(cfg.scaled(delay))
                call.answer.set_result(failure)
                call.record["end"] = "failed"
                return
            ring = scenario.duration("answer", number, room)
            if ring >= call.ringing_timeout:  # rings out before the callee picks up
                await asyncio.sleep(cfg.scaled(call.ringing_timeout))
                call.record["result"] = "no_answer"
                call.answer.set_result(FAILURES["no_answer"])
                call.record["end"] = "failed"
                return
            await asyncio.sleep(cfg.scaled(ring))
            self._set_state(call, "active")
            call.attributes["sip.callStatus"] = "active"
            call.record["answered_at"] = time.time()
            call.answer.set_result(None)
            length = scenario.duration("call", number, room)
            if call.max_call_duration is not None:
                length = min(length, call.max_call_duration)
            await asyncio.sleep(cfg.scaled(length))
            # The agent reports before hanging up; a DeleteRoom now must not lose it.
            await asyncio.shield(self.spawn(self._converse(call, length)))
        except asyncio.CancelledError:
            if not call.answer.done():
                call.answer.set_result(FAILURES["aborted"])
            raise
        finally:
            self._hang_up(call)

    def _hang_up(self, call: Call) -> None:
        if call.state == "ended":
            return
        self._set_state(call, "ended")
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
            self._schedule_expiry(room, self.config.departure_timeout)

    async def _converse(self, call: Call, length: float) -> None:
        """The real agent plays the answered call with the callee's persona."""
        room = self.rooms.get(call.room_name)
        dispatch = room.dispatches[-1] if room and room.dispatches else None
        if dispatch is None:
            logger.info("room=%s has no agent dispatch: no outcome report", call.room_name)
            call.record["end"] = "completed"
            return

        async def report(outcome: Report) -> None:
            entry = OutcomeReport(**vars(outcome), room_name=call.room_name)
            await self._report(entry, call, dispatch, length)

        try:
            meta = parse_metadata(dispatch.metadata)
        except MetadataError as exc:
            logger.warning("room=%s: %s", call.room_name, exc)
            refused = exc.failure_report()
            if refused is not None:
                await report(refused)
            call.record["end"] = "completed"
            return
        persona = PERSONAS[call.behaviour]
        async with self.agents:
            await rehearse(
                meta, persona, reporter=report, call=SimulatedCall(self, call, persona.amd)
            )
        if call.record.get("end") is None:
            call.record["end"] = "completed"

    async def _report(
        self, report: OutcomeReport, call: Call, dispatch: pb_dispatch.AgentDispatch, length: float
    ) -> None:
        entry: dict[str, Any] = {
            "at": time.time(),
            "attempt_id": report.attempt_id,
            "outcome": report.outcome,
            "token": report.token,
            "detail": report.detail,
            "room_name": report.room_name,
            "sip_call_id": call.sip_call_id,
            "participant_identity": call.identity,
            "dispatch_id": dispatch.id,
            "agent_name": dispatch.agent_name,
            "call_seconds": round(length, 3),
            "sent": False,
            "error": None,
        }
        self.reports.append(entry)
        if self.reporter is None:
            return
        try:
            await self.reporter(report)
            entry["sent"] = True
        except Exception as exc:  # the broker is outside our control: record, go on
            entry["error"] = f"{type(exc).__name__}: {exc}"
            logger.warning("outcome report for attempt %s failed: %s", report.attempt_id, exc)

    def transfer(self, call: Call, to: str) -> None:
        """Hand an answered callee over to ``to``: they leave the room (a cold transfer)."""
        if call.state != "active":
            raise TwirpError(412, "failed_precondition", "participant is not in an active call")
        call.record["transferred_to"] = to.removeprefix("tel:")
        call.record["end"] = "transferred"
        self._hang_up(call)

    # -- endpoint bodies --

    async def create_sip_participant(
        self,
        req: pb_sip.CreateSIPParticipantRequest,
        request_id: str,
        received_at: float | None = None,
    ) -> Message:
        call = self.start_call(req, request_id, received_at)
        if not req.wait_until_answered:
            return call.info()
        failure = await asyncio.shield(call.answer)
        if failure is not None:
            raise TwirpError.from_sip(failure)
        return call.info()

    def create_outbound_trunk(self, req: pb_sip.CreateSIPOutboundTrunkRequest) -> Message:
        if not req.HasField("trunk"):
            raise TwirpError(400, "invalid_argument", "missing trunk")
        trunk = pb_sip.SIPOutboundTrunkInfo()
        trunk.CopyFrom(req.trunk)
        if not trunk.address:
            raise TwirpError(400, "invalid_argument", "no trunk address specified")
        if not trunk.numbers:
            raise TwirpError(400, "invalid_argument", "no trunk numbers specified")
        trunk.sip_trunk_id = _new_id("ST_")
        trunk.created_at.GetCurrentTime()
        self.trunks[trunk.sip_trunk_id] = trunk
        logger.info("outbound trunk %s created (%s)", trunk.sip_trunk_id, trunk.name)
        return trunk

    def list_outbound_trunks(self, req: pb_sip.ListSIPOutboundTrunkRequest) -> Message:
        items = [
            t
            for t in self.trunks.values()
            if (not req.trunk_ids or t.sip_trunk_id in req.trunk_ids)
            and (not req.numbers or set(t.numbers) & set(req.numbers))
        ]
        return pb_sip.ListSIPOutboundTrunkResponse(items=items)

    def create_dispatch(self, req: pb_dispatch.CreateAgentDispatchRequest) -> Message:
        if not req.room:
            raise TwirpError(400, "invalid_argument", "room name is required")
        dispatch = pb_dispatch.AgentDispatch(
            id=_new_id("AD_"),
            agent_name=req.agent_name,
            room=req.room,
            metadata=req.metadata,
            state=pb_dispatch.AgentDispatchState(created_at=time.time_ns()),
        )
        dispatch.attributes.update(req.attributes)
        room = self.room(req.room)
        room.dispatches.append(dispatch)
        if not room.calls:
            self._schedule_expiry(room, EMPTY_ROOM_TIMEOUT)
        self.dispatch_log.append(
            {
                "at": time.time(),
                "id": dispatch.id,
                "agent_name": req.agent_name,
                "room": req.room,
                "metadata": req.metadata,
            }
        )
        return dispatch

    def transfer_sip_participant(self, req: pb_sip.TransferSIPParticipantRequest) -> Message:
        if not req.transfer_to:
            raise TwirpError(400, "invalid_argument", "missing transfer destination")
        room = self.rooms.get(req.room_name)
        call = room.calls.get(req.participant_identity) if room else None
        if call is None:
            raise TwirpError(404, "not_found", "requested participant does not exist")
        self.transfer(call, req.transfer_to)
        return pb_sip.TransferSIPParticipantResponse(
            transfer_id=_new_id("STR_"), status=pb_sip.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL
        )

    def delete_room(self, req: pb_room.DeleteRoomRequest) -> Message:
        room = self.rooms.get(req.room)
        if room is None:
            raise TwirpError(404, "not_found", "requested room does not exist")
        self._drop_room(room, "room_deleted")
        return pb_room.DeleteRoomResponse()

    def list_participants(self, req: pb_room.ListParticipantsRequest) -> Message:
        room = self.rooms.get(req.room)
        if room is None:
            raise TwirpError(404, "not_found", "requested room does not exist")
        kind = pb_models.ParticipantInfo.Kind
        state = pb_models.ParticipantInfo.State
        people = []
        for call in room.calls.values():
            p = pb_models.ParticipantInfo(
                sid=call.participant_sid,
                identity=call.identity,
                state=state.ACTIVE if call.state == "active" else state.JOINED,
                kind=kind.SIP,
                joined_at=int(call.joined_at),
                joined_at_ms=int(call.joined_at * 1000),
                is_publisher=call.state == "active",
            )
            p.attributes.update(call.attributes)
            people.append(p)
        for dispatch in room.dispatches:
            people.append(
                pb_models.ParticipantInfo(
                    sid="PA_" + dispatch.id[3:],
                    identity=f"agent-{dispatch.id}",
                    name=dispatch.agent_name,
                    state=state.ACTIVE,
                    kind=kind.AGENT,
                    joined_at=int(room.created_at),
                    joined_at_ms=int(room.created_at * 1000),
                )
            )
        return pb_room.ListParticipantsResponse(participants=people)


# --- routing ------------------------------------------------------------------------

GrantCheck = Callable[[Claims, Any], bool]


def _sip_call(claims: Claims, _req: Any) -> bool:
    return bool(claims.sip and claims.sip.call)


def _sip_admin(claims: Claims, _req: Any) -> bool:
    return bool(claims.sip and claims.sip.admin)


def _room_admin(claims: Claims, req: Any) -> bool:
    video = claims.video
    return bool(video and video.room_admin and video.room == req.room)


def _sip_call_and_room_admin(claims: Claims, req: Any) -> bool:
    video = claims.video
    in_room = bool(video and video.room_admin and video.room == req.room_name)
    return _sip_call(claims, req) and in_room


def _room_create(claims: Claims, _req: Any) -> bool:
    return bool(claims.video and claims.video.room_create)


@dataclass(frozen=True)
class Method:
    request: type[Message]
    grant: GrantCheck
    name: str


METHODS: dict[str, Method] = {
    "livekit.SIP/CreateSIPParticipant": Method(
        pb_sip.CreateSIPParticipantRequest, _sip_call, "CreateSIPParticipant"
    ),
    "livekit.SIP/TransferSIPParticipant": Method(
        pb_sip.TransferSIPParticipantRequest, _sip_call_and_room_admin, "TransferSIPParticipant"
    ),
    "livekit.SIP/CreateSIPOutboundTrunk": Method(
        pb_sip.CreateSIPOutboundTrunkRequest, _sip_admin, "CreateSIPOutboundTrunk"
    ),
    "livekit.SIP/ListSIPOutboundTrunk": Method(
        pb_sip.ListSIPOutboundTrunkRequest, _sip_admin, "ListSIPOutboundTrunk"
    ),
    "livekit.AgentDispatchService/CreateDispatch": Method(
        pb_dispatch.CreateAgentDispatchRequest, _room_admin, "CreateDispatch"
    ),
    "livekit.RoomService/DeleteRoom": Method(pb_room.DeleteRoomRequest, _room_create, "DeleteRoom"),
    "livekit.RoomService/ListParticipants": Method(
        pb_room.ListParticipantsRequest, _room_admin, "ListParticipants"
    ),
}

SIM_KEY: web.AppKey[Simulator] = web.AppKey("simulator", Simulator)


async def _execute(
    sim: Simulator,
    method: Method,
    req: Any,
    request_id: str,
    as_json: bool,
    received_at: float | None = None,
) -> Reply:
    low, high = sim.scenario.latency["api"]
    if high > 0:
        await asyncio.sleep(sim.config.scaled(random.uniform(low, high)))  # noqa: S311
    try:
        if method.name == "CreateSIPParticipant":
            result = await sim.create_sip_participant(req, request_id, received_at)
        elif method.name == "CreateSIPOutboundTrunk":
            result = sim.create_outbound_trunk(req)
        elif method.name == "ListSIPOutboundTrunk":
            result = sim.list_outbound_trunks(req)
        elif method.name == "CreateDispatch":
            result = sim.create_dispatch(req)
        elif method.name == "DeleteRoom":
            result = sim.delete_room(req)
        elif method.name == "TransferSIPParticipant":
            result = sim.transfer_sip_participant(req)
        else:
            result = sim.list_participants(req)
    except TwirpError as err:
        return error_reply(err)
    except Exception:
        logger.exception("%s failed", method.name)
        return error_reply(TwirpError(500, "internal", "simulator internal error"))
    return message_reply(result, as_json)


async def twirp_handler(request: web.Request) -> web.StreamResponse:
    received_at = time.time()
    sim = request.app[SIM_KEY]
    sim.counters["requests"] += 1
    path = f"{request.match_info['service']}/{request.match_info['method']}"
    method = METHODS.get(path)
    if method is None:
        return error_reply(
            TwirpError(404, "bad_route", f"no handler for path /twirp/{path}")
        ).response()
    scenario = sim.scenario
    if scenario.down == "drop":
        sim.counters["rejected_5xx"] += 1
        if request.transport is not None:
            request.transport.abort()
        raise web.HTTPServiceUnavailable  # never delivered: the connection is gone
    if scenario.down == "503":
        sim.counters["rejected_5xx"] += 1
        return error_reply(TwirpError(503, "unavailable", "service unavailable")).response()
    try:
        claims = sim.authenticate(request)
        as_json = request.content_type == "application/json"
        body = await request.read()
        try:
            if as_json:
                req = json_format.Parse(body or b"{}", method.request(), ignore_unknown_fields=True)
            else:
                req = method.request.FromString(body)
        except (DecodeError, json_format.ParseError) as exc:
            raise TwirpError(400, "malformed", f"could not decode request: {exc}") from None
        if not method.grant(claims, req):
            raise sim.deny()
    except TwirpError as err:
        return error_reply(err).response()

    request_id = request.headers.get(REQUEST_ID_HEADER, "")
    key = (path, request_id)
    storm = scenario.fail_first_n_requests_with_503 > 0 and (
        scenario.fail_methods is None or method.name in scenario.fail_methods
    )
    if storm and sim.storm_seen < scenario.fail_first_n_requests_with_503:
        sim.storm_seen += 1
        sim.counters["rejected_5xx"] += 1
        if scenario.fail_503_after_dialing and method.name == "CreateSIPParticipant":
            # The ambiguous case: LiveKit dialled but the caller sees a 5xx.
            task = sim.spawn(_execute(sim, method, req, request_id, as_json, received_at))
            if request_id:
                sim.remember(key, task)
        return error_reply(TwirpError(503, "unavailable", "simulated server error")).response()

    if request_id and key in sim.replies:
        sim.counters["deduplicated"] += 1
        reply = await asyncio.shield(sim.replies[key])
        return reply.response()
    # No await between the look-up above and remember(): a concurrent duplicate
    # always finds this task.
    task = sim.spawn(_execute(sim, method, req, request_id, as_json, received_at))
    if request_id:
        sim.remember(key, task)
    reply = await asyncio.shield(task)
    return reply.response()


# --- /_sim endpoints -------------------------------------------------------------


async def sim_calls(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[SIM_KEY].calls))


async def sim_reports(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].reports)


async def sim_dispatches(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[SIM_KEY].dispatch_log))


async def sim_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].stats())


async def sim_reset(request: web.Request) -> web.Response:
    await request.app[SIM_KEY].reset()
    return web.json_response({"ok": True})


async def sim_scenario(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    try:
        data = await request.json()
        if not isinstance(data, dict):
            raise ScenarioError("a scenario is a JSON object")
        sim.scenario = Scenario.from_dict(data)
    except (ValueError, ScenarioError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    sim.storm_seen = 0
    return web.json_response({"ok": True})


def create_app(config: SimulatorConfig, reporter: Reporter | None = None) -> web.Application:
    """The simulator as an aiohttp application.

    ``reporter`` receives every agent outcome report; when None, a Celery
    reporter is built from ``config.broker_url`` if set, otherwise reports are
    only recorded (``GET /_sim/reports``).
    """
    if reporter is None and config.broker_url:
        reporter = CeleryReporter(config.broker_url)
    app = web.Application(client_max_size=1024 * 1024)
    sim = Simulator(config, reporter)
    app[SIM_KEY] = sim

    async def _shutdown(_app: web.Application) -> None:
        await sim.shutdown()

    app.on_shutdown.append(_shutdown)
    app.router.add_post("/twirp/{service}/{method}", twirp_handler)
    app.router.add_get("/_sim/calls", sim_calls)
    app.router.add_get("/_sim/reports", sim_reports)
    app.router.add_get("/_sim/dispatches", sim_dispatches)
    app.router.add_get("/_sim/stats", sim_stats)
    app.router.add_post("/_sim/reset", sim_reset)
    app.router.add_post("/_sim/scenario", sim_scenario)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start ``app`` on host:port (port 0: a free one); returns the runner."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("simulator is not listening")


def run(
    host: str = "127.0.0.1",
    port: int = 7880,
    speed: float = 1.0,
    scenario_path: str | None = None,
    *,
    trunk: str | None = None,
    no_report: bool = False,
    api_key: str | None = None,
    api_secret: str | None = None,
    broker_url: str | None = None,
    webhook_url: str | None = None,
) -> None:
    """Serve until interrupted (the ``campaigns simulator`` command)."""
    overrides: dict[str, Any] = {
        "speed": speed,
        "default_trunk_id": trunk,
        "webhook_url": webhook_url,
    }
    if scenario_path:
        overrides["scenario"] = Scenario.load(scenario_path)
    if api_key:
        overrides["api_key"] = api_key
    if api_secret:
        overrides["api_secret"] = api_secret
    if broker_url:
        overrides["broker_url"] = broker_url
    if no_report:
        overrides["broker_url"] = None
    config = SimulatorConfig.from_env(**overrides)
    app = create_app(config)
    logger.info(
        "LiveKit simulator on http://%s:%s speed=%s api_key=%s reports=%s",
        host,
        port,
        speed,
        config.api_key,
        "celery" if config.broker_url else "recorded only",
    )
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(
            app,
            host=host,
            port=port,
            access_log=None,
            print=None,
            shutdown_timeout=1.0,
            backlog=4096,
        )


# --- LiveKit webhooks ------------------------------------------------------------


def sign_webhook(event: Message, api_key: str, api_secret: str) -> tuple[bytes, str]:
    """The body and the ``Authorization`` value LiveKit sends: a JWT signed with the
    API secret whose ``sha256`` claim is the base64 SHA-256 of the body."""
    body = json_format.MessageToJson(event).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return body, AccessToken(api_key, api_secret).with_sha256(digest).to_jwt()


async def post_webhook(url: str, event: Message, api_key: str, api_secret: str) -> None:
    body, token = sign_webhook(event, api_key, api_secret)
    headers = {"Authorization": token, "Content-Type": "application/webhook+json"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client,
            client.post(url, data=body, headers=headers) as response,
        ):
            if response.status >= 300:
                logger.warning("webhook %s refused: HTTP %s", url, response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("webhook %s failed: %s", url, exc)
