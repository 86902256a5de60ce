"""B9 enqueue latency from a web-style caller: new connection vs pool vs own connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from benchmarks.common import Context, Row, Section, Table, connect, percentile
from circus_djmaster import aenqueue, enqueue
from circus_djmaster.store import sync_executor as store

HOW = """\
What a request handler pays to enqueue one job, one call at a time, with circus-djmaster's
own API (`enqueue` / `aenqueue` of `benchmarks.jobs:noop` with one argument, on a migrated
`delayed_jobs` that nobody drains): **new connection** = `database_url=` (a connection
opened and closed per call, what `.delay()` does); **pool** = `pool=` with a psycopg_pool
`ConnectionPool` / `AsyncConnectionPool` (min_size 2, opened and warm); **own
connection** = `connection=` with the caller's open autocommit connection (Django's
connection outside `atomic()` is one). Each call commits its job (fsync on). Sync calls
from a plain loop; async ones from one asyncio task. {count} calls per configuration and
run after {warmup} warm-up calls (psycopg prepares the statement after 5), the table
emptied before each; time = `time.perf_counter()` around the call; percentiles in ms;
configurations interleaved run by run."""

SETTINGS = {
    "sync/new": ("sync", "new connection per call"),
    "sync/pool": ("sync", "ConnectionPool"),
    "sync/own": ("sync", "caller's connection"),
    "async/new": ("async", "new connection per call"),
    "async/pool": ("async", "AsyncConnectionPool"),
    "async/own": ("async", "caller's AsyncConnection"),
}
JOB = "benchmarks.jobs:noop"


def _sync_latencies(call: Callable[[int], Any], count: int, warmup: int) -> list[float]:
    for n in range(warmup):
        call(n)
    latencies = []
    for n in range(count):
        started = time.perf_counter()
        call(n)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def _async_latencies(
    call: Callable[[int], Awaitable[Any]], count: int, warmup: int
) -> list[float]:
    for n in range(warmup):
        await call(n)
    latencies = []
    for n in range(count):
        started = time.perf_counter()
        await call(n)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def measure(key: str, url: str, count: int, warmup: int) -> list[float]:
    """Latencies (ms) of ``count`` enqueues of configuration ``key``."""
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    kind, target = key.split("/")
    if kind == "sync":
        if target == "new":
            return _sync_latencies(lambda n: enqueue(JOB, [n], database_url=url), count, warmup)
        if target == "pool":
            with ConnectionPool(url, min_size=2, max_size=4, open=True) as pool:
                pool.wait()
                return _sync_latencies(lambda n: enqueue(JOB, [n], pool=pool), count, warmup)
        with psycopg.connect(url, autocommit=True) as conn:
            return _sync_latencies(lambda n: enqueue(JOB, [n], connection=conn), count, warmup)

    async def run() -> list[float]:
        if target == "new":
            return await _async_latencies(
                lambda n: aenqueue(JOB, [n], database_url=url), count, warmup
            )
        if target == "pool":
            async with AsyncConnectionPool(url, min_size=2, max_size=4) as apool:
                await apool.wait()
                return await _async_latencies(
                    lambda n: aenqueue(JOB, [n], pool=apool), count, warmup
                )
        aconn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        async with aconn:
            return await _async_latencies(
                lambda n: aenqueue(JOB, [n], connection=aconn), count, warmup
            )

    return asyncio.run(run())


def run(ctx: Context) -> Section:
    count = ctx.size(1000, 100)
    warmup = ctx.size(50, 10)
    section = Section(
        "B9", "Enqueue latency from a web app", HOW.format(count=count, warmup=warmup)
    )
    table = Table("", [("p50", "p50 ms"), ("p90", "p90 ms"), ("p99", "p99 ms")], [])
    section.tables.append(table)
    rows: dict[str, Row] = {}
    for key, (kind, setting) in SETTINGS.items():
        rows[key] = Row(f"b9/{key}", f"circus-djmaster ({kind})", setting)
        table.rows.append(rows[key])
    url = ctx.fresh_database("djbench_b9")
    with store.connect(url) as conn:
        store.migrate(conn)
    for _ in range(ctx.runs):
        for key, row in rows.items():
            if row.error is not None:
                continue
            with connect(url) as conn:
                conn.execute("TRUNCATE delayed_jobs")
            try:
                latencies = measure(key, url, count, warmup)
            except Exception as error:
                row.fail(error)
                continue
            for p in (50, 90, 99):
                row.add(f"p{p}", percentile(latencies, p))
    ratios = []
    for kind in ("sync", "async"):
        pool, own = rows[f"{kind}/pool"].median("p50"), rows[f"{kind}/own"].median("p50")
        new = rows[f"{kind}/new"].median("p50")
        if pool and own and new:
            ratios.append(
                f"{kind}: pool p50 ÷ own connection p50 = {pool / own:.2f}; "
                f"new connection ÷ pool = {new / pool:.1f}"
            )
    if ratios:
        section.notes.append("Ratios of the medians: " + "; ".join(ratios) + ".")
    return section
