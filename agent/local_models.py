"""Local models: the agent in a real room with no cloud, no API key and no download.

Selected by settings, per model: ``CAMPAIGNS_AGENT_TTS=local``, ``CAMPAIGNS_AGENT_STT=local``,
``CAMPAIGNS_AGENT_LLM=local`` and ``CAMPAIGNS_AGENT_AMD_LLM=local``; any other value is a
LiveKit Inference model string and is passed through. :func:`session_models` gives the
``AgentSession`` its models, :func:`amd_model` the answering-machine classifier.

- :class:`EspeakTTS` speaks through Debian's ``espeak-ng`` (a subprocess per line,
  16-bit mono PCM at :data:`ESPEAK_SAMPLE_RATE`), in a voice picked from the call's
  language (:func:`espeak_voice`).
- :class:`PocketsphinxSTT` decodes one buffered utterance with pocketsphinx's en-us
  acoustic model (shipped in its wheel), at 16 kHz mono. Free decoding of a phone
  line is poor, so it decodes against a small n-gram language model built at start
  from :data:`CALLEE_PHRASES`, the lines a callee says in these calls (identity,
  confirm, cancel, reschedule with days and times, opt-out, wrong number, a person,
  voicemail greetings): it hears those well and other speech as the nearest of
  them. In a session it is wrapped with Silero's VAD (:func:`session_models`), whose
  model ships in its wheel too.
- :class:`LocalLLM` is a deterministic, rule-based stand-in for a model (tests, demos,
  dry runs): it calls the confirmation agent's tools by keyword (:func:`choose_tool`),
  and answers AMD's classification request (the ``save_prediction`` tool) with
  :func:`classify_greeting`.
"""

from __future__ import annotations

import asyncio
import functools
import io
import re
import shutil
import tempfile
import uuid
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livekit import rtc
from livekit.agents import APIConnectOptions, llm, stt, tts, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

# Imported here, not where it is used: LiveKit registers a plugin only on the main thread,
# and a worker running calls as threads builds its sessions elsewhere.
from livekit.plugins import silero

from agent.rehearsal import ScriptedStream

if TYPE_CHECKING:
    from pocketsphinx import Decoder

    from campaigns.settings import Settings

LOCAL = "local"

# --- text to speech: espeak-ng ---------------------------------------------------------

ESPEAK_SAMPLE_RATE = 22050  # what espeak-ng's own voices produce
ESPEAK_RATE_WPM = 160
ESPEAK_VOICES = {"en": "en-us", "es": "es-419"}


def espeak_voice(language: str | None) -> str:
    """The espeak-ng voice for a call's language (``en``, ``es-MX``, ...): English by default."""
    base = (language or "en").strip().lower().replace("_", "-").split("-")[0]
    return ESPEAK_VOICES.get(base, ESPEAK_VOICES["en"])


def wav_pcm(wav: bytes) -> tuple[int, bytes]:
    """Sample rate and 16-bit mono PCM of espeak-ng's WAV (its header sizes can be unset
    when it writes to a pipe, so the data runs to the end)."""
    if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise ValueError("not a WAV stream")
    pos, rate = 12, 0
    while pos + 8 <= len(wav):
        chunk, size = wav[pos : pos + 4], int.from_bytes(wav[pos + 4 : pos + 8], "little")
        if chunk == b"fmt ":
            channels = int.from_bytes(wav[pos + 10 : pos + 12], "little")
            bits = int.from_bytes(wav[pos + 22 : pos + 24], "little")
            if channels != 1 or bits != 16:
                raise ValueError("expected 16-bit mono WAV")
            rate = int.from_bytes(wav[pos + 12 : pos + 16], "little")
        elif chunk == b"data":
            pcm = wav[pos + 8 :]
            return rate, pcm[: len(pcm) // 2 * 2]
        pos += 8 + size
    raise ValueError("WAV stream without data")


class EspeakTTS(tts.TTS[None]):
    """Speech from Debian's ``espeak-ng``: one subprocess per line, no network."""

    def __init__(self, *, voice: str = "en-us", rate_wpm: int = ESPEAK_RATE_WPM) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=ESPEAK_SAMPLE_RATE,
            num_channels=1,
        )
        self.voice = voice
        self.rate_wpm = rate_wpm

    @property
    def model(self) -> str:
        return f"espeak-ng/{self.voice}"

    @property
    def provider(self) -> str:
        return "espeak-ng"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _EspeakStream(tts=self, input_text=text, conn_options=conn_options)

    async def speak(self, text: str) -> bytes:
        """``text`` as 16-bit mono PCM at :data:`ESPEAK_SAMPLE_RATE`."""
        program = shutil.which("espeak-ng")
        if program is None:
            raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
        proc = await asyncio.create_subprocess_exec(
            program,
            "--stdout",
            "-v",
            self.voice,
            "-s",
            str(self.rate_wpm),
            "--",
            text,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"espeak-ng failed ({proc.returncode}): {err.decode()[:200]}")
        rate, pcm = wav_pcm(out)
        if rate != ESPEAK_SAMPLE_RATE:
            raise RuntimeError(f"espeak-ng voice {self.voice} speaks at {rate} Hz")
        return pcm


