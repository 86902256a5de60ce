"""The asynchronous executor: psycopg ``AsyncConnection``\\ s of the master's loop (and
``aenqueue``). The master never blocks its loop on a database.

The statements are those of :mod:`.statements`, shared with the workers'
:mod:`.sync_executor`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from circus_djmaster.store.session import bounded_session
from circus_djmaster.store.statements import Statement

__all__ = ["MASTER_SESSION_OPTIONS", "AsyncConnection", "connect", "execute"]

T = TypeVar("T")
AsyncConnection = psycopg.AsyncConnection[Any]

# The master's counts run as prepared statements with generic plans. Failed jobs keep
# their (old) run_at, so the planner, which takes run_at <= now() and failed_at IS NULL
# for independent, overestimates the ready rows by orders of magnitude; with a LIMIT a
# custom plan then prefers a sequential scan that reads through every failed row. The
# generic plan walks the partial (queue, run_at) index: a fraction of a millisecond at
# millions of rows (benchmarks/ B4).
MASTER_SESSION_OPTIONS = "-c plan_cache_mode=force_generic_plan"


async def connect(
    url: str,
    *,
    application_name: str = "djmaster-master",
    timeout: float = 10.0,
) -> AsyncConnection:
    """An autocommit connection of the master whose waits are bounded by ``timeout``
    seconds (:func:`.session.bounded_session`), so a slow or unreachable database costs
    a bounded wait. The URL is never logged."""
    return await psycopg.AsyncConnection.connect(
        url,
        autocommit=True,
        application_name=application_name,
        **bounded_session(url, timeout, options=MASTER_SESSION_OPTIONS),
    )


async def execute(conn: psycopg.AsyncConnection[Any], statement: Statement[T]) -> T:
    """Run ``statement`` on ``conn`` and return what it reads from its rows.

    Raises psycopg's errors. A statement marked ``skip`` makes no round trip.
    """
    if statement.skip:
        return statement.read([])
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(statement.sql, statement.params, prepare=statement.prepare)
        rows = await cursor.fetchall() if statement.returns_rows else []
    return statement.read(rows)
