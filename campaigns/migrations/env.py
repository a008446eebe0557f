"""Alembic environment: the URL comes from the engine's settings or the caller's connection."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import campaigns.models  # noqa: F401  (registers the tables)
from campaigns.db import make_engine
from campaigns.settings import get_settings

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or get_settings().database_url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported; run `campaigns db upgrade`")
run_migrations_online()
