"""The index of dials to a number holds dialed attempts only.

The per-number caps read it with ``dialing_at > ...``; an attempt not yet dialed
(scheduled, deferred, queued, each a new row version) no longer costs it a write.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ix_call_attempt_number_called_dialing_at"
_DIALED = sa.text("dialing_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("call_attempt") as batch:
        batch.drop_index(_NAME)
        batch.create_index(
            _NAME,
            ["number_called", "dialing_at"],
            postgresql_where=_DIALED,
            sqlite_where=_DIALED,
        )


def downgrade() -> None:
    with op.batch_alter_table("call_attempt") as batch:
        batch.drop_index(_NAME, postgresql_where=_DIALED, sqlite_where=_DIALED)
        batch.create_index(_NAME, ["number_called", "dialing_at"])
