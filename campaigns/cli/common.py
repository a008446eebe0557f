"""What every command group of the ``campaigns`` command line shares.

Errors: every error a user can cause is one line on stderr (``error: ...``, made
inert) and a non-zero exit, never a traceback (``CAMPAIGNS_DEBUG`` shows it).
Output: with ``--json`` stdout carries exactly one JSON document and logs go to
stderr; tables show every stored value inert.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session
from typer._click.core import Context as ClickContext
from typer.core import TyperGroup

from campaigns.db import session_scope
from campaigns.errors import CampaignError, InvalidInputError
from campaigns.masking import inert
from campaigns.settings import InsecureSecretError, get_settings, require_secrets

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


class OneLineErrors(TyperGroup):
    """Turns every user-facing error into one line on stderr and exit status 1."""

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except CampaignError as exc:
            fail(str(exc))
        except (OperationalError, ProgrammingError) as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                fail("the database has no tables yet: run `campaigns db upgrade`")
            fail(f"database error: {str(exc.orig).splitlines()[0]}")
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except Exception as exc:
            if os.environ.get("CAMPAIGNS_DEBUG"):
                raise
            fail(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def fail(message: str, code: int = 1) -> NoReturn:
    """``error: message`` on stderr and exit ``code`` (2: a usage or configuration error)."""
    err.print(inert(f"error: {message}"), highlight=False)
    raise typer.Exit(code)


def command_group(help_text: str | None = None) -> typer.Typer:
    """A command group (or, without help, commands merged into the top level)."""
    return typer.Typer(
        help=help_text, cls=OneLineErrors, no_args_is_help=True, pretty_exceptions_enable=False
    )


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except OSError:
        return "cli"


def print_table(columns: dict[str, str], rows: list[dict[str, Any]], **options: Any) -> None:
    """Rows as a table; ``columns`` maps each heading to its key in the rows."""
    table = Table(*columns, **options)
    for row in rows:
        table.add_row(*(inert("" if row[key] is None else row[key]) for key in columns.values()))
    out.print(table)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


@contextmanager
def unit_of_work() -> Iterator[Session]:
    with session_scope() as session:
        yield session


def parse_instant(text: str, option: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInputError(f"{option}: {text!r} is not an ISO 8601 time") from exc
    if value.tzinfo is None:
        raise InvalidInputError(
            f"{option}: {text!r} needs a UTC offset, e.g. 2026-12-01T15:00:00-05:00"
        )
    return value.astimezone(UTC)


def refuse_insecure_secrets() -> None:
    """Every process that acts on real data calls this first: one line and exit 2 on failure."""
    try:
        require_secrets(get_settings())
    except InsecureSecretError as exc:
        fail(str(exc), 2)
