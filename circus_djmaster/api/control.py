"""Cancelling jobs from code: :func:`cancel` (``djmaster jobs cancel`` runs the same
statement).

A job no worker holds is removed at once (kept as ``cancelled`` in
``delayed_jobs_finished`` when finished jobs are kept for it); a job a worker holds is
asked to stop: its worker sets ``current_job().cancel_requested`` (within about a
second), the job's code may end there, and the job is never run again. A running job is
never interrupted: only its own code knows where it can stop safely.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from circus_djmaster.api.targets import ConnectionFactory, sync_target
from circus_djmaster.exceptions import EnqueueError
from circus_djmaster.store import statements, sync_executor
from circus_djmaster.store.statements import CancelResult

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = ["CancelResult", "cancel"]


def cancel(
    ids: Sequence[int] = (),
    *,
    queue: str | None = None,
    keep_finished: float | dt.timedelta | None = None,
    connection: psycopg.Connection[Any] | None = None,
    database_url: str | None = None,
    pool: ConnectionPool[Any] | None = None,
    connection_factory: ConnectionFactory | None = None,
    using: str | None = None,
) -> CancelResult:
    """Cancel the live (not failed) jobs of ``ids``, or every live job of ``queue``.

    Returns a :class:`~circus_djmaster.store.statements.CancelResult`: ``cancelled``,
    the ids removed before they started; ``requested``, the ids of running jobs asked
    to stop. Ids in neither were not live (finished, failed or unknown).
    ``keep_finished`` (seconds): how long a removed job is kept as cancelled when it
    was enqueued without its own ``keep_finished`` (default: not kept). The database is
    chosen as for :func:`~circus_djmaster.api.jobs.enqueue` (on the caller's connection
    it joins the caller's transaction).

    Raises EnqueueError for bad arguments, psycopg's errors for database failures.
    """
    if not ids and queue is None:
        raise EnqueueError("give job ids or a queue to cancel")
    if ids and queue is not None:
        raise EnqueueError("give job ids or a queue, not both")
    if any(isinstance(job_id, bool) or not isinstance(job_id, int) for job_id in ids):
        raise EnqueueError(f"job ids are integers, got {list(ids)!r}")
    keep = (
        keep_finished.total_seconds()
        if isinstance(keep_finished, dt.timedelta)
        else (float(keep_finished or 0.0))
    )
    statement = statements.cancel_jobs(ids, queue=queue, keep_default=keep)
    with sync_target(connection, database_url, pool, connection_factory, using) as conn:
        return sync_executor.execute(conn, statement)
