"""One suite, two targets: the gateway against the simulator and the real LiveKit.

Every test here takes the ``target`` fixture and so runs twice. Where the two
disagree the real server is right: the simulator and the gateway follow it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message
from livekit import api
from livekit.api import ServerError
from livekit.api.twirp_client import TwirpClient
from livekit.protocol.agent_dispatch import CreateAgentDispatchRequest
from livekit.protocol.sip import CreateSIPParticipantRequest, ListSIPOutboundTrunkRequest

from campaigns.telephony.livekit_gateway import LiveKitTelephony
from campaigns.telephony.outcomes import DialProblem, Outcome
from campaigns.telephony.port import CallRequest, CallResult, ConfigurationError, TrunkSpec
from campaigns.tokens import sign_report_token
from tests.live.targets import CALLER_ID, Target, number

T = TypeVar("T")
SECRET = "report-secret-for-conformance"


def call_request(target: Target, to: str, **overrides: Any) -> CallRequest:
    attempt_id = uuid.uuid4().int % 1_000_000
    room = f"attempt-{attempt_id}-{uuid.uuid4().hex[:6]}"
    expiry = datetime.now(UTC) + timedelta(hours=1)
    values: dict[str, Any] = {
        "attempt_id": attempt_id,
        "room_name": room,
        "participant_identity": f"patient-{attempt_id}",
        "trunk_id": target.trunk_id,
        "call_to": to,
        "caller_id": CALLER_ID,
        "agent_name": "conformance-no-agent",  # no worker: the callee's side is what counts
        "agent_metadata": {"report_token": sign_report_token(attempt_id, room, expiry, SECRET)},
        "ringing_timeout": timedelta(seconds=15),
        "max_call_duration": timedelta(minutes=2),
    }
    values.update(overrides)
    return CallRequest(**values)


def with_gateway(target: Target, work: Callable[[LiveKitTelephony], Awaitable[T]], **kw: Any) -> T:
    async def go() -> T:
        async with LiveKitTelephony(
            target.url, kw.pop("key", target.api_key), kw.pop("secret", target.api_secret), **kw
        ) as tel:
            return await work(tel)

    return asyncio.run(go())


def place(target: Target, req: CallRequest) -> CallResult:
    return with_gateway(target, lambda tel: tel.place_call(req))


# --- every callee behaviour, classified the same way --------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "outcome", "sip_code"),
    [
        ("busy", Outcome.BUSY, 486),
        ("busy_everywhere", Outcome.BUSY, 600),
        ("unavailable", Outcome.NO_ANSWER, 480),
        ("aborted", Outcome.NO_ANSWER, 487),
        ("no_answer", Outcome.NO_ANSWER, None),  # ringing timeout: 408 canceled, no metadata
        ("declined", Outcome.DECLINED, 603),
        ("invalid_number", Outcome.INVALID_NUMBER, 404),
        ("carrier_failure", Outcome.FAILED, 503),
    ],
)
def test_a_callee_who_does_not_answer(
    target: Target, behaviour: str, outcome: Outcome, sip_code: int | None
) -> None:
    to = number(behaviour)
    result = place(target, call_request(target, to))
    assert not result.answered
    assert result.outcome is outcome
    assert result.sip_status_code == sip_code
    assert result.problem is None  # the callee's answer is definitive, nothing ambiguous
    assert result.dispatch_id
    assert result.error
    assert bool(result.sip_status) == (sip_code is not None)
    assert target.dials_to(to) == 1


def test_an_answered_call_is_hung_up_by_deleting_its_room(target: Target) -> None:
    to = number("confirmed")
    req = call_request(target, to)

    async def work(tel: LiveKitTelephony) -> tuple[CallResult, list[str], list[str]]:
        result = await tel.place_call(req)
        during = await tel.room_participants(req.room_name)
        await tel.hang_up(req.room_name)
        await tel.hang_up(req.room_name)  # already gone: fine
        return result, during, await tel.room_participants(req.room_name)

    result, during, after = with_gateway(target, work)
    assert result.answered
    assert result.outcome is None and result.problem is None and result.error is None
    assert result.sip_call_id and result.dispatch_id
    assert req.participant_identity in during
    assert after == []
    assert target.dials_to(to) == 1
    _eventually(lambda: target.hung_up(to), "the callee saw the call end")


def _eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not seen within {timeout:.0f}s: {what}")


# --- configuration errors: nothing dialed, the setting named -----------------------------------


def test_an_unknown_trunk_is_a_configuration_error(target: Target) -> None:
    to = number("confirmed")
    result = place(target, call_request(target, to, trunk_id="ST_does_not_exist"))
    assert result.problem is DialProblem.CONFIGURATION
    assert result.outcome is None
    assert "trunk" in (result.error or "")
    assert target.dials_to(to) == 0


def test_a_wrong_secret_is_a_configuration_error(target: Target) -> None:
    to = number("confirmed")
    req = call_request(target, to)
    wrong = "not-the-secret-but-long-enough-for-hs256-signing"

    async def work(tel: LiveKitTelephony) -> CallResult:
        result = await tel.place_call(req)
        with pytest.raises(ConfigurationError, match="LIVEKIT_API_SECRET"):
            await tel.list_outbound_trunks()
        return result

    result = with_gateway(target, work, secret=wrong)
    assert result.problem is DialProblem.CONFIGURATION
    assert result.outcome is None
    assert "LIVEKIT_API_KEY" in (result.error or "")
    assert target.dials_to(to) == 0


def test_an_unknown_key_is_a_configuration_error(target: Target) -> None:
    to = number("confirmed")
    result = with_gateway(
        target, lambda tel: tel.place_call(call_request(target, to)), key="APInotakey"
    )
    assert result.problem is DialProblem.CONFIGURATION
    assert "LIVEKIT_API_KEY" in (result.error or "")
    assert target.dials_to(to) == 0


# --- the raw answers, as the livekit-api client reads them ------------------------------------


def _token(target: Target, **grants: Any) -> str:
    tok = api.AccessToken(target.api_key, target.api_secret).with_ttl(dt.timedelta(minutes=5))
    if "video" in grants:
        tok.with_grants(grants["video"])
    if "sip" in grants:
        tok.with_sip_grants(grants["sip"])
    return tok.to_jwt()


def _refused(
    target: Target, service: str, method: str, request: Message, token: str | None
) -> ServerError:
    """What the livekit-api client's Twirp layer reads from a request sent with ``token``."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}

    async def go() -> ServerError:
        async with aiohttp.ClientSession() as session:
            client = TwirpClient(session, target.url, "livekit")
            with pytest.raises(ServerError) as info:
                await client.request(service, method, request, headers, Empty)
            return info.value

    return asyncio.run(go())


