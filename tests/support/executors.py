"""Run store statements on the executor production runs them with.

Workers, the CLI and ``enqueue`` run them on psycopg ``Connection``\\ s
(``store.sync_executor.execute``, which tests call directly); the master runs its own
(counts, ``seconds_to_next``, releases, LISTEN) on ``AsyncConnection``\\ s with its
session options (``store.async_executor``): :func:`run_as_master` does that from a
synchronous test.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from circus_djmaster.store import async_executor
from circus_djmaster.store.statements import Statement

T = TypeVar("T")


def run_as_master(url: str, statement: Statement[T]) -> T:
    """``statement`` on a new master connection to ``url`` (closed afterwards)."""

    async def run() -> T:
        conn = await async_executor.connect(url, timeout=10)
        try:
            return await async_executor.execute(conn, statement)
        finally:
            await conn.close()

    return asyncio.run(run())
