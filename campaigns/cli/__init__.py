"""The ``campaigns`` command line: a thin adapter over the domain services.

One module per command group; each command parses its options, calls one
service function in a unit of work and prints the result (``common`` holds
the error and output contracts every command keeps).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from campaigns.cli import (
    agent,
    attempts,
    audit,
    clinic,
    db,
    dnc,
    explain,
    importing,
    processes,
    trunk,
    user,
)
from campaigns.cli.common import command_group

app = command_group("Outbound appointment-confirmation call campaigns.")
for commands in (importing, explain, attempts, processes):
    app.add_typer(commands.app)
for name, group in (
    ("db", db),
    ("trunk", trunk),
    ("clinic", clinic),
    ("dnc", dnc),
    ("audit", audit),
    ("user", user),
    ("agent", agent),
):
    app.add_typer(group.app, name=name)


@app.callback()
def _configure(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# Files this process creates (SQLite database and broker, beat's schedule, logs,
# exports) are readable by their owner only: they hold patient data.
OWNER_ONLY_UMASK = 0o077


def main() -> None:
    os.umask(OWNER_ONLY_UMASK)
    app()
