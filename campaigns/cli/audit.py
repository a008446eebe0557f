"""``campaigns audit``: verify, anchor and export the tamper-evident audit log."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer

from campaigns import audit
from campaigns.cli import common
from campaigns.errors import InvalidInputError

app = common.command_group("The tamper-evident audit log.")

CheckpointOption = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="A file written by `audit checkpoint`: fail if the events it covers changed.",
    ),
]


def _read_checkpoint(path: Path) -> audit.Checkpoint:
    """The checkpoint in ``path``; an unreadable or malformed file is a usage error (exit 2)."""
    try:
        return audit.Checkpoint.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        common.fail(f"--checkpoint: cannot read {path}: {getattr(exc, 'strerror', None) or exc}", 2)
    except audit.InvalidCheckpointError as exc:
        common.fail(f"--checkpoint: {path} is not a checkpoint ({exc})", 2)


@app.command("verify")
def audit_verify(
    checkpoint_file: CheckpointOption = None, as_json: common.JsonFlag = False
) -> None:
    """Re-walk every keyed chain; exit 1 naming the first event (chain, seq) that does not hold."""
    checkpoint = _read_checkpoint(checkpoint_file) if checkpoint_file else None
    with common.unit_of_work() as session:
        result = audit.verify(session, checkpoint)
    if as_json:
        common.emit_json(result.document())
    if not result.ok:
        common.fail(f"audit log broken at {result.where}: {result.problem}")
    if not as_json:
        anchored = f"; checkpoint at event {checkpoint.seq} of chain 0 holds" if checkpoint else ""
        common.out.print(
            f"audit log intact: {result.events} events in {result.chains} chains{anchored}"
        )


@app.command("checkpoint")
def audit_checkpoint(
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Write to this file (owner-only) instead of stdout."),
    ] = None,
) -> None:
    """Verify the log and print a checkpoint anchoring every chain, {"seq", "hash", "at",
    "count"}; keep it elsewhere."""
    if out_file is None:
        with common.unit_of_work() as session:
            checkpoint = audit.take_checkpoint(session, actor=common.actor(), out="stdout")
        sys.stdout.write(checkpoint.model_dump_json() + "\n")
        return
    if out_file.is_dir():
        raise InvalidInputError(f"--out: {out_file} is a directory")
    # Staged (mkstemp: owner-only) before the checkpoint is recorded, so a bad path leaves
    # no event behind, then moved into place: a failure never clobbers the last checkpoint.
    try:
        descriptor, staged = tempfile.mkstemp(dir=out_file.parent, prefix=f".{out_file.name}.")
    except OSError as exc:
        raise InvalidInputError(f"--out: cannot write {out_file}: {exc.strerror}") from exc
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as staging:
            with common.unit_of_work() as session:
                checkpoint = audit.take_checkpoint(session, actor=common.actor(), out=str(out_file))
            staging.write(checkpoint.model_dump_json() + "\n")
        os.replace(staged, out_file)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    common.err.print(
        f"checkpoint at event {checkpoint.seq} of chain 0 ({checkpoint.count} events in all "
        f"chains) written to {out_file}",
        markup=False,
    )


@app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option(help="ISO 8601 time with offset")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "jsonl",
) -> None:
    """Write the audit log to stdout, chain by chain; the export itself is audited."""
    if fmt not in audit.EXPORT_WRITERS:
        raise InvalidInputError("--format must be csv or jsonl")
    start = common.parse_instant(since, "--since") if since else None
    # Closed at once when stdout fails, so the export cut short is audited then.
    with closing(audit.export(fmt, since=start, actor=common.actor())) as chunks:
        for chunk in chunks:
            sys.stdout.write(chunk)
