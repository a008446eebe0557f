"""Scratch databases: migrated, empty, and gone afterwards.

PostgreSQL databases are created through the admin connection
``$CAMPAIGNS_TEST_PG_ADMIN`` and reached under ``$CAMPAIGNS_TEST_PG_URL``;
copying a migrated template (``CREATE DATABASE ... TEMPLATE``, or copying the
SQLite file) is much faster than migrating each one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from campaigns import migrate

PG_ADMIN_DSN = os.environ.get(
    "CAMPAIGNS_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test"
)
PG_HOST_URL = os.environ.get(
    "CAMPAIGNS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432"
)


def pg_admin(sql: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) outside a transaction."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.encode())


def postgres_url(name: str) -> str:
    return f"{PG_HOST_URL}/{name}"


def drop_postgres(name: str) -> None:
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_postgres(
    prefix: str, *, template: str | None = None, revision: str = "head"
) -> Iterator[str]:
    """The URL of a new database: a copy of ``template``, or migrated to ``revision``."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    if template is not None:
        pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    else:
        pg_admin(f'CREATE DATABASE "{name}"')
    try:
        if template is None:
            migrate.upgrade(postgres_url(name), revision)
        yield postgres_url(name)
    finally:
        drop_postgres(name)


def migrated_postgres_template(name: str) -> str:
    """(Re)create database ``name`` migrated to head, to copy with :func:`scratch_postgres`."""
    drop_postgres(name)
    pg_admin(f'CREATE DATABASE "{name}"')
    migrate.upgrade(postgres_url(name))
    return name


def scratch_sqlite(path: Path, *, template: Path | None = None, revision: str = "head") -> str:
    """The URL of a SQLite database at ``path``: a copy of ``template``, or migrated."""
    if template is not None:
        shutil.copy(template, path)
    else:
        migrate.upgrade(f"sqlite:///{path}", revision)
    return f"sqlite:///{path}"
