"""The LiveKit simulator, driven by the real ``livekit.api.LiveKitAPI`` over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.api.twirp_client import ServerError, SipCallError
from livekit.protocol import models as pb_models
from livekit.protocol.agent_dispatch import CreateAgentDispatchRequest
from livekit.protocol.room import DeleteRoomRequest, ListParticipantsRequest
from livekit.protocol.sip import (
    CreateSIPOutboundTrunkRequest,
    CreateSIPParticipantRequest,
    ListSIPOutboundTrunkRequest,
    SIPOutboundTrunkInfo,
)

from simulator.scenario import DEFAULT_WEIGHTS, Scenario, ScenarioError, coerce_config
from simulator.state import OutcomeReport
from simulator.testing import SimulatorHandle, running_simulator
from tests.agent_helpers import metadata_json, token_verifies

SPEED = 50.0
TRUNK = "ST_default"
REPORTS: list[OutcomeReport] = []


async def _record(report: OutcomeReport) -> None:
    REPORTS.append(report)


@pytest.fixture(scope="module")
def sim_module() -> Iterator[SimulatorHandle]:
    with running_simulator(
        speed=SPEED, default_trunk_id=TRUNK, departure_timeout=0.0, reporter=_record
    ) as handle:
        yield handle


@pytest.fixture
def sim(sim_module: SimulatorHandle) -> SimulatorHandle:
    sim_module.reset()
    sim_module.set_scenario({})
    REPORTS.clear()
    return sim_module


def lkapi(sim: SimulatorHandle, **kw: Any) -> api.LiveKitAPI:
    if "token" in kw:
        return api.LiveKitAPI(sim.url, failover=False, **kw)
    return api.LiveKitAPI(sim.url, sim.api_key, sim.api_secret, failover=False, **kw)


def dial_request(
    number: str, room: str | None = None, *, wait: bool = True, ringing: int = 15, **kw: Any
) -> CreateSIPParticipantRequest:
    req = CreateSIPParticipantRequest(
        sip_trunk_id=kw.pop("trunk", TRUNK),
        sip_call_to=number,
        room_name=room if room is not None else f"attempt-{uuid.uuid4().hex[:8]}",
        participant_identity=f"callee-{uuid.uuid4().hex[:6]}",
        wait_until_answered=wait,
        **kw,
    )
    req.ringing_timeout.seconds = ringing
    return req


async def dial(sim: SimulatorHandle, req: CreateSIPParticipantRequest) -> Any:
    async with lkapi(sim) as lk:
        return await lk.sip.create_sip_participant(req)


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


# --- callee behaviours: exactly the shapes of SPEC section 5 -------------------------

FAILURE_SHAPES = {
    "01": (429, "resource_exhausted", {"sip_status_code": "486", "sip_status": "Busy Here"}),
    "02": (408, "canceled", {}),
    "04": (403, "permission_denied", {"sip_status_code": "603", "sip_status": "Decline"}),
    "05": (404, "not_found", {"sip_status_code": "404", "sip_status": "Not Found"}),
    "06": (
        412,
        "failed_precondition",
        {"sip_status_code": "503", "sip_status": "Service Unavailable"},
    ),
}


@pytest.mark.parametrize("suffix", sorted(FAILURE_SHAPES))
def test_failed_callee_returns_livekit_error_shape(sim: SimulatorHandle, suffix: str) -> None:
    status, code, meta = FAILURE_SHAPES[suffix]
    with pytest.raises(ServerError) as info:
        asyncio.run(dial(sim, dial_request(f"+155501234{suffix}")))
    err = info.value
    assert (err.status, err.code, err.metadata) == (status, code, meta)
    assert isinstance(err, SipCallError) == bool(meta)
    if suffix == "02":
        assert err.message == "sip request timed out"
    else:
        assert isinstance(err, SipCallError)
        assert err.sip_status_code == int(meta["sip_status_code"])
    [call] = sim.calls()
    expected = {
        "01": "busy",
        "02": "no_answer",
        "04": "declined",
        "05": "invalid_number",
        "06": "carrier_failure",
    }[suffix]
    assert call["result"] == expected


@pytest.mark.parametrize(
    ("suffix", "outcome"),
    [
        ("00", "confirmed"),
        ("03", "voicemail"),
        ("07", "cancelled"),
        ("08", "reschedule_requested"),
        ("09", "opted_out"),
        ("10", "wrong_number"),
        ("11", "transferred"),
    ],
)
def test_answered_callee_returns_participant_info(
    sim: SimulatorHandle, suffix: str, outcome: str
) -> None:
    req = dial_request(f"+155501234{suffix}")
    started = time.monotonic()
    info = asyncio.run(dial(sim, req))
    elapsed = time.monotonic() - started
    assert 3 / SPEED <= elapsed < 8 / SPEED + 1.0  # rang 3-8 simulated seconds
    assert info.room_name == req.room_name
    assert info.participant_identity == req.participant_identity
    assert info.participant_id.startswith("PA_")
    assert info.sip_call_id.startswith("SCL_")
    [call] = sim.calls()
    assert call["result"] == f"answered:{outcome}"
    assert call["sip_number"] == "+15550100000"
    assert call["sip_call_to"] == req.sip_call_to


def test_ringing_timeout_shorter_than_answer_is_no_answer(sim: SimulatorHandle) -> None:
    sim.set_scenario({"latency": {"answer": 20}})
    with pytest.raises(ServerError) as info:
        asyncio.run(dial(sim, dial_request("+15550123400", ringing=15)))
    assert (info.value.status, info.value.code) == (408, "canceled")
    assert sim.calls()[0]["result"] == "no_answer"


def test_no_wait_returns_at_once_and_call_goes_on(sim: SimulatorHandle) -> None:
    started = time.monotonic()
    info = asyncio.run(dial(sim, dial_request("+15550123401", wait=False)))
    assert time.monotonic() - started < 0.5
    assert info.participant_id.startswith("PA_")
    wait_for(lambda: sim.calls()[0]["end"] == "failed")
    assert sim.calls()[0]["result"] == "busy"


def test_unknown_trunk_is_not_found_without_sip_metadata(sim: SimulatorHandle) -> None:
    with pytest.raises(ServerError) as info:
        asyncio.run(dial(sim, dial_request("+15550123400", trunk="ST_nope")))
    err = info.value
    assert (err.status, err.code, err.metadata) == (404, "not_found", {})
    assert not isinstance(err, SipCallError)
    assert sim.calls()[0]["result"] == "unknown_trunk"


@pytest.mark.parametrize("missing", ["sip_call_to", "room_name", "sip_trunk_id"])
def test_missing_field_is_invalid_argument(sim: SimulatorHandle, missing: str) -> None:
    req = dial_request("+15550123400")
    req.ClearField(missing)
    with pytest.raises(ServerError) as info:
        asyncio.run(dial(sim, req))
    assert (info.value.status, info.value.code) == (400, "invalid_argument")
    assert sim.calls() == []


# --- scenario ---------------------------------------------------------------------


def test_weighted_mix_is_deterministic_and_close_to_weights() -> None:
    scenario = Scenario()
    picks = [
        scenario.behaviour_for(f"+1555{n:07d}", f"room-{n}") for n in range(4000) if n % 100 > 10
    ]
    again = [
        scenario.behaviour_for(f"+1555{n:07d}", f"room-{n}") for n in range(4000) if n % 100 > 10
    ]
    assert picks == again
    shares = Counter(picks)
    total = sum(DEFAULT_WEIGHTS.values())
    for name, weight in DEFAULT_WEIGHTS.items():
        assert abs(shares[name] / len(picks) - weight / total) < 0.03, name
    # another attempt (room) of the same number may behave differently
    rooms = {scenario.behaviour_for("+15550000042", f"attempt-{i}") for i in range(50)}
    assert len(rooms) > 1


def test_scenario_file_overrides(tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    path.write_text(
        json.dumps(
            {
                "weights": {"busy": 1},
                "suffixes": {"42": "declined", "00": None},
                "numbers": {"+15559999999": "voicemail"},
                "latency": {"answer": [1, 2]},
            }
        )
    )
    scenario = Scenario.load(path)
    assert scenario.behaviour_for("+15550000042", "r") == "declined"
    assert scenario.behaviour_for("+15550000000", "r") == "busy"  # suffix removed
    assert scenario.behaviour_for("+15550000001", "r") == "busy"
    assert scenario.behaviour_for("+15559999999", "r") == "voicemail"
    assert 1 <= scenario.duration("answer", "+1", "r") <= 2
    with pytest.raises(ScenarioError):
        Scenario.from_dict({"weights": {"dancing": 1}})
    with pytest.raises(ScenarioError):
        Scenario.from_dict({"colour": "red"})


def test_503_storm_then_recovery(sim: SimulatorHandle) -> None:
    sim.set_scenario(
        {"fail_first_n_requests_with_503": 2, "fail_methods": ["CreateSIPParticipant"]}
    )
    for _ in range(2):
        with pytest.raises(ServerError) as info:
            asyncio.run(dial(sim, dial_request("+15550123400")))
        assert (info.value.status, info.value.code) == (503, "unavailable")
    asyncio.run(dial(sim, dial_request("+15550123400")))
    assert len(sim.calls()) == 1


def test_503_after_dialing_is_the_ambiguous_case(sim: SimulatorHandle) -> None:
    sim.set_scenario({"fail_first_n_requests_with_503": 1, "fail_503_after_dialing": True})
    with pytest.raises(ServerError) as info:
        asyncio.run(dial(sim, dial_request("+15550123400")))
    assert info.value.status == 503
    assert len(sim.calls()) == 1  # it dialled anyway


def test_down_modes(sim: SimulatorHandle) -> None:
    sim.set_scenario({"down": True})
    with pytest.raises(ServerError) as info:
        asyncio.run(dial(sim, dial_request("+15550123400")))
    assert (info.value.status, info.value.code) == (503, "unavailable")
    sim.set_scenario({"down": "drop"})
    with pytest.raises(aiohttp.ClientError):
        asyncio.run(dial(sim, dial_request("+15550123400")))
    assert sim.calls() == []


# --- auth ----------------------------------------------------------------------------


def token(
    sim: SimulatorHandle,
    *,
    secret: str | None = None,
    ttl: float = 600,
    video: api.VideoGrants | None = None,
    sip: api.SIPGrants | None = None,
) -> str:
    tok = api.AccessToken(sim.api_key, secret or sim.api_secret)
    tok.with_ttl(dt.timedelta(seconds=ttl))
    if video:
        tok.with_grants(video)
    if sip:
        tok.with_sip_grants(sip)
    return tok.to_jwt()


async def dial_with_token(sim: SimulatorHandle, jwt_token: str) -> Any:
    async with lkapi(sim, token=jwt_token) as lk:
        return await lk.sip.create_sip_participant(dial_request("+15550123400"))


# --- X-Livekit-Request-Id --------------------------------------------------------------


def test_repeated_request_id_dials_once(sim: SimulatorHandle) -> None:
    body = dial_request("+15550123401").SerializeToString()
    headers = {
        "Authorization": f"Bearer {token(sim, sip=api.SIPGrants(call=True))}",
        "Content-Type": "application/protobuf",
        "X-Livekit-Request-Id": str(uuid.uuid4()),
    }
    url = f"{sim.url}/twirp/livekit.SIP/CreateSIPParticipant"

    async def post(s: aiohttp.ClientSession) -> tuple[int, bytes]:
        async with s.post(url, data=body, headers=headers) as resp:
            return resp.status, await resp.read()

    async def go() -> list[tuple[int, bytes]]:
        async with aiohttp.ClientSession() as s:
            concurrent = await asyncio.gather(post(s), post(s))
            return [*concurrent, await post(s)]

    replies = asyncio.run(go())
    assert replies[0][0] == 429
    assert replies[0] == replies[1] == replies[2]
    assert len(sim.calls()) == 1
    assert sim.stats()["deduplicated"] == 2


# --- trunks, dispatch, rooms, reports ---------------------------------------------------


def test_outbound_trunk_create_and_list(
    sim: SimulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "trunk-password-do-not-log"

    async def go() -> tuple[Any, Any, Any]:
        async with lkapi(sim) as lk:
            created = await lk.sip.create_outbound_trunk(
                CreateSIPOutboundTrunkRequest(
                    trunk=SIPOutboundTrunkInfo(
                        name="clinic",
                        address="sip.carrier.example",
                        numbers=["+15550001111"],
                        auth_username="clinic",
                        auth_password=secret,
                    )
                )
            )
            everything = await lk.sip.list_outbound_trunk(ListSIPOutboundTrunkRequest())
            one = await lk.sip.list_outbound_trunk(
                ListSIPOutboundTrunkRequest(trunk_ids=[created.sip_trunk_id])
            )
            return created, everything, one

    with caplog.at_level("DEBUG"):
        created, everything, one = asyncio.run(go())
    assert created.sip_trunk_id.startswith("ST_")
    assert {t.sip_trunk_id for t in everything.items} == {TRUNK, created.sip_trunk_id}
    assert [t.name for t in one.items] == ["clinic"]
    assert secret not in caplog.text
    # the new trunk dials, with its own number as caller id
    asyncio.run(dial(sim, dial_request("+15550123400", trunk=created.sip_trunk_id)))
    assert sim.calls()[0]["sip_number"] == "+15550001111"


def test_json_bodies_are_accepted(sim: SimulatorHandle) -> None:
    async def go() -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token(sim, sip=api.SIPGrants(admin=True))}"}
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{sim.url}/twirp/livekit.SIP/ListSIPOutboundTrunk", json={}, headers=headers
            ) as resp,
        ):
            return resp.status, await resp.json()

    status, payload = asyncio.run(go())
    assert status == 200
    assert payload["items"][0]["sip_trunk_id"] == TRUNK


def test_dispatch_participants_and_delete_room(sim: SimulatorHandle) -> None:
    room = "attempt-room-1"
    metadata = json.dumps({"attempt_id": 7, "report_token": "tok-7"})

    async def go() -> None:
        async with lkapi(sim) as lk:
            dispatch = await lk.agent_dispatch.create_dispatch(
                CreateAgentDispatchRequest(
                    agent_name="appointment-confirmer", room=room, metadata=metadata
                )
            )
            assert dispatch.id.startswith("AD_")
            assert (dispatch.room, dispatch.metadata) == (room, metadata)
            await lk.sip.create_sip_participant(dial_request("+15550123400", room))
            listed = await lk.room.list_participants(ListParticipantsRequest(room=room))
            kinds = {p.kind: p for p in listed.participants}
            sip_p = kinds[pb_models.ParticipantInfo.Kind.SIP]
            assert sip_p.state == pb_models.ParticipantInfo.State.ACTIVE
            assert sip_p.attributes["sip.callStatus"] == "active"
            assert kinds[pb_models.ParticipantInfo.Kind.AGENT].name == "appointment-confirmer"
            await lk.room.delete_room(DeleteRoomRequest(room=room))
            # As livekit-server: a room that is gone lists no one, and deleting it again is 404.
            gone = await lk.room.list_participants(ListParticipantsRequest(room=room))
            assert list(gone.participants) == []
            with pytest.raises(ServerError) as info:
                await lk.room.delete_room(DeleteRoomRequest(room=room))
            assert (info.value.status, info.value.code) == (404, "not_found")

    asyncio.run(go())
    assert sim.calls()[0]["end"] == "room_deleted"
    assert sim.dispatches()[0]["metadata"] == metadata
    time.sleep(60 / SPEED)  # longer than any call: a hung-up call never reports
    assert sim.reports() == []


def test_delete_room_while_ringing_aborts_the_dial(sim: SimulatorHandle) -> None:
    sim.set_scenario({"latency": {"answer": 10}})

    async def go() -> None:
        async with lkapi(sim) as lk:
            req = dial_request("+15550123400", "ringing-room")
            pending = asyncio.ensure_future(lk.sip.create_sip_participant(req))
            await asyncio.sleep(2 / SPEED)
            await lk.room.delete_room(DeleteRoomRequest(room="ringing-room"))
            with pytest.raises(SipCallError) as info:
                await pending
            assert (info.value.status, info.value.sip_status_code) == (409, 487)

    asyncio.run(go())
    assert sim.stats()["in_flight"] == 0


def dispatch_and_dial(sim: SimulatorHandle, number: str, room: str, metadata: str) -> None:
    async def go() -> None:
        async with lkapi(sim) as lk:
            await lk.agent_dispatch.create_dispatch(
                CreateAgentDispatchRequest(
                    agent_name="appointment-confirmer", room=room, metadata=metadata
                )
            )
            await lk.sip.create_sip_participant(dial_request(number, room))

    asyncio.run(go())


@pytest.mark.parametrize(
    ("suffix", "outcome", "detail", "end"),
    [
        ("00", "confirmed", {}, "completed"),
        ("03", "voicemail", {"amd": "machine-vm"}, "completed"),
        ("07", "cancelled", {}, "completed"),
        (
            "08",
            "reschedule_requested",
            {"preferred_times": "another day, mornings preferred"},
            "completed",
        ),
        ("09", "opted_out", {}, "completed"),
        ("10", "wrong_number", {}, "completed"),
        ("11", "transferred", {"transferred_to": "+12125550111"}, "transferred"),
    ],
)
def test_the_agent_plays_each_answered_persona_and_reports_once(
    sim: SimulatorHandle, suffix: str, outcome: str, detail: dict[str, str], end: str
) -> None:
    room = f"attempt-42-{suffix}"
    dispatch_and_dial(sim, f"+155501234{suffix}", room, metadata_json(42))
    wait_for(lambda: sim.calls()[0]["end"] is not None)
    [report] = REPORTS
    assert (report.attempt_id, report.outcome) == (42, outcome)
    assert token_verifies(42, report.token)
    assert report.detail == detail | {"script_version": "confirm-v1"}
    assert report.room_name == room
    [recorded] = sim.reports()
    assert recorded["sent"] is True
    [call] = sim.calls()
    assert call["end"] == end
    assert call.get("transferred_to") == detail.get("transferred_to")


def test_instant_agent_reports_each_scripted_outcome_without_playing_the_call() -> None:
    with running_simulator(
        speed=SPEED, default_trunk_id=TRUNK, reporter=_record, agent="instant"
    ) as instant:
        REPORTS.clear()
        for suffix in ("00", "07", "11"):
            dispatch_and_dial(instant, f"+155501234{suffix}", f"r-{suffix}", metadata_json(42))
        wait_for(lambda: len(REPORTS) == 3)
        outcomes = sorted(report.outcome for report in REPORTS)
        assert outcomes == ["cancelled", "confirmed", "transferred"]
        assert all(token_verifies(42, report.token) and not report.detail for report in REPORTS)
        wait_for(lambda: all(call["end"] == "completed" for call in instant.calls()))
    REPORTS.clear()


def test_simulator_refuses_an_unknown_agent_mode() -> None:
    with pytest.raises(ValueError, match="agent must be one of real, instant"):
        coerce_config(agent="llm")


def test_unusable_metadata_reports_failed_when_the_attempt_is_known(
    sim: SimulatorHandle,
) -> None:
    metadata = json.dumps({"attempt_id": 42, "report_token": "sig.42", "clinic": 1})
    dispatch_and_dial(sim, "+15550123400", "attempt-42-bad", metadata)
    wait_for(lambda: REPORTS)
    [report] = REPORTS
    assert (report.attempt_id, report.outcome, report.token) == (42, "failed", "sig.42")
    assert report.detail == {"reason": "bad_metadata"}


def test_no_dispatch_no_report(sim: SimulatorHandle) -> None:
    asyncio.run(dial(sim, dial_request("+15550123400")))
    wait_for(lambda: sim.calls()[0]["end"] == "completed")
    assert REPORTS == []
    assert sim.reports() == []


def test_celery_reporter_sends_record_outcome() -> None:
    with running_simulator(speed=SPEED, default_trunk_id=TRUNK, broker_url="memory://") as s:

        async def go() -> None:
            async with lkapi(s) as lk:
                await lk.agent_dispatch.create_dispatch(
                    CreateAgentDispatchRequest(
                        agent_name="a",
                        room="r-celery",
                        metadata=metadata_json(5),
                    )
                )
                await lk.sip.create_sip_participant(dial_request("+15550123407", "r-celery"))

        asyncio.run(go())
        [entry] = wait_for(s.reports)
        wait_for(lambda: s.reports()[0]["sent"] or s.reports()[0]["error"])
        assert s.reports()[0]["sent"] is True, s.reports()[0]["error"]
        assert entry["outcome"] == "cancelled"


# --- scale --------------------------------------------------------------------------------


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_thousand_concurrent_ringing_calls(sim: SimulatorHandle) -> None:
    n = 1000
    sim.set_scenario({"suffixes": {"99": "no_answer"}})
    before = rss_mb()

    async def go() -> Counter[str]:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            lk = api.LiveKitAPI(
                sim.url, sim.api_key, sim.api_secret, session=session, failover=False
            )
            # 150 simulated seconds of ringing at SPEED 50: 3 s of real time, longer than
            # sending 1,000 requests takes even on a loaded machine, so all ring at once.
            reqs = [dial_request(f"+1555{i:05d}99", ringing=150) for i in range(n)]
            results = await asyncio.gather(
                *(lk.sip.create_sip_participant(r) for r in reqs), return_exceptions=True
            )
        return Counter(getattr(r, "code", type(r).__name__) for r in results)

    started = time.monotonic()
    codes = asyncio.run(go())
    elapsed = time.monotonic() - started
    stats = sim.stats()
    grown = rss_mb() - before
    print(
        f"\n{n} concurrent rings: {elapsed:.1f}s, max in flight {stats['max_in_flight']}, "
        f"RSS {rss_mb():.0f} MB (+{grown:.0f} MB, client and server)"
    )
    assert codes == {"canceled": n}
    assert stats["max_in_flight"] >= n * 0.9
    assert stats["in_flight"] == 0
    assert len(sim.calls()) == n
    assert grown < 300
