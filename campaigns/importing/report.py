"""What an import tells its caller: the report, each rejected cell, the file-level error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from campaigns.errors import CampaignError


class ImportFileError(CampaignError):
    """The file as a whole cannot be imported; the message is one line for the user."""


@dataclass(frozen=True)
class Rejection:
    line: int
    column: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "reason": self.reason}


@dataclass
class ImportReport:
    filename: str
    sha256: str
    rows: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    cancelled: int = 0
    attempts_skipped: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def usable_rows(self) -> int:
        """Rows that were valid (imported, updated or unchanged); 0 means the CLI fails."""
        return self.imported + self.updated + self.unchanged

    @property
    def rejected_lines(self) -> list[int]:
        return sorted({r.line for r in self.rejected})

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping (``json.dumps`` it) for ``campaigns import --json``."""
        return {
            "imported": self.imported,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": [r.to_json() for r in self.rejected],
            "rows": self.rows,
            "rejected_rows": len(self.rejected_lines),
            "cancelled": self.cancelled,
            "attempts_skipped": self.attempts_skipped,
        }
