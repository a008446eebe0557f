"""``campaigns import``: appointments from a clinic's CSV export."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from campaigns import clinics
from campaigns.cli import common
from campaigns.errors import InvalidInputError
from campaigns.masking import inert

app = common.command_group()


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(dir_okay=False, help="CSV of appointments")],
    clinic: Annotated[str, typer.Option(help="Clinic name")],
    as_json: common.JsonFlag = False,
) -> None:
    """Import appointments; valid rows are committed together, invalid ones reported by line."""
    from campaigns.importing import import_appointments

    if not file.is_file():
        raise InvalidInputError(f"{file}: no such file")
    show_progress = sys.stdout.isatty() and not as_json
    with common.unit_of_work() as session, _import_progress(show_progress, file.name) as progress:
        found = clinics.get_clinic(session, clinic)
        report = import_appointments(
            session,
            found,
            file,
            filename=file.name,
            now=datetime.now(UTC),
            actor=common.actor(),
            progress=progress,
        )
        if report.usable_rows == 0:
            # Roll back: an unusable file leaves no trace but its report.
            session.rollback()
    document = report.to_json()
    if as_json:
        common.emit_json(document)
    else:
        common.out.print(
            inert(
                f"{file.name}: {report.imported} imported, {report.updated} updated, "
                f"{report.unchanged} unchanged, {len(report.rejected_lines)} rows rejected"
            )
        )
        for rejection in report.rejected[:50]:
            common.out.print(
                inert(f"  line {rejection.line}, {rejection.column}: {rejection.reason}")
            )
        if len(report.rejected) > 50:
            common.out.print(f"  ... and {len(report.rejected) - 50} more (use --json for all)")
    if report.usable_rows == 0:
        common.fail(f"{file.name} has no usable row; nothing was imported")


@contextmanager
def _import_progress(enabled: bool, name: str) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed} rows"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=common.err, transient=True) as bar:
        task = bar.add_task(f"importing {name}", total=None)
        yield lambda rows: bar.update(task, completed=rows)
