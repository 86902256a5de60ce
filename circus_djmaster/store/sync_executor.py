"""The synchronous executor: psycopg ``Connection``\\ s of workers, the CLI and ``enqueue``.

Workers and the CLI open their own autocommit connections (:func:`connect`), so each
statement is its own short transaction; ``enqueue`` also runs statements on a caller's
connection, inside the caller's transaction. The statements are those of
:mod:`.statements`, shared with the master's :mod:`.async_executor`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from circus_djmaster.store.queries import schema_sql
from circus_djmaster.store.session import bounded_session
from circus_djmaster.store.statements import Statement

__all__ = ["MIGRATION_LOCK_KEY", "connect", "execute", "migrate"]

T = TypeVar("T")

# Serialises concurrent migrations (an arbitrary constant: "djmaster" in ASCII). The
# Django app's migration takes the same lock (contrib/django/schema.py).
MIGRATION_LOCK_KEY = 0x646A6D6173746572


def connect(
    url: str, *, application_name: str = "djmaster", timeout: float | None = None
) -> psycopg.Connection[Any]:
    """An autocommit connection; the URL is never logged or put in an error message.

    With ``timeout`` (seconds) the session is bounded as :func:`.session.bounded_session`
    says; without it (migrations, the CLI), only the server's own settings apply.
    """
    extra = bounded_session(url, timeout) if timeout is not None else {}
    return psycopg.connect(url, autocommit=True, application_name=application_name, **extra)


def execute(conn: psycopg.Connection[Any], statement: Statement[T]) -> T:
    """Run ``statement`` on ``conn`` and return what it reads from its rows.

    Raises psycopg's errors. A statement marked ``skip`` makes no round trip.
    """
    if statement.skip:
        return statement.read([])
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(statement.sql, statement.params, prepare=statement.prepare)
        rows = cursor.fetchall() if statement.returns_rows else []
    return statement.read(rows)


def migrate(conn: psycopg.Connection[Any]) -> None:
    """Create or update the schema. Idempotent; safe to run from several hosts at once."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(schema_sql())
