"""The job store: thin functions over the named queries, one per operation.

Workers and the master call these with their own psycopg connections (autocommit, so
each statement is its own short transaction); enqueue can also run them on a caller's
connection inside the caller's transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import socket
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg.rows import dict_row

from circus_djmaster.store.queries import query, schema_sql

# Unset priority bounds become the int4 range, so the SQL is always a plain range.
INT4_MIN = -(2**31)
INT4_MAX = 2**31 - 1

# Serialises concurrent migrations (an arbitrary constant: "djmaster" in ASCII).
MIGRATION_LOCK_KEY = 0x646A6D6173746572


@dataclasses.dataclass(frozen=True)
class ReservedJob:
    id: int
    priority: int
    attempts: int
    handler: str
    queue: str | None
    run_at: dt.datetime
    run_alone: bool = False  # its worker died running it beside others: run it alone


@dataclasses.dataclass(frozen=True)
class JobFilter:
    """Which jobs a worker group takes: its queues (empty: all) and priority range."""

    queues: tuple[str, ...] = ()
    min_priority: int | None = None
    max_priority: int | None = None

    def params(self) -> dict[str, Any]:
        return {
            "queues": list(self.queues),
            "min_priority": INT4_MIN if self.min_priority is None else self.min_priority,
            "max_priority": INT4_MAX if self.max_priority is None else self.max_priority,
        }

    def query(self, stem: str) -> str:
        return query(f"{stem}_in_queues" if self.queues else f"{stem}_any_queue")


def locked_by_for(pid: int, host: str | None = None) -> str:
    """delayed_job's ``locked_by`` form: ``host:HOST pid:PID``."""
    return f"host:{host or socket.gethostname()} pid:{pid}"


def connect(
    url: str, *, application_name: str = "djmaster", timeout: float | None = None
) -> psycopg.Connection[Any]:
    """An autocommit connection; the URL is never logged or put in an error message.

    With ``timeout`` (seconds) the connection is bounded as :func:`bounded_session`
    says; without it (migrations, the CLI), only the server's own settings apply.
    """
    extra = bounded_session(url, timeout) if timeout is not None else {}
    return psycopg.connect(url, autocommit=True, application_name=application_name, **extra)


def bounded_session(url: str, timeout: float, *, options: str = "") -> dict[str, Any]:
    """libpq parameters that bound a session's waits by ``timeout`` seconds.

    ``connect_timeout`` (half of it: connecting is a few round trips, and a server that
    accepts connections but never answers is then noticed sooner); ``statement_timeout``
    (the server cancels a statement running longer); on TCP, keepalives that notice a
    dead peer of an idle connection within about twice ``timeout`` and
    ``tcp_user_timeout``, which drops a connection whose
    sent data stays unacknowledged that long. libpq ignores the TCP ones on Unix
    sockets. Parameters the URL sets itself win, and its ``options`` are kept (the
    ``-c`` settings here and ``options`` are appended to them). A backend that stops
    answering is beyond all of these: a worker's calls also have a client-side
    deadline (db_deadlines.py), the master's asyncio timeouts.
    """
    given = conninfo.conninfo_to_dict(url)
    seconds = max(1, math.ceil(timeout))
    params: dict[str, Any] = {
        "connect_timeout": max(1, math.ceil(timeout / 2)),
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": max(1, seconds // 3),
        "keepalives_count": 3,
        "tcp_user_timeout": seconds * 1000,
    }
    bounded = {key: value for key, value in params.items() if key not in given}
    session = f"-c statement_timeout={int(timeout * 1000)} {options}".strip()
    bounded["options"] = f"{given.get('options') or ''} {session}".strip()
    return bounded


