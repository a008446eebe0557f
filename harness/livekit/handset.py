"""The patients' handsets: the audio side of the sipp phones.

sipp carries the SIP dialog; each answered call's SDP points the SIP bridge at
one of these RTP endpoints (a pool of loopback UDP ports handed to sipp as an
injection file, one per call in turn). A handset records everything it hears
(G.711 mu-law, as 8 kHz WAV) and speaks the patient's lines, spoken by
espeak-ng: the first as soon as the call is answered, each next one once the
agent has spoken and then fallen silent, as a person takes turns. What a
patient says comes from the simulator's personas (``simulator.personas``), so
a callee says the same thing to the simulator's agent and to the real one.

sipp appends ``<port> <dialled number>`` to ``calls.log`` as it answers and
``<port> bye`` when the caller hangs up; a handset reads it to know whose
phone it is and when the call is over.
"""

from __future__ import annotations

import asyncio
import random
import struct
import subprocess
import threading
import time
import wave
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from harness.processes import program
from simulator.personas import PERSONAS
from simulator.scenario import DEFAULT_SUFFIXES as BEHAVIOURS

FRAME = 160  # samples per 20 ms at 8 kHz
SPEECH_LEVEL = 300  # mean |sample| of a 20 ms frame that counts as speech
TURN_SILENCE = 1.5  # seconds of quiet after the agent spoke before the patient answers
REPEAT_AFTER = 8.0  # seconds of the agent's silence after a line before saying it again
MAX_REPEATS = 2
FIRST_LINE_DELAY = 0.6  # seconds after the answer before "Hello?"
HUNG_UP = "bye"  # what sipp logs for a port when the caller hangs up
VOICEMAIL_GREETING = "Hi, you've reached Maria. Please leave a message after the tone."


def patient_lines(behaviour: str) -> list[str]:
    """What the callee of ``behaviour`` says, in order; a machine's greeting for voicemail."""
    if behaviour == "voicemail":
        return [VOICEMAIL_GREETING]
    persona = PERSONAS.get(behaviour)
    return ["Hello?", *(turn.callee for turn in persona.turns)] if persona else ["Hello?"]


def _ulaw_table() -> list[int]:
    table = []
    for byte in range(256):
        u = ~byte & 0xFF
        magnitude = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
        table.append(0x84 - magnitude if u & 0x80 else magnitude - 0x84)
    return table


ULAW_TO_PCM = _ulaw_table()


def spoken_ulaw(text: str, workdir: Path) -> bytes:
    """``text`` spoken by espeak-ng as raw 8 kHz mu-law."""
    wav = workdir / f"line-{abs(hash(text))}.wav"
    raw = wav.with_suffix(".ul")
    if not raw.exists():
        subprocess.run(
            [program("espeak-ng", "espeak-ng"), "-w", str(wav), text],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [program("sox", "sox"), str(wav), "-r", "8000", "-c", "1", "-t", "ul", str(raw)],
            check=True,
            capture_output=True,
        )
    return raw.read_bytes()


def beep_ulaw() -> bytes:
    """Half a second of the 1 kHz tone that ends a voicemail greeting."""
    import math

    pcm = [int(8000 * math.sin(2 * math.pi * 1000 * n / 8000)) for n in range(4000)]
    return bytes(_encode_ulaw(sample) for sample in pcm)


