"""The names of the Celery tasks, in one place.

A name is a contract with everyone who sends the task by name: the beat table,
the tick (``PLACE_CALL``), and the voice agent, which reports each answered
call's outcome as ``RECORD_OUTCOME``. Importing this module imports no Celery,
so a process that only sends tasks can use it.
"""

from __future__ import annotations

TICK = "campaigns.tick"
PLACE_CALL = "campaigns.place_call"
RECORD_OUTCOME = "campaigns.record_outcome"
RECONCILE = "campaigns.reconcile"
DAILY_RUNS = "campaigns.daily_runs"
