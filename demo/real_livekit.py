"""The demo's telephony when it runs through the real LiveKit (``campaigns demo --livekit local``).

livekit-server and the LiveKit SIP bridge on loopback (``harness.livekit``,
built once by ``make livekit``), sipp answering as the patients with handsets
that speak and listen, an outbound trunk pointing at them, and the
confirmation agent registered as a worker with the local models (espeak-ng,
pocketsphinx, the rule-based LLM): no cloud, no key, no download.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from campaigns.telephony.livekit_gateway import LiveKitTelephony
from campaigns.telephony.port import TrunkSpec
from harness.livekit.phones import Phones, running_phones
from harness.livekit.stack import LiveKitStack, running_stack
from harness.processes import ProcessGroup, wait_until

# Two cores carry two conversations with local models at a conversation's pace; the agent
# keeps headroom over that: livekit-server drops a dispatch that finds every worker full.
CALLS_AT_ONCE = 2
AGENT_NAME = "appointment-confirmer"


@dataclass
class RealLiveKit:
    stack: LiveKitStack
    phones: Phones
    trunk_id: str

    def env(self) -> dict[str, str]:
        """Settings of the engine's and the agent's processes."""
        return self.stack.env() | {
            "CAMPAIGNS_AGENT_NAME": AGENT_NAME,
            "CAMPAIGNS_AGENT_LLM": "local",
            "CAMPAIGNS_AGENT_STT": "local",
            "CAMPAIGNS_AGENT_TTS": "local",
            "CAMPAIGNS_AGENT_MAX_CALLS": str(2 * CALLS_AT_ONCE),
            "CAMPAIGNS_AGENT_HTTP_PORT": "0",
        }


def _trunk(stack: LiveKitStack, phones: Phones, caller_id: str) -> str:
    async def create() -> str:
        async with LiveKitTelephony(stack.url, stack.api_key, stack.api_secret) as tel:
            return await tel.create_outbound_trunk(
                TrunkSpec(
                    name="patients' phones (sipp)", address=phones.address, numbers=(caller_id,)
                )
            )

    return asyncio.run(create())


@contextmanager
def real_livekit(workdir: Path, *, console_port: int, caller_id: str) -> Iterator[RealLiveKit]:
    """The stack, the phones and a trunk to them; LiveKit's webhooks go to the console."""
    webhook = f"http://127.0.0.1:{console_port}/livekit/webhook"
    with (
        running_stack(workdir / "livekit", webhook_urls=[webhook]) as stack,
        running_phones(workdir / "phones") as phones,
    ):
        yield RealLiveKit(stack, phones, _trunk(stack, phones, caller_id))


def start_agent(group: ProcessGroup) -> None:
    """``campaigns agent start`` in ``group``, returning once it registered with LiveKit."""
    agent = group.start("agent", "agent", "start")
    wait_until(
        lambda: (
            "registered worker" in agent.log.read_text(errors="replace")
            or agent.popen.poll() is not None
        ),
        timeout=60,
        what="the agent worker to register with livekit-server",
    )
    if agent.popen.poll() is not None:
        raise RuntimeError("the agent worker exited (see agent.log)")
