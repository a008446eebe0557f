"""Scratch databases: migrated, empty, and gone afterwards.

PostgreSQL databases are created on the server ``$CAMPAIGNS_TEST_DATABASE_URL``
(e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``; the test run starts a throwaway
one when it is unset, see ``harness.servers``). The older pair still works and wins
when given: the admin connection ``$CAMPAIGNS_TEST_PG_ADMIN`` and the SQLAlchemy server
URL ``$CAMPAIGNS_TEST_PG_URL``. The environment is read at each use, not at import.
Copying a migrated template (``CREATE DATABASE ... TEMPLATE``, or copying the SQLite
file) is much faster than migrating each one.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from campaigns import migrate

# Without any of the variables: the machine's own server, as before the throwaway ones.
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"


def _server() -> str:
    """The server's URL from whichever variable names it."""
    for name in ("CAMPAIGNS_TEST_DATABASE_URL", "CAMPAIGNS_TEST_PG_ADMIN", "CAMPAIGNS_TEST_PG_URL"):
        if url := os.environ.get(name):
            return url
    return DEFAULT_SERVER


def pg_admin_dsn() -> str:
    """A libpq URL for CREATE/DROP DATABASE: the server's own database, ``postgres`` if none."""
    if dsn := os.environ.get("CAMPAIGNS_TEST_PG_ADMIN"):
        return dsn
    url = urlsplit(_server())
    path = url.path if url.path.strip("/") else "/postgres"
    return url._replace(scheme="postgresql", path=path).geturl()


def pg_host_url() -> str:
    """The server as a SQLAlchemy URL without a database: :func:`postgres_url` adds one."""
    if url := os.environ.get("CAMPAIGNS_TEST_PG_URL"):
        return url.rstrip("/")
    server = urlsplit(_server())
    return f"postgresql+psycopg://{server.netloc}"


def pg_admin(sql: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) outside a transaction."""
    with psycopg.connect(pg_admin_dsn(), autocommit=True) as conn:
        conn.execute(sql.encode())


def postgres_url(name: str) -> str:
    return f"{pg_host_url()}/{name}"


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


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.databases fresh NAME``: database NAME, empty; prints its URL."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "fresh":
        print("usage: python -m harness.databases fresh NAME", file=sys.stderr)
        return 2
    name = args[1]
    drop_postgres(name)
    pg_admin(f'CREATE DATABASE "{name}"')
    print(postgres_url(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
