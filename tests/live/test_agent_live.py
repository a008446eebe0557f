"""The confirmation agent in real rooms: a registered worker, real audio, a real phone.

``campaigns agent start`` runs with the local models (espeak-ng speaking,
pocketsphinx listening, the rule-based LLM deciding) and registers with the
real livekit-server. The gateway dispatches it explicitly and dials sipp
through the SIP bridge; the handset plays the patient's lines and records
what it hears. Calls of every answered behaviour run at once; each test reads
what its call did: the report the agent sent through the broker, what the
phone heard, and the SIP messages the phone saw.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from campaigns.telephony.livekit_gateway import LiveKitTelephony
from campaigns.telephony.port import CallRequest, CallResult
from campaigns.tokens import TokenCheck, check_report_token, sign_report_token
from harness.livekit.handset import HeardCall
from harness.livekit.stack import LiveKitStack
from harness.processes import ProcessGroup, processes, wait_until
from tests.agent_helpers import call_metadata
from tests.live.targets import CALLER_ID, LiveKitTarget, number

pytestmark = pytest.mark.live

AGENT = "appointment-confirmer-live"
REPORT_SECRET = "live-agent-report-secret-0123456789abcd"
TRANSFER_TO = "+12125550111"
# What the patient says is heard by the local recogniser on telephone audio for these; a
# spoken opt-out ("Stop calling me.") it mishears on the phone line as often as not.
ANSWERED = ("confirmed", "reschedule_requested", "voicemail", "transferred")
AT_ONCE = 2  # local models on two cores: two calls at a time keep a conversation's pace


@dataclass
class LiveCall:
    behaviour: str
    request: CallRequest
    result: CallResult
    dialled_at: float
    reports: list[dict[str, Any]]
    heard: HeardCall
    sip: str  # the phone's SIP messages of this call


def broker_of(stack: LiveKitStack) -> str:
    return stack.redis_url.rsplit("/", 1)[0] + "/1"


@pytest.fixture(scope="module")
def agent_worker(
    livekit_stack: LiveKitStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessGroup]:
    broker = broker_of(livekit_stack)
    redis.Redis.from_url(broker).flushdb()
    env = {
        **os.environ,
        **livekit_stack.env(),
        "CAMPAIGNS_BROKER_URL": broker,
        "CAMPAIGNS_AGENT_NAME": AGENT,
        "CAMPAIGNS_AGENT_LLM": "local",
        "CAMPAIGNS_AGENT_STT": "local",
        "CAMPAIGNS_AGENT_TTS": "local",
        # Headroom over the calls placed at once: livekit-server drops a dispatch that
        # finds every worker full (a worker reports a finished call only seconds later).
        "CAMPAIGNS_AGENT_MAX_CALLS": str(2 * AT_ONCE),
        "CAMPAIGNS_AGENT_HTTP_PORT": "0",
        "CAMPAIGNS_AGENT_JOB_EXECUTOR": "process",
    }
    with processes(env, tmp_path_factory.mktemp("agent")) as group:
        worker = group.start("agent", "agent", "start")
        wait_until(
            lambda: "registered worker" in worker.log.read_text(errors="replace"),
            timeout=60,
            what="the agent worker to register with livekit-server",
        )
        yield group


def _reports(broker: str, attempt_id: int) -> list[dict[str, Any]]:
    """The agent's reports of ``attempt_id`` waiting on the broker (Celery messages)."""
    found = []
    for raw in redis.Redis.from_url(broker).lrange("celery", 0, -1):
        message = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        if kwargs["attempt_id"] == attempt_id:
            found.append(kwargs)
    return found


def _sip_of(target: LiveKitTarget, to: str) -> str:
    """Every SIP message of the phone's dialog with ``to``."""
    messages = target.phones.messages()
    call_ids = set(
        re.findall(rf"^INVITE sip:{re.escape(to)}@[\s\S]*?^Call-ID: *(\S+)", messages, re.M)
    )
    blocks = re.split(r"\n(?=UDP message (?:sent|received))", messages)
    return "\n".join(
        b
        for b in blocks
        if any(re.search(rf"^Call-ID: *{re.escape(c)}", b, re.M) for c in call_ids)
    )


