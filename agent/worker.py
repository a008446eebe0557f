"""The LiveKit worker: explicit dispatch by ``CAMPAIGNS_AGENT_NAME``, one job per call.

``campaigns agent start|dev|console`` runs :func:`run`, which hands the command
to the framework's own CLI. Models are configuration (``CAMPAIGNS_AGENT_LLM``,
``CAMPAIGNS_AGENT_STT``, ``CAMPAIGNS_AGENT_TTS``, ``CAMPAIGNS_AGENT_AMD_LLM``): LiveKit
Inference model strings by default, so nothing is downloaded at run time, or ``local`` for the
models of :mod:`agent.local_models` (no cloud, no key).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from livekit.agents import AgentServer, AgentSession, JobContext, JobExecutorType, cli

from agent.confirmer import ConfirmationAgent
from agent.livekit_ports import AmdScreener, LiveKitCall
from agent.local_models import LOCAL, amd_model, phrase_lm, session_models
from agent.metadata import MetadataError, parse_metadata
from agent.reporting import CeleryReporter, HttpReporter, reporter_from_settings
from campaigns.errors import InvalidInputError
from campaigns.settings import get_settings

log = logging.getLogger("agent")

settings = get_settings()
if settings.agent_stt == LOCAL:
    phrase_lm()  # once, before any call: each call's recognizer loads it


# livekit-server offers a job only to workers whose load is under its agents.target_load
# (0.7 by default) and drops a dispatch none of them takes: a worker's load reaches it
# exactly at its call limit.
LIVEKIT_TARGET_LOAD = 0.7


def _calls_in_progress(worker: AgentServer) -> float:
    """The worker's load: the share of ``CAMPAIGNS_AGENT_MAX_CALLS`` it carries, scaled so
    that the server's target load is the limit."""
    assert settings.agent_max_calls is not None
    return LIVEKIT_TARGET_LOAD * min(1.0, len(worker.active_jobs) / settings.agent_max_calls)


_capacity: dict[str, Any] = {}
if settings.agent_max_calls is not None:
    # The framework counts each call it is starting as threshold / idle runners, so as many
    # runners as calls are kept warm: a burst of dispatches is accepted, not refused.
    _capacity = {
        "load_fnc": _calls_in_progress,
        "load_threshold": LIVEKIT_TARGET_LOAD,
        "num_idle_processes": settings.agent_max_calls,
    }
server = AgentServer(
    port=settings.agent_http_port,
    job_executor_type=JobExecutorType(settings.agent_job_executor),
    **_capacity,
)


@server.rtc_session(agent_name=settings.agent_name)
async def entrypoint(ctx: JobContext) -> None:
    reporter = reporter_from_settings(settings)
    ctx.add_shutdown_callback(lambda: _close(reporter))
    try:
        meta = parse_metadata(ctx.job.metadata)
    except MetadataError as exc:
        await _refuse(ctx, reporter, exc)
        return
    session: AgentSession[None] = AgentSession(**session_models(settings, meta.language))
    call = LiveKitCall(
        ctx.api, ctx.room.name, meta.participant_identity, room=ctx.room, shutdown=ctx.shutdown
    )
    agent = ConfirmationAgent(
        meta,
        reporter=reporter,
        call=call,
        screener=AmdScreener(session, meta.participant_identity, amd_model(settings)),
        amd_timeout=settings.agent_amd_timeout_seconds,
    )
    await session.start(agent=agent, room=ctx.room)
    try:
        await agent.begin()
    except RuntimeError as exc:
        # The dial failed or the callee left before answering: the engine records that.
        log.info("room %s: call not answered (%s); ending the job", ctx.room.name, exc)
        ctx.shutdown("call not answered")


async def _refuse(
    ctx: JobContext, reporter: CeleryReporter | HttpReporter, exc: MetadataError
) -> None:
    """End a job whose metadata is unusable; report ``failed`` when it says which attempt."""
    log.error("room %s: %s; ending the job", ctx.room.name, exc)
    refused = exc.failure_report()
    if refused is not None:
        await reporter(refused)
    ctx.shutdown("unusable job metadata")


async def _close(reporter: CeleryReporter | HttpReporter) -> None:
    if isinstance(reporter, HttpReporter):
        await reporter.aclose()
    else:
        reporter.close()


def run(command: str, args: list[str]) -> None:
    """Run the framework's CLI (``start``, ``dev``, ``console``) on this worker."""
    if command != "console" and "--help" not in args and not os.environ.get("LIVEKIT_URL"):
        raise InvalidInputError(
            "the agent worker connects to LiveKit: set LIVEKIT_URL, LIVEKIT_API_KEY and "
            "LIVEKIT_API_SECRET (see README, Run the agent against LiveKit Cloud)"
        )
    sys.argv = ["campaigns agent", command, *args]
    cli.run_app(server)