def _encode_ulaw(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


@dataclass
class HeardCall:
    """One answered call as its handset lived it."""

    port: int
    number: str
    behaviour: str
    answered_at: float  # time.time() of the first RTP packet from the bridge
    recording: Path
    first_speech_at: float | None = None  # the agent's first audible frame
    lines: list[tuple[str, float]] = field(default_factory=list)  # (text, when it started)
    ended_at: float | None = None
    samples: array[int] = field(default_factory=lambda: array("h"), repr=False)

    @property
    def heard_seconds(self) -> float:
        """Seconds of speech the handset heard (frames over the speech level)."""
        frames = [
            self.samples[i : i + FRAME] for i in range(0, len(self.samples) - FRAME + 1, FRAME)
        ]
        loud = sum(1 for f in frames if sum(abs(s) for s in f) / FRAME > SPEECH_LEVEL)
        return loud * FRAME / 8000


class _Line(asyncio.DatagramProtocol):
    """One RTP endpoint: answers whichever call sipp sends to its port."""

    def __init__(self, handset: Handset, port: int) -> None:
        self.handset = handset
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        self.call: HeardCall | None = None
        self.peer: tuple[str, int] | None = None
        self.quiet_since = 0.0
        self.agent_spoke = False
        self.sender: asyncio.Task[None] | None = None
        self.serial = 0  # calls sipp answered on this port so far

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[1] & 0x7F != 0:  # PCMU only (telephone-event ignored)
            return
        now = time.monotonic()
        answered = self.handset.answered_on(self.port)
        if answered != self.serial:  # sipp answered another call on this port
            self.serial = answered
            self._new_call(addr)
        if self.call is None:  # the call is over; its last packets are late
            return
        self.peer = addr  # the bridge may move its RTP source: answer where it comes from
        header = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10 and len(data) >= header + 4:  # header extension
            header += 4 + 4 * struct.unpack_from("!H", data, header + 2)[0]
        pcm = [ULAW_TO_PCM[b] for b in data[header:]]
        self.call.samples.extend(pcm)
        loud = pcm and sum(abs(s) for s in pcm) / len(pcm) > SPEECH_LEVEL
        if loud:
            if self.call.first_speech_at is None:
                self.call.first_speech_at = time.time()
            self.agent_spoke = True
            self.quiet_since = 0.0
        elif not self.quiet_since:
            self.quiet_since = now

    def _new_call(self, addr: tuple[str, int]) -> None:
        self._finish()
        number = self.handset.number_on(self.port)
        behaviour = BEHAVIOURS.get(number[-2:], "confirmed")
        n = len(self.handset.calls)
        self.call = HeardCall(
            self.port, number, behaviour, time.time(), self.handset.workdir / f"heard-{n}.wav"
        )
        self.handset.calls.append(self.call)
        self.peer = addr
        self.agent_spoke = False
        self.quiet_since = time.monotonic()
        self.sender = asyncio.ensure_future(self._speak(self.call, patient_lines(behaviour)))

    async def _speak(self, call: HeardCall, lines: list[str]) -> None:
        """Send a 20 ms frame every 20 ms: the patient's lines in turn, else silence."""
        assert self.transport is not None and self.peer is not None
        ssrc = random.getrandbits(32)
        seq, stamp = random.getrandbits(16), random.getrandbits(32)
        pending = [(text, self.handset.voice(text)) for text in lines]
        if call.behaviour == "voicemail":
            text, audio = pending[0]
            pending[0] = (text, audio + beep_ulaw())
        speaking = b""
        said: tuple[str, bytes] | None = None
        said_at, repeats = 0.0, 0
        started = next_at = time.monotonic()
        while self.handset.hung_up_on(self.port) < self.serial:
            now = time.monotonic()
            repeat = (
                not speaking
                and said is not None
                and not self.agent_spoke
                and now - said_at > REPEAT_AFTER
                and repeats < MAX_REPEATS
            )
            if repeat and said is not None:  # no answer: say it again, as a person would
                pending.insert(0, said)
                repeats += 1
            if not speaking and pending and (repeat or self._my_turn(call, now, started)):
                if self.agent_spoke:
                    repeats = 0
                said = pending.pop(0)
                text, speaking = said
                call.lines.append((text, time.time()))
                self.agent_spoke = False
                said_at = now + len(speaking) / 8000
            chunk, speaking = speaking[:FRAME], speaking[FRAME:]
            payload = chunk.ljust(FRAME, b"\xff")
            packet = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, stamp & 0xFFFFFFFF, ssrc)
            self.transport.sendto(packet + payload, self.peer)
            seq, stamp = seq + 1, stamp + FRAME
            next_at += FRAME / 8000
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        self._finish()

    def _my_turn(self, call: HeardCall, now: float, started: float) -> bool:
        if not call.lines:
            return now - started >= FIRST_LINE_DELAY
        quiet = self.quiet_since and now - self.quiet_since >= TURN_SILENCE
        return bool(self.agent_spoke and quiet)

    def _finish(self) -> None:
        call, self.call = self.call, None
        if call is None or call.ended_at is not None:
            return
        call.ended_at = time.time()
        with wave.open(str(call.recording), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(call.samples.tobytes())


class Handset:
    """A pool of RTP endpoints on loopback, run on their own event loop thread."""

    def __init__(self, workdir: Path, size: int) -> None:
        self.workdir = workdir
        self.size = size
        self.calls: list[HeardCall] = []
        self.calls_log = workdir / "calls.log"
        self.ports: list[int] = []
        self._transports: list[asyncio.DatagramTransport] = []
        self._voices: dict[str, bytes] = {}
        self._log_size = 0
        self._log_rows: list[list[str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="handsets", daemon=True)

    def voice(self, text: str) -> bytes:
        if text not in self._voices:
            self._voices[text] = spoken_ulaw(text, self.workdir)
        return self._voices[text]

    def _entries(self, port: int) -> list[str]:
        """What sipp logged for ``port`` (numbers answered, hang-ups), re-read as it grows."""
        size = self.calls_log.stat().st_size if self.calls_log.exists() else 0
        if size != self._log_size:
            self._log_size = size
            self._log_rows = [line.split() for line in self.calls_log.read_text().splitlines()]
        return [row[1] for row in self._log_rows if len(row) >= 2 and row[0] == str(port)]

    def answered_on(self, port: int) -> int:
        return len([n for n in self._entries(port) if n != HUNG_UP])

    def hung_up_on(self, port: int) -> int:
        return self._entries(port).count(HUNG_UP)

    def number_on(self, port: int) -> str:
        """The number sipp answered last on ``port``."""
        answered = [n for n in self._entries(port) if n != HUNG_UP]
        return answered[-1] if answered else ""

    def start(self) -> None:
        for behaviour in {*BEHAVIOURS.values()}:
            for text in patient_lines(behaviour):
                self.voice(text)  # synthesised before any call waits on it
        self._thread.start()

        async def open_all() -> list[asyncio.DatagramTransport]:
            transports = []
            for _ in range(self.size):
                transport, line = await self._loop.create_datagram_endpoint(
                    lambda: _Line(self, 0), local_addr=("127.0.0.1", 0)
                )
                line.port = transport.get_extra_info("sockname")[1]
                transports.append(transport)
            return transports

        self._transports = asyncio.run_coroutine_threadsafe(open_all(), self._loop).result(30)
        self.ports = [t.get_extra_info("sockname")[1] for t in self._transports]

    def stop(self) -> None:
        async def close_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for transport in self._transports:
                transport.close()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def heard(self, number: str) -> list[HeardCall]:
        return [c for c in self.calls if c.number == number]


@contextmanager
def running_handsets(workdir: Path, size: int = 64) -> Iterator[Handset]:
    workdir.mkdir(parents=True, exist_ok=True)
    handset = Handset(workdir, size)
    handset.start()
    try:
        yield handset
    finally:
        handset.stop()
