"""The confirmation agent: its opening, its tools, and the one close step.

Every outcome tool goes through :meth:`ConfirmationAgent._close`, which records
the first outcome of the call and refuses every later one ("already recorded",
nothing sent), reports it, then speaks the fixed goodbye and hangs up once.
A transfer reports ``transferred`` only once the transfer succeeded, then leaves
the room to the callee and the staff.

Answering machines: :meth:`begin` asks the :class:`~agent.ports.Screener` (the
framework's AMD in production) for a verdict, bounded by a deterministic
timeout; :func:`amd_action` maps it. The ``detected_answering_machine`` tool is
the fallback when a machine is noticed later in the call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from livekit.agents import Agent, StopResponse, function_tool, llm

from agent import script
from agent.metadata import CallMetadata
from agent.ports import CallControl, Report, Reporter, Screener
from campaigns.attempts.reports import DETAIL_STRING_LIMIT

log = logging.getLogger("agent")

ALREADY_RECORDED = "already recorded"
PREFERRED_TIMES_MAX = DETAIL_STRING_LIMIT  # the engine keeps no more of a detail string

CONVERSE = "converse"
LEAVE_MESSAGE = "leave_message"
HANG_UP = "hang_up"


def amd_action(category: str) -> str:
    """What to do on an AMD verdict: talk to a person (a human, or not sure), leave the
    message on a voicemail box, or hang up on a machine that takes no message (IVR,
    full or unset mailbox)."""
    if category == "machine-vm":
        return LEAVE_MESSAGE
    if category in ("machine-ivr", "machine-unavailable"):
        return HANG_UP
    return CONVERSE


async def screen(screener: Screener, timeout: float) -> str:
    """The screener's verdict, or ``uncertain`` once ``timeout`` seconds have passed."""
    try:
        return await asyncio.wait_for(screener.screen(), timeout)
    except TimeoutError:
        return "uncertain"


