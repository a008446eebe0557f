"""The beat table, in one place. Each entry expires before its next run, so a
backlog of ticks never piles up in the broker; claims in the database make a
second beat harmless."""

from __future__ import annotations

from typing import Any

from campaigns.settings import Settings

DAILY_RUN_CHECK_SECONDS = 60.0


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    def entry(task: str, every: float) -> dict[str, Any]:
        return {"task": task, "schedule": every, "options": {"expires": every * 0.9}}

    return {
        "tick": entry("campaigns.tick", settings.tick_seconds),
        "reconcile": entry("campaigns.reconcile", settings.reconcile_seconds),
        "daily-runs": entry("campaigns.daily_runs", DAILY_RUN_CHECK_SECONDS),
    }
