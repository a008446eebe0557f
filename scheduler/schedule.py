"""The beat table, in one place. Each entry expires before its next run, so a
backlog of ticks never piles up in the broker; claims in the database make a
second beat harmless."""

from __future__ import annotations

from typing import Any

from campaigns.settings import Settings
from workers import task_names

DAILY_RUN_CHECK_SECONDS = 60.0


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    def entry(task: str, every: float) -> dict[str, Any]:
        return {"task": task, "schedule": every, "options": {"expires": every * 0.9}}

    return {
        "tick": entry(task_names.TICK, settings.tick_seconds),
        "reconcile": entry(task_names.RECONCILE, settings.reconcile_seconds),
        "daily-runs": entry(task_names.DAILY_RUNS, DAILY_RUN_CHECK_SECONDS),
    }
