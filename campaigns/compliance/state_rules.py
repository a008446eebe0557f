"""The state rule table: the packaged seed and the rows the policy reads.

``campaigns/data/state_rules.json`` is the packaged table; migration 0002 seeded the
``state_rule`` table from it (with its own copy of the rows, so a later edit of the
file needs a migration of its own). :func:`load_seed_state_rules` reads the file
(for the pure policy's tests); :func:`load_state_rules` reads the database table,
which is what decisions use, cached per process for :data:`RULES_MAX_AGE_SECONDS`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict
from datetime import date, datetime, time
from importlib import resources
from time import monotonic
from typing import Any

from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns.compliance.windows import CallingWindow, StateRule
from campaigns.models import StateRuleRow


def _window(start: time | None, end: time | None) -> CallingWindow | None:
    return CallingWindow(start, end) if start is not None and end is not None else None


# --------------------------------------------------------------------------- seed file


def _parse_window(raw: list[str] | None) -> CallingWindow | None:
    if raw is None:
        return None
    return _window(time.fromisoformat(raw[0]), time.fromisoformat(raw[1]))


def _seed_document() -> dict[str, Any]:
    text = resources.files("campaigns").joinpath("data/state_rules.json").read_text("utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def seed_ruleset_version() -> str:
    """The version string of the packaged seed table (record it as ``ruleset_version``)."""
    return str(_seed_document()["version"])


def load_seed_state_rules() -> list[StateRule]:
    """The packaged state rule table (``campaigns/data/state_rules.json``)."""
    rules: list[StateRule] = []
    for row in _seed_document()["rules"]:
        window = _parse_window(row["window"])
        assert window is not None
        rules.append(
            StateRule(
                state=row["state"],
                effective_from=date.fromisoformat(row["effective_from"]),
                effective_to=(
                    date.fromisoformat(row["effective_to"]) if row["effective_to"] else None
                ),
                window=window,
                sunday_window=_parse_window(row["sunday_window"]),
                saturday_window=_parse_window(row.get("saturday_window")),
                sunday_banned=bool(row["sunday_banned"]),
                holiday_banned=bool(row["holiday_banned"]),
                extra_holidays=tuple(date.fromisoformat(d) for d in row["extra_holidays"]),
                max_calls_per_24h=row["max_calls_per_24h"],
                citation=row["citation"],
            )
        )
    return rules


# --------------------------------------------------------------------------- database


def _rule_from_row(row: StateRuleRow) -> StateRule:
    window = _window(row.window_start, row.window_end)
    assert window is not None
    return StateRule(
        state=row.state,
        effective_from=row.effective_from,
        effective_to=row.effective_to,
        window=window,
        sunday_window=_window(row.sunday_start, row.sunday_end),
        saturday_window=_window(row.saturday_start, row.saturday_end),
        sunday_banned=row.sunday_banned,
        holiday_banned=row.holiday_banned,
        extra_holidays=tuple(
            datetime.fromisoformat(d).date() for d in json.loads(row.extra_holidays)
        ),
        max_calls_per_24h=row.max_calls_per_24h,
        citation=row.citation,
    )


# Workers re-check the policy at every dial; the table changes rarely (a new holiday),
# so each process re-reads it at most this often.
RULES_MAX_AGE_SECONDS = 30.0
_rules_cache: dict[str, tuple[float, tuple[tuple[StateRule, ...], str]]] = {}
_rules_lock = threading.Lock()


def load_state_rules(session: Session) -> tuple[tuple[StateRule, ...], str]:
    """The rules in force and their version (a digest of the table, so any change shows),
    read at most every :data:`RULES_MAX_AGE_SECONDS` per database."""
    key = session.get_bind().engine.url.render_as_string(hide_password=True)
    with _rules_lock:
        cached = _rules_cache.get(key)
    if cached is not None and monotonic() - cached[0] < RULES_MAX_AGE_SECONDS:
        return cached[1]
    loaded = _read_state_rules(session)
    with _rules_lock:
        _rules_cache[key] = (monotonic(), loaded)
    return loaded


def _read_state_rules(session: Session) -> tuple[tuple[StateRule, ...], str]:
    rows = session.execute(
        select(StateRuleRow).order_by(col(StateRuleRow.state), col(StateRuleRow.effective_from))
    ).scalars()
    rules = tuple(_rule_from_row(r) for r in rows)
    digest = hashlib.sha256(
        json.dumps([asdict(r) for r in rules], default=str, sort_keys=True).encode()
    ).hexdigest()
    return rules, f"rules-{digest[:12]}"
