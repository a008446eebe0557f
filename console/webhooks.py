"""``POST /livekit/webhook``: LiveKit tells us a call's room finished or its SIP
participant left.

The body is verified with ``livekit-api``'s :class:`WebhookReceiver` (a JWT
signed with the API secret in ``Authorization``, carrying the body's SHA-256);
anything unsigned or altered is 401 and changes nothing. Every verified event
is audited.

When the room of an answered attempt finishes (LiveKit closes it once the
callee and the agent have left, after its departure timeout) and no report has
arrived, the attempt is settled at once instead of after the grace period. The
callee's SIP participant leaving is recorded but settles nothing by itself:
the agent reports just before it hangs up, and a report queued on the broker
may still be on its way when that webhook arrives.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from livekit.api import TokenVerifier, WebhookReceiver
from livekit.protocol.webhook import WebhookEvent
from starlette.concurrency import run_in_threadpool

from campaigns import audit
from campaigns.attempts.pipeline import Pipeline
from campaigns.db import session_scope
from console.deps import PipelineDep

log = logging.getLogger(__name__)
router = APIRouter()

ACTOR = "livekit"


@router.post("/livekit/webhook", include_in_schema=False)
async def livekit_webhook(request: Request, pipeline: PipelineDep) -> dict[str, Any]:
    settings = pipeline.settings
    receiver = WebhookReceiver(
        TokenVerifier(settings.livekit_api_key, settings.livekit_api_secret.get_secret_value())
    )
    body = (await request.body()).decode("utf-8", errors="replace")
    auth = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    try:
        event = receiver.receive(body, auth)
    except Exception as exc:  # the receiver raises bare Exceptions for every kind of forgery
        log.warning("refused a LiveKit webhook: %s", type(exc).__name__)
        raise HTTPException(401, "webhook signature does not verify") from exc
    return await run_in_threadpool(_settle, pipeline, event)


def _settle(pipeline: Pipeline, event: WebhookEvent) -> dict[str, Any]:
    room = event.room.name
    action = pipeline.call_ended(room) if event.event == "room_finished" and room else None
    with session_scope(pipeline.sessions) as session:
        audit.record(
            session,
            "livekit.webhook",
            {
                "event": event.event,
                "id": event.id,
                "room": room,
                "participant": event.participant.identity or None,
                "action": action,
            },
            actor=ACTOR,
        )
    return {"event": event.event, "action": action}
