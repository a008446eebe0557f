"""Job metadata as the engine dispatches it, for tests of the agent and the simulator."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from campaigns.tokens import TokenCheck, check_report_token, sign_report_token

REPORT_SECRET = "agent-test-report-secret-0123456789abcdef"
TOKEN_EXPIRY = datetime(2100, 1, 1, tzinfo=UTC)


def room_of(attempt_id: int) -> str:
    return f"appt-{attempt_id}-test"


def call_metadata(attempt_id: int = 42, **overrides: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "attempt_id": attempt_id,
        "report_token": sign_report_token(
            attempt_id, room_of(attempt_id), TOKEN_EXPIRY, REPORT_SECRET
        ),
        "participant_identity": f"callee-{attempt_id}-test",
        "clinic_name": "Lakeside Clinic",
        "callback_number": "+12125550199",
        "transfer_number": "+12125550111",
        "patient_first_name": "Maria",
        "appointment_local_time": "2030-01-15T09:00:00-05:00",
        "appointment_timezone": "America/New_York",
        "provider": "Dr. Ahmed",
        "location": "Lakeside Clinic, Room 2",
        "language": None,
        "script_version": "confirm-v1",
    }
    return metadata | overrides


def metadata_json(attempt_id: int = 42, **overrides: Any) -> str:
    return json.dumps(call_metadata(attempt_id, **overrides))


def token_verifies(attempt_id: int, token: str, room: str | None = None) -> bool:
    """Whether the engine would accept ``token`` for the attempt (and its room)."""
    room = room or room_of(attempt_id)
    now = datetime.now(UTC)
    return check_report_token(token, attempt_id, room, now, REPORT_SECRET) is TokenCheck.VALID
