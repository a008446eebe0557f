"""Append-only audit table and the state calling-rule table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import json
from collections.abc import Sequence
from datetime import date, time
from typing import Any, NamedTuple

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


class _Rule(NamedTuple):
    """One row of the state rule table as packaged at this revision (state_rules.json
    version 2026-01-15); copied so that later edits of the file or the code leave this
    revision as it was. Windows are local ``(start, end)``, end exclusive."""

    state: str
    effective_from: str
    effective_to: str | None
    window: tuple[str, str]
    saturday_window: tuple[str, str] | None
    sunday_window: tuple[str, str] | None
    sunday_banned: bool
    holiday_banned: bool
    extra_holidays: tuple[str, ...]
    max_calls_per_24h: int | None
    citation: str


_RULES = (
    _Rule(
        "FL",
        "2021-07-01",
        None,
        ("08:00", "20:00"),
        None,
        None,
        sunday_banned=False,
        holiday_banned=False,
        extra_holidays=(),
        max_calls_per_24h=3,
        citation=(
            "Fla. Stat. § 501.616(6)(a)-(b) (ch. 2021-173, SB 1120, eff. 2021-07-01): 8 a.m.-8 p.m. at the called person's location; at most 3 calls per 24 h on the same subject"
        ),
    ),
    _Rule(
        "OK",
        "2022-11-01",
        None,
        ("08:00", "20:00"),
        None,
        None,
        sunday_banned=False,
        holiday_banned=False,
        extra_holidays=(),
        max_calls_per_24h=3,
        citation=(
            "Okla. Stat. tit. 15, § 775C.4 (Telephone Solicitation Act of 2022, eff. 2022-11-01): 8 a.m.-8 p.m.; at most 3 calls per 24 h on the same subject"
        ),
    ),
    _Rule(
        "MD",
        "2024-01-01",
        None,
        ("08:00", "20:00"),
        None,
        None,
        sunday_banned=False,
        holiday_banned=False,
        extra_holidays=(),
        max_calls_per_24h=3,
        citation=(
            "Md. Code Ann., Com. Law tit. 14, subtitle 45 (Stop the Spam Calls Act of 2023, eff. 2024-01-01): 8 a.m.-8 p.m.; at most 3 calls per 24 h on the same subject"
        ),
    ),
    _Rule(
        "TX",
        "2009-04-01",
        None,
        ("09:00", "21:00"),
        None,
        ("12:00", "21:00"),
        sunday_banned=False,
        holiday_banned=False,
        extra_holidays=(),
        max_calls_per_24h=None,
        citation=(
            "Tex. Bus. & Com. Code § 301.051 (Acts 2007, ch. 885, eff. 2009-04-01): 9 a.m.-9 p.m. weekdays and Saturday, noon-9 p.m. Sunday"
        ),
    ),
    _Rule(
        "LA",
        "2000-01-01",
        None,
        ("08:00", "20:00"),
        None,
        None,
        sunday_banned=True,
        holiday_banned=True,
        extra_holidays=(),
        max_calls_per_24h=None,
        citation=(
            "La. R.S. 45:811; LPSC General Order R-29617 § V(A)(2): no calls 8 p.m.-8 a.m., on Sunday or legal holidays (confirm)"
        ),
    ),
    _Rule(
        "MS",
        "2000-01-01",
        None,
        ("08:00", "21:00"),
        None,
        None,
        sunday_banned=True,
        holiday_banned=True,
        extra_holidays=(),
        max_calls_per_24h=None,
        citation=(
            "Miss. Code Ann. § 77-3-701 et seq. (Telephone Solicitation Act): no Sunday calls; legal holidays per § 3-3-7 treated as banned (confirm); federal hours kept"
        ),
    ),
    _Rule(
        "AL",
        "2000-01-01",
        None,
        ("08:00", "21:00"),
        None,
        None,
        sunday_banned=True,
        holiday_banned=True,
        extra_holidays=(),
        max_calls_per_24h=None,
        citation=(
            "Ala. Admin. Code r. 770-X-5-.17 (Alabama PSC telephone solicitation rules): no calls on Sunday or state/national holidays (confirm); holidays per Ala. Code § 1-3-8; federal hours kept"
        ),
    ),
    _Rule(
        "RI",
        "2000-01-01",
        None,
        ("09:00", "18:00"),
        ("10:00", "17:00"),
        None,
        sunday_banned=True,
        holiday_banned=True,
        extra_holidays=(),
        max_calls_per_24h=None,
        citation=(
            "R.I. Gen. Laws § 5-61-3.6: 9 a.m.-6 p.m. Monday-Friday, 10 a.m.-5 p.m. Saturday, no calls on Sunday or legal holidays (confirm)"
        ),
    ),
    _Rule(
        "UT",
        "2000-01-01",
        None,
        ("08:00", "21:00"),
        None,
        None,
        sunday_banned=True,
        holiday_banned=True,
        extra_holidays=(),
        max_calls_per_24h=None,
        citation=(
            "Utah Code § 13-25a-103(3): no calls 9 p.m.-8 a.m., on Sunday or a legal holiday (holidays per Utah Code § 63G-1-301)"
        ),
    ),
)

_STATE_RULE = sa.table(
    "state_rule",
    sa.column("state", sa.String),
    sa.column("effective_from", sa.Date),
    sa.column("effective_to", sa.Date),
    sa.column("window_start", sa.Time),
    sa.column("window_end", sa.Time),
    sa.column("saturday_start", sa.Time),
    sa.column("saturday_end", sa.Time),
    sa.column("sunday_start", sa.Time),
    sa.column("sunday_end", sa.Time),
    sa.column("sunday_banned", sa.Boolean),
    sa.column("holiday_banned", sa.Boolean),
    sa.column("extra_holidays", sa.Text),
    sa.column("max_calls_per_24h", sa.Integer),
    sa.column("citation", sa.Text),
)


def _times(window: tuple[str, str] | None) -> tuple[time | None, time | None]:
    if window is None:
        return None, None
    return time.fromisoformat(window[0]), time.fromisoformat(window[1])


def _row(rule: _Rule) -> dict[str, Any]:
    window_start, window_end = _times(rule.window)
    saturday_start, saturday_end = _times(rule.saturday_window)
    sunday_start, sunday_end = _times(rule.sunday_window)
    return {
        "state": rule.state,
        "effective_from": date.fromisoformat(rule.effective_from),
        "effective_to": date.fromisoformat(rule.effective_to) if rule.effective_to else None,
        "window_start": window_start,
        "window_end": window_end,
        "saturday_start": saturday_start,
        "saturday_end": saturday_end,
        "sunday_start": sunday_start,
        "sunday_end": sunday_end,
        "sunday_banned": rule.sunday_banned,
        "holiday_banned": rule.holiday_banned,
        "extra_holidays": json.dumps(list(rule.extra_holidays)),
        "max_calls_per_24h": rule.max_calls_per_24h,
        "citation": rule.citation,
    }


def upgrade() -> None:
    # The hash chain proves tampering after the fact; the triggers stop casual edits.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION audit_event_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION 'audit_event is append-only';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event "
            "FOR EACH ROW EXECUTE FUNCTION audit_event_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_event_no_{action.lower()} BEFORE {action} ON audit_event "
                "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END"
            )
    op.execute(_STATE_RULE.delete())
    op.bulk_insert(_STATE_RULE, [_row(rule) for rule in _RULES])


def downgrade() -> None:
    op.execute("DELETE FROM state_rule")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_event_append_only ON audit_event")
        op.execute("DROP FUNCTION audit_event_append_only()")
    else:
        op.execute("DROP TRIGGER audit_event_no_update")
        op.execute("DROP TRIGGER audit_event_no_delete")
