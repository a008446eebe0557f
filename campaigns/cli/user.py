"""``campaigns user``: people who use the web console and the API, and their roles."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from campaigns import users
from campaigns.cli import common
from campaigns.errors import InvalidInputError
from campaigns.masking import inert
from campaigns.settings import get_settings

app = common.command_group("People who use the web console and the API, and their roles.")


@app.command("add")
def user_add(
    email: str,
    role: Annotated[str, typer.Option(help="admin, staff or reviewer")],
    clinic: Annotated[
        list[str] | None, typer.Option("--clinic", help="A clinic a staff user works for")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    as_json: common.JsonFlag = False,
) -> None:
    """Create a console user (the password is read from stdin, never from the command line)."""
    if not password_stdin:
        raise InvalidInputError("give the password on standard input with --password-stdin")
    password = sys.stdin.readline().rstrip("\r\n")
    with common.unit_of_work() as session:
        created = users.add_user(
            session, email, role, password, clinic_names=clinic or [], actor=common.actor()
        )
        described = users.describe(session, created)
    if as_json:
        common.emit_json(described)
    else:
        common.err.print(inert(f"user {described['email']} added ({described['role']})"))


@app.command("list")
def user_list(as_json: common.JsonFlag = False) -> None:
    """Console users, their roles and clinics."""
    with common.unit_of_work() as session:
        rows = users.list_users(session)
    if as_json:
        common.emit_json(rows)
        return
    common.print_table(
        {
            "email": "email",
            "role": "role",
            "clinics": "clinics",
            "disabled": "disabled",
            "locked until": "locked_until",
        },
        [row | {"clinics": ", ".join(row["clinics"])} for row in rows],
    )


@app.command("disable")
def user_disable(email: str) -> None:
    """Disable a user and end their sessions and API tokens."""
    with common.unit_of_work() as session:
        changed = users.disable_user(session, email, datetime.now(UTC), actor=common.actor())
    common.err.print(inert(f"user {email} {'disabled' if changed else 'was already disabled'}"))


@app.command("token")
def user_token(email: str) -> None:
    """Print a new API token for scripts and cron (valid CAMPAIGNS_API_TOKEN_DAYS days)."""
    settings = get_settings()
    with common.unit_of_work() as session:
        user = users.get_user(session, email)
        if user.disabled:
            raise InvalidInputError(f"user {user.email} is disabled")
        token, expires_at = users.open_session(
            session,
            user,
            users.API,
            datetime.now(UTC),
            timedelta(days=settings.api_token_days),
        )
    sys.stdout.write(token + "\n")
    common.err.print(f"expires at {expires_at.isoformat()}")
