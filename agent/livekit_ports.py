"""LiveKit adapters of the agent's ports, for the worker.

:class:`LiveKitCall` acts on the call's room through the server API
(``DeleteRoom``, ``TransferSIPParticipant``), so the same code runs against
LiveKit Cloud and against the project's simulator. :class:`AmdScreener` is the
framework's answering-machine detection (``livekit.agents.AMD``).
"""

from __future__ import annotations

from collections.abc import Callable

from livekit import api, rtc
from livekit.agents import AMD, AgentSession
from livekit.agents.utils.participant import (
    wait_for_participant,
    wait_for_participant_attribute,
)

SIP_CALL_STATUS = "sip.callStatus"


class LiveKitCall:
    def __init__(
        self,
        lkapi: api.LiveKitAPI,
        room_name: str,
        participant_identity: str,
        *,
        room: rtc.Room | None = None,
        shutdown: Callable[[], None] = lambda: None,
    ) -> None:
        self._api = lkapi
        self._room_name = room_name
        self._identity = participant_identity
        self._room = room
        self._shutdown = shutdown
        self._hung_up = False

    async def wait_until_answered(self) -> None:
        if self._room is not None:
            await wait_for_participant(self._room, identity=self._identity)
            await wait_for_participant_attribute(
                self._room, identity=self._identity, attribute=SIP_CALL_STATUS, value="active"
            )

    async def hang_up(self) -> None:
        if self._hung_up:
            return
        self._hung_up = True
        try:
            await self._api.room.delete_room(api.DeleteRoomRequest(room=self._room_name))
        except api.TwirpError as exc:
            if exc.code != api.TwirpErrorCode.NOT_FOUND:  # already gone: the call is over
                raise

    async def transfer(self, to: str) -> None:
        response = await self._api.sip.transfer_sip_participant(
            api.TransferSIPParticipantRequest(
                room_name=self._room_name,
                participant_identity=self._identity,
                transfer_to=f"tel:{to}",
            )
        )
        if response.status == api.SIPTransferStatus.STS_TRANSFER_FAILED:
            raise RuntimeError(f"transfer failed (reason {response.reason})")

    async def leave(self) -> None:
        self._shutdown()


class AmdScreener:
    """The framework's AMD, listening to the callee only, with the deployment's models."""

    def __init__(
        self, session: AgentSession[None], participant_identity: str, llm: str | None
    ) -> None:
        self._session = session
        self._identity = participant_identity
        self._llm = llm

    async def screen(self) -> str:
        async with AMD(
            self._session,
            llm=self._llm,
            participant_identity=self._identity,
            ivr_detection=False,
            suppress_compatibility_warning=True,
        ) as detector:
            verdict = await detector.execute()
        return verdict.category.value