def migrate(conn: psycopg.Connection[Any]) -> None:
    """Create or update the schema. Idempotent; safe to run from several hosts at once."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(schema_sql())  # type: ignore[arg-type]


def reserve_jobs(
    conn: psycopg.Connection[Any],
    job_filter: JobFilter,
    *,
    locked_by: str,
    limit: int,
    lock_timeout: float,
    done: Sequence[int] = (),
) -> list[ReservedJob]:
    """Lock up to ``limit`` ready jobs; delete the ``done`` ones in the same statement."""
    params = job_filter.params() | {
        "locked_by": locked_by,
        "limit": limit,
        "lock_timeout": lock_timeout,
        "done": list(done),
    }
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(job_filter.query("reserve_jobs"), params).fetchall()
    jobs = [ReservedJob(**row) for row in rows]
    # UPDATE ... RETURNING does not keep the subquery's order.
    jobs.sort(key=lambda job: (job.priority, job.run_at))
    return jobs


def complete_jobs(conn: psycopg.Connection[Any], job_ids: Sequence[int]) -> None:
    if job_ids:
        conn.execute(query("complete_jobs"), {"ids": list(job_ids)})


def touch_jobs(conn: psycopg.Connection[Any], job_ids: Sequence[int], *, locked_by: str) -> None:
    if job_ids:
        conn.execute(query("touch_jobs"), {"ids": list(job_ids), "locked_by": locked_by})


def retry_job(
    conn: psycopg.Connection[Any],
    job_id: int,
    *,
    attempts: int,
    last_error: str,
    run_at: dt.datetime | None = None,
) -> None:
    conn.execute(
        query("retry_job"),
        {"id": job_id, "attempts": attempts, "last_error": last_error, "run_at": run_at},
    )


def fail_job(conn: psycopg.Connection[Any], job_id: int, *, attempts: int, last_error: str) -> None:
    conn.execute(query("fail_job"), {"id": job_id, "attempts": attempts, "last_error": last_error})


def delete_job(conn: psycopg.Connection[Any], job_id: int) -> None:
    conn.execute(query("delete_job"), {"id": job_id})


def unlock_jobs(conn: psycopg.Connection[Any], *, locked_by: str) -> list[int]:
    rows = conn.execute(query("unlock_jobs"), {"locked_by": locked_by}).fetchall()
    return [row[0] for row in rows]


def unlock_job_ids(
    conn: psycopg.Connection[Any], job_ids: Sequence[int], *, locked_by: str
) -> None:
    if job_ids:
        conn.execute(query("unlock_job_ids"), {"ids": list(job_ids), "locked_by": locked_by})


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


def release_params(
    locked_by: Sequence[str],
    *,
    charged: Sequence[ChargedJob] = (),
    isolated: Sequence[int] = (),
    isolate_all: bool = False,
    charged_error: str,
    isolated_error: str,
) -> dict[str, Any]:
    """Parameters of the ``release_dead_workers_jobs`` query (its comment has the rules)."""
    return {
        "locked_by": list(locked_by),
        "charged_ids": [job.id for job in charged],
        "charged_max_attempts": [job.max_attempts for job in charged],
        "charged_destroy": [job.destroy_failed_jobs for job in charged],
        "isolated_ids": list(isolated),
        "isolate_all": isolate_all,
        "charged_error": charged_error,
        "isolated_error": isolated_error,
    }


def released_jobs(rows: Sequence[Sequence[Any]]) -> list[ReleasedJob]:
    return [ReleasedJob(int(row[0]), int(row[1]), ReleaseOutcome(row[2])) for row in rows]


def fail_exhausted_job(conn: psycopg.Connection[Any], job_id: int, *, note: str) -> None:
    conn.execute(query("fail_exhausted_job"), {"id": job_id, "note": note})


def count_ready(
    conn: psycopg.Connection[Any], job_filter: JobFilter, *, lock_timeout: float, limit: int
) -> int:
    params = job_filter.params() | {"lock_timeout": lock_timeout, "limit": limit}
    row = conn.execute(job_filter.query("count_ready"), params).fetchone()
    return int(row[0]) if row else 0


def seconds_to_next(conn: psycopg.Connection[Any], job_filter: JobFilter) -> float | None:
    """Seconds until the next scheduled job of the filter is due (database clock)."""
    row = conn.execute(job_filter.query("seconds_to_next"), job_filter.params()).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def database_now(conn: psycopg.Connection[Any]) -> dt.datetime:
    row = conn.execute(query("database_now")).fetchone()
    assert row is not None
    return row[0]


@dataclasses.dataclass(frozen=True)
class GroupStats:
    ready: int
    running: int
    scheduled: int
    failed: int
    oldest_ready_age: float | None


def group_stats(
    conn: psycopg.Connection[Any], job_filter: JobFilter, *, lock_timeout: float
) -> GroupStats:
    params = job_filter.params() | {"lock_timeout": lock_timeout}
    row = conn.execute(job_filter.query("stats"), params).fetchone()
    assert row is not None
    return GroupStats(*row)


def list_jobs(
    conn: psycopg.Connection[Any], *, failed: bool, queue: str | None, limit: int
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            query("list_jobs"), {"failed": failed, "queue": queue, "limit": limit}
        ).fetchall()


def retry_failed_jobs(conn: psycopg.Connection[Any], ids: Sequence[int] | None) -> list[int]:
    """Make failed jobs due again (all of them when ``ids`` is None)."""
    rows = conn.execute(
        query("retry_failed_jobs"), {"ids": None if ids is None else list(ids)}
    ).fetchall()
    return [row[0] for row in rows]


def delete_failed_jobs(conn: psycopg.Connection[Any], ids: Sequence[int] | None) -> list[int]:
    rows = conn.execute(
        query("delete_failed_jobs"), {"ids": None if ids is None else list(ids)}
    ).fetchall()
    return [row[0] for row in rows]


def due_now_jobs(conn: psycopg.Connection[Any], ids: Sequence[int]) -> list[int]:
    """Make waiting jobs of ``ids`` (not failed, not locked) due now; the ids changed."""
    rows = conn.execute(query("due_now_jobs"), {"ids": list(ids)}).fetchall()
    return [row[0] for row in rows]


def delete_waiting_jobs(conn: psycopg.Connection[Any], ids: Sequence[int]) -> list[int]:
    """Delete the jobs of ``ids`` that are neither failed nor locked; the ids deleted."""
    rows = conn.execute(query("delete_waiting_jobs"), {"ids": list(ids)}).fetchall()
    return [row[0] for row in rows]
