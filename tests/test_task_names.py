"""Every task name that senders use (beat, tick, the voice agent) is a task the workers run."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from campaigns.settings import Settings, get_settings
from scheduler.schedule import beat_schedule
from workers import task_names

PUBLISHED = {value for name, value in vars(task_names).items() if name.isupper()}


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> set[str]:
    monkeypatch.setenv("CAMPAIGNS_BROKER_URL", f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    get_settings.cache_clear()
    try:
        app = importlib.import_module("workers.celery_app").app
        importlib.import_module("workers.tasks")
        return {name for name in app.tasks if not name.startswith("celery.")}
    finally:
        get_settings.cache_clear()


def test_the_workers_run_exactly_the_published_tasks(registered: set[str]) -> None:
    assert registered == PUBLISHED


def test_beat_sends_tasks_the_workers_run(registered: set[str]) -> None:
    sent = {entry["task"] for entry in beat_schedule(Settings()).values()}
    assert sent == {task_names.TICK, task_names.RECONCILE, task_names.DAILY_RUNS}
    assert sent <= registered
