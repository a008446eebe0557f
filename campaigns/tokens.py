"""The token the agent presents with its outcome report, bound to one attempt, its room
and an expiry.

Format ``v2.<expiry>.<mac>``: ``expiry`` is a Unix time in whole seconds, ``mac``
is ``HMAC-SHA256(secret, "clinic-campaigns/report/v2:<attempt id>:<room>:<expiry>")``
in URL-safe base64 without padding. The engine signs it when it dispatches the
agent (it travels in the dispatch metadata; the agent passes it back unchanged)
and checks it, in constant time, against the attempt's own id and room when the
report arrives. A token of another attempt or another room does not match; one
past its expiry (the longest call plus a grace) is refused as expired.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime
from enum import StrEnum

VERSION = "v2"
_CONTEXT = "clinic-campaigns/report/v2:"


class TokenCheck(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"  # authentic, but presented after its expiry
    INVALID = "invalid"  # malformed, forged, or issued for another attempt or room


def _mac(attempt_id: int, room_name: str, expiry: int, secret: str) -> str:
    if not secret:
        raise ValueError("the report secret is empty; set CAMPAIGNS_REPORT_SECRET")
    message = f"{_CONTEXT}{int(attempt_id)}:{room_name}:{expiry}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_report_token(attempt_id: int, room_name: str, expires_at: datetime, secret: str) -> str:
    expiry = int(expires_at.timestamp())
    return f"{VERSION}.{expiry}.{_mac(attempt_id, room_name, expiry, secret)}"


def check_report_token(
    token: object, attempt_id: int, room_name: str | None, now: datetime, secret: str
) -> TokenCheck:
    """Whether ``token`` was signed for this attempt and room, and is still valid at ``now``."""
    if not isinstance(token, str) or not token.isascii() or not room_name:
        return TokenCheck.INVALID
    version, _, rest = token.partition(".")
    expiry_text, _, mac = rest.partition(".")
    if version != VERSION or not expiry_text.isdigit() or len(expiry_text) > 12:
        return TokenCheck.INVALID
    expiry = int(expiry_text)
    expected = _mac(attempt_id, room_name, expiry, secret)
    if not hmac.compare_digest(expected.encode("ascii"), mac.encode("ascii")):
        return TokenCheck.INVALID
    return TokenCheck.VALID if now.timestamp() <= expiry else TokenCheck.EXPIRED