class _EspeakStream(tts.ChunkedStream):
    def __init__(self, *, tts: EspeakTTS, input_text: str, conn_options: APIConnectOptions):
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._espeak = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=uuid.uuid4().hex,
            sample_rate=ESPEAK_SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
        )
        output_emitter.push(await self._espeak.speak(self.input_text))
        output_emitter.flush()


# --- speech to text: pocketsphinx ------------------------------------------------------

STT_SAMPLE_RATE = 16000  # pocketsphinx's en-us model
STT_PADDING_SECONDS = 0.3  # silence around an utterance: the decoder needs a lead-in

# The callee's side of these calls, one sentence a line: the decoder's language model.
CALLEE_PHRASES = """
yes speaking
speaking
yes i'll be there
please cancel it
i can't could we do another day mornings are best
could we do another day
please stop calling this number
stop calling this number
there's nobody by that name here
nobody by that name
can i talk to someone at the front desk
can i talk to someone
the front desk please
yes this is she
yes this is he
yes this is him
yes this is her
yeah this is him
this is me
yes it's me
yes it is me
it's me
yes
yeah
no
hello
hello who is this
who is calling
yes i will be there
i will be there
i'll be there
yes i can make it
i can make it
yes i confirm
i confirm the appointment
that works for me
please cancel my appointment
i want to cancel
cancel it please
i can't make it
i need to reschedule
can we reschedule
can we move it
can we move it to friday
i would like another time
could we do next tuesday afternoon instead
monday morning
tuesday afternoon
wednesday evening
thursday morning
friday afternoon
saturday
next week
stop calling me
don't call me again
do not call me
take me off your list
remove me from your list
you have the wrong number
you've got the wrong number
sorry wrong number
wrong number
there is no one here by that name
can i speak to a person
i want to talk to a representative
i would like to talk to a representative
i'd like to talk to a representative
i would like to talk to someone at the clinic
let me talk to the staff
a real person please
sorry what was that
can you repeat that
i don't know
hi you have reached the voicemail of
hi you've reached
you've reached
please leave a message after the tone
i am not available right now
leave your name and number and i will call you back
the mailbox is full
press one to continue
"""

LM_DISCOUNT = 0.2  # little mass for unseen word sequences: stay close to the phrases
LM_WEIGHT = 10.0  # pocketsphinx's -lw: trust the language model over the acoustics


@functools.cache
def phrase_lm() -> str:
    """The callee phrases' language model (ARPA text), computed once per process: seconds
    of CPU that must not fall on a call's event loop (the worker computes it at start)."""
    from pocketsphinx.lm import ArpaBoLM

    model = ArpaBoLM(text=CALLEE_PHRASES, add_start=True, case="lower", discount_mass=LM_DISCOUNT)
    model.compute()
    out = io.StringIO()
    model.write(out)
    return out.getvalue()