@pytest.fixture(scope="module")
def calls(agent_worker: ProcessGroup, livekit_target: LiveKitTarget) -> dict[str, LiveCall]:
    """One call of each answered behaviour, all at once, played to the end."""
    stack, broker = livekit_target.stack, broker_of(livekit_target.stack)

    def request(behaviour: str) -> CallRequest:
        attempt_id = uuid.uuid4().int % 1_000_000
        room = f"appt-{attempt_id}-{uuid.uuid4().hex[:6]}"
        expiry = datetime.now(UTC) + timedelta(hours=1)
        metadata = {
            key: value
            for key, value in call_metadata(attempt_id, transfer_number=TRANSFER_TO).items()
            if key not in ("attempt_id", "participant_identity")
        }
        metadata["report_token"] = sign_report_token(attempt_id, room, expiry, REPORT_SECRET)
        return CallRequest(
            attempt_id=attempt_id,
            room_name=room,
            participant_identity=f"patient-{attempt_id}",
            trunk_id=livekit_target.trunk_id,
            call_to=number(behaviour),
            caller_id=CALLER_ID,
            agent_name=AGENT,
            agent_metadata=metadata,
            ringing_timeout=timedelta(seconds=15),
            max_call_duration=timedelta(seconds=90),
        )

    requests = {behaviour: request(behaviour) for behaviour in ANSWERED}

    async def place_all() -> dict[str, tuple[CallResult, float]]:
        async with LiveKitTelephony(stack.url, stack.api_key, stack.api_secret) as tel:
            lines = asyncio.Semaphore(AT_ONCE)

            async def one(req: CallRequest) -> tuple[CallResult, float]:
                async with lines:
                    dialled_at = datetime.now(UTC).timestamp()
                    result = await tel.place_call(req)
                    await asyncio.to_thread(wait_until, lambda: ended(req), timeout=120, what="")
                    return result, dialled_at

            results = await asyncio.gather(*(one(r) for r in requests.values()))
        return dict(zip(requests, results, strict=True))

    handsets = livekit_target.phones.handsets

    def ended(req: CallRequest) -> bool:
        heard = handsets.heard(req.call_to)
        return bool(heard and heard[-1].ended_at)

    try:
        placed = asyncio.run(place_all())
    except TimeoutError:
        state = {
            b: (
                [(c.lines, c.ended_at is not None) for c in handsets.heard(requests[b].call_to)],
                [r["outcome"] for r in _reports(broker, requests[b].attempt_id)],
            )
            for b in ANSWERED
        }
        raise AssertionError(f"a call still going after 120 s: {state}") from None
    return {
        behaviour: LiveCall(
            behaviour,
            req,
            placed[behaviour][0],
            placed[behaviour][1],
            _reports(broker, req.attempt_id),
            handsets.heard(req.call_to)[-1],
            _sip_of(livekit_target, req.call_to),
        )
        for behaviour, req in requests.items()
    }


def _outcomes(call: LiveCall) -> list[str]:
    return [report["outcome"] for report in call.reports]


def _authentic(call: LiveCall) -> bool:
    now = datetime.now(UTC)
    return all(
        check_report_token(
            r["token"], call.request.attempt_id, call.request.room_name, now, REPORT_SECRET
        )
        is TokenCheck.VALID
        for r in call.reports
    )


@pytest.mark.parametrize("behaviour", ANSWERED)
def test_every_answered_call_ends_with_one_report_and_one_hang_up(
    calls: dict[str, LiveCall], behaviour: str
) -> None:
    call = calls[behaviour]
    assert call.result.answered, call.result
    assert _outcomes(call) == [behaviour]
    assert _authentic(call)
    assert call.reports[0]["detail"]["script_version"] == "confirm-v1"
    assert call.sip.count("BYE sip:") == 1  # the agent's hang-up reached the phone once


def test_the_opening_reaches_the_phone_as_speech_within_seconds(
    calls: dict[str, LiveCall],
) -> None:
    heard = calls["confirmed"].heard
    assert heard.first_speech_at is not None
    assert heard.first_speech_at - heard.answered_at < 6.0
    assert heard.heard_seconds > 5.0  # the opening and the appointment, not silence
    assert Path(heard.recording).stat().st_size > 8000 * 2 * 5


def test_the_agent_hears_the_patient(calls: dict[str, LiveCall]) -> None:
    confirmed = calls["confirmed"]
    # The phone said each line once the agent had spoken, and the agent acted on each:
    # "Yes, speaking." (identity) then "Yes, I will be there." (confirmed).
    assert [text for text, _ in confirmed.heard.lines] == [
        "Hello?",
        "Yes, speaking.",
        "Yes, I will be there.",
    ]
    reschedule = calls["reschedule_requested"].reports[0]["detail"]
    assert "another day" in reschedule["preferred_times"]


def test_voicemail_is_detected_on_live_audio_and_a_message_left(
    calls: dict[str, LiveCall],
) -> None:
    call = calls["voicemail"]
    assert call.reports[0]["detail"]["amd"] == "machine-vm"
    [(greeting, greeted_at)] = call.heard.lines
    assert "leave a message" in greeting
    # The message follows the greeting and its beep: speech heard after the greeting ended.
    assert call.heard.first_speech_at is not None
    assert call.heard.heard_seconds > 3.0
    assert greeted_at - call.heard.answered_at < 2.0


def test_a_transfer_is_a_sip_refer_to_the_clinics_staff(calls: dict[str, LiveCall]) -> None:
    call = calls["transferred"]
    refer = re.search(r"^REFER sip:[\s\S]*?^Refer-To: *(\S+)", call.sip, re.M)
    assert refer, call.sip[-3000:]
    assert TRANSFER_TO in refer.group(1)
    assert call.reports[0]["detail"]["transferred_to"] == TRANSFER_TO
    assert "SIP/2.0 202 Accepted" in call.sip
