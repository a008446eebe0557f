"""LiveKit adapters of the agent's ports, for the worker.

:class:`LiveKitCall` acts on the call's room through the server API
(``DeleteRoom``, ``TransferSIPParticipant``), so the same code runs against
LiveKit Cloud and against the project's simulator. :class:`AmdScreener` is the
framework's answering-machine detection (``livekit.agents.AMD``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from livekit import api, rtc
from livekit.agents import AMD, AgentSession
from livekit.agents.llm import LLM
from livekit.agents.utils.participant import (
    wait_for_participant,
    wait_for_participant_attribute,
)

SIP_CALL_STATUS = "sip.callStatus"


@dataclass(eq=False)
class LiveKitCall:
    """The call the agent is on, acted on through the server API; ``room``, once the
    agent is in it, tells when the callee answered, and ``shutdown`` ends the job."""

    lkapi: api.LiveKitAPI
    room_name: str
    identity: str
    _: KW_ONLY
    room: rtc.Room | None = None
    shutdown: Callable[[], None] = lambda: None
    _hung_up: bool = field(default=False, init=False)

    async def wait_until_answered(self) -> None:
        if self.room is not None:
            await wait_for_participant(self.room, identity=self.identity)
            await wait_for_participant_attribute(
                self.room, identity=self.identity, attribute=SIP_CALL_STATUS, value="active"
            )

    async def hang_up(self) -> None:
        if self._hung_up:
            return
        self._hung_up = True
        try:
            await self.lkapi.room.delete_room(api.DeleteRoomRequest(room=self.room_name))
        except api.TwirpError as exc:
            if exc.code != api.TwirpErrorCode.NOT_FOUND:  # already gone: the call is over
                raise

    async def transfer(self, to: str) -> None:
        response = await self.lkapi.sip.transfer_sip_participant(
            api.TransferSIPParticipantRequest(
                room_name=self.room_name,
                participant_identity=self.identity,
                transfer_to=f"tel:{to}",
            )
        )
        if response.status == api.SIPTransferStatus.STS_TRANSFER_FAILED:
            raise RuntimeError(f"transfer failed (reason {response.reason})")

    async def leave(self) -> None:
        self.shutdown()


@dataclass(eq=False)
class AmdScreener:
    """The framework's AMD, listening to the callee only, with the deployment's models.

    AMD times the callee's speech (VAD) and has ``llm`` classify the session STT's
    transcript through its ``save_prediction`` tool; ``llm`` is a model string, a model
    (:class:`agent.local_models.LocalLLM` for ``local``), or None for the session's LLM.
    """

    session: AgentSession[None]
    identity: str
    llm: str | LLM[Any] | None

    async def screen(self) -> str:
        async with AMD(
            self.session,
            llm=self.llm,
            participant_identity=self.identity,
            ivr_detection=False,
            suppress_compatibility_warning=True,
        ) as detector:
            verdict = await detector.execute()
        return verdict.category.value