class ConfirmationAgent(Agent):
    def __init__(
        self,
        meta: CallMetadata,
        *,
        reporter: Reporter,
        call: CallControl,
        screener: Screener,
        amd_timeout: float,
    ) -> None:
        super().__init__(instructions=script.instructions(meta))
        self.meta = meta
        self._reporter = reporter
        self._call = call
        self._screener = screener
        self._amd_timeout = amd_timeout
        self._outcome: str | None = None
        self._identified = False
        self._opened = False
        self._ending: asyncio.Task[None] | None = None

    @property
    def outcome(self) -> str | None:
        return self._outcome

    async def begin(self) -> None:
        """Wait for the answer, screen for a machine, then open the call (or end it)."""
        await self._call.wait_until_answered()
        category = await screen(self._screener, self._amd_timeout)
        action = amd_action(category)
        if action == CONVERSE:
            self._opened = True
            await self.session.say(script.opening_line(self.meta), allow_interruptions=False)
            return
        message = script.voicemail_message(self.meta) if action == LEAVE_MESSAGE else None
        await self._close("voicemail", {"amd": category}, message)
        await self.ended()

    async def ended(self) -> None:
        """Return once the call's ending (goodbye, hang-up or transfer) is done."""
        if self._ending is not None:
            await asyncio.shield(self._ending)

    async def on_user_turn_completed(
        self, turn_ctx: llm.ChatContext, new_message: llm.ChatMessage
    ) -> None:
        # A "Hello?" heard while screening must not make the model speak before the
        # fixed opening has identified the clinic.
        if not self._opened:
            raise StopResponse

    # -- tools ---------------------------------------------------------------------

    @function_tool
    async def identity_confirmed(self) -> str | None:
        """The callee said they are the patient: reads the appointment to them."""
        if self._outcome is not None:
            return ALREADY_RECORDED
        if self._identified:
            return "the appointment was already read; ask whether they can make it"
        self._identified = True
        self.session.say(script.appointment_details(self.meta))
        return None

    @function_tool
    async def confirm_appointment(self) -> str | None:
        """The patient will come to the appointment."""
        return await self._patient_outcome("confirmed", {})

    @function_tool
    async def cancel_appointment(self) -> str | None:
        """The patient wants the appointment cancelled."""
        return await self._patient_outcome("cancelled", {})

    @function_tool
    async def request_reschedule(self, preferred_times: str) -> str | None:
        """The patient wants another time.

        Args:
            preferred_times: The days and times the patient prefers, in their words.
        """
        times = preferred_times.strip()[:PREFERRED_TIMES_MAX]
        return await self._patient_outcome("reschedule_requested", {"preferred_times": times})

    @function_tool
    async def opt_out(self) -> str | None:
        """The callee asks not to be called again."""
        return await self._close("opted_out", {}, script.GOODBYES["opted_out"])

    @function_tool
    async def wrong_number(self) -> str | None:
        """The patient cannot be reached at this number."""
        return await self._close("wrong_number", {}, script.GOODBYES["wrong_number"])

    @function_tool
    async def detected_answering_machine(self) -> str | None:
        """A voicemail greeting or another machine answered: leaves the clinic's message."""
        return await self._close(
            "voicemail", {"amd": "machine-vm"}, script.voicemail_message(self.meta)
        )

    @function_tool
    async def transfer_to_staff(self) -> str | None:
        """The callee asks to speak with a person at the clinic."""
        if self._outcome is not None:
            return ALREADY_RECORDED
        number = self.meta.transfer_number
        if not number:
            return "no staff line is available; say the clinic will call them back"
        self._outcome = "transferred"
        self._after(self._transfer(number))
        return None

    # -- the close step ------------------------------------------------------------

    async def _patient_outcome(self, outcome: str, detail: dict[str, Any]) -> str | None:
        if self._outcome is None and not self._identified:
            return (
                f"first make sure you are speaking with {self.meta.patient_first_name}, "
                "then call identity_confirmed"
            )
        return await self._close(outcome, detail, script.GOODBYES[outcome])

    async def _close(self, outcome: str, detail: dict[str, Any], spoken: str | None) -> str | None:
        """Record the call's one outcome, report it, then say ``spoken`` and hang up."""
        if self._outcome is not None:
            return ALREADY_RECORDED
        self._outcome = outcome
        await self._report(outcome, detail)
        self._after(self._say_and_hang_up(spoken))
        return None

    async def _report(self, outcome: str, detail: dict[str, Any]) -> None:
        report = Report(
            self.meta.attempt_id,
            outcome,
            self.meta.report_token,
            {**detail, "script_version": self.meta.script_version},
        )
        try:
            await self._reporter(report)
        except Exception as exc:
            # The engine reconciles an answered call that never reported.
            log.error(
                "attempt %s: %s report not delivered: %s",
                self.meta.attempt_id,
                outcome,
                type(exc).__name__,
            )

    def _after(self, ending: Coroutine[Any, Any, None]) -> None:
        """Run the call's ending in the background: a tool cannot wait for speech it queues."""
        self._ending = asyncio.ensure_future(ending)

    async def _say_and_hang_up(self, spoken: str | None) -> None:
        if spoken:
            await self.session.say(spoken, allow_interruptions=False).wait_for_playout()
        await self._call.hang_up()

    async def _transfer(self, number: str) -> None:
        await self.session.say(script.TRANSFER_LINE, allow_interruptions=False).wait_for_playout()
        try:
            await self._call.transfer(number)
        except Exception as exc:
            log.warning("attempt %s: transfer failed: %s", self.meta.attempt_id, type(exc).__name__)
            self._outcome = "failed"
            await self._report("failed", {"reason": "transfer_failed"})
            await self._say_and_hang_up(script.TRANSFER_FAILED)
            return
        await self._report("transferred", {"transferred_to": number})
        await self._call.leave()
