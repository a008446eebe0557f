"""Alembic environment: the URL comes from the engine's settings or the caller's connection."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

import campaigns.models  # noqa: F401  (registers the tables)
from campaigns.db import UTCDateTime, make_engine
from campaigns.settings import get_settings

config = context.config
target_metadata = SQLModel.metadata
# Migrations that chain audit events get the key from here, not from the database.
config.attributes.setdefault("audit_key", get_settings().audit_key.get_secret_value())


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or get_settings().database_url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations stand alone: the engine's column types are rendered as the plain types
    # they create (SQLModel's AutoString a String, UTCDateTime a timezone-aware DateTime),
    # so an old migration never changes with today's code.
    if type_ == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported; run `campaigns db upgrade`")
run_migrations_online()