def _dial(to: str) -> CreateSIPParticipantRequest:
    return CreateSIPParticipantRequest(
        sip_trunk_id="ST_any", sip_call_to=to, room_name="room-a", participant_identity="p"
    )


@pytest.mark.parametrize("case", ["bad_signature", "expired", "unknown_key"])
def test_a_token_the_server_cannot_verify_is_a_plain_401(target: Target, case: str) -> None:
    sip = api.SIPGrants(call=True)
    if case == "bad_signature":
        tok = api.AccessToken(target.api_key, "another-secret-another-secret-0123456789")
    elif case == "expired":
        tok = api.AccessToken(target.api_key, target.api_secret).with_ttl(dt.timedelta(minutes=-5))
    else:
        tok = api.AccessToken("APInotakey", target.api_secret)
    to = number("confirmed")
    err = _refused(
        target, "SIP", "CreateSIPParticipant", _dial(to), tok.with_sip_grants(sip).to_jwt()
    )
    # livekit-server answers in plain text, not Twirp JSON: the client reads no code.
    assert (err.status, err.code, err.message) == (401, "unknown", "")
    assert target.dials_to(to) == 0


def test_a_token_without_the_grant_is_401_permissions_denied(target: Target) -> None:
    to = number("confirmed")
    cases: list[tuple[str, str, Message, str | None]] = [
        ("SIP", "CreateSIPParticipant", _dial(to), _token(target, sip=api.SIPGrants(admin=True))),
        ("SIP", "CreateSIPParticipant", _dial(to), None),  # no Authorization header at all
        (
            "SIP",
            "ListSIPOutboundTrunk",
            ListSIPOutboundTrunkRequest(),
            _token(target, sip=api.SIPGrants(call=True)),
        ),
        (
            "AgentDispatchService",
            "CreateDispatch",
            CreateAgentDispatchRequest(agent_name="a", room="room-b"),
            _token(target, video=api.VideoGrants(room_admin=True, room="room-a")),
        ),
    ]
    for service, method, request, token in cases:
        err = _refused(target, service, method, request, token)
        assert (err.status, err.code, err.message) == (
            401,
            "unauthenticated",
            "permissions denied",
        ), method
    assert target.dials_to(to) == 0


def test_sip_failures_carry_the_sip_status(target: Target) -> None:
    token = _token(
        target, sip=api.SIPGrants(call=True), video=api.VideoGrants(room_admin=True, room="room-a")
    )
    expected = {
        "busy": (429, "resource_exhausted", "INVITE failed: sip status: 486: Busy Here"),
        "declined": (
            403,
            "permission_denied",
            "unexpected status from INVITE response: sip status: 603: Decline",
        ),
        "invalid_number": (404, "not_found", "INVITE failed: sip status: 404: Not Found"),
        "carrier_failure": (
            412,
            "failed_precondition",
            "unexpected status from INVITE response: sip status: 503: Service Unavailable",
        ),
    }
    for behaviour, (status, code, message) in expected.items():
        request = _dial(number(behaviour))
        request.sip_trunk_id = target.trunk_id
        request.wait_until_answered = True
        err = _refused(target, "SIP", "CreateSIPParticipant", request, token)
        assert (err.status, err.code) == (status, code), behaviour
        assert err.message.endswith(message), behaviour
        assert err.metadata["sip_status_code"] == message.split(": ")[-2], behaviour
        assert err.metadata["sip_status"] == message.split(": ")[-1], behaviour


# --- trunks --------------------------------------------------------------------------------


def test_trunks_are_created_and_listed_without_their_password(target: Target) -> None:
    spec = TrunkSpec(
        name="Lakeside carrier",
        address="lakeside.pstn.example.com",
        numbers=("+13055550199",),
        auth_username="lakeside",
        auth_password="hunter2-very-secret",
        destination_country="US",
    )

    async def work(tel: LiveKitTelephony) -> tuple[str, list[Any]]:
        trunk_id = await tel.create_outbound_trunk(spec)
        return trunk_id, await tel.list_outbound_trunks()

    trunk_id, trunks = with_gateway(target, work)
    assert trunk_id.startswith("ST_")
    [info] = [t for t in trunks if t.trunk_id == trunk_id]
    assert (info.name, info.address, info.numbers) == (
        "Lakeside carrier",
        "lakeside.pstn.example.com",
        ("+13055550199",),
    )
    assert (info.auth_username, info.destination_country) == ("lakeside", "US")
    assert "hunter2" not in repr(trunks)
    assert target.trunk_id in {t.trunk_id for t in trunks}
