"""``delayed_jobs`` in memory, behind the connection surface the store's executors use.

The executors (``store.sync_executor`` and ``store.async_executor``) run unchanged on
:class:`MemoryConnection` and :class:`AsyncMemoryConnection`: each statement arrives as
the SQL of a named query of ``sql/queries.sql`` and its parameters, and is answered by
the Python below, which follows the rules written in that file's comments. Unit tests
of the worker's and the master's loops run on it in milliseconds; the integration tests
(tests/integration/store) hold the real SQL to the same rules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from circus_djmaster.store.queries import all_queries

Row = dict[str, Any]
UTC = dt.timezone.utc


@dataclasses.dataclass
class MemoryJob:
    id: int
    handler: str
    queue: str | None = "default"
    priority: int = 0
    attempts: int = 0
    run_at: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(UTC))
    locked_at: dt.datetime | None = None
    locked_by: str | None = None
    failed_at: dt.datetime | None = None
    last_error: str | None = None
    run_alone: bool = False
    keep_finished: float | None = None
    cancel_requested_at: dt.datetime | None = None
    created_at: dt.datetime | None = None


class MemoryStore:
    """The table, its clock (``now``: advance it by hand) and the statements it ran."""

    def __init__(self) -> None:
        self.jobs: dict[int, MemoryJob] = {}
        #: delayed_jobs_finished: job id -> the row kept (outcome, result, ...).
        self.finished: dict[int, Row] = {}
        #: delayed_jobs_recurring_runs: (name, due_at) -> job id.
        self.recurring_runs: dict[tuple[str, dt.datetime], int] = {}
        self.now = dt.datetime(2030, 1, 1, tzinfo=UTC)
        self.ran: list[str] = []  # names of the statements run, in order
        self._next_id = 1
        self._names = {sql: name for name, sql in all_queries().items()}
        self.down = False  # True: every statement fails as an unreachable database does

    def add(self, handler: str, **fields: Any) -> int:
        job_id = self._next_id
        self._next_id += 1
        fields.setdefault("run_at", self.now)
        self.jobs[job_id] = MemoryJob(job_id, handler, **fields)
        return job_id

    # --- the executors' side ----------------------------------------------------------

    def run(self, sql: str, params: Any) -> list[Row]:
        import psycopg

        if self.down:
            raise psycopg.OperationalError("connection failed: the memory store is down")
        name = self._names.get(sql)
        if name is None:
            raise AssertionError(f"not a named query of sql/queries.sql: {sql[:60]!r}")
        self.ran.append(name)
        stem = name.removesuffix("_in_queues").removesuffix("_any_queue")
        handler: Callable[[dict[str, Any]], list[Row]] = getattr(self, f"_{stem}")
        return handler(dict(params or {}) | {"_per_queue": name.endswith("_in_queues")})

    # --- the rules of sql/queries.sql -------------------------------------------------

    def _ready(self, job: MemoryJob, p: dict[str, Any]) -> bool:
        stale = self.now - dt.timedelta(seconds=p["lock_timeout"])
        return (
            job.failed_at is None
            and (not p["_per_queue"] or job.queue in p["queues"])
            and job.run_at <= self.now
            and (job.locked_at is None or job.locked_at < stale)
            and p["min_priority"] <= job.priority <= p["max_priority"]
        )

    def _reserve_jobs(self, p: dict[str, Any]) -> list[Row]:
        for job_id in p["done"]:
            self.jobs.pop(job_id, None)
        ready = sorted(
            (job for job in self.jobs.values() if self._ready(job, p)),
            key=lambda job: (job.priority, job.run_at),
        )[: p["limit"]]
        for job in ready:
            job.locked_at, job.locked_by = self.now, p["locked_by"]
        return [
            {
                "id": job.id,
                "priority": job.priority,
                "attempts": job.attempts,
                "handler": job.handler,
                "queue": job.queue,
                "run_at": job.run_at,
                "run_alone": job.run_alone,
                "keep_finished": job.keep_finished,
                "cancel_requested": job.cancel_requested_at is not None,
            }
            for job in ready
        ]

    def _count_ready(self, p: dict[str, Any]) -> list[Row]:
        count = sum(1 for job in self.jobs.values() if self._ready(job, p))
        return [{"ready": min(count, p["limit"])}]

    def _seconds_to_next(self, p: dict[str, Any]) -> list[Row]:
        later = [
            job.run_at
            for job in self.jobs.values()
            if job.failed_at is None
            and job.locked_at is None
            and job.run_at > self.now
            and (not p["_per_queue"] or job.queue in p["queues"])
            and p["min_priority"] <= job.priority <= p["max_priority"]
        ]
        seconds = (min(later) - self.now).total_seconds() if later else None
        return [{"seconds": seconds}]

    def _complete_jobs(self, p: dict[str, Any]) -> list[Row]:
        for job_id in p["ids"]:
            self.jobs.pop(job_id, None)
        return []

    def _touch_jobs(self, p: dict[str, Any]) -> list[Row]:
        for job in self.jobs.values():
            if job.id in p["ids"] and job.locked_by == p["locked_by"]:
                job.locked_at = self.now
        return []

    def _unlock(self, job: MemoryJob) -> None:
        job.locked_at = job.locked_by = None

    def _retry_job(self, p: dict[str, Any]) -> list[Row]:
        job = self.jobs[p["id"]]
        job.attempts, job.last_error = p["attempts"], p["last_error"]
        backoff = dt.timedelta(seconds=p["attempts"] ** 4 + 5)
        job.run_at = p["run_at"] or self.now + backoff
        self._unlock(job)
        return []

    def _fail_job(self, p: dict[str, Any]) -> list[Row]:
        job = self.jobs[p["id"]]
        job.attempts, job.last_error, job.failed_at = p["attempts"], p["last_error"], self.now
        self._unlock(job)
        return []

    def _fail_exhausted_job(self, p: dict[str, Any]) -> list[Row]:
        job = self.jobs[p["id"]]
        job.failed_at = self.now
        job.last_error = p["note"] + (f"\n{job.last_error}" if job.last_error else "")
        self._unlock(job)
        return []

    def _delete_job(self, p: dict[str, Any]) -> list[Row]:
        self.jobs.pop(p["id"], None)
        return []

    def _unlock_jobs(self, p: dict[str, Any]) -> list[Row]:
        mine = [j for j in self.jobs.values() if j.locked_by == p["locked_by"] and not j.failed_at]
        for job in mine:
            self._unlock(job)
        return [{"id": job.id} for job in mine]

    def _unlock_job_ids(self, p: dict[str, Any]) -> list[Row]:
        for job in self.jobs.values():
            if job.id in p["ids"] and job.locked_by == p["locked_by"]:
                self._unlock(job)
        return []

    def _database_now(self, p: dict[str, Any]) -> list[Row]:
        return [{"now": self.now}]

    def _release_dead_workers_jobs(self, p: dict[str, Any]) -> list[Row]:
        charged = dict(zip(p["charged_ids"], p["charged_max_attempts"], strict=True))
        destroy = dict(zip(p["charged_ids"], p["charged_destroy"], strict=True))
        rows = []
        for job in [j for j in self.jobs.values() if j.locked_by in p["locked_by"]]:
            if job.failed_at is not None:
                continue
            isolate = p["isolate_all"] or job.id in p["isolated_ids"]
            final = job.id in charged and job.attempts + 1 >= charged[job.id]
            if final and destroy[job.id]:
                del self.jobs[job.id]
                rows.append({"id": job.id, "attempts": job.attempts + 1, "outcome": "destroyed"})
                continue
            if job.id in charged:
                job.attempts += 1
                job.last_error = p["charged_error"]
                outcome = "failed" if final else "retry"
            elif isolate:
                job.last_error, job.run_alone, outcome = p["isolated_error"], True, "isolated"
            else:
                outcome = "released"
            job.failed_at = self.now if final else None
            job.run_at = min(job.run_at, self.now)
            self._unlock(job)
            rows.append({"id": job.id, "attempts": job.attempts, "outcome": outcome})
        return rows

    def _locked_by_on_host(self, p: dict[str, Any]) -> list[Row]:
        owners = {
            job.locked_by
            for job in self.jobs.values()
            if job.locked_by and job.locked_by.startswith(p["prefix"]) and not job.failed_at
        }
        return [{"locked_by": owner} for owner in sorted(owners)]

    def _listen(self, p: dict[str, Any]) -> list[Row]:
        return []

    def _finish_jobs(self, p: dict[str, Any]) -> list[Row]:
        rows = zip(
            p["ids"], p["outcomes"], p["results"], p["notes"], p["errors"], p["attempts"],
            p["keep"], strict=True,
        )  # fmt: skip
        for job_id, outcome, result, note, error, attempts, keep in rows:
            job = self.jobs.pop(job_id, None)
            if job is not None and keep > 0:
                self.finished[job_id] = {
                    "outcome": outcome,
                    "result": result,
                    "result_note": note,
                    "last_error": error,
                    "attempts": attempts,
                    "keep_until": self.now + dt.timedelta(seconds=keep),
                }
        return []

    def _keep_failed_job(self, p: dict[str, Any]) -> list[Row]:
        job = self.jobs.get(p["id"])
        if job is not None:
            self.finished[job.id] = {
                "outcome": "failed",
                "result": None,
                "result_note": None,
                "last_error": job.last_error,
                "attempts": job.attempts,
                "keep_until": self.now + dt.timedelta(seconds=p["keep"]),
            }
        return []

    def _cancel_requested(self, p: dict[str, Any]) -> list[Row]:
        return [
            {"id": job_id}
            for job_id in p["ids"]
            if job_id in self.jobs and self.jobs[job_id].cancel_requested_at is not None
        ]

    def _prune_finished_jobs(self, p: dict[str, Any]) -> list[Row]:
        old = sorted(i for i, row in self.finished.items() if row["keep_until"] < self.now)
        for job_id in old[: p["limit"]]:
            del self.finished[job_id]
        return [{"deleted": min(len(old), p["limit"])}]

    def _recurring_last_runs(self, p: dict[str, Any]) -> list[Row]:
        rows = []
        for name in p["names"]:
            dues = [due for (run, due) in self.recurring_runs if run == name]
            rows.append({"now": self.now, "name": name, "last_due": max(dues, default=None)})
        return rows

    def _enqueue_recurring_job(self, p: dict[str, Any]) -> list[Row]:
        key = (p["name"], p["due_at"])
        if key in self.recurring_runs:
            return []
        job_id = self.add(p["handler"], queue=p["queue"], priority=p["priority"])
        self.jobs[job_id].run_at = p["due_at"]
        self.recurring_runs[key] = job_id
        return [{"id": job_id}]

    def _prune_recurring_runs(self, p: dict[str, Any]) -> list[Row]:
        return [{"deleted": 0}]

    def _probe(self, p: dict[str, Any]) -> list[Row]:
        return []


class _Cursor:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.rows: list[Row] = []

    def execute(self, sql: str, params: Any = None, *, prepare: bool | None = None) -> None:
        self.rows = self.store.run(sql, params)

    def fetchall(self) -> list[Row]:
        return self.rows


class MemoryConnection:
    """What ``store.sync_executor`` uses of a ``psycopg.Connection``."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.closed = False

    @contextmanager
    def cursor(self, row_factory: Any = None) -> Iterator[_Cursor]:
        yield _Cursor(self.store)

    def close(self) -> None:
        self.closed = True


class _AsyncCursor(_Cursor):
    async def execute(  # type: ignore[override]
        self, sql: str, params: Any = None, *, prepare: bool | None = None
    ) -> None:
        self.rows = self.store.run(sql, params)

    async def fetchall(self) -> list[Row]:  # type: ignore[override]
        return self.rows


class AsyncMemoryConnection:
    """What ``store.async_executor`` and the master's poller use of an
    ``AsyncConnection``."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.closed = False

    @asynccontextmanager
    async def cursor(self, row_factory: Any = None) -> Any:
        yield _AsyncCursor(self.store)

    async def close(self) -> None:
        self.closed = True
