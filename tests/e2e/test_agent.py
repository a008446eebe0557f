"""The confirmation agent, driven through ``AgentSession.run`` by a scripted LLM.

Every outcome is a conversation with the real agent class, its tools and close
step; the call control is the rehearsal's observable in-process call, except the
transfer tests, which reach the LiveKit simulator through the real ``livekit-api``
client over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import string
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit import api
from livekit.agents import AgentSession, RunResult, StopResponse, llm
from livekit.protocol.agent_dispatch import CreateAgentDispatchRequest
from livekit.protocol.sip import CreateSIPParticipantRequest

from agent import script
from agent.confirmer import ALREADY_RECORDED, ConfirmationAgent, amd_action, screen
from agent.livekit_ports import LiveKitCall
from agent.metadata import CallMetadata, MetadataError, parse_metadata
from agent.ports import CallControl, Report
from agent.rehearsal import RehearsalCall, ScriptedLLM
from campaigns.attempts.reports import DETAIL_KEYS
from simulator.testing import SimulatorHandle, running_simulator
from tests.agent_helpers import call_metadata, metadata_json, token_verifies

META = parse_metadata(call_metadata(42))


@dataclass
class Call:
    """One conversation: the session, the agent, its scripted model and what it did."""

    session: AgentSession[None]
    agent: ConfirmationAgent
    model: ScriptedLLM
    call: RehearsalCall
    reports: list[Report]

    async def say(self, callee: str, *llm: dict[str, Any]) -> RunResult[None]:
        self.model.script(llm)
        return await self.session.run(user_input=callee)

    def agent_lines(self) -> list[str]:
        return [
            item.text_content or ""
            for item in self.session.history.items
            if item.type == "message" and item.role == "assistant"
        ]


async def converse_async(
    body: Callable[[Call], Awaitable[None]],
    *,
    meta: CallMetadata = META,
    call: CallControl | None = None,
    amd: str = "human",
) -> Call:
    """Run ``body`` on a started call (opening said), then wait for the call's ending."""
    reports: list[Report] = []

    async def record(report: Report) -> None:
        reports.append(report)

    rehearsal_call = RehearsalCall(amd=amd)
    model = ScriptedLLM()
    agent = ConfirmationAgent(
        meta,
        reporter=record,
        call=call or rehearsal_call,
        screener=rehearsal_call,
        amd_timeout=1.0,
    )
    async with AgentSession(llm=model) as session:
        await session.start(agent)
        state = Call(session, agent, model, rehearsal_call, reports)
        await agent.begin()
        await body(state)
        await agent.ended()
        return state


def converse(body: Callable[[Call], Awaitable[None]], **options: Any) -> Call:
    return asyncio.run(converse_async(body, **options))


IDENTIFIED = {"tool": "identity_confirmed"}


async def identify(c: Call) -> None:
    result = await c.say("Yes, this is Maria.", IDENTIFIED)
    result.expect.next_event().is_function_call(name="identity_confirmed")
    result.expect.next_event().is_function_call_output()
    result.expect.next_event().is_message(role="assistant")
    result.expect.no_more_events()


def assert_one_verified_report(c: Call, outcome: str, detail: dict[str, Any]) -> None:
    [report] = c.reports
    assert (report.attempt_id, report.outcome) == (42, outcome)
    assert token_verifies(42, report.token)
    assert report.detail == detail | {"script_version": "confirm-v1"}
    assert set(report.detail) <= DETAIL_KEYS


# --- what the agent says ------------------------------------------------------------


def test_the_opening_names_the_clinic_and_call_back_number_before_asking_for_the_patient() -> None:
    c = converse(lambda c: asyncio.sleep(0))
    [opening] = c.agent_lines()
    assert opening == script.opening_line(META)
    assert opening.index("Lakeside Clinic") < opening.index("(212) 555-0199")
    assert opening.index("(212) 555-0199") < opening.index("Maria")
    assert "Dr. Ahmed" not in opening and "Room 2" not in opening and "9:00" not in opening
    assert c.reports == [] and c.call.hang_ups == 0


def test_appointment_details_come_only_after_the_callee_says_who_they_are() -> None:
    async def body(c: Call) -> None:
        early = await c.say("Who is this?", {"tool": "confirm_appointment"})
        early.expect.next_event().is_function_call(name="confirm_appointment")
        output = early.expect.next_event().is_function_call_output()
        assert "identity_confirmed" in output.event().item.output
        assert not any("Dr. Ahmed" in line for line in c.agent_lines())
        await identify(c)
        assert c.agent_lines()[-1] == script.appointment_details(META)

    c = converse(body)
    details = c.agent_lines()[-1]
    assert "Tuesday, January 15 at 9:00 AM EST" in details
    assert "Dr. Ahmed" in details and "Lakeside Clinic, Room 2" in details
    assert c.reports == []


