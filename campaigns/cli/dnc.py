"""``campaigns dnc``: the do-not-call lists (internal entries and registry snapshots)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.orm import Session

from campaigns import clinics, dnc
from campaigns.cli import common
from campaigns.errors import InvalidInputError
from campaigns.masking import mask_phone
from campaigns.models import DncSource
from campaigns.phones import to_e164

app = common.command_group("Do-not-call lists.")


def _dnc_scope(session: Session, phone: str, clinic: str | None) -> tuple[str, int | None]:
    """The number in E.164 (the clinic's country as default region) and the list's clinic."""
    if clinic is None:
        return to_e164(phone, "US"), None
    found = clinics.get_clinic(session, clinic)
    return to_e164(phone, found.country), found.id


@app.command("add")
def dnc_add(
    phone: str,
    clinic: Annotated[
        str | None, typer.Option(help="Only for this clinic (default: every clinic)")
    ] = None,
    reason: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Never call this number again (for one clinic or all)."""
    with common.unit_of_work() as session:
        number, clinic_id = _dnc_scope(session, phone, clinic)
        dnc.add(
            session,
            number,
            clinic_id=clinic_id,
            source=DncSource.INTERNAL,
            reason=reason,
            actor=common.actor(),
        )
    common.err.print(f"{mask_phone(number)} is on the do-not-call list")


@app.command("remove")
def dnc_remove(phone: str, clinic: Annotated[str | None, typer.Option()] = None) -> None:
    """Take a number off an internal list."""
    with common.unit_of_work() as session:
        number, clinic_id = _dnc_scope(session, phone, clinic)
        if not dnc.remove(session, number, clinic_id=clinic_id, actor=common.actor()):
            raise InvalidInputError(f"{mask_phone(number)} is not on that list")
    common.err.print(f"{mask_phone(number)} removed")


@app.command("list")
def dnc_list(
    clinic: Annotated[str | None, typer.Option()] = None, as_json: common.JsonFlag = False
) -> None:
    """Internal do-not-call entries (numbers shown in full: this list is for staff)."""
    with common.unit_of_work() as session:
        rows = [
            {
                "phone": e.phone_e164,
                "list": e.list_name,
                "source": e.source,
                "reason": e.reason,
                "added_by": e.added_by,
                "added_at": e.added_at.isoformat(),
            }
            for e in dnc.entries(session, clinic_id=clinics.clinic_id(session, clinic))
        ]
    if as_json:
        common.emit_json(rows)
        return
    common.print_table(
        {
            "phone": "phone",
            "list": "list",
            "source": "source",
            "reason": "reason",
            "added by": "added_by",
            "added at": "added_at",
        },
        rows,
    )


@app.command("import")
def dnc_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    source: Annotated[
        str, typer.Option(help="national (registry snapshot) or internal")
    ] = "national",
    as_of: Annotated[
        str | None, typer.Option(help="Data date of the registry file (default today)")
    ] = None,
    as_json: common.JsonFlag = False,
) -> None:
    """Load a registry flat file: one number per line, or areacode,number."""
    try:
        data_date = date.fromisoformat(as_of) if as_of else datetime.now(UTC).date()
    except ValueError as exc:
        raise InvalidInputError(f"--as-of: {as_of!r} is not YYYY-MM-DD") from exc
    try:
        with file.open(encoding="utf-8-sig") as lines, common.unit_of_work() as session:
            result = dnc.import_file(
                session, lines, source=source, as_of=data_date, actor=common.actor()
            )
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{file.name} is not UTF-8 text") from exc
    document = {
        "list": result.list_name,
        "version": result.version,
        "entries": result.entries,
        "rejected_lines": list(result.rejected_lines),
    }
    if as_json:
        common.emit_json(document)
    else:
        common.out.print(
            f"{result.list_name}: {result.entries} numbers (version {result.version}), "
            f"{len(result.rejected_lines)} lines rejected"
        )
