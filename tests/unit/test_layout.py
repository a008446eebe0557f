"""The one direction imports go, as the README's layout draws it.

Front ends (the CLI, the console, the Celery workers and beat, the agent) and the
tools that run the engine (the demo, the simulator, the process harness) call it;
the engine never reaches back into them. The pure rules (calling policy, windows,
zones, outcomes, retries, pacing maths) touch no database and no network client,
and each outside system has one adapter.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What calls the engine: its front ends and the tools that run it.
CALLERS = (
    "campaigns.cli",
    "console",
    "workers",
    "scheduler",
    "agent",
    "demo",
    "simulator",
    "harness",
)
PURE_RULES = (
    "campaigns/compliance/policy.py",
    "campaigns/compliance/windows.py",
    "campaigns/compliance/geography.py",
    "campaigns/telephony/outcomes.py",
    "campaigns/telephony/retry.py",
    "campaigns/telephony/pacing/pacer.py",
)
STORAGE_AND_CLIENTS = ("sqlalchemy", "sqlmodel", "campaigns.db", "redis", "livekit", "aiohttp")
# Each outside client library and the one module of the engine that may import it.
ADAPTERS = {
    "livekit": "campaigns/telephony/livekit_gateway.py",
    "redis": "campaigns/telephony/pacing/redis_pacer.py",
}


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports by absolute name (``from campaigns import x`` as
    ``campaigns.x``)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def _engine_modules() -> list[Path]:
    """``campaigns/`` but its command line and its migrations."""
    return [
        path
        for path in sorted((ROOT / "campaigns").rglob("*.py"))
        if not {"cli", "migrations"} & set(path.relative_to(ROOT).parts)
    ]


def test_the_engine_never_imports_what_calls_it() -> None:
    reaching_back = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _engine_modules()
        for name in _imports(path)
        if any(_is_within(name, caller) for caller in CALLERS)
    }
    assert not reaching_back


@pytest.mark.parametrize("module", PURE_RULES)
def test_the_pure_rules_touch_no_database_and_no_network(module: str) -> None:
    impure = {
        name
        for name in _imports(ROOT / module)
        if any(_is_within(name, banned) for banned in STORAGE_AND_CLIENTS)
    }
    assert not impure


@pytest.mark.parametrize(("library", "adapter"), sorted(ADAPTERS.items()))
def test_each_outside_client_has_one_adapter_in_the_engine(library: str, adapter: str) -> None:
    importers = {
        str(path.relative_to(ROOT))
        for path in _engine_modules()
        if any(_is_within(name, library) for name in _imports(path))
    }
    assert importers == {adapter}


def test_migrations_stand_alone() -> None:
    # A migration that imported today's code would change meaning as the code changes.
    versions = sorted((ROOT / "campaigns" / "migrations" / "versions").glob("*.py"))
    assert versions
    live = {
        f"{path.name} imports {name}"
        for path in versions
        for name in _imports(path)
        if _is_within(name, "campaigns")
    }
    assert not live
