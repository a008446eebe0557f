"""How a dialled call plays out: the callee rings, answers or fails, then the agent talks.

The callee's behaviour comes from the scenario: a SIP failure after its
latency, a ring that outlasts ``ringing_timeout`` (no answer), or an answer
after the ``answer`` delay. An answered call lasts its simulated duration
(capped by ``max_call_duration``); then the real agent (``agent.rehearsal``)
plays it with the room's latest dispatch metadata and the callee's persona
(``simulator.personas``). Every report is logged (``GET /_sim/reports``) and
handed to the simulator's :data:`~simulator.state.Reporter`; a failing reporter
is recorded, never fatal. The agent's hang-up ends the call; its transfer hands
the callee over (a cold transfer: they leave the room).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from livekit.protocol import agent_dispatch as pb_dispatch

from agent.metadata import MetadataError, parse_metadata
from agent.ports import Report
from agent.rehearsal import RehearsalCall, rehearse
from simulator.personas import PERSONAS
from simulator.scenario import FAILURES
from simulator.state import Call, OutcomeReport, Simulator
from simulator.twirp import TwirpError

logger = logging.getLogger("simulator")


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
        transfer(self._sim, self._call, to)
        await super().transfer(to)


async def run_call(sim: Simulator, call: Call) -> None:
    cfg, scenario = sim.config, sim.scenario
    number, room = call.sip_call_to, call.room_name
    try:
        failure = FAILURES.get(call.behaviour)
        if failure is not None:
            if failure.latency == "ringing_timeout":
                delay = call.ringing_timeout
            else:
                delay = min(scenario.duration(failure.latency, number, room), call.ringing_timeout)
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
        sim.set_state(call, "active")
        call.attributes["sip.callStatus"] = "active"
        call.record["answered_at"] = time.time()
        call.answer.set_result(None)
        length = scenario.duration("call", number, room)
        if call.max_call_duration is not None:
            length = min(length, call.max_call_duration)
        await asyncio.sleep(cfg.scaled(length))
        # The agent reports before hanging up; a DeleteRoom now must not lose it.
        await asyncio.shield(sim.spawn(_converse(sim, call, length)))
    except asyncio.CancelledError:
        if not call.answer.done():
            call.answer.set_result(FAILURES["aborted"])
        raise
    finally:
        sim.hang_up(call)


async def _converse(sim: Simulator, call: Call, length: float) -> None:
    """The real agent plays the answered call with the callee's persona."""
    room = sim.rooms.get(call.room_name)
    dispatch = room.dispatches[-1] if room and room.dispatches else None
    if dispatch is None:
        logger.info("room=%s has no agent dispatch: no outcome report", call.room_name)
        call.record["end"] = "completed"
        return

    async def report(outcome: Report) -> None:
        entry = OutcomeReport(**vars(outcome), room_name=call.room_name)
        await _report(sim, entry, call, dispatch, length)

    try:
        meta = parse_metadata(dispatch.metadata)
    except MetadataError as exc:
        logger.warning("room=%s: %s", call.room_name, exc)
        refused = exc.failure_report()
        if refused is not None:
            await report(refused)
        call.record["end"] = "completed"
        return
    if sim.config.agent == "instant":
        await report(Report(meta.attempt_id, call.behaviour, meta.report_token))
        call.record["end"] = "completed"
        return
    persona = PERSONAS[call.behaviour]
    async with sim.agents:
        await rehearse(meta, persona, reporter=report, call=SimulatedCall(sim, call, persona.amd))
    if call.record.get("end") is None:
        call.record["end"] = "completed"


async def _report(
    sim: Simulator,
    report: OutcomeReport,
    call: Call,
    dispatch: pb_dispatch.AgentDispatch,
    length: float,
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
    sim.reports.append(entry)
    if sim.reporter is None:
        return
    try:
        await sim.reporter(report)
        entry["sent"] = True
    except Exception as exc:  # the broker is outside our control: record, go on
        entry["error"] = f"{type(exc).__name__}: {exc}"
        logger.warning("outcome report for attempt %s failed: %s", report.attempt_id, exc)


def transfer(sim: Simulator, call: Call, to: str) -> None:
    """Hand an answered callee over to ``to``: they leave the room (a cold transfer)."""
    if call.state != "active":
        raise TwirpError(412, "failed_precondition", "participant is not in an active call")
    call.record["transferred_to"] = to.removeprefix("tel:")
    call.record["end"] = "transferred"
    sim.hang_up(call)
