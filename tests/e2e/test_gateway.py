"""The LiveKit gateway against the simulator: real HTTP, real ``livekit-api`` client."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest

from campaigns.telephony.livekit_gateway import LiveKitTelephony
from campaigns.telephony.outcomes import DialProblem, Outcome
from campaigns.telephony.port import (
    CallRequest,
    CallResult,
    ConfigurationError,
    Telephony,
    TelephonyError,
    TrunkSpec,
)
from campaigns.tokens import TokenCheck, check_report_token, sign_report_token
from harness.processes import free_port
from simulator.testing import SimulatorHandle, running_simulator
from tests.agent_helpers import call_metadata

TRUNK = "ST_gateway_test"
CALLER_ID = "+15550100000"
SECRET = "report-secret-for-tests"
SPEED = 200.0  # a 15 s ringing timeout lasts 75 ms
TOKEN_EXPIRY = datetime.now(UTC) + timedelta(hours=1)


def number(suffix: str) -> str:
    return f"+1212555{suffix:0>4}"


def call_request(to: str, attempt_id: int | None = None, **overrides: Any) -> CallRequest:
    attempt_id = attempt_id if attempt_id is not None else uuid.uuid4().int % 1_000_000
    room_name = f"attempt-{attempt_id}-{uuid.uuid4().hex[:6]}"
    values: dict[str, Any] = {
        "attempt_id": attempt_id,
        "room_name": room_name,
        "participant_identity": f"patient-{attempt_id}",
        "trunk_id": TRUNK,
        "call_to": to,
        "caller_id": CALLER_ID,
        "agent_name": "appointment-confirmer",
        # What the engine dispatches; the gateway adds the attempt id and callee identity.
        "agent_metadata": {
            key: value
            for key, value in call_metadata(attempt_id, patient_first_name="Ada").items()
            if key not in ("attempt_id", "participant_identity")
        }
        | {"report_token": sign_report_token(attempt_id, room_name, TOKEN_EXPIRY, SECRET)},
        "ringing_timeout": timedelta(seconds=15),
        "max_call_duration": timedelta(minutes=5),
    }
    values.update(overrides)
    return CallRequest(**values)


def _implements_the_port(tel: LiveKitTelephony) -> Telephony:
    return tel  # checked by mypy


def gateway(sim: SimulatorHandle, **kwargs: Any) -> LiveKitTelephony:
    kwargs.setdefault("retry_initial", 0.01)
    kwargs.setdefault("retry_max", 0.05)
    return LiveKitTelephony(sim.url, sim.api_key, sim.api_secret, **kwargs)


def place(sim: SimulatorHandle, req: CallRequest, **kwargs: Any) -> CallResult:
    async def go() -> CallResult:
        async with gateway(sim, **kwargs) as tel:
            return await tel.place_call(req)

    return asyncio.run(go())


def dials(sim: SimulatorHandle, room: str) -> list[dict[str, Any]]:
    return [c for c in sim.calls() if c["room_name"] == room]


def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    with running_simulator(speed=SPEED, default_trunk_id=TRUNK) as handle:
        yield handle


def storm_sim(**scenario: Any) -> Any:
    return running_simulator(speed=SPEED, default_trunk_id=TRUNK, scenario=scenario)


# --- each scripted callee ------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["00", "03", "07", "08", "09", "10"])
def test_answered_calls(sim: SimulatorHandle, suffix: str) -> None:
    req = call_request(number(suffix))
    result = place(sim, req)
    assert result.answered
    assert result.outcome is None  # the agent reports it
    assert result.problem is None
    assert result.error is None
    assert result.sip_call_id
    assert result.dispatch_id
    [dial] = dials(sim, req.room_name)
    assert dial["sip_call_to"] == req.call_to
    assert dial["sip_number"] == CALLER_ID
    assert dial["sip_trunk_id"] == TRUNK
    assert dial["participant_identity"] == req.participant_identity
    assert dial["wait_until_answered"] is True
    assert dial["sip_call_id"] == result.sip_call_id


def test_dispatch_metadata_carries_what_the_agent_needs(sim: SimulatorHandle) -> None:
    req = call_request(number("00"), attempt_id=4242)
    result = place(sim, req)
    [dispatch] = [d for d in sim.dispatches() if d["room"] == req.room_name]
    assert dispatch["id"] == result.dispatch_id
    assert dispatch["agent_name"] == "appointment-confirmer"
    meta = json.loads(dispatch["metadata"])
    assert meta["attempt_id"] == 4242
    assert meta["participant_identity"] == req.participant_identity
    now = datetime.now(UTC)
    assert (
        check_report_token(meta["report_token"], 4242, req.room_name, now, SECRET)
        is TokenCheck.VALID
    )
    for key, value in req.agent_metadata.items():
        assert meta[key] == value
    # The agent plays the call in the simulator and reports through the real path.
    report = wait_for(
        lambda: next((r for r in sim.reports() if r["room_name"] == req.room_name), None)
    )
    assert report["attempt_id"] == 4242
    assert report["outcome"] == "confirmed"
    # The token comes back unchanged.
    assert report["token"] == meta["report_token"]
    assert check_report_token(report["token"], 4242, req.room_name, now, SECRET) is TokenCheck.VALID
    assert report["detail"] == {"script_version": "confirm-v1"}
    assert report["sip_call_id"] == result.sip_call_id


def test_failed_call_closes_the_room(sim: SimulatorHandle) -> None:
    req = call_request(number("01"))
    assert place(sim, req).outcome is Outcome.BUSY

    async def go() -> list[str]:
        async with gateway(sim) as tel:
            return await tel.room_participants(req.room_name)

    assert asyncio.run(go()) == []  # room deleted, the dispatched agent gone with it


def test_a_dial_is_held_until_pacing_lets_it_go_or_never_sent(sim: SimulatorHandle) -> None:
    released_at: list[float] = []

    async def go_ahead_later() -> bool:
        await asyncio.sleep(0.2)
        released_at.append(time.time())
        return True

    async def too_late() -> bool:
        return False

    async def go() -> tuple[CallResult, CallResult]:
        async with gateway(sim) as tel:
            return (
                await tel.place_call(held, go_ahead_later),
                await tel.place_call(dropped, too_late),
            )

    held, dropped = call_request(number("01")), call_request(number("01"))
    held_result, dropped_result = asyncio.run(go())

    assert held_result.outcome is Outcome.BUSY
    [dial] = dials(sim, held.room_name)
    assert dial["received_at"] >= released_at[0]  # the request left only when pacing said so
    assert dropped_result.problem is DialProblem.MISSED_START and dropped_result.outcome is None
    assert dials(sim, dropped.room_name) == []  # nothing dialed

    async def room() -> list[str]:
        async with gateway(sim) as tel:
            return await tel.room_participants(dropped.room_name)

    assert asyncio.run(room()) == []  # the dispatched agent's room is gone


def test_short_ringing_timeout_is_raised_to_fifteen_seconds(sim: SimulatorHandle) -> None:
    req = call_request(number("02"), ringing_timeout=timedelta(seconds=1))
    started = time.monotonic()
    result = place(sim, req)
    assert result.outcome is Outcome.NO_ANSWER
    assert time.monotonic() - started >= 15 / SPEED


def test_logs_mask_the_number(sim: SimulatorHandle, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="campaigns")
    req = call_request(number("01"))
    place(sim, req)
    assert "+1212*****01" in caplog.text
    assert req.call_to not in caplog.text
    assert req.agent_metadata["report_token"] not in caplog.text


# --- never two dials for one attempt ----------------------------------------------------


def test_5xx_on_dial_is_ambiguous_and_never_resent() -> None:
    with storm_sim(fail_first_n_requests_with_503=5, fail_methods=["CreateSIPParticipant"]) as s:
        req = call_request(number("00"))
        result = place(s, req)
        assert result.outcome is Outcome.FAILED
        assert result.problem is DialProblem.AMBIGUOUS
        assert not result.answered
        assert s.stats()["rejected_5xx"] == 1  # one request, no replay
        assert s.stats()["dials"] == 0


def test_5xx_after_dialing_gives_exactly_one_dial() -> None:
    with storm_sim(
        fail_first_n_requests_with_503=3,
        fail_methods=["CreateSIPParticipant"],
        fail_503_after_dialing=True,
    ) as s:
        req = call_request(number("00"))
        result = place(s, req)
        assert result.outcome is Outcome.FAILED
        assert result.problem is DialProblem.AMBIGUOUS
        time.sleep(0.3)
        assert len(dials(s, req.room_name)) == 1
        assert s.stats()["dials"] == 1


def test_dispatch_storm_is_retried_then_dials_once() -> None:
    with storm_sim(fail_first_n_requests_with_503=2, fail_methods=["CreateDispatch"]) as s:
        req = call_request(number("00"))
        result = place(s, req)
        assert result.answered
        assert s.stats()["rejected_5xx"] == 2
        assert len([d for d in s.dispatches() if d["room"] == req.room_name]) == 1
        assert len(dials(s, req.room_name)) == 1


def test_dispatch_that_keeps_failing_dials_nothing() -> None:
    with storm_sim(fail_first_n_requests_with_503=50, fail_methods=["CreateDispatch"]) as s:
        req = call_request(number("00"))
        result = place(s, req)
        assert result.outcome is Outcome.FAILED
        assert result.problem is None  # nothing was dialed
        assert "dispatch" in (result.error or "")
        assert s.stats()["rejected_5xx"] == 3  # three tries
        assert s.stats()["dials"] == 0


@pytest.mark.parametrize("mode", ["503", "drop"])
def test_livekit_down_dials_nothing(mode: str) -> None:
    with storm_sim(down=mode) as s:
        result = place(s, call_request(number("00")))
        assert result.outcome is Outcome.FAILED
        assert result.problem is None
        assert s.stats()["dials"] == 0
        assert s.calls() == []


def test_connection_refused_is_a_clean_failure() -> None:
    port = free_port()
    # Nothing listens on the port now: every connection is refused.

    async def go() -> CallResult:
        async with LiveKitTelephony(
            f"http://127.0.0.1:{port}", "devkey", "x" * 40, retry_initial=0.01, retry_max=0.02
        ) as tel:
            return await tel.place_call(call_request(number("00")))

    result = asyncio.run(go())
    assert result.outcome is Outcome.FAILED
    assert result.problem is None
    assert not result.answered
    assert "nothing dialed" in (result.error or "")


class Relay:
    """A loopback TCP relay to the simulator that stops listening after its first
    connection (the dispatch) and, optionally, listens again after ``reopen_after``:
    the dial in between finds the port closed (connection refused)."""

    def __init__(self, target: str, reopen_after: float | None) -> None:
        parsed = urlparse(target)
        self.target = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.reopen_after = reopen_after
        self.port = 0
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def _reopen(self) -> None:
        assert self.reopen_after is not None
        await asyncio.sleep(self.reopen_after)
        await self.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.accepted == 1 and self.server is not None:
            self.server.close()  # refuse the next connections
            if self.reopen_after is not None:
                task = asyncio.ensure_future(self._reopen())
                self.tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def place_through_relay(
    sim: SimulatorHandle, req: CallRequest, reopen_after: float | None
) -> CallResult:
    async def go() -> CallResult:
        relay = Relay(sim.url, reopen_after)
        url = await relay.start()
        # A new connection per request, so the dial has to connect again.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=10),
        ) as session:
            tel = LiveKitTelephony(
                url,
                sim.api_key,
                sim.api_secret,
                session=session,
                attempts=6,
                retry_initial=0.03,
                retry_max=0.1,
            )
            try:
                return await tel.place_call(req)
            finally:
                await tel.aclose()
                await relay.close()

    return asyncio.run(go())


def test_refused_dial_is_resent_and_dials_once(
    sim: SimulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="campaigns")
    req = call_request(number("00"))
    result = place_through_relay(sim, req, reopen_after=0.1)
    assert "CreateSIPParticipant failed (ClientConnectorError" in caplog.text  # re-sent
    assert result.answered  # the refused tries never reached LiveKit
    assert len(dials(sim, req.room_name)) == 1
    assert len([d for d in sim.dispatches() if d["room"] == req.room_name]) == 1


def test_refused_dial_after_dispatch_is_a_clean_failure(sim: SimulatorHandle) -> None:
    req = call_request(number("00"))
    result = place_through_relay(sim, req, reopen_after=None)
    assert result.outcome is Outcome.FAILED
    assert result.problem is None
    assert result.dispatch_id  # the agent was dispatched, the dial never left
    assert "refused" in (result.error or "")
    assert dials(sim, req.room_name) == []


# --- configuration errors ------------------------------------------------------------


def test_missing_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="LIVEKIT_URL"):
        LiveKitTelephony("", "devkey", "secret")
    with pytest.raises(ConfigurationError, match="LIVEKIT_API_SECRET"):
        LiveKitTelephony("http://127.0.0.1:7880", "devkey", "")


# --- rooms and trunks --------------------------------------------------------------------


def test_invalid_trunk_is_a_telephony_error(sim: SimulatorHandle) -> None:
    async def go() -> None:
        async with gateway(sim) as tel:
            await tel.create_outbound_trunk(TrunkSpec(name="x", address="", numbers=()))

    with pytest.raises(TelephonyError, match="CreateSIPOutboundTrunk"):
        asyncio.run(go())
