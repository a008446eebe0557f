"""The token the agent presents with its outcome report, bound to one attempt.

``HMAC-SHA256(secret, "clinic-campaigns/report/v1:<attempt id>")``, URL-safe
base64 without padding. The engine signs it when it dispatches the agent (it
travels in the dispatch metadata) and verifies it when the report arrives, so a
report can only set the outcome of the attempt it was issued for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_CONTEXT = "clinic-campaigns/report/v1:"


def _digest(attempt_id: int, secret: str) -> bytes:
    if not secret:
        raise ValueError("the report secret is empty; set CAMPAIGNS_REPORT_SECRET")
    message = f"{_CONTEXT}{int(attempt_id)}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def sign_report_token(attempt_id: int, secret: str) -> str:
    return base64.urlsafe_b64encode(_digest(attempt_id, secret)).rstrip(b"=").decode("ascii")


def verify_report_token(attempt_id: int, token: str, secret: str) -> bool:
    """Whether ``token`` was signed for ``attempt_id`` with ``secret`` (constant time)."""
    if not isinstance(token, str) or not token.isascii():
        return False
    expected = sign_report_token(attempt_id, secret)
    return hmac.compare_digest(expected.encode("ascii"), token.encode("ascii"))