def pcm16k(frames: list[rtc.AudioFrame]) -> bytes:
    """Frames of any rate and channel count as 16 kHz mono 16-bit PCM."""
    if not frames:
        return b""
    frame = rtc.combine_audio_frames(frames)
    if frame.num_channels > 1:
        n = frame.num_channels
        samples = array("h", bytes(frame.data.cast("B")))
        channels = [samples[c::n] for c in range(n)]
        mono = array("h", (sum(s) // n for s in zip(*channels, strict=True)))
        frame = rtc.AudioFrame(mono.tobytes(), frame.sample_rate, 1, len(mono))
    if frame.sample_rate == STT_SAMPLE_RATE:
        return bytes(frame.data.cast("B"))
    resampler = rtc.AudioResampler(frame.sample_rate, STT_SAMPLE_RATE, num_channels=1)
    out = [*resampler.push(frame), *resampler.flush()]
    return b"".join(bytes(f.data.cast("B")) for f in out)


class PocketsphinxSTT(stt.STT[None]):
    """Non-streaming recognition of one utterance with pocketsphinx (model in its wheel),
    constrained to :data:`CALLEE_PHRASES`; wrap it with a VAD for a session."""

    def __init__(self) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self._decoder: Decoder | None = None
        self._lock = asyncio.Lock()

    @property
    def model(self) -> str:
        return "pocketsphinx/en-us-callee-phrases"

    @property
    def provider(self) -> str:
        return "pocketsphinx"

    def _load(self) -> Decoder:
        """The decoder, built on first use in the thread that transcribes (never on the loop)."""
        if self._decoder is None:
            from pocketsphinx import Decoder

            with tempfile.TemporaryDirectory() as tmp:
                lm = Path(tmp) / "callee.arpa"
                lm.write_text(phrase_lm(), encoding="utf-8")
                self._decoder = Decoder(
                    samprate=STT_SAMPLE_RATE, lm=str(lm), lw=LM_WEIGHT, loglevel="FATAL"
                )
        return self._decoder

    def transcribe(self, pcm: bytes) -> str:
        """The words heard in 16 kHz mono 16-bit ``pcm`` (blocking)."""
        pad = b"\0\0" * int(STT_SAMPLE_RATE * STT_PADDING_SECONDS)
        decoder = self._load()
        decoder.start_utt()
        decoder.process_raw(pad + pcm + pad, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp is not None else ""

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frames = buffer if isinstance(buffer, list) else [buffer]
        pcm = pcm16k(frames)
        async with self._lock:  # one decoder, one utterance at a time
            text = await asyncio.to_thread(self.transcribe, pcm)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[
                stt.SpeechData(
                    language=LanguageCode("en"), text=text, confidence=1.0 if text else 0
                )
            ],
        )


# --- the rule-based model ---------------------------------------------------------------

CLARIFY = "Sorry, could you say that again?"
ASK_IDENTITY = "Sorry, am I speaking with the patient?"
ASK_AGAIN = "Can you make the appointment?"

# In order: the first rule whose keyword is in the line wins.
TOOL_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("opt_out", ("stop", "don't call", "do not call", "take me off", "your list", "remove me")),
    ("wrong_number", ("wrong number", "no one here", "nobody here", "by that name")),
    (
        "transfer_to_staff",
        (
            "person",
            "staff",
            "representative",
            "talk to a",
            "talk to someone",
            "speak to",
            "front desk",
        ),
    ),
    (
        "request_reschedule",
        ("reschedule", "another time", "another day", "move it", "different time"),
    ),
    ("cancel_appointment", ("cancel", "can't make it", "cannot make it")),
    ("confirm_appointment", ("be there", "confirm", "can make it", "works for me")),
    (
        "request_reschedule",
        (
            "instead",
            "next week",
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
            "morning",
            "afternoon",
            "evening",
        ),
    ),
    ("identity_confirmed", ("speaking", "this is", "it's me", "it is me")),
)
YES = ("yes", "yeah", "yep")


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower().replace("\u2019", "'")).split())


def choose_tool(text: str, *, identified: bool = False) -> str | None:
    """The confirmation agent's tool for a callee line, or None (ask again). A bare "yes"
    answers the opening (who is speaking) until the patient said who they are."""
    line = _words(text)
    padded = f" {line} "
    for tool, keywords in TOOL_RULES:
        if any(f" {k} " in padded for k in keywords):
            return tool
    if any(f" {y} " in padded for y in YES):
        return "confirm_appointment" if identified else "identity_confirmed"
    return None


