"""The calling pipeline's steps, each spanning several short transactions.

A worker's task or the beat calls one of these with its collaborators (a
session factory, the telephony port, a pacer, a clock). No transaction is
held open while waiting on the network or on pacing, and a call is dialed
only after the ``dialing`` state has been committed: whatever crashes, the
database says whether a dial may have happened.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, Protocol, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from campaigns.attempts import claim, daily, dial, reconcile, reports, transitions
from campaigns.db import is_postgresql, session_scope
from campaigns.masking import mask_phone
from campaigns.settings import Settings
from campaigns.telephony.outcomes import DialProblem, Outcome
from campaigns.telephony.pacing.pacer import Pacer, wait_for_start
from campaigns.telephony.port import CallResult, Telephony

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], datetime]


class Runner(Protocol):
    """Runs a coroutine to completion from a worker thread; past ``timeout``
    seconds the coroutine is cancelled and :class:`TimeoutError` raised."""

    def __call__(self, coroutine: Awaitable[T], timeout: float | None = None) -> T: ...


# How soon a call that found its trunk full is due again.
PACING_RETRY_DELAY = timedelta(seconds=1)
# A trunk's start is granted this long ahead: time for the agent's dispatch (the
# dialing state is already committed), so the dial itself leaves on time
# (see campaigns.telephony.pacing). Short, since the worker's thread waits it out
# on every call, and a dispatch is one request to LiveKit.
PACING_LEAD = timedelta(seconds=0.2)
# Seconds a room request (hang-up, who is in it) may take.
ROOM_REQUEST_TIME_LIMIT = 15.0
# Clinics whose daily runs share a transaction (and its reads and writes).
DAILY_RUN_BATCH = 50
# Daily-run transactions at a time (PostgreSQL; SQLite has one writer).
DAILY_RUN_THREADS = 2


def utc_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class Pipeline:
    """Everything the steps need; built once per process."""

    sessions: sessionmaker[Session]
    settings: Settings
    pacer: Pacer
    telephony: Telephony | None = None
    run: Runner | None = None
    clock: Clock = utc_clock
    rng: random.Random | None = None
    worker_id: str | None = None  # recorded on every attempt this process takes

    def transaction(self) -> AbstractContextManager[Session]:
        return session_scope(self.sessions)

    def jitter(self) -> float:
        return (self.rng or random).random()

    @property
    def dial_settings(self) -> dial.DialSettings:
        s = self.settings
        return dial.DialSettings(
            default_trunk=s.livekit_trunk_id,
            default_agent=s.agent_name,
            report_secret=s.report_secret.get_secret_value(),
            ringing_timeout=timedelta(seconds=s.ringing_timeout_seconds),
            max_call_duration=timedelta(seconds=s.max_call_duration_seconds),
            agent_script_version=s.agent_script_version,
            report_grace=timedelta(seconds=s.report_grace_seconds),
        )

    @property
    def slot_lease(self) -> timedelta:
        s = self.settings
        return timedelta(
            seconds=s.ringing_timeout_seconds + s.max_call_duration_seconds + s.dial_grace_seconds
        )

    @property
    def dial_time_limit(self) -> float:
        """Seconds a dial may take before the worker gives up on it (ambiguous: failed):
        within the ringing timeout and half the grace reconciliation waits for."""
        s = self.settings
        return s.ringing_timeout_seconds + s.dial_grace_seconds / 2

    def _telephony(self) -> tuple[Telephony, Runner]:
        if self.telephony is None or self.run is None:
            raise RuntimeError("this pipeline has no telephony")
        return self.telephony, self.run

    # ------------------------------------------------------------------ tick

    def tick(self, send: Callable[[list[int]], None], *, max_batches: int = 10) -> claim.TickResult:
        """Claim due attempts batch by batch; send each batch's ids once its claim has committed.

        ``send`` enqueues one call per id. If it raises, the attempts it was given stay
        ``queued`` (reconciliation queues them again) and the tick stops there."""
        queued: list[int] = []
        deferred = skipped = waiting = 0
        for _ in range(max_batches):
            with self.transaction() as session:
                result = claim.claim_due_attempts(
                    session,
                    self.clock(),
                    limit=self.settings.tick_batch,
                    default_trunk=self.settings.livekit_trunk_id,
                )
            if result.queued:
                send(result.queued)
            queued += result.queued
            deferred += result.deferred
            skipped += result.skipped
            waiting = result.waiting_for_trunk
            # A short batch means nothing more is due; waiting calls mean the trunks are full.
            settled = len(result.queued) + result.deferred + result.skipped
            if waiting or settled < self.settings.tick_batch:
                break
        if queued or deferred or skipped or waiting:
            log.info(
                "tick: %d queued, %d deferred, %d skipped, %d waiting for a trunk",
                len(queued),
                deferred,
                skipped,
                waiting,
            )
        return claim.TickResult(queued, deferred, skipped, waiting)

    # ------------------------------------------------------------------ place a call

    def place_call(self, attempt_id: int) -> str:
        """Dial one queued attempt at most once. Returns what happened, for logs and tests.

        Two transactions: ``dialing`` is committed first, then the trunk's start is
        awaited and the call placed, then its result is recorded. Waiting for the
        start after the commit means no database work has to fit before it."""
        telephony, run = self._telephony()
        with self.transaction() as session:
            plan = dial.begin_dial(
                session, attempt_id, self.clock(), self.dial_settings, worker_id=self.worker_id
            )
        if plan is None:
            return "not-dialed"
        request = plan.request
        slot = self.pacer.acquire(
            request.trunk_id,
            attempt_id,
            cps=plan.calls_per_second,
            max_concurrent=plan.max_concurrent,
            lease=self.slot_lease,
            max_wait=timedelta(seconds=self.settings.pacing_max_wait_seconds),
            lead=PACING_LEAD,
        )
        if slot is None:
            with self.transaction() as session:
                now = self.clock()
                dial.not_dialed(
                    session,
                    attempt_id,
                    now,
                    why="trunk at its limit",
                    due_at=now + PACING_RETRY_DELAY,
                )
            return "paced"
        release = True
        try:
            log.info("attempt %s: dialing %s", attempt_id, mask_phone(request.call_to))
            abandoned = False
            try:
                result: CallResult = run(
                    telephony.place_call(request, partial(wait_for_start, slot)),
                    timeout=self.dial_time_limit,
                )
            except TimeoutError:
                # The call may be ringing: record an ambiguous failure, hang up, never re-dial.
                abandoned = True
                log.error(
                    "attempt %s: dial still running after %ss", attempt_id, self.dial_time_limit
                )
                result = CallResult(
                    answered=False,
                    outcome=Outcome.FAILED,
                    error=f"no result from LiveKit within {self.dial_time_limit:g}s; "
                    "the call may have been placed",
                    problem=DialProblem.AMBIGUOUS,
                )
            except Exception as exc:
                # The request may have reached LiveKit: record an ambiguous failure, never re-dial.
                log.exception("attempt %s: dial raised", attempt_id)
                result = CallResult(
                    answered=False,
                    outcome=Outcome.FAILED,
                    error=f"{type(exc).__name__}: {exc}",
                    problem=DialProblem.AMBIGUOUS,
                )
            with self.transaction() as session:
                finished = dial.finish_dial(
                    session, attempt_id, result, self.clock(), jitter=self.jitter()
                )
            release = finished.release_slot
            log.info("attempt %s: %s %s", attempt_id, finished.state, finished.outcome or "")
            if abandoned:
                self._hang_up(request.room_name)
            return finished.state
        finally:
            if release:
                self.pacer.release(request.trunk_id, attempt_id)

    def _hang_up(self, room_name: str) -> bool:
        """End the call in ``room_name`` (DeleteRoom); whether the request went through."""
        telephony, run = self._telephony()
        try:
            run(telephony.hang_up(room_name), timeout=ROOM_REQUEST_TIME_LIMIT)
        except Exception as exc:
            log.warning("could not hang up room %s: %s", room_name, exc)
            return False
        return True

    # ------------------------------------------------------------------ agent reports

    def record_outcome(
        self, attempt_id: int, outcome: str, token: str, detail: dict[str, Any] | None = None
    ) -> reports.ReportResult:
        with self.transaction() as session:
            result = reports.record_outcome(
                session,
                attempt_id,
                outcome,
                token,
                self.clock(),
                secret=self.settings.report_secret.get_secret_value(),
                jitter=self.jitter(),
                detail=detail,
            )
        if result.release_slot and result.trunk_id:
            self.pacer.release(result.trunk_id, attempt_id)
        return result

    # ------------------------------------------------------------------ reconciliation

    def reconcile(self) -> dict[str, int]:
        """Settle attempts stuck past their deadlines, looking at the room before deciding."""
        s = self.settings
        with self.transaction() as session:
            stale = reconcile.stale_attempts(
                session,
                self.clock(),
                queued_timeout=timedelta(seconds=s.queued_timeout_seconds),
                dialing_timeout=timedelta(seconds=s.ringing_timeout_seconds + s.dial_grace_seconds),
                answered_timeout=timedelta(
                    seconds=s.max_call_duration_seconds + s.report_grace_seconds
                ),
                worker_lost=timedelta(seconds=s.worker_lost_seconds),
            )
        settled: dict[str, int] = {}
        for attempt in stale:
            participants: list[str] | None = None
            if attempt.room_name and self.telephony is not None and self.run is not None:
                try:
                    participants = self.run(
                        self.telephony.room_participants(attempt.room_name),
                        timeout=ROOM_REQUEST_TIME_LIMIT,
                    )
                except Exception:
                    log.warning("attempt %s: room not inspectable, retry later", attempt.attempt_id)
            with self.transaction() as session:
                action = reconcile.reconcile_attempt(
                    session, attempt, participants, self.clock(), jitter=self.jitter()
                )
            if action is None:
                continue
            # Past its length limit, no report, the callee still on the line: end the call.
            if action == reconcile.HANG_UP and not self._hang_up(attempt.room_name or ""):
                continue
            settled[action] = settled.get(action, 0) + 1
            if action == "failed" and attempt.trunk_id:
                self.pacer.release(attempt.trunk_id, attempt.attempt_id)
        if settled:
            log.warning("reconciled stale attempts: %s", settled)
        return settled

    def call_ended(self, room_name: str) -> str | None:
        """LiveKit says the call in ``room_name`` is over: settle an answered attempt that
        has no report yet now, not after the grace period. A report arriving later
        still outranks this (see :func:`~campaigns.attempts.reports.record_outcome`)."""
        with self.transaction() as session:
            attempt = reconcile.answered_attempt_in_room(session, room_name)
        if attempt is None:
            return None
        with self.transaction() as session:
            action = reconcile.reconcile_attempt(
                session, attempt, [], self.clock(), jitter=self.jitter()
            )
        if action == "failed" and attempt.trunk_id:
            self.pacer.release(attempt.trunk_id, attempt.attempt_id)
        return action

    # ------------------------------------------------------------------ daily runs

    def daily_runs(self) -> list[daily.DailyRunResult]:
        """The daily run of every clinic due, :data:`DAILY_RUN_BATCH` clinics per transaction,
        :data:`DAILY_RUN_THREADS` transactions at a time on PostgreSQL. Should a transaction
        fail, its clinics are run again one per transaction: one clinic's failure costs
        no other its run (it stays due for the next beat)."""
        with self.transaction() as session:
            due = [
                (clinic.id, day)
                for clinic, day in daily.clinics_due_for_daily_run(session, self.clock())
                if clinic.id is not None
            ]
            threads = DAILY_RUN_THREADS if is_postgresql(session) else 1
        batches = [due[i : i + DAILY_RUN_BATCH] for i in range(0, len(due), DAILY_RUN_BATCH)]
        if threads == 1 or len(batches) < 2:
            done = [self._daily_run_batch(batch) for batch in batches]
        else:
            # While one transaction waits on the database (COPY, the audit's insert, the
            # commit), the other computes its clinics' decisions.
            with ThreadPoolExecutor(threads, thread_name_prefix="daily-run") as pool:
                done = list(pool.map(self._daily_run_batch, batches))
        return [result for results in done for result in results]

    def _daily_run_batch(self, batch: list[tuple[int, date]]) -> list[daily.DailyRunResult]:
        try:
            return self._daily_runs(batch)
        except Exception:
            log.exception("daily runs of %d clinics failed; running each alone", len(batch))
        results: list[daily.DailyRunResult] = []
        for one in batch:
            try:
                results += self._daily_runs([one])
            except Exception:
                log.exception("daily run of clinic %s for %s failed", *one)
        return results

    def _daily_runs(self, due: list[tuple[int, date]]) -> list[daily.DailyRunResult]:
        with self.transaction() as session:
            return daily.run_due(session, due, self.clock(), actor=transitions.SCHEDULER)
