"""The local models (``CAMPAIGNS_AGENT_*=local``): espeak-ng speech, pocketsphinx
recognition, the rule-based model, AMD's verdict, and their selection by settings.

Needs Debian's ``espeak-ng`` (``.ci/run`` installs it) and nothing from the network.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from array import array
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import llm, stt
from livekit.agents.llm import ChatContext, ChatMessage, ToolContext, function_tool
from livekit.agents.llm.utils import execute_function_call
from livekit.agents.voice.amd.classifier import AMD_PROMPT, AMDCategory

from agent.confirmer import ConfirmationAgent
from agent.local_models import (
    ESPEAK_SAMPLE_RATE,
    EspeakTTS,
    LocalLLM,
    PocketsphinxSTT,
    amd_model,
    classify_greeting,
    espeak_voice,
    session_models,
)
from agent.metadata import parse_metadata
from agent.rehearsal import RehearsalCall
from campaigns.settings import Settings
from tests.agent_helpers import call_metadata

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs Debian's espeak-ng (.ci/run installs it)"
)

# What a callee says → the tool the agent must call (the patient already said who they are
# for the outcome lines; the opening's answers are identity lines).
PATIENT_LINES = [
    ("Yes, speaking.", "identity_confirmed"),
    ("Yeah, this is him.", "identity_confirmed"),
    ("Yes, I will be there.", "confirm_appointment"),
    ("I'll be there.", "confirm_appointment"),
    ("I need to reschedule.", "request_reschedule"),
    ("Could we do next Tuesday afternoon instead?", "request_reschedule"),
    ("Please cancel my appointment.", "cancel_appointment"),
    ("Stop calling me.", "opt_out"),
    ("Don't call me again.", "opt_out"),
    ("Take me off your list.", "opt_out"),
    ("You have the wrong number.", "wrong_number"),
    ("Can I speak to a person?", "transfer_to_staff"),
    ("I'd like to talk to a representative.", "transfer_to_staff"),
]


def _settings(**models: Any) -> Settings:
    return Settings(**models)


def _agent_tools() -> list[llm.Tool]:
    call = RehearsalCall()
    agent = ConfirmationAgent(
        parse_metadata(call_metadata()),
        reporter=_no_report,
        call=call,
        screener=call,
        amd_timeout=1.0,
    )
    return [tool for tool in agent.tools if isinstance(tool, llm.Tool)]


async def _no_report(_report: Any) -> None:
    return None


def _ask(model: LocalLLM, items: list[Any], tools: list[llm.Tool]) -> llm.ChatChunk:
    async def run() -> llm.ChatChunk:
        stream = model.chat(chat_ctx=ChatContext(items=items), tools=tools)
        async with stream:
            chunks = [chunk async for chunk in stream]
        assert len(chunks) == 1
        return chunks[0]

    return asyncio.run(run())


def _tool_for(line: str, *, identified: bool = True) -> str | None:
    items: list[Any] = [ChatMessage(role="system", content=["instructions"])]
    if identified:
        items.append(llm.FunctionCall(call_id="c0", name="identity_confirmed", arguments="{}"))
    items.append(ChatMessage(role="user", content=[line]))
    chunk = _ask(LocalLLM(), items, _agent_tools())
    assert chunk.delta is not None
    calls = chunk.delta.tool_calls
    return calls[0].name if calls else None


def _rms(frame: rtc.AudioFrame) -> float:
    samples = array("h", bytes(frame.data.cast("B")))
    return math.sqrt(sum(s * s for s in samples) / max(len(samples), 1))


def _synthesize(text: str, language: str | None = None) -> rtc.AudioFrame:
    async def run() -> rtc.AudioFrame:
        return await EspeakTTS(voice=espeak_voice(language)).synthesize(text).collect()

    return asyncio.run(run())


# --- speech ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "line"),
    [
        ("en", "Hello, this is Lakeside Clinic calling. May I please speak with Maria?"),
        ("es", "Hola, le llamamos de la Clínica Lakeside. ¿Puedo hablar con María?"),
    ],
)
def test_espeak_speaks_a_line_in_the_calls_language(language: str, line: str) -> None:
    frame = _synthesize(line, language)
    assert frame.sample_rate == ESPEAK_SAMPLE_RATE
    assert frame.num_channels == 1
    assert 2.0 < frame.duration < 10.0  # a dozen words at 160 words a minute
    assert _rms(frame) > 500  # speech, not silence


def test_the_voice_follows_the_language() -> None:
    assert espeak_voice(None) == "en-us"
    assert espeak_voice("en-US") == "en-us"
    assert espeak_voice("es") == espeak_voice("es_MX") == "es-419"
    assert espeak_voice("xx") == "en-us"


# --- recognition, end to end ------------------------------------------------------------


_STT = PocketsphinxSTT()  # one decoder for the module: loading it takes most of a second


def _hear(line: str) -> str:
    async def run() -> str:
        frame = await EspeakTTS().synthesize(line).collect()
        event = await _STT.recognize([frame])
        assert event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
        return event.alternatives[0].text

    return asyncio.run(run())


@pytest.mark.parametrize(("line", "tool"), PATIENT_LINES)
def test_a_spoken_line_is_heard_well_enough_to_pick_its_tool(line: str, tool: str) -> None:
    heard = _hear(line)
    assert _tool_for(heard) == tool, f"{line!r} was heard as {heard!r}"


def test_recognition_of_the_plain_lines_is_word_for_word() -> None:
    for line in ("Yes, speaking.", "I need to reschedule.", "Stop calling me."):
        expected = line.lower().rstrip(".").replace(",", "")
        assert _hear(line) == expected


def test_recognition_takes_any_rate_and_stereo() -> None:
    async def run() -> str:
        frame = await EspeakTTS().synthesize("Stop calling me.").collect()
        mono = array("h", bytes(frame.data.cast("B")))
        stereo = array("h", (s for s in mono for _ in (0, 1)))
        frame48 = rtc.AudioResampler(frame.sample_rate, 48000, num_channels=2)
        source = rtc.AudioFrame(stereo.tobytes(), frame.sample_rate, 2, len(mono))
        frames = [*frame48.push(source), *frame48.flush()]
        event = await _STT.recognize(frames)
        return event.alternatives[0].text

    assert asyncio.run(run()) == "stop calling me"


# --- the rule-based model ---------------------------------------------------------------


@pytest.mark.parametrize(("line", "tool"), PATIENT_LINES)
def test_the_local_model_maps_each_line_to_its_tool(line: str, tool: str) -> None:
    assert _tool_for(line) == tool


def test_a_bare_yes_answers_the_opening_then_confirms() -> None:
    assert _tool_for("Yes.", identified=False) == "identity_confirmed"
    assert _tool_for("Yes.", identified=True) == "confirm_appointment"


def test_a_reschedule_carries_the_callees_words() -> None:
    items = [
        llm.FunctionCall(call_id="c0", name="identity_confirmed", arguments="{}"),
        ChatMessage(role="user", content=["Can we move it to Friday?"]),
    ]
    chunk = _ask(LocalLLM(), items, _agent_tools())
    assert chunk.delta is not None
    (call,) = chunk.delta.tool_calls
    assert json.loads(call.arguments) == {"preferred_times": "Can we move it to Friday?"}


def test_anything_else_gets_a_clarifying_line_and_a_tools_advice_no_second_call() -> None:
    chunk = _ask(LocalLLM(), [ChatMessage(role="user", content=["Hmm."])], _agent_tools())
    assert chunk.delta is not None
    assert not chunk.delta.tool_calls
    assert chunk.delta.content
    items = [
        ChatMessage(role="user", content=["Yes, I will be there."]),
        llm.FunctionCall(call_id="c1", name="confirm_appointment", arguments="{}"),
        llm.FunctionCallOutput(
            call_id="c1",
            name="confirm_appointment",
            output="then call identity_confirmed",
            is_error=False,
        ),
    ]
    chunk = _ask(LocalLLM(), items, _agent_tools())
    assert chunk.delta is not None
    assert not chunk.delta.tool_calls
    assert chunk.delta.content and "speaking with" in chunk.delta.content


# --- answering-machine detection ----------------------------------------------------------


@pytest.mark.parametrize(
    ("greeting", "category"),
    [
        ("Hello?", "human"),
        ("Hi, this is Maria.", "human"),
        (
            "Hi, you've reached Maria. I can't take your call, "
            "please leave a message after the tone.",
            "machine-vm",
        ),
        ("The mailbox is full and cannot accept messages.", "machine-unavailable"),
        ("Thank you for calling. Press one for billing.", "machine-ivr"),
    ],
)
def test_amd_gets_its_verdict_from_the_local_model(greeting: str, category: str) -> None:
    """The exact request the framework's AMD classifier makes: its prompt, the transcript,
    and a ``save_prediction`` tool the answer is executed against."""
    saved: list[AMDCategory] = []

    async def save_prediction(label: AMDCategory) -> None:
        """Save the prediction to the verdict."""
        saved.append(label)

    async def postpone_termination(seconds: float) -> str:
        """Postpone the termination of the classification task."""
        return "waiting"

    async def run() -> None:
        tools: list[llm.Tool] = [
            function_tool(save_prediction),
            function_tool(postpone_termination),
        ]
        stream = LocalLLM().chat(
            chat_ctx=ChatContext(
                items=[
                    ChatMessage(role="system", content=[AMD_PROMPT]),
                    ChatMessage(role="user", content=[greeting]),
                ]
            ),
            tools=tools,
            tool_choice="required",
        )
        response = await stream.collect()
        for call in response.tool_calls:
            await execute_function_call(call, ToolContext(stream.tools))

    asyncio.run(run())
    assert saved == [AMDCategory(category)]


def test_a_spoken_voicemail_greeting_is_heard_as_a_machine() -> None:
    heard = _hear("Hi, you've reached Maria. Please leave a message after the tone.")
    assert classify_greeting(heard) == "machine-vm"
    assert classify_greeting(_hear("Hello?")) == "human"


# --- selection by settings ---------------------------------------------------------------


def test_model_strings_pass_through() -> None:
    settings = _settings()
    models = session_models(settings)
    assert models == {
        "llm": settings.agent_llm,
        "stt": settings.agent_stt,
        "tts": settings.agent_tts,
    }
    assert amd_model(settings) is None
    assert amd_model(_settings(agent_amd_llm="openai/gpt-4.1-nano")) == "openai/gpt-4.1-nano"


def test_local_selects_the_local_models() -> None:
    settings = _settings(
        agent_llm="local", agent_stt="local", agent_tts="local", agent_amd_llm="local"
    )
    models = session_models(settings, "es")
    assert isinstance(models["llm"], LocalLLM)
    assert isinstance(models["tts"], EspeakTTS) and models["tts"].voice == "es-419"
    assert isinstance(models["stt"], stt.StreamAdapter)
    assert isinstance(models["stt"].wrapped_stt, PocketsphinxSTT)
    assert models["vad"] is not None
    assert models["turn_handling"]["turn_detection"] == "vad"
    assert isinstance(amd_model(settings), LocalLLM)


def test_the_worker_builds_its_session_from_the_settings() -> None:
    import agent.worker as worker

    assert vars(worker)["session_models"] is session_models
    assert vars(worker)["amd_model"] is amd_model
