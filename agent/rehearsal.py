"""The real agent, offline: a scripted LLM, scripted callee lines, an in-process call.

``rehearse(metadata, script)`` runs :class:`~agent.confirmer.ConfirmationAgent`
(its opening, tools, close step, hang-up and reporter) in an ``AgentSession`` with
no room, no server and no API key. The script (JSON)::

    {"turns": [{"callee": "Yes, speaking.",
                "llm": [{"tool": "identity_confirmed"}]},
               {"callee": "Yes, I'll be there.",
                "llm": [{"tool": "confirm_appointment", "args": {}}]}],
     "amd": "human"}

Each turn's callee line goes to the session (``AgentSession.run``); each model
call in that turn takes the next ``llm`` entry (say a line, or call a tool); past
the entries, or where ``llm`` is left out, the model says :data:`DEFAULT_LINE`.
``amd`` is the answering-machine verdict (``human``, ``machine-vm``, ``uncertain``;
default ``human``). Turns after the call ended are not played.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livekit.agents import AgentSession, APIConnectOptions, llm
from livekit.agents.llm import ChatChunk, ChoiceDelta, FunctionToolCall
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

from agent.confirmer import ConfirmationAgent
from agent.metadata import CallMetadata
from agent.ports import Report, Reporter

DEFAULT_LINE = "I see."
AMD_VERDICTS = ("human", "machine-vm", "uncertain")


class ScriptError(ValueError):
    """A rehearsal script that cannot be used."""


@dataclass(frozen=True)
class Turn:
    callee: str
    llm: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Script:
    turns: tuple[Turn, ...]
    amd: str = "human"

    @classmethod
    def from_dict(cls, data: Any) -> Script:
        if not isinstance(data, dict):
            raise ScriptError("a script is a JSON object with 'turns'")
        unknown = set(data) - {"turns", "amd"}
        if unknown:
            raise ScriptError(f"unknown script keys: {sorted(unknown)}")
        amd = data.get("amd", "human")
        if amd not in AMD_VERDICTS:
            raise ScriptError(f"amd must be one of {', '.join(AMD_VERDICTS)}")
        turns = data.get("turns", [])
        if not isinstance(turns, list):
            raise ScriptError("turns must be a list")
        return cls(tuple(_turn(i, t) for i, t in enumerate(turns, 1)), amd)

    @classmethod
    def load(cls, path: str | Path) -> Script:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ScriptError(f"cannot read script {path}: {exc}") from None
        return cls.from_dict(data)


def _turn(number: int, data: Any) -> Turn:
    where = f"turn {number}"
    if not isinstance(data, dict) or not isinstance(data.get("callee"), str):
        raise ScriptError(f"{where}: needs a 'callee' line")
    unknown = set(data) - {"callee", "llm"}
    if unknown:
        raise ScriptError(f"{where}: unknown keys {sorted(unknown)}")
    entries = data.get("llm", [])
    if not isinstance(entries, list):
        raise ScriptError(f"{where}: llm must be a list")
    for entry in entries:
        if not isinstance(entry, dict):
            raise ScriptError(f"{where}: an llm entry is {{'say': text}} or {{'tool': name}}")
        if set(entry) == {"say"} and isinstance(entry["say"], str):
            continue
        if (
            "tool" in entry
            and set(entry) <= {"tool", "args"}
            and isinstance(entry["tool"], str)
            and isinstance(entry.get("args", {}), dict)
        ):
            continue
        raise ScriptError(f"{where}: an llm entry is {{'say': text}} or {{'tool': name, 'args'}}")
    return Turn(data["callee"], tuple(entries))


# --- the scripted model -------------------------------------------------------------


class ScriptedLLM(llm.LLM[None]):
    """Answers each model call with the next scripted entry (say a line or call a tool)."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: list[dict[str, Any]] = []
        self._calls = 0

    def script(self, entries: Sequence[dict[str, Any]]) -> None:
        self._queue = list(entries)

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
        entry = self._queue.pop(0) if self._queue else {"say": DEFAULT_LINE}
        self._calls += 1
        return ScriptedStream(
            self, entry, f"call_{self._calls}", chat_ctx, tools or [], conn_options
        )


