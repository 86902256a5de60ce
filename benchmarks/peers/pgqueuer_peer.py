"""pgqueuer under test: ``Queries.install()`` (what ``pgq install`` runs), bulk
``Queries.enqueue``, and workers (``benchmarks.peers.pgqueuer_app``) in ``drain`` mode, which
exit once the queue is empty. Concurrency is pgqueuer's batch size: it dispatches every
job of a dequeued batch at once."""

from __future__ import annotations

import asyncio
import time
from importlib import metadata
from typing import Any

from benchmarks import jobs
from benchmarks.common import (
    PYTHON,
    BenchError,
    Context,
    asyncpg_dsn,
    bench_env,
    connect,
    scalar,
    settle,
)
from benchmarks.peers import Drain, DrainSetting, apaced, awarm_up, drain_result, latencies_ms

DATABASE = "djbench_pgqueuer"
TABLES = ["pgqueuer", "pgqueuer_log"]


class PgQueuer:
    name = "pgqueuer"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.folder = ctx.folder("pgqueuer")
        self.url = ""

    def version(self) -> str:
        return metadata.version("pgqueuer")

    def env(self, record: str = "") -> dict[str, str]:
        from benchmarks.peers.pgqueuer_app import DSN_ENV

        return bench_env(**{DSN_ENV: asyncpg_dsn(self.url), jobs.RECORD_ENV: record})

    def cmd(self, batch: int, mode: str) -> list[str]:
        return [
            PYTHON,
            "-m",
            "benchmarks.peers.pgqueuer_app",
            "--batch-size",
            str(batch),
            "--mode",
            mode,
        ]

    async def _queries(self) -> Any:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        conn = await asyncpg.connect(asyncpg_dsn(self.url))
        return conn, Queries(AsyncpgDriver(conn))

    def setup(self) -> None:
        self.url = self.ctx.fresh_database(DATABASE)

        async def install() -> None:
            conn, queries = await self._queries()
            try:
                await queries.install()
            finally:
                await conn.close()

        asyncio.run(install())

    def drain(self, setting: DrainSetting, count: int) -> Drain:
        async def enqueue() -> None:
            conn, queries = await self._queries()
            try:
                await conn.execute("TRUNCATE pgqueuer, pgqueuer_log")
                for start in range(0, count, 5000):
                    n = min(5000, count - start)
                    await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
            finally:
                await conn.close()

        asyncio.run(enqueue())
        settle(self.url, TABLES)
        record = self.folder / "drain.rec"
        record.unlink(missing_ok=True)
        procs = self.ctx.processes
        env = self.env(str(record))
        started = time.monotonic()
        workers = [
            procs.spawn(self.cmd(setting.batch, "drain"), env=env, log=self.folder / "workers.out")
            for _ in range(setting.processes)
        ]
        ended = procs.wait_all(workers, timeout=60 + count / 50, what="workers")
        with connect(self.url) as conn:
            left = scalar(conn, "SELECT count(*) FROM pgqueuer")
        if left:
            raise BenchError(f"{left} jobs left in the queue table")
        return drain_result(count, started, ended, record)

    def pickup_latencies(self, count: int, gap: float) -> list[float]:
        record = self.folder / "warm.rec"
        record.unlink(missing_ok=True)
        worker = self.ctx.processes.spawn(
            self.cmd(1, "continuous"), env=self.env(str(record)), log=self.folder / "workers.out"
        )

        async def measure() -> dict[str, float]:
            conn, queries = await self._queries()
            try:

                async def send(key: str) -> None:
                    await queries.enqueue("record", key.encode())

                await awarm_up(record, send)
                return await apaced(count, gap, send)
            finally:
                await conn.close()

        try:
            sent = asyncio.run(measure())
            return latencies_ms(record, sent)
        finally:
            self.ctx.processes.stop(worker)
