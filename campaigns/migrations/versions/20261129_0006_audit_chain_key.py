"""Key the audit chain: each event stores its key's fingerprint; existing events re-chained.

Events written before this revision were chained with plain SHA-256 and without
their sequence number. When that chain still holds, it is re-chained here with
HMAC-SHA256 under ``CAMPAIGNS_AUDIT_KEY`` (set it before upgrading) and numbered
1, 2, 3 ... (gaps left by rolled-back transactions closed; the intact chain proves
nothing was removed). A chain that no longer holds is left as it is, unkeyed, so
``audit verify`` keeps reporting it instead of a re-chain laundering it.

Revision ID: 0006
Revises: 0002
Create Date: 2026-11-29
"""

import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision: str = "0006"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")
_GENESIS_HASH = "0" * 64


def _canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _set_append_only_guard(enabled: bool) -> None:
    if op.get_bind().dialect.name == "postgresql":
        action = "ENABLE" if enabled else "DISABLE"
        op.execute(f"ALTER TABLE audit_event {action} TRIGGER audit_event_append_only")
        return
    for statement in ("UPDATE", "DELETE"):
        name = f"audit_event_no_{statement.lower()}"
        if enabled:
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {statement} ON audit_event "
                "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END"
            )
        else:
            op.execute(f"DROP TRIGGER {name}")


def _rechain_with_key(secret: str) -> None:
    rows = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT seq, at, actor, kind, clinic_id, appointment_id, attempt_id, payload,"
                " prev_hash, hash FROM audit_event ORDER BY seq"
            ).columns(at=sa.DateTime(timezone=True))
        )
        .all()
    )
    prev = _GENESIS_HASH
    for row in rows:
        fields = [row.actor, row.kind, row.clinic_id, row.appointment_id, row.attempt_id]
        legacy = _canonical([prev, _as_utc(row.at).isoformat(), *fields, row.payload])
        if row.prev_hash != prev or hashlib.sha256(legacy).hexdigest() != row.hash:
            log.warning("audit log broken at event %s: left unkeyed for `audit verify`", row.seq)
            return
        prev = row.hash
    if not rows:
        return
    raw = secret.encode()
    key_id = hmac.new(raw, b"campaigns audit key id", hashlib.sha256).hexdigest()[:16]
    _set_append_only_guard(False)
    prev = _GENESIS_HASH
    for seq, row in enumerate(rows, start=1):
        fields = [row.actor, row.kind, row.clinic_id, row.appointment_id, row.attempt_id]
        material = _canonical([seq, prev, _as_utc(row.at).isoformat(), *fields, row.payload])
        digest = hmac.new(raw, material, hashlib.sha256).hexdigest()
        op.get_bind().execute(
            sa.text(
                "UPDATE audit_event SET seq = :seq, prev_hash = :prev, hash = :hash,"
                " key_id = :key_id WHERE seq = :old_seq"
            ),
            {"seq": seq, "prev": prev, "hash": digest, "key_id": key_id, "old_seq": row.seq},
        )
        prev = digest
    _set_append_only_guard(True)


def upgrade() -> None:
    op.add_column(
        "audit_event",
        sa.Column("key_id", sa.String(length=16), server_default="", nullable=False),
    )
    _rechain_with_key(context.config.attributes["audit_key"])


def downgrade() -> None:
    # The events keep their keyed hashes: the previous revision's verify reports them.
    op.drop_column("audit_event", "key_id")
