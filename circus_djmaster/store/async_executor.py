"""Async twins of the store functions the master needs, for its asyncio loop.

Same named queries (``sql/queries.sql``) and parameters as :mod:`circus_djmaster.store.statements`,
run on a psycopg ``AsyncConnection``; the master never blocks its loop on a database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from circus_djmaster.store.queries import query
from circus_djmaster.store.statements import (
    ChargedJob,
    JobFilter,
    ReleasedJob,
    bounded_session,
    release_params,
    released_jobs,
)

__all__ = [
    "connect",
    "count_ready",
    "listen",
    "probe",
    "release_dead_workers_jobs",
    "seconds_to_next",
]

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
    """An autocommit connection whose waits are bounded by ``timeout`` seconds
    (store.bounded_session: connect and statement timeouts, TCP keepalives), so a slow
    or unreachable database costs a bounded wait. The URL is never logged."""
    return await psycopg.AsyncConnection.connect(
        url,
        autocommit=True,
        application_name=application_name,
        **bounded_session(url, timeout, options=MASTER_SESSION_OPTIONS),
    )


async def count_ready(
    conn: AsyncConnection, job_filter: JobFilter, *, lock_timeout: float, limit: int
) -> int:
    params = job_filter.params() | {"lock_timeout": lock_timeout, "limit": limit}
    cursor = await conn.execute(job_filter.query("count_ready"), params, prepare=True)
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def seconds_to_next(conn: AsyncConnection, job_filter: JobFilter) -> float | None:
    """Seconds until the next scheduled job of the filter is due (database clock)."""
    cursor = await conn.execute(
        job_filter.query("seconds_to_next"), job_filter.params(), prepare=True
    )
    row = await cursor.fetchone()
    return None if row is None or row[0] is None else float(row[0])


async def release_dead_workers_jobs(
    conn: AsyncConnection,
    locked_by: Sequence[str],
    *,
    charged: Sequence[ChargedJob] = (),
    isolated: Sequence[int] = (),
    isolate_all: bool = False,
    charged_error: str,
    isolated_error: str,
) -> list[ReleasedJob]:
    """Release dead workers' jobs: the rules are in the query's comment (queries.sql)."""
    if not locked_by:
        return []
    params = release_params(
        locked_by,
        charged=charged,
        isolated=isolated,
        isolate_all=isolate_all,
        charged_error=charged_error,
        isolated_error=isolated_error,
    )
    cursor = await conn.execute(query("release_dead_workers_jobs"), params)
    return released_jobs(await cursor.fetchall())


async def locked_by_on_host(conn: AsyncConnection, host: str) -> list[str]:
    """Distinct ``locked_by`` values of live locked jobs of ``host``'s workers."""
    cursor = await conn.execute(query("locked_by_on_host"), {"prefix": f"host:{host} pid:"})
    return [row[0] for row in await cursor.fetchall()]


async def listen(conn: AsyncConnection) -> None:
    await conn.execute(query("listen"))


async def probe(conn: AsyncConnection) -> None:
    """A round trip: fails if the connection died silently."""
    await conn.execute("SELECT 1")
