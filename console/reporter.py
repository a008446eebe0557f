"""The agent's outcome report over HTTP, for an agent outside the broker's network.

``HttpReporter(settings.api_url).report(...)`` posts to the console's
``POST /api/v1/reports``, which runs the same step as the Celery task
``campaigns.record_outcome``. Connection failures and 5xx answers are retried a
few times (the report is idempotent); a refused report raises at once.
"""

from __future__ import annotations

from typing import Any

import httpx2
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

REPORTS_PATH = "/api/v1/reports"


class ReportRefusedError(Exception):
    """The engine refused the report (bad token, unknown outcome or attempt)."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx2.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx2.TransportError)


class HttpReporter:
    def __init__(self, api_url: str, *, client: httpx2.AsyncClient | None = None) -> None:
        self._url = api_url.rstrip("/") + REPORTS_PATH
        self._client = client or httpx2.AsyncClient(timeout=10.0)

    @retry(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(4),
        wait=wait_exponential(multiplier=0.5, max=5),
        reraise=True,
    )
    async def report(
        self, attempt_id: int, outcome: str, token: str, detail: dict[str, Any] | None = None
    ) -> bool:
        """Send the report; True when it set the outcome, False for a duplicate."""
        response = await self._client.post(
            self._url,
            json={"attempt_id": attempt_id, "outcome": outcome, "token": token, "detail": detail},
        )
        if 400 <= response.status_code < 500:
            raise ReportRefusedError(
                f"report for attempt {attempt_id} refused: HTTP {response.status_code}"
            )
        response.raise_for_status()
        accepted: bool = response.json()["accepted"]
        return accepted

    async def aclose(self) -> None:
        await self._client.aclose()
