"""procrastinate under test: ``procrastinate schema --apply``, ``batch_defer_async``, and
``procrastinate worker --concurrency N --one-shot`` subprocesses (they exit when the queue
is empty). Jobs are kept as ``succeeded`` rows, procrastinate's default."""

from __future__ import annotations

import asyncio
import time
from importlib import metadata

from benchmarks import jobs
from benchmarks.common import PYTHON, BenchError, Context, bench_env, connect, scalar, settle
from benchmarks.peers import Drain, DrainSetting, apaced, awarm_up, drain_result, latencies_ms

DATABASE = "djbench_procrastinate"
APP = "benchmarks.peers.procrastinate_app.app"
TABLES = ["procrastinate_jobs", "procrastinate_events"]


class Procrastinate:
    name = "procrastinate"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.folder = ctx.folder("procrastinate")
        self.url = ""

    def version(self) -> str:
        return metadata.version("procrastinate")

    def env(self, record: str = "") -> dict[str, str]:
        from benchmarks.peers.procrastinate_app import URL_ENV

        return bench_env(**{URL_ENV: self.url, jobs.RECORD_ENV: record})

    def cli(self, *args: str) -> list[str]:
        return [PYTHON, "-m", "procrastinate", "--log-level", "warning", f"--app={APP}", *args]

    def setup(self) -> None:
        self.url = self.ctx.fresh_database(DATABASE)
        log = self.folder / "schema.out"
        proc = self.ctx.processes.spawn(self.cli("schema", "--apply"), env=self.env(), log=log)
        if proc.wait(60) != 0:
            raise BenchError(f"procrastinate schema --apply failed: {log.read_text()[-500:]}")

    def _defer(self, count: int) -> None:
        import procrastinate

        from benchmarks.peers.procrastinate_app import app, noop

        async def defer() -> None:
            with app.replace_connector(procrastinate.PsycopgConnector(conninfo=self.url)):
                async with app.open_async():
                    for start in range(0, count, 5000):
                        await noop.batch_defer_async(*([{}] * min(5000, count - start)))

        asyncio.run(defer())

    def drain(self, setting: DrainSetting, count: int) -> Drain:
        with connect(self.url) as conn:
            conn.execute("TRUNCATE procrastinate_jobs CASCADE")
        self._defer(count)
        settle(self.url, TABLES)
        record = self.folder / "drain.rec"
        record.unlink(missing_ok=True)
        cmd = self.cli(
            "worker", "--queues", "bench", "--concurrency", str(setting.concurrency), "--one-shot"
        )
        procs = self.ctx.processes
        env = self.env(str(record))
        started = time.monotonic()
        workers = [
            procs.spawn(cmd, env=env, log=self.folder / "workers.out")
            for _ in range(setting.processes)
        ]
        ended = procs.wait_all(workers, timeout=60 + count / 50, what="workers")
        with connect(self.url) as conn:
            left = scalar(
                conn, "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"
            )
        if left:
            raise BenchError(f"{left} jobs not succeeded")
        return drain_result(count, started, ended, record)

    def pickup_latencies(self, count: int, gap: float) -> list[float]:
        import procrastinate

        from benchmarks.peers.procrastinate_app import app
        from benchmarks.peers.procrastinate_app import record as record_task

        record = self.folder / "warm.rec"
        record.unlink(missing_ok=True)
        worker = self.ctx.processes.spawn(
            self.cli("worker", "--queues", "bench", "--concurrency", "1"),
            env=self.env(str(record)),
            log=self.folder / "workers.out",
        )

        async def measure() -> dict[str, float]:
            with app.replace_connector(procrastinate.PsycopgConnector(conninfo=self.url)):
                async with app.open_async():

                    async def send(key: str) -> None:
                        await record_task.defer_async(key=key)

                    await awarm_up(record, send)
                    return await apaced(count, gap, send)

        try:
            sent = asyncio.run(measure())
            return latencies_ms(record, sent)
        finally:
            self.ctx.processes.stop(worker)
