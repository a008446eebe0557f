"""How the agent's outcome report reaches the engine: two adapters of one port.

- :class:`CeleryReporter`, the default: the Celery task ``campaigns.record_outcome``,
  sent by name (:data:`workers.task_names.RECORD_OUTCOME`), so the agent's process
  needs the broker, not the engine's Celery app or database.
- :class:`HttpReporter`, when ``CAMPAIGNS_API_URL`` is set: ``POST /api/v1/reports``
  on the web console, for an agent hosted outside the broker's network. The
  console runs the same step as the task. Connection failures and 5xx answers are
  retried a few times (a report is idempotent); a refused report raises at once.

:func:`reporter_from_settings` picks one.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

import httpx2
from celery import Celery
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from agent.ports import Report
from campaigns.settings import Settings
from workers.task_names import RECORD_OUTCOME

REPORTS_PATH = "/api/v1/reports"


class CeleryReporter:
    """Sends each report as ``campaigns.record_outcome(attempt_id, outcome, token, detail)``.

    The blocking ``send_task`` runs in a one-thread executor so the event loop
    never blocks and sends are serialised on one broker connection.
    """

    def __init__(self, broker_url: str) -> None:
        self._app = Celery("clinic-campaigns-agent", broker=broker_url)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-report")

    async def __call__(self, report: Report) -> None:
        send = functools.partial(
            self._app.send_task,
            RECORD_OUTCOME,
            kwargs={
                "attempt_id": report.attempt_id,
                "outcome": report.outcome,
                "token": report.token,
                "detail": report.detail,
            },
        )
        await asyncio.get_running_loop().run_in_executor(self._executor, send)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._app.close()


class ReportRefusedError(Exception):
    """The engine refused the report (bad token, unknown outcome or attempt)."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx2.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx2.TransportError)


class HttpReporter:
    """Posts each report to the console's ``POST /api/v1/reports``."""

    def __init__(self, api_url: str, *, client: httpx2.AsyncClient | None = None) -> None:
        self._url = api_url.rstrip("/") + REPORTS_PATH
        self._client = client or httpx2.AsyncClient(timeout=10.0)

    async def __call__(self, report: Report) -> None:
        await self.send(report)

    @retry(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(4),
        wait=wait_exponential(multiplier=0.5, max=5),
        reraise=True,
    )
    async def send(self, report: Report) -> bool:
        """Send ``report``; True when it set the outcome, False for a duplicate."""
        response = await self._client.post(
            self._url,
            json={
                "attempt_id": report.attempt_id,
                "outcome": report.outcome,
                "token": report.token,
                "detail": report.detail,
            },
        )
        if 400 <= response.status_code < 500:
            raise ReportRefusedError(
                f"report for attempt {report.attempt_id} refused: HTTP {response.status_code}"
            )
        response.raise_for_status()
        accepted: bool = response.json()["accepted"]
        return accepted

    async def aclose(self) -> None:
        await self._client.aclose()


def reporter_from_settings(settings: Settings) -> CeleryReporter | HttpReporter:
    """Over HTTP when ``CAMPAIGNS_API_URL`` names the console, else through the broker."""
    if settings.api_url:
        return HttpReporter(settings.api_url)
    return CeleryReporter(settings.broker_url)
