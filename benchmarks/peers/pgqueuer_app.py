"""A pgqueuer worker for the benchmarks: ``python -m benchmarks.peers.pgqueuer_app``.

``create`` is the factory ``pgq run`` expects: a bare :class:`QueueManager` on one asyncpg
connection (no scheduler), with async entrypoints, pgqueuer's leanest worker. The DSN comes
from ``$DJBENCH_PGQUEUER_DSN``. ``main`` runs it through ``pgqueuer.run`` (what ``pgq run``
calls) because ``pgq run`` of pgqueuer 1.6 fails on its ``--log-level`` option with the
typer installed here (``AttributeError: 'str' object has no attribute 'name'``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pgqueuer
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager
from pgqueuer.domain.types import QueueExecutionMode

from benchmarks import jobs

DSN_ENV = "DJBENCH_PGQUEUER_DSN"


@asynccontextmanager
async def create() -> AsyncIterator[QueueManager]:
    conn = await asyncpg.connect(os.environ[DSN_ENV])
    manager = QueueManager(Queries(AsyncpgDriver(conn)))

    @manager.entrypoint("noop")
    async def noop(job: Job) -> None:
        jobs.noop()

    @manager.entrypoint("record")
    async def record(job: Job) -> None:
        jobs.record((job.payload or b"").decode())

    try:
        yield manager
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--mode", choices=[m.value for m in QueueExecutionMode], default="drain")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(
        pgqueuer.run(create, batch_size=args.batch_size, mode=QueueExecutionMode(args.mode))
    )


if __name__ == "__main__":
    main()