class ScriptedStream(llm.LLMStream):
    """One model reply: ``{"say": text}`` or ``{"tool": name, "args": {...}}`` (also used by
    :class:`agent.local_models.LocalLLM`)."""

    def __init__(
        self,
        model: llm.LLM[Any],
        entry: dict[str, Any],
        call_id: str,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(model, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._entry = entry
        self._call_id = call_id

    async def _run(self) -> None:
        if "say" in self._entry:
            delta = ChoiceDelta(role="assistant", content=self._entry["say"])
        else:
            call = FunctionToolCall(
                name=self._entry["tool"],
                arguments=json.dumps(self._entry.get("args", {})),
                call_id=self._call_id,
            )
            delta = ChoiceDelta(role="assistant", tool_calls=[call])
        self._event_ch.send_nowait(ChatChunk(id=self._call_id, delta=delta))


# --- the in-process call --------------------------------------------------------------


@dataclass
class RehearsalCall:
    """Call control and screener of a rehearsed call: records what the agent did."""

    amd: str = "human"
    hang_ups: int = 0
    transferred_to: str | None = None
    left: bool = False

    @property
    def over(self) -> bool:
        return self.hang_ups > 0 or self.left

    async def wait_until_answered(self) -> None:
        return None

    async def hang_up(self) -> None:
        self.hang_ups += 1

    async def transfer(self, to: str) -> None:
        self.transferred_to = to

    async def leave(self) -> None:
        self.left = True

    async def screen(self) -> str:
        return self.amd


@dataclass
class Rehearsal:
    transcript: list[dict[str, str]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    hung_up: bool = False
    transferred_to: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "transcript": self.transcript,
            "tool_calls": self.tool_calls,
            "reports": [
                {
                    "attempt_id": r.attempt_id,
                    "outcome": r.outcome,
                    "token": r.token,
                    "detail": r.detail,
                }
                for r in self.reports
            ],
            "hung_up": self.hung_up,
            "transferred_to": self.transferred_to,
        }


class _Recorder:
    def __init__(self, forward: Reporter | None) -> None:
        self.reports: list[Report] = []
        self._forward = forward

    async def __call__(self, report: Report) -> None:
        self.reports.append(report)
        if self._forward is not None:
            await self._forward(report)


async def rehearse(
    meta: CallMetadata,
    script: Script,
    *,
    reporter: Reporter | None = None,
    call: RehearsalCall | None = None,
    amd_timeout: float = 5.0,
) -> Rehearsal:
    """Play ``script`` against the real agent; ``reporter`` also receives each report."""
    call = call or RehearsalCall(amd=script.amd)
    recorder = _Recorder(reporter)
    model = ScriptedLLM()
    agent = ConfirmationAgent(
        meta, reporter=recorder, call=call, screener=call, amd_timeout=amd_timeout
    )
    # Text in, text out: no audio, so no turn-detector model and its background stream.
    async with AgentSession(llm=model, turn_handling={"turn_detection": "manual"}) as session:
        await session.start(agent)
        await agent.begin()
        for turn in script.turns:
            if call.over or agent.outcome is not None:
                break
            model.script(turn.llm)
            await session.run(user_input=turn.callee)
        await agent.ended()
        history = session.history.items
    result = Rehearsal(
        reports=recorder.reports, hung_up=call.hang_ups > 0, transferred_to=call.transferred_to
    )
    for item in history:
        if item.type == "message" and item.role in ("assistant", "user") and item.text_content:
            role = "agent" if item.role == "assistant" else "callee"
            result.transcript.append({"role": role, "text": item.text_content})
        elif item.type == "function_call":
            result.tool_calls.append(
                {"name": item.name, "args": json.loads(item.arguments or "{}")}
            )
    return result
