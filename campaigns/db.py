"""Engine, sessions, the column types shared by every table, and the bulk helpers
(:func:`one_of`, :func:`copy_rows`, :func:`insert_returning_ids`).

Sessions are opened at the edges (CLI command, task, request) with
:func:`session_scope` and passed down; service functions never commit.
Every session the engine opens is an :class:`EngineSession`: the audit log's
commit hooks listen on that class only, never on every SQLAlchemy session in the
process (Celery's broker transport opens its own).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    DateTime,
    Engine,
    Integer,
    Table,
    Text,
    any_,
    bindparam,
    create_engine,
    event,
    insert,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from campaigns.settings import get_settings


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the database.

    SQLite has no timezone-aware type; naive values read back are UTC by construction.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def insert_or_skip(session: Session, table: Any) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``table`` in the session's dialect, which can skip rows whose key
    exists already (``.on_conflict_do_nothing``): PostgreSQL and SQLite both have it."""
    return (postgresql.insert if is_postgresql(session) else sqlite.insert)(table)


def one_of(session: Session, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """``column IN values``; one array parameter on PostgreSQL instead of a thousand."""
    if is_postgresql(session):
        element_type = Integer() if values and isinstance(values[0], int) else Text()
        return column == any_(bindparam("values", list(values), type_=ARRAY(element_type)))  # type: ignore[no-any-return]
    return column.in_(values)  # type: ignore[no-any-return]


def copy_rows(
    session: Session, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert rows with PostgreSQL's COPY, in the session's transaction: many times
    faster than an INSERT of many rows, with every constraint and index kept. Values
    are sent as given (timestamps timezone-aware). A failure is raised as SQLAlchemy
    raises any other (an :class:`~sqlalchemy.exc.IntegrityError` for a constraint),
    saying which constraint or type but quoting no value."""
    raw = session.connection().connection.driver_connection
    assert raw is not None
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:
        # The server's detail and context quote the row (patients' numbers and names):
        # only the first line of its message goes on, in an error of the same class.
        primary = exc.diag.message_primary or type(exc).__name__
        raise DBAPIError.instance(statement, None, type(exc)(primary), psycopg.Error) from None


# Below this many rows, drawing the ids and a COPY take longer than one INSERT.
COPY_FROM_ROWS = 50


def insert_returning_ids(
    session: Session, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> list[int]:
    """Insert rows (values of ``columns``) into a table with an integer ``id`` drawn from
    a sequence, returning their ids in order. Many rows on PostgreSQL: the ids are drawn
    first and the rows sent with :func:`copy_rows`; otherwise one INSERT ... RETURNING."""
    if not rows:
        return []
    if len(rows) < COPY_FROM_ROWS or not is_postgresql(session):
        values = [dict(zip(columns, row, strict=True)) for row in rows]
        insert_rows = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        return list(session.execute(insert_rows, values).scalars())
    ids = list(
        session.execute(
            text(
                "SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :n)"
            ),
            {"table": table.name, "n": len(rows)},
        ).scalars()
    )
    copy_rows(
        session,
        table.name,
        ("id", *columns),
        ((row_id, *row) for row_id, row in zip(ids, rows, strict=True)),
    )
    return ids


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
    # SQLite's driver opens transactions lazily; BEGIN IMMEDIATE on first use
    # makes every write transaction a single writer, which the claim relies on.
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_sqlite_file(url: str) -> None:
    """Create the file of a SQLite URL (and its folder) readable by its owner only.

    SQLite gives its -wal and -shm files the mode of the database file.
    """
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if not path or path == ":memory:" or Path(path).exists():
        return
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def make_engine(url: str, **kwargs: Any) -> Engine:
    # Parameters carry patients' numbers and names: never in logs or tracebacks.
    kwargs = {"hide_parameters": True} | kwargs
    if is_sqlite(url):
        create_sqlite_file(url)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # Worker threads hold a connection only between network waits; 20+20 per process
    # keeps N processes under PostgreSQL's max_connections.
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 20, "max_overflow": 20}
    return create_engine(url, **(options | kwargs))


@lru_cache(maxsize=4)
def get_engine(url: str | None = None) -> Engine:
    return make_engine(url or get_settings().database_url)


class EngineSession(Session):
    """A session of the engine's own; :mod:`campaigns.audit` writes the events
    recorded in its transactions when they commit."""


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=engine or get_engine(), class_=EngineSession, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session] | None = None) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any error."""
    session = (factory or session_factory())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
