"""Appointments indexed by clinic and start time, in place of by clinic alone.

A clinic's appointments of one day (the daily run's read) are then found without
visiting the clinic's other rows.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("appointment") as batch:
        batch.create_index("ix_appointment_clinic_id_starts_at", ["clinic_id", "starts_at"])
        batch.drop_index("ix_appointment_clinic_id")


def downgrade() -> None:
    with op.batch_alter_table("appointment") as batch:
        batch.create_index("ix_appointment_clinic_id", ["clinic_id"])
        batch.drop_index("ix_appointment_clinic_id_starts_at")
