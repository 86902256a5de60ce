"""The master's release of a dead worker's jobs, run as the master runs it (astore, on an
AsyncConnection), from synchronous tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from circus_djmaster.master.polling import Release
from circus_djmaster.store import async_executor as astore
from circus_djmaster.store.statements import ReleasedJob
from circus_djmaster.worker.outcomes import DeathCharge


def release_dead(
    url: str, locked_by: Sequence[str], charge: DeathCharge, death: str = "worker died"
) -> list[ReleasedJob]:
    """Release the jobs of ``locked_by`` as the master's poller does; sorted by id."""
    release = Release(locked_by[0] if locked_by else "", death, charge)

    async def run() -> list[ReleasedJob]:
        conn = await astore.connect(url, timeout=10)
        try:
            return await astore.release_dead_workers_jobs(
                conn,
                locked_by,
                charged=charge.charged,
                isolated=charge.isolated,
                isolate_all=charge.isolate_all,
                charged_error=release.charged_error(),
                isolated_error=release.isolated_error(),
            )
        finally:
            await conn.close()

    return sorted(asyncio.run(run()), key=lambda job: job.id)
