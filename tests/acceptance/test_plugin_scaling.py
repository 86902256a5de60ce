"""The master scales watchers from zero on demand (issue 3, docs/design.md §5)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from tests.acceptance.plugin_helpers import (
    DEADLINE,
    WATCHER,
    db_now,
    done,
    enqueue,
    enqueue_many,
    event_at,
    master_log,
    running,
    settings_file,
    wait_until,
    watch_max,
)

LISTENING = "database primary: listening for new jobs"


def test_notify_scales_from_zero_within_2s(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = settings_file(tmp_path, polling_interval=30.0)
    with running(settings, {"DJMASTER_DATABASE_URL": database_url}) as run:
        # The first pass found nothing: the watcher stays stopped, no process.
        assert run.pids(WATCHER) == []
        wait_until(lambda: LISTENING in master_log(run), DEADLINE, "the LISTEN connection")
        enqueue(conn, "record", "n1")
        inserted = db_now(conn)
        wait_until(lambda: done(conn, "n1"), 2.0, "job n1 done within 2s of its insert")
        finished = event_at(conn, "n1", "done")
        assert finished is not None and finished - inserted < 2.0
        # The worker retires when idle and the watcher goes back to 0 processes.
        wait_until(
            lambda: run.pids(WATCHER) == [] and run.target(WATCHER) == 0,
            DEADLINE,
            "the worker to retire",
        )


def test_polling_without_listen(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = settings_file(tmp_path, polling_interval=2.0, listen=False)
    with running(settings, {"DJMASTER_DATABASE_URL": database_url}) as run:
        enqueue(conn, "record", "p1")
        inserted = db_now(conn)
        wait_until(lambda: done(conn, "p1"), 2.0 + 3.0, "job p1 done within the polling interval")
        finished = event_at(conn, "p1", "done")
        assert finished is not None and finished - inserted < 2.0 + 1.5
        assert LISTENING not in master_log(run)


def test_burst_grows_to_max_processes_and_no_further(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    workers = [{"queues": ["q1"], "max_processes": 3, "sleep_delay": 0.2}]
    settings = settings_file(tmp_path, workers=workers)
    with running(settings, {"DJMASTER_DATABASE_URL": database_url}) as run:
        keys = [f"b{i}" for i in range(12)]
        enqueue_many(conn, [("sleep_then_record", (key, 0.5)) for key in keys])

        def all_done() -> bool:
            return all(done(conn, key) for key in keys)

        highest = watch_max(lambda: len(run.pids(WATCHER)), all_done, DEADLINE * 2)
        assert highest == 3
        wait_until(
            lambda: run.pids(WATCHER) == [] and run.target(WATCHER) == 0,
            DEADLINE,
            "every worker to retire",
        )


def test_scheduled_job_starts_at_its_run_at(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = settings_file(tmp_path, polling_interval=30.0)
    with running(settings, {"DJMASTER_DATABASE_URL": database_url}) as run:
        wait_until(lambda: LISTENING in master_log(run), DEADLINE, "the LISTEN connection")
        enqueue(conn, "record", "s1", delay=3.0)
        run_at = db_now(conn) + 3.0
        wait_until(lambda: done(conn, "s1"), 3.0 + 2.0, "scheduled job s1 done")
        finished = event_at(conn, "s1", "done")
        assert finished is not None
        assert run_at - 0.1 <= finished <= run_at + 1.0


def test_a_job_enqueued_right_after_a_retire_starts_without_waiting_for_circus(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """circusd checks its processes only every 30 s here. A worker retires; a job
    enqueued in the first milliseconds after it exited (and 0.1 s, 0.3 s after) starts
    at once: circusd reaped the retired worker at once (the before_spawn hook's reaper),
    so the master does not take it for a process about to spawn."""
    settings = settings_file(tmp_path, check_delay=30.0, polling_interval=30.0)
    with running(settings, {"DJMASTER_DATABASE_URL": database_url}) as run:
        wait_until(lambda: LISTENING in master_log(run), DEADLINE, "the LISTEN connection")
        enqueue(conn, "record", "first")
        wait_until(lambda: done(conn, "first"), DEADLINE, "the first job")
        for n, pause in enumerate((0.0, 0.1, 0.3)):
            # The worker of the previous job retires (idle_timeout = 0)...
            wait_until(lambda: run.pids(WATCHER) == [], DEADLINE, "the worker to retire")
            time.sleep(pause)  # ...and the job comes this long after (not a wait)
            key = f"after-retire-{n}"
            enqueue(conn, "record", key)
            inserted = db_now(conn)
            wait_until(lambda k=key: done(conn, k), 10.0, f"{key} (check_delay is 30 s)")
            finished = event_at(conn, key, "done")
            assert finished is not None and finished - inserted < 10.0