MACHINE_VM = (
    "leave a message",
    "please leave a",
    "after the tone",
    "after the beep",
    "voicemail",
    "reached",
)
MACHINE_UNAVAILABLE = ("mailbox is full", "not been set up", "hasn't been set up")
MACHINE_IVR = ("press", "state your name")
HUMAN_MAX_WORDS = 8


def classify_greeting(transcript: str) -> str:
    """AMD's verdict on a greeting: ``human`` for a short one ("Hello?"), a machine on its
    phrases, ``uncertain`` for a long greeting that names none."""
    line = f" {_words(transcript)} "
    for category, keywords in (
        ("machine-unavailable", MACHINE_UNAVAILABLE),
        ("machine-vm", MACHINE_VM),
        ("machine-ivr", MACHINE_IVR),
    ):
        if any(f" {k} " in line for k in keywords):
            return category
    return "human" if len(line.split()) <= HUMAN_MAX_WORDS else "uncertain"


AMD_TOOL = "save_prediction"  # livekit.agents AMD's classifier asks for its verdict so


class LocalLLM(llm.LLM[None]):
    """A deterministic stand-in for a model: answers the last message by keyword."""

    @property
    def model(self) -> str:
        return "local/rules"

    @property
    def provider(self) -> str:
        return "local"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        tools = tools or []
        entry = reply(chat_ctx, {t.id for t in tools})
        call_id = f"local_{uuid.uuid4().hex[:12]}"
        return ScriptedStream(self, entry, call_id, chat_ctx, tools, conn_options)


def reply(chat_ctx: llm.ChatContext, tools: set[str]) -> dict[str, Any]:
    """The model's answer to ``chat_ctx`` with ``tools``: ``{"say": ...}`` or
    ``{"tool": ..., "args": ...}`` (see :class:`~agent.rehearsal.ScriptedStream`)."""
    items = chat_ctx.items
    last = items[-1] if items else None
    if last is not None and last.type == "function_call_output":
        # A tool answered with advice: follow it in words, never call a tool again.
        return {"say": ASK_IDENTITY if "identity_confirmed" in last.output else ASK_AGAIN}
    if last is None or last.type != "message" or last.role != "user":
        return {"say": CLARIFY}
    text = last.text_content or ""
    if AMD_TOOL in tools:
        return {"tool": AMD_TOOL, "args": {"label": classify_greeting(text)}}
    identified = any(
        item.type == "function_call" and item.name == "identity_confirmed" for item in items
    )
    tool = choose_tool(text, identified=identified)
    if tool is None or tool not in tools:
        return {"say": CLARIFY}
    args = {"preferred_times": text.strip()} if tool == "request_reschedule" else {}
    return {"tool": tool, "args": args}


# --- selection by settings --------------------------------------------------------------


def session_models(settings: Settings, language: str | None = None) -> dict[str, Any]:
    """``AgentSession`` keyword arguments for the configured models: objects for ``local``,
    the model strings otherwise. A local STT comes with Silero's VAD and VAD turn-taking
    (no turn-detector model); ``language`` picks the local TTS voice."""
    models: dict[str, Any] = {
        "llm": LocalLLM() if settings.agent_llm == LOCAL else settings.agent_llm,
        "tts": (
            EspeakTTS(voice=espeak_voice(language))
            if settings.agent_tts == LOCAL
            else settings.agent_tts
        ),
        "stt": settings.agent_stt,
    }
    if settings.agent_stt == LOCAL:
        vad = silero.VAD.load()
        models["vad"] = vad
        models["stt"] = stt.StreamAdapter(stt=PocketsphinxSTT(), vad=vad)
        models["turn_handling"] = {"turn_detection": "vad", "interruption": {"mode": "vad"}}
    return models


def amd_model(settings: Settings) -> llm.LLM[Any] | str | None:
    """The AMD classifier's model: the local rules for ``local``, a model string, or None
    (the session's LLM, the local one when ``CAMPAIGNS_AGENT_LLM=local``)."""
    if settings.agent_amd_llm == LOCAL:
        return LocalLLM()
    return settings.agent_amd_llm
