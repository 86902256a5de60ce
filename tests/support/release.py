"""The master's release of a dead worker's jobs, run as the master runs it (its async
executor, on an AsyncConnection), from synchronous tests."""

from __future__ import annotations

from collections.abc import Sequence

from circus_djmaster.master.releases import DeathCharge, Release
from circus_djmaster.store import statements
from circus_djmaster.store.statements import ReleasedJob
from tests.support.executors import run_as_master


def release_dead(
    url: str, locked_by: Sequence[str], charge: DeathCharge, death: str = "worker died"
) -> list[ReleasedJob]:
    """Release the jobs of ``locked_by`` as the master's poller does; sorted by id."""
    release = Release(locked_by[0] if locked_by else "", death, charge)
    statement = statements.release_dead_workers_jobs(
        locked_by,
        charged=charge.charged,
        isolated=charge.isolated,
        isolate_all=charge.isolate_all,
        charged_error=release.charged_error(),
        isolated_error=release.isolated_error(),
    )
    return sorted(run_as_master(url, statement), key=lambda job: job.id)
