"""The job metadata the engine dispatches with each call
(``campaigns.attempts.metadata.agent_metadata``).

It carries what the agent needs to say and report, and no more: the patient's
first name (never the full name), the appointment's local time, provider and
location, the clinic's name, call-back and transfer numbers, the callee's
participant identity, and the attempt id with its signed report token.

:func:`parse_metadata` raises :class:`MetadataError` for metadata that is not
JSON or lacks a field; the error's message names fields only (no patient data),
and keeps the attempt id and token when those were readable, so the worker can
still report the call as ``failed``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from agent.ports import Report


class CallMetadata(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    attempt_id: int = Field(gt=0)
    report_token: str = Field(min_length=1)
    participant_identity: str = Field(min_length=1)
    clinic_name: str = Field(min_length=1, max_length=200)
    callback_number: str = Field(min_length=1, max_length=20)
    transfer_number: str | None = Field(default=None, max_length=20)
    patient_first_name: str = Field(min_length=1, max_length=200)
    appointment_local_time: AwareDatetime
    appointment_timezone: str = Field(min_length=1, max_length=64)
    provider: str | None = Field(default=None, max_length=200)
    location: str | None = Field(default=None, max_length=200)
    language: str | None = None
    script_version: str = Field(min_length=1, max_length=100)


class MetadataError(ValueError):
    """Unusable metadata; ``attempt_id``/``token`` are set when they could be read."""

    def __init__(self, message: str, attempt_id: int | None, token: str | None) -> None:
        super().__init__(message)
        self.attempt_id = attempt_id
        self.token = token

    def failure_report(self) -> Report | None:
        """The ``failed`` report a job with this metadata ends with, when it can be sent."""
        if self.attempt_id is None or self.token is None:
            return None
        return Report(self.attempt_id, "failed", self.token, {"reason": "bad_metadata"})


def parse_metadata(raw: str | bytes | dict[str, Any]) -> CallMetadata:
    if isinstance(raw, dict):
        data: Any = raw
    else:
        try:
            data = json.loads(raw or "")
        except ValueError:
            raise MetadataError("job metadata is not JSON", None, None) from None
    if not isinstance(data, dict):
        raise MetadataError("job metadata is not a JSON object", None, None)
    try:
        return CallMetadata.model_validate(data)
    except ValidationError as exc:
        # Field names and error types only: the values may be patient data.
        problems = ", ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'metadata'} ({error['type']})"
            for error in exc.errors()
        )
        raise MetadataError(
            f"job metadata unusable: {problems}", _readable_attempt(data), _readable_token(data)
        ) from None


def _readable_attempt(data: dict[str, Any]) -> int | None:
    value = data.get("attempt_id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _readable_token(data: dict[str, Any]) -> str | None:
    token = data.get("report_token")
    return token if isinstance(token, str) and token else None