def test_the_callee_is_not_answered_before_the_opening_identified_the_clinic() -> None:
    spoken = llm.ChatMessage(role="user", content=["Hello?"])
    call = RehearsalCall()
    agent = ConfirmationAgent(
        META, reporter=call_reporter(), call=call, screener=call, amd_timeout=1.0
    )

    with pytest.raises(StopResponse):
        asyncio.run(agent.on_user_turn_completed(llm.ChatContext(), spoken))

    async def after_opening(c: Call) -> None:
        await c.agent.on_user_turn_completed(llm.ChatContext(), spoken)  # no StopResponse

    converse(after_opening)


def call_reporter() -> Any:
    async def ignore(_report: Report) -> None:
        return None

    return ignore


# --- one outcome per call, one report, one hang-up -------------------------------------


@pytest.mark.parametrize(
    ("tool", "args", "outcome", "detail"),
    [
        ("confirm_appointment", {}, "confirmed", {}),
        ("cancel_appointment", {}, "cancelled", {}),
        (
            "request_reschedule",
            {"preferred_times": "Thursday afternoon"},
            "reschedule_requested",
            {"preferred_times": "Thursday afternoon"},
        ),
        ("opt_out", {}, "opted_out", {}),
    ],
)
def test_patient_outcomes_report_once_say_goodbye_and_hang_up_once(
    tool: str, args: dict[str, Any], outcome: str, detail: dict[str, Any]
) -> None:
    async def body(c: Call) -> None:
        await identify(c)
        result = await c.say("Let me answer.", {"tool": tool, "args": args})
        result.expect.next_event().is_function_call(name=tool, arguments=args)
        result.expect.next_event().is_function_call_output()
        goodbye = result.expect.next_event().is_message(role="assistant").event().item
        assert goodbye.text_content == script.GOODBYES[outcome]
        result.expect.no_more_events()
        await c.agent.ended()
        again = await c.say("And cancel it too.", {"tool": "cancel_appointment"})
        again.expect.next_event().is_function_call(name="cancel_appointment")
        assert again.expect.next_event().is_function_call_output().event().item.output == (
            ALREADY_RECORDED
        )

    c = converse(body)
    assert_one_verified_report(c, outcome, detail)
    assert script.GOODBYES[outcome] in c.agent_lines()
    assert c.call.hang_ups == 1


def test_wrong_number_needs_no_identity_and_ends_the_call() -> None:
    async def body(c: Call) -> None:
        result = await c.say("No Maria here.", {"tool": "wrong_number"})
        result.expect.next_event().is_function_call(name="wrong_number")

    c = converse(body)
    assert_one_verified_report(c, "wrong_number", {})
    assert c.agent_lines()[-1] == script.GOODBYES["wrong_number"]
    assert c.call.hang_ups == 1


def test_a_reschedule_request_keeps_at_most_500_characters_of_the_callees_words() -> None:
    async def body(c: Call) -> None:
        await identify(c)
        await c.say("...", {"tool": "request_reschedule", "args": {"preferred_times": "x" * 900}})

    c = converse(body)
    assert c.reports[0].detail["preferred_times"] == "x" * 500


def test_detected_answering_machine_leaves_only_the_clinics_message() -> None:
    async def body(c: Call) -> None:
        result = await c.say(
            "Leave a message after the tone.", {"tool": "detected_answering_machine"}
        )
        result.expect.next_event().is_function_call(name="detected_answering_machine")

    c = converse(body)
    assert_one_verified_report(c, "voicemail", {"amd": "machine-vm"})
    assert c.agent_lines()[-1] == script.voicemail_message(META)
    assert c.call.hang_ups == 1


def test_a_report_may_carry_only_the_allowed_detail_keys() -> None:
    with pytest.raises(ValueError, match="note"):
        Report(1, "confirmed", "t", {"note": "free text"})


# --- answering machines ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "action"),
    [
        ("human", "converse"),
        ("uncertain", "converse"),
        ("machine-vm", "leave_message"),
        ("machine-ivr", "hang_up"),
        ("machine-unavailable", "hang_up"),
    ],
)
def test_amd_verdict_to_action(category: str, action: str) -> None:
    assert amd_action(category) == action


