"""circus-djmaster under test: its workers run directly (no circusd) for B1 and B2."""

from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import jobs
from benchmarks.common import PYTHON, Context, bench_env, connect, scalar, settle
from benchmarks.peers import (
    Drain,
    DrainSetting,
    drain_result,
    latencies_ms,
    paced,
    warm_up,
)
from circus_djmaster import JobCall, enqueue, enqueue_many
from circus_djmaster.store import sync_executor as store

DATABASE = "djbench_ours"
QUEUE = "bench"
GROUP = "bench"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_settings(
    path: Path,
    *,
    top: dict[str, Any],
    workers: list[dict[str, Any]],
    databases: dict[str, str] | None = None,
    circus: dict[str, Any] | None = None,
) -> Path:
    """A djmaster.toml; databases default to ``primary = "${DJMASTER_DATABASE_URL}"``."""
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    lines.append("[databases]")
    for name, url in (databases or {"primary": "${DJMASTER_DATABASE_URL}"}).items():
        lines.append(f"{name} = {toml_value(url)}")
    if circus:
        lines.append("[circus]")
        lines += [f"{key} = {toml_value(value)}" for key, value in circus.items()]
    for worker in workers:
        lines.append("[[workers]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in worker.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def worker_cmd(settings: Path, group: str = GROUP, database: str = "primary") -> list[str]:
    return [
        PYTHON,
        "-m",
        "circus_djmaster",
        "worker",
        "--settings",
        str(settings),
        "--group",
        group,
        "--database",
        database,
    ]


class Ours:
    name = "circus-djmaster"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.folder = ctx.folder("ours")
        self.url = ""

    def version(self) -> str:
        return metadata.version("circus-djmaster")

    def setup(self) -> None:
        self.url = self.ctx.fresh_database(DATABASE)
        with store.connect(self.url) as conn:
            store.migrate(conn)

    def settings(self, name: str, **worker: Any) -> Path:
        return write_settings(
            self.folder / f"{name}.toml",
            top={
                "app": "benchmarks.jobs",
                "log_file": str(self.folder / "djmaster.log"),
                "log_level": "warning",
            },
            workers=[{"name": GROUP, "queues": [QUEUE], **worker}],
        )

    # --- B1 -------------------------------------------------------------------------

    def drain(self, setting: DrainSetting, count: int) -> Drain:
        with connect(self.url) as conn:
            conn.execute("DELETE FROM delayed_jobs")
        enqueue_many([JobCall("benchmarks.jobs:noop", queue=QUEUE)] * count, database_url=self.url)
        settle(self.url, ["delayed_jobs"])
        # batch None: read_ahead left out, as a user who sets nothing runs it ("auto").
        batch = {} if setting.batch is None else {"read_ahead": setting.batch}
        settings = self.settings(
            f"drain-{setting.processes}x{setting.concurrency}-ra{setting.batch or 'default'}",
            max_threads=setting.concurrency,
            idle_timeout=0,
            **batch,
        )
        record = self.folder / "drain.rec"
        record.unlink(missing_ok=True)
        env = bench_env(DJMASTER_DATABASE_URL=self.url, **{jobs.RECORD_ENV: str(record)})
        procs = self.ctx.processes
        started = time.monotonic()
        workers = [
            procs.spawn(worker_cmd(settings), env=env, log=self.folder / "workers.out")
            for _ in range(setting.processes)
        ]
        ended = procs.wait_all(workers, timeout=60 + count / 50, what="workers")
        with connect(self.url) as conn:
            left = scalar(conn, "SELECT count(*) FROM delayed_jobs")
        if left:
            raise RuntimeError(f"{left} jobs left in delayed_jobs")
        return drain_result(count, started, ended, record)

    # --- B2 -------------------------------------------------------------------------

    def pickup_latencies(self, count: int, gap: float) -> list[float]:
        settings = self.settings(
            "warm",
            max_threads=1,
            read_ahead=1,
            idle_timeout="1h",
            sleep_delay=3600,
        )
        record = self.folder / "warm.rec"
        record.unlink(missing_ok=True)
        env = bench_env(DJMASTER_DATABASE_URL=self.url, **{jobs.RECORD_ENV: str(record)})
        worker = self.ctx.processes.spawn(
            worker_cmd(settings), env=env, log=self.folder / "workers.out"
        )
        try:
            with connect(self.url) as conn:

                def send(key: str) -> None:
                    enqueue("benchmarks.jobs:record", [key], queue=QUEUE, connection=conn)

                warm_up(record, send)
                sent = paced(count, gap, send)
                return latencies_ms(record, sent)
        finally:
            self.ctx.processes.stop(worker)
