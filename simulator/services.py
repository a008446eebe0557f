"""The LiveKit methods the engine calls, and the one table that dispatches to them.

:data:`METHODS` maps each Twirp path (``livekit.<Service>/<Method>``) to its
request message, the grant it needs (``simulator.auth``) and its body. A body
takes the decoded request and returns the reply message or raises
:class:`~simulator.twirp.TwirpError` with the code a real LiveKit server uses.
``CreateSIPParticipant`` starts the call (``simulator.callee``) and, with
``wait_until_answered``, returns only once the callee answered or failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from livekit.protocol import agent_dispatch as pb_dispatch
from livekit.protocol import models as pb_models
from livekit.protocol import room as pb_room
from livekit.protocol import sip as pb_sip

from simulator import auth
from simulator.callee import run_call, transfer
from simulator.scenario import result_string
from simulator.state import EMPTY_ROOM_TIMEOUT, Call, Simulator, mask, new_id
from simulator.twirp import TwirpError

logger = logging.getLogger("simulator")


def start_call(
    sim: Simulator,
    req: pb_sip.CreateSIPParticipantRequest,
    request_id: str,
    received_at: float | None = None,
) -> Call:
    trunk_id = req.sip_trunk_id
    sip_number = req.sip_number
    if trunk_id:
        trunk = sim.trunks.get(trunk_id)
        if trunk is None:
            sim.log_dial(req, request_id, "unknown_trunk", sip_number, "failed", received_at)
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

    scenario = sim.scenario
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
    record = sim.log_dial(req, request_id, result_string(behaviour), sip_number, None, received_at)
    record["participant_identity"] = identity
    call = Call(
        record=record,
        behaviour=behaviour,
        room_name=req.room_name,
        identity=identity,
        participant_sid=new_id("PA_"),
        sip_call_id=new_id("SCL_"),
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
    existing = sim.rooms.get(req.room_name)
    previous = existing.calls.get(identity) if existing else None
    if previous is not None:  # a reused identity replaces the participant
        sim.end_call(previous, "replaced")
    room = sim.room(req.room_name)
    room.calls[identity] = call
    sim.counters["dials"] += 1
    sim.set_state(call, "ringing")
    call.task = sim.spawn(run_call(sim, call))
    logger.info("dial room=%s to=%s behaviour=%s", req.room_name, mask(req.sip_call_to), behaviour)
    return call


async def create_sip_participant(
    sim: Simulator,
    req: pb_sip.CreateSIPParticipantRequest,
    request_id: str,
    received_at: float | None = None,
) -> Message:
    call = start_call(sim, req, request_id, received_at)
    if req.wait_until_answered:
        failure = await asyncio.shield(call.answer)
        if failure is not None:
            raise TwirpError.from_sip(failure)
    return pb_sip.SIPParticipantInfo(
        participant_id=call.participant_sid,
        participant_identity=call.identity,
        room_name=call.room_name,
        sip_call_id=call.sip_call_id,
    )


def create_outbound_trunk(sim: Simulator, req: pb_sip.CreateSIPOutboundTrunkRequest) -> Message:
    if not req.HasField("trunk"):
        raise TwirpError(400, "invalid_argument", "missing trunk")
    trunk = pb_sip.SIPOutboundTrunkInfo()
    trunk.CopyFrom(req.trunk)
    if not trunk.address:
        raise TwirpError(400, "invalid_argument", "no trunk address specified")
    if not trunk.numbers:
        raise TwirpError(400, "invalid_argument", "no trunk numbers specified")
    trunk.sip_trunk_id = new_id("ST_")
    trunk.created_at.GetCurrentTime()
    sim.trunks[trunk.sip_trunk_id] = trunk
    logger.info("outbound trunk %s created (%s)", trunk.sip_trunk_id, trunk.name)
    return trunk


def list_outbound_trunks(sim: Simulator, req: pb_sip.ListSIPOutboundTrunkRequest) -> Message:
    items = [
        t
        for t in sim.trunks.values()
        if (not req.trunk_ids or t.sip_trunk_id in req.trunk_ids)
        and (not req.numbers or set(t.numbers) & set(req.numbers))
    ]
    return pb_sip.ListSIPOutboundTrunkResponse(items=items)


def create_dispatch(sim: Simulator, req: pb_dispatch.CreateAgentDispatchRequest) -> Message:
    if not req.room:
        raise TwirpError(400, "invalid_argument", "room name is required")
    dispatch = pb_dispatch.AgentDispatch(
        id=new_id("AD_"),
        agent_name=req.agent_name,
        room=req.room,
        metadata=req.metadata,
        state=pb_dispatch.AgentDispatchState(created_at=time.time_ns()),
    )
    dispatch.attributes.update(req.attributes)
    room = sim.room(req.room)
    room.dispatches.append(dispatch)
    if not room.calls:
        sim.schedule_expiry(room, EMPTY_ROOM_TIMEOUT)
    sim.dispatch_log.append(
        {
            "at": time.time(),
            "id": dispatch.id,
            "agent_name": req.agent_name,
            "room": req.room,
            "metadata": req.metadata,
        }
    )
    return dispatch


def transfer_sip_participant(sim: Simulator, req: pb_sip.TransferSIPParticipantRequest) -> Message:
    if not req.transfer_to:
        raise TwirpError(400, "invalid_argument", "missing transfer destination")
    room = sim.rooms.get(req.room_name)
    call = room.calls.get(req.participant_identity) if room else None
    if call is None:
        raise TwirpError(404, "not_found", "requested participant does not exist")
    transfer(sim, call, req.transfer_to)
    return pb_sip.TransferSIPParticipantResponse(
        transfer_id=new_id("STR_"), status=pb_sip.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL
    )


def delete_room(sim: Simulator, req: pb_room.DeleteRoomRequest) -> Message:
    room = sim.rooms.get(req.room)
    if room is None:
        raise TwirpError(404, "not_found", "requested room does not exist")
    sim.drop_room(room, "room_deleted")
    return pb_room.DeleteRoomResponse()


def list_participants(sim: Simulator, req: pb_room.ListParticipantsRequest) -> Message:
    room = sim.rooms.get(req.room)
    if room is None:  # livekit-server lists no one in a room it does not have
        return pb_room.ListParticipantsResponse()
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


# --- the method table ---------------------------------------------------------------

# A body gets the request id and arrival time too (only the dial logs them).
Handler = Callable[[Simulator, Any, str, float | None], Awaitable[Message]]


def _plain(body: Callable[[Simulator, Any], Message]) -> Handler:
    async def handler(
        sim: Simulator, req: Any, _request_id: str, _received_at: float | None
    ) -> Message:
        return body(sim, req)

    return handler


@dataclass(frozen=True)
class Method:
    request: type[Message]
    grant: auth.GrantCheck
    name: str
    handler: Handler


METHODS: dict[str, Method] = {
    "livekit.SIP/CreateSIPParticipant": Method(
        pb_sip.CreateSIPParticipantRequest,
        auth.sip_call,
        "CreateSIPParticipant",
        create_sip_participant,
    ),
    "livekit.SIP/TransferSIPParticipant": Method(
        pb_sip.TransferSIPParticipantRequest,
        auth.sip_call_and_room_admin,
        "TransferSIPParticipant",
        _plain(transfer_sip_participant),
    ),
    "livekit.SIP/CreateSIPOutboundTrunk": Method(
        pb_sip.CreateSIPOutboundTrunkRequest,
        auth.sip_admin,
        "CreateSIPOutboundTrunk",
        _plain(create_outbound_trunk),
    ),
    "livekit.SIP/ListSIPOutboundTrunk": Method(
        pb_sip.ListSIPOutboundTrunkRequest,
        auth.sip_admin,
        "ListSIPOutboundTrunk",
        _plain(list_outbound_trunks),
    ),
    "livekit.AgentDispatchService/CreateDispatch": Method(
        pb_dispatch.CreateAgentDispatchRequest,
        auth.room_admin,
        "CreateDispatch",
        _plain(create_dispatch),
    ),
    "livekit.RoomService/DeleteRoom": Method(
        pb_room.DeleteRoomRequest, auth.room_create, "DeleteRoom", _plain(delete_room)
    ),
    "livekit.RoomService/ListParticipants": Method(
        pb_room.ListParticipantsRequest,
        auth.room_admin,
        "ListParticipants",
        _plain(list_participants),
    ),
}