def test_a_voicemail_verdict_leaves_the_message_reports_voicemail_and_hangs_up() -> None:
    c = converse(lambda c: asyncio.sleep(0), amd="machine-vm")
    assert c.agent_lines() == [script.voicemail_message(META)]
    assert_one_verified_report(c, "voicemail", {"amd": "machine-vm"})
    assert c.call.hang_ups == 1


def test_a_mailbox_that_takes_no_message_is_hung_up_on_without_speaking() -> None:
    c = converse(lambda c: asyncio.sleep(0), amd="machine-unavailable")
    assert c.agent_lines() == []
    assert_one_verified_report(c, "voicemail", {"amd": "machine-unavailable"})
    assert c.call.hang_ups == 1


def test_no_amd_verdict_in_time_counts_as_uncertain() -> None:
    class Silent:
        async def screen(self) -> str:
            await asyncio.sleep(3600)
            return "machine-vm"

    assert asyncio.run(screen(Silent(), 0.05)) == "uncertain"


# A marker no fixed wording contains, so finding a value in the message means it leaked.
_PATIENT_TEXT = st.text(alphabet=string.ascii_letters + " .'-", max_size=40).map(
    lambda s: f"Qz{s}".strip()
)


@settings(max_examples=150, deadline=None)
@given(
    first_name=_PATIENT_TEXT,
    provider=_PATIENT_TEXT,
    location=_PATIENT_TEXT,
    starts=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(["America/New_York", "America/Chicago", "America/Los_Angeles"]),
)
def test_a_voicemail_never_carries_the_patient_provider_date_time_or_location(
    first_name: str, provider: str, location: str, starts: datetime, zone: str
) -> None:
    local = starts.astimezone(ZoneInfo(zone))
    meta = parse_metadata(
        call_metadata(
            patient_first_name=first_name,
            provider=provider,
            location=location,
            appointment_local_time=local.isoformat(),
            appointment_timezone=zone,
        )
    )
    message = script.voicemail_message(meta)
    # It depends on the clinic alone: the same words for every patient of the clinic.
    assert message == script.voicemail_message(META)
    leftover = message.lower().replace(meta.clinic_name.lower(), "")
    for secret in (first_name, provider, location):
        assert secret.lower() not in leftover
    for fact in (
        f"{local:%B}",
        f"{local:%A}",
        f"{local:%I:%M}",
        f"{local:%H:%M}",
        f" {local.day} ",
        str(local.year),
    ):
        assert fact.lower() not in leftover
    assert "(212) 555-0199" in message


# --- transfer ------------------------------------------------------------------------------


def test_transfer_needs_a_staff_line() -> None:
    async def body(c: Call) -> None:
        result = await c.say("Can I talk to a person?", {"tool": "transfer_to_staff"})
        result.expect.next_event().is_function_call(name="transfer_to_staff")
        output = result.expect.next_event().is_function_call_output().event().item.output
        assert "call them back" in output

    c = converse(body, meta=parse_metadata(call_metadata(42, transfer_number=None)))
    assert c.reports == [] and c.call.hang_ups == 0


class RefusedTransfer(RehearsalCall):
    async def transfer(self, to: str) -> None:
        raise RuntimeError("the trunk refused the REFER")


def test_a_failed_transfer_reports_failed_and_hangs_up() -> None:
    call = RefusedTransfer()

    async def body(c: Call) -> None:
        await c.say("A person, please.", {"tool": "transfer_to_staff"})

    c = converse(body, call=call)
    assert_one_verified_report(c, "failed", {"reason": "transfer_failed"})
    assert call.hang_ups == 1 and call.transferred_to is None
    assert c.agent_lines()[-1] == script.TRANSFER_FAILED


@pytest.fixture(scope="module")
def sim() -> Any:
    # Calls last long enough for the test to act on them before the persona would.
    with running_simulator(
        speed=1.0,
        default_trunk_id="ST_default",
        scenario={"latency": {"answer": 0, "call": 3600}},
    ) as handle:
        yield handle


async def answered_call(sim: SimulatorHandle, lk: api.LiveKitAPI) -> tuple[str, str]:
    room, identity = f"appt-{uuid.uuid4().hex[:8]}", f"callee-{uuid.uuid4().hex[:6]}"
    await lk.agent_dispatch.create_dispatch(
        CreateAgentDispatchRequest(agent_name="appointment-confirmer", room=room)
    )
    request = CreateSIPParticipantRequest(
        sip_trunk_id="ST_default",
        sip_call_to="+15550123400",
        room_name=room,
        participant_identity=identity,
        wait_until_answered=True,
    )
    request.ringing_timeout.seconds = 15
    await lk.sip.create_sip_participant(request)
    return room, identity


