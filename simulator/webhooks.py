"""LiveKit webhooks as a LiveKit server sends them.

The body is the ``WebhookEvent`` as JSON; ``Authorization`` carries a JWT signed
with the API secret whose ``sha256`` claim is the base64 SHA-256 of the body, so
the receiver (``livekit.api.WebhookReceiver``) can check both sender and body.
"""

from __future__ import annotations

import base64
import hashlib
import logging

import aiohttp
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit.api.access_token import AccessToken

logger = logging.getLogger("simulator")


def sign_webhook(event: Message, api_key: str, api_secret: str) -> tuple[bytes, str]:
    """The body and the ``Authorization`` value LiveKit sends for ``event``."""
    body = json_format.MessageToJson(event).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return body, AccessToken(api_key, api_secret).with_sha256(digest).to_jwt()


async def post_webhook(url: str, event: Message, api_key: str, api_secret: str) -> None:
    """Deliver one event; a refusal or a failure is logged, never raised."""
    body, token = sign_webhook(event, api_key, api_secret)
    headers = {"Authorization": token, "Content-Type": "application/webhook+json"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client,
            client.post(url, data=body, headers=headers) as response,
        ):
            if response.status >= 300:
                logger.warning("webhook %s refused: HTTP %s", url, response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("webhook %s failed: %s", url, exc)
