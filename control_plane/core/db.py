"""State database: SQLAlchemy 2 engines for SQLite (embedded default) and PostgreSQL, and shared column types.

Both back-ends run the same SQL. SQLite is put in WAL mode with a busy timeout so that readers never block the
single writer and concurrent writers wait instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase

SQLITE_BUSY_TIMEOUT_MS = 30_000


class Base(DeclarativeBase):
    """Declarative base of every table refsys owns; Alembic compares against its metadata."""


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whichever database stored it.

    SQLite has no timezone type and hands back naive datetimes; without this, comparisons between stored and
    fresh times would fail or, worse, silently shift.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def create_db_engine(url: str, *, pool_size: int = 10, connect_timeout_s: float = 5.0) -> Engine:
    """Create an engine tuned for the back-end behind ``url``."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"connect_timeout": max(1, round(connect_timeout_s))},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def safe_url(url: str) -> str:
    """The URL with its password masked, fit for error messages and logs."""
    return sa.make_url(url).render_as_string(hide_password=True)


def dialect_insert(connection: sa.Connection) -> Callable[[sa.Table], postgresql.Insert | sqlite.Insert]:
    """The dialect's own ``insert`` (SQLite or PostgreSQL), which both offer ``ON CONFLICT`` the same way."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert
