"""The reporter adapter in use today: the Celery task ``campaigns.record_outcome``.

The task is sent by name, so the agent's process needs the broker, not the
engine's code or database. A later HTTP adapter (``POST /api/v1/reports``)
implements the same :class:`~agent.ports.Reporter` call.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

from celery import Celery

from agent.ports import Report

REPORT_TASK = "campaigns.record_outcome"


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
            REPORT_TASK,
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
