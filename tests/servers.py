"""Throwaway PostgreSQL and Redis for the test run, unless the environment names servers.

Loaded before anything else (``-p tests.servers`` in pyproject's addopts): several test
modules read ``CAMPAIGNS_TEST_REDIS_URL`` when they are imported. The servers' variables
go into ``os.environ``, so the ``campaigns`` processes that e2e tests start see them too.
A ``-m`` expression that rules out every test marked ``postgres`` and ``redis`` starts
neither (``-m "not postgres and not redis"``); the PostgreSQL tests drive Redis as their
broker, so they need both.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable
from contextlib import ExitStack
from types import FrameType

import pytest

from harness.servers import ServerError, StartedServers, servers_for_tests

_RUNNING = pytest.StashKey[tuple[ExitStack, StartedServers]]()
_SERVER_MARKS = ("postgres", "redis")


def may_select(markexpr: str, mark: str) -> bool:
    """Whether ``-m markexpr`` can select a test marked ``mark`` (with or without the others)."""
    if not markexpr:
        return True
    try:
        from _pytest.mark.expression import Expression  # how -m parses: private

        expression = Expression.compile(markexpr)
    except Exception:  # that API changed: when in doubt, start the servers
        return True
    others = [name for name in (*_SERVER_MARKS, "slow") if name != mark]
    return any(
        expression.evaluate(_has_marks({mark, *extra}))
        for size in range(len(others) + 1)
        for extra in itertools.combinations(others, size)
    )


def _has_marks(marks: set[str]) -> Callable[..., bool]:
    return lambda name, /, **_: name in marks


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # pytest winds down and unconfigures: the servers stop


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or config.option.help:
        return  # an xdist worker inherits the controller's environment
    markexpr = config.option.markexpr
    postgres = may_select(markexpr, "postgres")
    redis = postgres or may_select(markexpr, "redis")
    stack = ExitStack()
    try:
        servers = stack.enter_context(servers_for_tests(postgres=postgres, redis=redis))
    except ServerError as exc:
        raise pytest.UsageError(f"throwaway test servers: {exc}") from None
    os.environ.update(servers.env)
    config.stash[_RUNNING] = (stack, servers)
    if servers.env and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def pytest_report_header(config: pytest.Config) -> list[str]:
    running = config.stash.get(_RUNNING, None)
    if running is None or not running[1].env:
        return []
    return [f"throwaway servers: {', '.join(running[1].env.values())} ({running[1].workdir})"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    running = session.config.stash.get(_RUNNING, None)
    passed = exitstatus in {pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED}
    if running is not None and not passed:
        running[1].keep_logs = True  # the path goes to stderr when they stop


def pytest_unconfigure(config: pytest.Config) -> None:
    running = config.stash.get(_RUNNING, None)
    if running is None:
        return
    stack, servers = running
    del config.stash[_RUNNING]
    try:
        stack.close()
    finally:
        for name in servers.env:
            os.environ.pop(name, None)