def test_transfer_to_staff_hands_the_callee_over_in_the_simulator(sim: SimulatorHandle) -> None:
    holder: dict[str, Any] = {}

    async def body(c: Call) -> None:
        await identify(c)
        await c.say("Could I speak to the front desk?", {"tool": "transfer_to_staff"})

    async def main() -> Call:
        async with api.LiveKitAPI(sim.url, sim.api_key, sim.api_secret) as lk:
            room, identity = await answered_call(sim, lk)
            holder["room"] = room
            call = LiveKitCall(lk, room, identity)
            return await converse_async(body, call=call)

    c = asyncio.run(main())
    assert_one_verified_report(c, "transferred", {"transferred_to": "+12125550111"})
    assert c.agent_lines()[-1] == script.TRANSFER_LINE
    [record] = [r for r in sim.calls() if r["room_name"] == holder["room"]]
    assert record["transferred_to"] == "+12125550111"
    assert record["end"] == "transferred"


def test_transfer_sip_participant_needs_sip_call_and_room_admin(sim: SimulatorHandle) -> None:
    async def main() -> None:
        async with api.LiveKitAPI(sim.url, sim.api_key, sim.api_secret) as lk:
            room, identity = await answered_call(sim, lk)
        token = (
            api.AccessToken(sim.api_key, sim.api_secret)
            .with_grants(api.VideoGrants(room_admin=True, room=room))
            .to_jwt()
        )
        async with aiohttp.ClientSession() as http:
            response = await http.post(
                f"{sim.url}/twirp/livekit.SIP/TransferSIPParticipant",
                json={"room_name": room, "participant_identity": identity, "transfer_to": "tel:+1"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status == 401  # livekit-server: 401 "permissions denied"
            assert (await response.json())["msg"] == "permissions denied"

    asyncio.run(main())


def test_hang_up_deletes_the_room_once(sim: SimulatorHandle) -> None:
    async def main() -> str:
        async with api.LiveKitAPI(sim.url, sim.api_key, sim.api_secret) as lk:
            room, identity = await answered_call(sim, lk)
            call = LiveKitCall(lk, room, identity)
            await call.hang_up()
            await call.hang_up()
            return room

    room = asyncio.run(main())
    [record] = [r for r in sim.calls() if r["room_name"] == room]
    assert record["end"] == "room_deleted"


# --- metadata ------------------------------------------------------------------------------


def test_metadata_from_the_engine_parses() -> None:
    meta = parse_metadata(metadata_json(7))
    assert meta.attempt_id == 7
    assert meta.appointment_local_time == datetime(2030, 1, 15, 14, 0, tzinfo=UTC)
    assert meta.transfer_number == "+12125550111"


@pytest.mark.parametrize(
    ("raw", "attempt_id"),
    [
        ("", None),
        ("not json", None),
        ("[1, 2]", None),
        (metadata_json(9, appointment_local_time="2030-01-15T09:00:00"), 9),  # no offset
        (json.dumps({k: v for k, v in call_metadata(9).items() if k != "callback_number"}), 9),
        (metadata_json(9, patient_first_name=""), 9),
        (json.dumps(call_metadata(9) | {"attempt_id": "nine"}), None),
    ],
)
def test_unusable_metadata_names_the_problem_without_patient_data(
    raw: str, attempt_id: int | None
) -> None:
    with pytest.raises(MetadataError) as info:
        parse_metadata(raw)
    message = str(info.value)
    assert "Maria" not in message and "Ahmed" not in message and "Room 2" not in message
    assert info.value.attempt_id == attempt_id
    refused = info.value.failure_report()
    if attempt_id is None:
        assert refused is None
    else:
        assert refused is not None
        assert (refused.attempt_id, refused.outcome) == (attempt_id, "failed")
        assert token_verifies(attempt_id, refused.token)
        assert refused.detail == {"reason": "bad_metadata"}


def test_an_appointment_is_read_in_the_patients_zone() -> None:
    meta = parse_metadata(
        call_metadata(
            appointment_local_time=(datetime(2030, 7, 1, 16, 30, tzinfo=UTC)).isoformat(),
            appointment_timezone="America/Los_Angeles",
        )
    )
    assert "9:30 AM PDT" in script.appointment_details(meta)
