"""Every statement on ``delayed_jobs``, built once: which named query, with which
parameters, and how its rows read back.

A :class:`Statement` is plain data. The two executors run it: the synchronous one
(:mod:`.sync_executor`: workers, the CLI, ``enqueue``) and the asynchronous one
(:mod:`.async_executor`: the master's loop, ``aenqueue``). So a statement has one
parameter builder whichever side runs it, and the integration tests run the very
statements production runs, on the executor production runs them with.

Builders never touch a connection. A statement with nothing to do (no ids, no owner)
is marked ``skip``: the executors then make no round trip and read an empty result.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from circus_djmaster.store.queries import query

__all__ = [
    "INT4_MAX",
    "INT4_MIN",
    "CancelResult",
    "ChargedJob",
    "FinishOutcome",
    "FinishedJob",
    "GroupStats",
    "JobFilter",
    "RecurringState",
    "ReleaseOutcome",
    "ReleasedJob",
    "ReservedJob",
    "Row",
    "Statement",
    "UniqueInsert",
]

#: A result row: column name -> value (the executors read rows as dicts).
Row = dict[str, Any]
T_co = TypeVar("T_co", covariant=True)

# Unset priority bounds become the int4 range, so the SQL is always a plain range.
INT4_MIN = -(2**31)
INT4_MAX = 2**31 - 1

if TYPE_CHECKING:
    # Only for annotations: a Protocol class costs a worker's start-up time.
    from typing import Protocol

    class GroupFilterFields(Protocol):
        """What a worker group (``config.settings.WorkerGroup``) says about the jobs it takes."""

        @property
        def queues(self) -> tuple[str, ...]: ...
        @property
        def min_priority(self) -> int | None: ...
        @property
        def max_priority(self) -> int | None: ...


def _nothing(_rows: list[Row]) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Statement(Generic[T_co]):
    """One statement: the named query of ``sql/queries.sql``, its parameters, and
    ``read``, which turns the result rows into the value the caller gets.

    ``returns_rows`` is False for statements without a result (UPDATE without
    RETURNING...): the executor then fetches nothing. ``prepare`` is psycopg's
    ``prepare=`` (None: psycopg decides). ``skip``: nothing to do, no round trip.
    """

    name: str
    params: Mapping[str, Any]
    read: Callable[[list[Row]], T_co]
    returns_rows: bool = True
    prepare: bool | None = None
    skip: bool = False

    @property
    def sql(self) -> str:
        return query(self.name)


def _write(name: str, params: Mapping[str, Any], *, skip: bool = False) -> Statement[None]:
    return Statement(name, params, _nothing, returns_rows=False, skip=skip)


def _ids(rows: list[Row]) -> list[int]:
    return [int(row["id"]) for row in rows]


# --------------------------------------------------------------------- filters


@dataclasses.dataclass(frozen=True)
class JobFilter:
    """Which jobs a worker group takes: its queues (empty: all) and priority range."""

    queues: tuple[str, ...] = ()
    min_priority: int | None = None
    max_priority: int | None = None

    @classmethod
    def of(cls, group: GroupFilterFields) -> JobFilter:
        """The filter of a worker group of the settings."""
        return cls(tuple(group.queues), group.min_priority, group.max_priority)

    def params(self) -> dict[str, Any]:
        return {
            "queues": list(self.queues),
            "min_priority": INT4_MIN if self.min_priority is None else self.min_priority,
            "max_priority": INT4_MAX if self.max_priority is None else self.max_priority,
        }

    def variant(self, stem: str) -> str:
        """The name of the query of ``stem`` for this filter: ``stem_in_queues`` (an
        index range scan per queue) or ``stem_any_queue`` (queries.py makes each
        ``_any_queue`` twin from its ``_in_queues`` query)."""
        return f"{stem}_in_queues" if self.queues else f"{stem}_any_queue"


# ---------------------------------------------------------------- the worker's


@dataclasses.dataclass(frozen=True)
class ReservedJob:
    id: int
    priority: int
    attempts: int
    handler: str
    queue: str | None
    run_at: dt.datetime
    run_alone: bool = False  # its worker died running it beside others: run it alone
    keep_finished: float | None = None  # seconds, set at enqueue (None: the group's)
    cancel_requested: bool = False  # `djmaster jobs cancel` asked to stop it


def _reserved(rows: list[Row]) -> list[ReservedJob]:
    jobs = [ReservedJob(**row) for row in rows]
    # UPDATE ... RETURNING does not keep the subquery's order.
    jobs.sort(key=lambda job: (job.priority, job.run_at))
    return jobs


def reserve_jobs(
    job_filter: JobFilter,
    *,
    locked_by: str,
    limit: int,
    lock_timeout: float,
    done: Sequence[int] = (),
) -> Statement[list[ReservedJob]]:
    """Lock up to ``limit`` ready jobs (highest priority, then oldest, first); delete
    the ``done`` ones in the same round trip."""
    params = job_filter.params() | {
        "locked_by": locked_by,
        "limit": limit,
        "lock_timeout": lock_timeout,
        "done": list(done),
    }
    return Statement(job_filter.variant("reserve_jobs"), params, _reserved)


def complete_jobs(job_ids: Sequence[int]) -> Statement[None]:
    """Delete succeeded jobs (when they could not wait for the next reserve)."""
    return _write("complete_jobs", {"ids": list(job_ids)}, skip=not job_ids)


def touch_jobs(job_ids: Sequence[int], *, locked_by: str) -> Statement[None]:
    """Refresh the locks ``locked_by`` holds on ``job_ids``."""
    return _write("touch_jobs", {"ids": list(job_ids), "locked_by": locked_by}, skip=not job_ids)


def retry_job(
    job_id: int, *, attempts: int, last_error: str, run_at: dt.datetime | None = None
) -> Statement[None]:
    """Unlock a failed job and schedule it again: at ``run_at``, or after
    ``attempts**4 + 5`` seconds on the database clock (delayed_job's back-off)."""
    params = {"id": job_id, "attempts": attempts, "last_error": last_error, "run_at": run_at}
    return _write("retry_job", params)


def fail_job(job_id: int, *, attempts: int, last_error: str) -> Statement[None]:
    """Fail a job for good: ``failed_at`` set, kept for inspection."""
    return _write("fail_job", {"id": job_id, "attempts": attempts, "last_error": last_error})


def delete_job(job_id: int) -> Statement[None]:
    """Delete a job that failed for good (``destroy_failed_jobs``)."""
    return _write("delete_job", {"id": job_id})


def fail_exhausted_job(job_id: int, *, note: str) -> Statement[None]:
    """Fail, unrun, a job reserved with no attempt left; ``note`` goes above its error."""
    return _write("fail_exhausted_job", {"id": job_id, "note": note})


def unlock_jobs(*, locked_by: str) -> Statement[list[int]]:
    """Hand back every live job ``locked_by`` holds (QUIT); the ids handed back."""
    return Statement("unlock_jobs", {"locked_by": locked_by}, _ids)


def unlock_job_ids(job_ids: Sequence[int], *, locked_by: str) -> Statement[None]:
    """Hand back jobs reserved ahead and never started."""
    params = {"ids": list(job_ids), "locked_by": locked_by}
    return _write("unlock_job_ids", params, skip=not job_ids)


def database_now() -> Statement[dt.datetime]:
    """The database's ``now()`` (aware)."""
    return Statement("database_now", {}, lambda rows: rows[0]["now"])


# ---------------------------------------------------------------- the master's

# The master's counts run as prepared statements with generic plans (its sessions set
# plan_cache_mode, async_executor.MASTER_SESSION_OPTIONS): see there why.


def count_ready(job_filter: JobFilter, *, lock_timeout: float, limit: int) -> Statement[int]:
    """Ready jobs of the filter, counted up to ``limit`` (a capped count stays cheap)."""
    params = job_filter.params() | {"lock_timeout": lock_timeout, "limit": limit}
    return Statement(
        job_filter.variant("count_ready"),
        params,
        lambda rows: int(rows[0]["ready"]) if rows else 0,
        prepare=True,
    )


def _seconds(rows: list[Row]) -> float | None:
    value = rows[0]["seconds"] if rows else None
    return None if value is None else float(value)


def seconds_to_next(job_filter: JobFilter) -> Statement[float | None]:
    """Seconds until the next scheduled job of the filter is due (database clock)."""
    return Statement(
        job_filter.variant("seconds_to_next"), job_filter.params(), _seconds, prepare=True
    )


class ReleaseOutcome(enum.Enum):
    """What the release of a dead worker's job did to it (release_dead_workers_jobs)."""

    RELEASED = "released"  # held, not running: back as it was
    ISOLATED = "isolated"  # running beside others: not charged, runs alone from now on
    RETRY = "retry"  # running alone: charged an attempt, due again at once
    FAILED = "failed"  # running alone, its last attempt: failed_at set
    DESTROYED = "destroyed"  # as FAILED, with destroy_failed_jobs: deleted


@dataclasses.dataclass(frozen=True)
class ReleasedJob:
    id: int
    attempts: int
    outcome: ReleaseOutcome


@dataclasses.dataclass(frozen=True)
class ChargedJob:
    """A job charged for its worker's death, with its own limits."""

    id: int
    max_attempts: int
    destroy_failed_jobs: bool


def _released(rows: list[Row]) -> list[ReleasedJob]:
    return [
        ReleasedJob(int(row["id"]), int(row["attempts"]), ReleaseOutcome(row["outcome"]))
        for row in rows
    ]


def release_dead_workers_jobs(
    locked_by: Sequence[str],
    *,
    charged: Sequence[ChargedJob] = (),
    isolated: Sequence[int] = (),
    isolate_all: bool = False,
    charged_error: str,
    isolated_error: str,
) -> Statement[list[ReleasedJob]]:
    """Release the jobs of dead workers (``locked_by``): the rules are in the query's
    comment (queries.sql) and docs/RELIABILITY.md."""
    params = {
        "locked_by": list(locked_by),
        "charged_ids": [job.id for job in charged],
        "charged_max_attempts": [job.max_attempts for job in charged],
        "charged_destroy": [job.destroy_failed_jobs for job in charged],
        "isolated_ids": list(isolated),
        "isolate_all": isolate_all,
        "charged_error": charged_error,
        "isolated_error": isolated_error,
    }
    return Statement("release_dead_workers_jobs", params, _released, skip=not locked_by)


def locked_by_on_host(prefix: str) -> Statement[list[str]]:
    """Distinct owners (``locked_by``) of live locked jobs that start with ``prefix``
    (``contracts.locked_by.host_prefix``: one host's workers)."""
    return Statement(
        "locked_by_on_host",
        {"prefix": prefix},
        lambda rows: [str(row["locked_by"]) for row in rows],
    )


def listen() -> Statement[None]:
    """LISTEN on the channel the trigger notifies (contracts.notify.CHANNEL)."""
    return _write("listen", {})


def probe() -> Statement[None]:
    """A round trip: fails if the connection died silently."""
    return _write("probe", {})


# -------------------------------------------------------------- enqueue


def insert_job(
    *,
    handler: str,
    queue: str,
    priority: int,
    run_at: dt.datetime | None,
    delay: float,
    keep_finished: float | None = None,
) -> Statement[int]:
    """Enqueue one job; due at ``run_at``, or ``delay`` seconds from the database's now.
    ``keep_finished``: seconds to keep it once finished (None: its worker group's)."""
    params = {
        "handler": handler,
        "queue": queue,
        "priority": priority,
        "run_at": run_at,
        "delay": delay,
        "keep_finished": keep_finished,
    }
    return Statement("insert_job", params, lambda rows: int(rows[0]["id"]))


@dataclasses.dataclass(frozen=True)
class UniqueInsert:
    """What :func:`insert_unique_job` did: ``id`` of the new job (``created``) or of the
    one already waiting with the key; ``id`` None: neither (run it again)."""

    id: int | None
    created: bool


def _unique_insert(rows: list[Row]) -> UniqueInsert:
    if not rows:
        return UniqueInsert(None, False)
    return UniqueInsert(int(rows[0]["id"]), bool(rows[0]["created"]))


def insert_unique_job(
    *,
    handler: str,
    queue: str,
    priority: int,
    run_at: dt.datetime | None,
    delay: float,
    unique_key: str,
    keep_finished: float | None = None,
) -> Statement[UniqueInsert]:
    """Enqueue one job unless a job with ``unique_key`` already waits (the partial
    unique index ``delayed_jobs_unique_key`` decides; never an error)."""
    params = {
        "handler": handler,
        "queue": queue,
        "priority": priority,
        "run_at": run_at,
        "delay": delay,
        "keep_finished": keep_finished,
        "unique_key": unique_key,
    }
    return Statement("insert_unique_job", params, _unique_insert)


@dataclasses.dataclass(frozen=True)
class NewJob:
    """One row of :func:`insert_jobs`."""

    handler: str
    queue: str
    priority: int
    run_at: dt.datetime | None
    delay: float
    keep_finished: float | None = None


def insert_jobs(jobs: Sequence[NewJob]) -> Statement[list[int]]:
    """Enqueue many jobs in one statement (one round trip, one NOTIFY); ids in order."""
    params = {
        "handlers": [job.handler for job in jobs],
        "queues": [job.queue for job in jobs],
        "priorities": [job.priority for job in jobs],
        "run_ats": [job.run_at for job in jobs],
        "delays": [job.delay for job in jobs],
        "keep_finished": [job.keep_finished for job in jobs],
    }
    return Statement("insert_jobs", params, _ids, skip=not jobs)


# ------------------------------------------------------- status and admin


@dataclasses.dataclass(frozen=True)
class GroupStats:
    ready: int
    running: int
    scheduled: int  # due later, retries waiting for their back-off included
    retrying: int  # of the scheduled: retries (attempts made) waiting for their back-off
    next_retry_in: float | None  # seconds until the soonest of those is due
    failed: int
    oldest_ready_age: float | None


def group_stats(job_filter: JobFilter, *, lock_timeout: float) -> Statement[GroupStats]:
    """Counts for ``djmaster status`` and ``wait``, the demo and the metrics (a full pass
    over the group's jobs)."""
    params = job_filter.params() | {"lock_timeout": lock_timeout}
    return Statement(job_filter.variant("stats"), params, lambda rows: GroupStats(**rows[0]))


def list_jobs(*, failed: bool, queue: str | None, limit: int) -> Statement[list[Row]]:
    """Failed (or live) jobs, newest first, for ``djmaster jobs list``."""
    params = {"failed": failed, "queue": queue, "limit": limit}
    return Statement("list_jobs", params, list)


def retry_failed_jobs(ids: Sequence[int] | None) -> Statement[list[int]]:
    """Make failed jobs due again (all of them when ``ids`` is None); the ids changed."""
    return Statement("retry_failed_jobs", {"ids": None if ids is None else list(ids)}, _ids)


def delete_failed_jobs(ids: Sequence[int] | None) -> Statement[list[int]]:
    """Delete failed jobs (all of them when ``ids`` is None); the ids deleted."""
    return Statement("delete_failed_jobs", {"ids": None if ids is None else list(ids)}, _ids)


def due_now_jobs(ids: Sequence[int]) -> Statement[list[int]]:
    """Make waiting jobs of ``ids`` (not failed, not locked) due now; the ids changed."""
    return Statement("due_now_jobs", {"ids": list(ids)}, _ids)


def delete_waiting_jobs(ids: Sequence[int]) -> Statement[list[int]]:
    """Delete the jobs of ``ids`` that are neither failed nor locked; the ids deleted."""
    return Statement("delete_waiting_jobs", {"ids": list(ids)}, _ids)


# ------------------------------------------------------------ finished jobs


class FinishOutcome(enum.Enum):
    """How a job finished, as ``delayed_jobs_finished.outcome`` says."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclasses.dataclass(frozen=True)
class FinishedJob:
    """One row of :func:`finish_jobs`: a job to delete, and to keep ``keep`` seconds
    (0: not kept). ``result`` is JSON text; ``run_time`` None: it never ran; ``ended``
    the worker's ``time.monotonic()`` when it ended."""

    id: int
    outcome: FinishOutcome
    attempts: int
    keep: float
    ended: float
    run_time: float | None = None
    result: str | None = None
    result_note: str | None = None
    error: str | None = None


def finish_jobs(jobs: Sequence[FinishedJob], *, now: float) -> Statement[None]:
    """Delete finished jobs and keep those with ``keep`` > 0 in
    ``delayed_jobs_finished``; ``now`` is ``time.monotonic()`` when the statement is
    built, so that each job's end is written on the database clock (``now() - ago``)."""
    params = {
        "ids": [job.id for job in jobs],
        "outcomes": [job.outcome.value for job in jobs],
        "results": [job.result for job in jobs],
        "notes": [job.result_note for job in jobs],
        "errors": [job.error for job in jobs],
        "attempts": [job.attempts for job in jobs],
        "run_times": [job.run_time for job in jobs],
        "ago": [max(0.0, now - job.ended) for job in jobs],
        "keep": [job.keep for job in jobs],
    }
    return _write("finish_jobs", params, skip=not jobs)


def keep_failed_job(
    job_id: int, *, keep: float, run_time: float | None, finished_by: str
) -> Statement[None]:
    """Copy a job that failed for good (still in delayed_jobs, ``failed_at`` set) into
    ``delayed_jobs_finished`` for ``keep`` seconds."""
    params = {"id": job_id, "keep": keep, "run_time": run_time, "finished_by": finished_by}
    return _write("keep_failed_job", params)


@dataclasses.dataclass(frozen=True)
class CancelResult:
    """What :func:`cancel_jobs` did: jobs deleted before they started (``cancelled``),
    and running ones asked to stop (``requested``)."""

    cancelled: list[int]
    requested: list[int]


def _cancel_result(rows: list[Row]) -> CancelResult:
    return CancelResult(
        sorted(int(r["id"]) for r in rows if r["outcome"] == "cancelled"),
        sorted(int(r["id"]) for r in rows if r["outcome"] == "requested"),
    )


def cancel_jobs(
    ids: Sequence[int] = (),
    *,
    queue: str | None = None,
    keep_default: float = 0.0,
    keep_by_queue: Mapping[str, float] | None = None,
) -> Statement[CancelResult]:
    """Cancel the live jobs of ``ids``, or of ``queue``: waiting ones are deleted (kept
    as cancelled for their ``keep_finished``, else their queue's in ``keep_by_queue``,
    else ``keep_default`` seconds), held ones are asked to stop (queries.sql)."""
    keep = dict(keep_by_queue or {})
    params = {
        "ids": list(ids),
        "queue": queue,
        "keep_default": keep_default,
        "keep_queues": list(keep),
        "keep_seconds": list(keep.values()),
    }
    return Statement("cancel_jobs", params, _cancel_result, skip=not ids and queue is None)


def cancel_requested(ids: Sequence[int]) -> Statement[set[int]]:
    """Which of ``ids`` were asked to stop."""
    return Statement(
        "cancel_requested",
        {"ids": list(ids)},
        lambda rows: {int(r["id"]) for r in rows},
        skip=not ids,
    )


def _deleted(rows: list[Row]) -> int:
    return int(rows[0]["deleted"]) if rows else 0


def prune_finished_jobs(*, limit: int) -> Statement[int]:
    """Delete at most ``limit`` kept jobs past their ``keep_until``; how many went."""
    return Statement("prune_finished_jobs", {"limit": limit}, _deleted)


def _one(rows: list[Row]) -> Row | None:
    return rows[0] if rows else None


def finished_job(job_id: int) -> Statement[Row | None]:
    """The kept finished job ``job_id`` (``delayed_jobs_finished``), or None."""
    return Statement("finished_job", {"id": job_id}, _one)


def live_job(job_id: int) -> Statement[Row | None]:
    """Job ``job_id`` of ``delayed_jobs`` (with the database's ``now``), or None."""
    return Statement("live_job", {"id": job_id}, _one)


# ------------------------------------------------------------ recurring jobs


@dataclasses.dataclass(frozen=True)
class RecurringState:
    """The database clock and, per entry name, the latest due time enqueued (None:
    never)."""

    now: dt.datetime
    last_due: dict[str, dt.datetime | None]


def recurring_last_runs(names: Sequence[str], *, now: dt.datetime) -> Statement[RecurringState]:
    """The latest run of each entry, and the database's now (``now``: what to say when
    ``names`` is empty and no round trip is made)."""

    def read(rows: list[Row]) -> RecurringState:
        if not rows:
            return RecurringState(now, {})
        return RecurringState(rows[0]["now"], {str(r["name"]): r["last_due"] for r in rows})

    return Statement("recurring_last_runs", {"names": list(names)}, read, skip=not names)


def enqueue_recurring_job(
    *, name: str, due_at: dt.datetime, handler: str, queue: str, priority: int
) -> Statement[int | None]:
    """Enqueue entry ``name`` for ``due_at`` unless it already was (by any master): the
    new job's id, or None."""
    params = {
        "name": name,
        "due_at": due_at,
        "handler": handler,
        "queue": queue,
        "priority": priority,
    }
    return Statement(
        "enqueue_recurring_job", params, lambda rows: int(rows[0]["id"]) if rows else None
    )


def prune_recurring_runs(*, older_than: float, limit: int) -> Statement[int]:
    """Forget at most ``limit`` runs enqueued over ``older_than`` seconds ago (each
    entry's latest is kept); how many went."""
    return Statement("prune_recurring_runs", {"older_than": older_than, "limit": limit}, _deleted)
