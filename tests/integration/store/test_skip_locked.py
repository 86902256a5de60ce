"""Workers racing on reserve: FOR UPDATE SKIP LOCKED hands every job to exactly one."""

from __future__ import annotations

import collections
import threading
from typing import Any

import psycopg

from circus_djmaster.contracts.locked_by import worker_locked_by
from circus_djmaster.store import statements
from circus_djmaster.store.statements import JobFilter
from circus_djmaster.store.sync_executor import connect, execute

Conn = psycopg.Connection[Any]
JOBS = 500
WORKERS = 4
HOUR = 3600.0


def insert_jobs(conn: Conn, count: int, queue: str = "race") -> set[int]:
    rows = conn.execute(
        "INSERT INTO delayed_jobs (handler, queue, priority)"
        " SELECT json_build_object('callable', 'tests.support.jobs:record',"
        "                          'args', json_build_array(n::text))::text,"
        "        %s, n %% 3"
        "   FROM generate_series(1, %s) AS n RETURNING id",
        (queue, count),
    ).fetchall()
    return {row[0] for row in rows}


def connect_no_waiting(database_url: str) -> Conn:
    """A worker connection on which waiting for a row lock is an error, not a hang."""
    conn = connect(database_url)
    conn.execute("SET lock_timeout = '2s'")
    return conn


def test_racing_workers_reserve_every_job_exactly_once(database_url: str, conn: Conn) -> None:
    all_ids = insert_jobs(conn, JOBS)
    barrier = threading.Barrier(WORKERS)
    taken: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def work(number: int) -> None:
        locked_by = worker_locked_by(1000 + number, "race")
        mine: list[int] = []
        taken[locked_by] = mine
        try:
            with connect_no_waiting(database_url) as worker_conn:
                job_filter = JobFilter(("race",)) if number % 2 else JobFilter()
                barrier.wait(timeout=10)
                while True:
                    jobs = execute(
                        worker_conn,
                        statements.reserve_jobs(
                            job_filter, locked_by=locked_by, limit=1 + number % 3, lock_timeout=HOUR
                        ),
                    )
                    if not jobs:
                        return
                    mine.extend(job.id for job in jobs)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    reserved = [job_id for ids in taken.values() for job_id in ids]
    twice = [job_id for job_id, n in collections.Counter(reserved).items() if n > 1]
    assert twice == []
    assert set(reserved) == all_ids
    # The table agrees: each job is locked by the worker that got it.
    owners = dict(conn.execute("SELECT id, locked_by FROM delayed_jobs").fetchall())
    for locked_by, ids in taken.items():
        assert all(owners[job_id] == locked_by for job_id in ids)


def test_a_worker_skips_rows_another_worker_is_locking_without_waiting(
    database_url: str, conn: Conn
) -> None:
    all_ids = insert_jobs(conn, 10)
    with (
        connect_no_waiting(database_url) as first,
        connect_no_waiting(database_url) as second,
        first.transaction(),
    ):
        # first's reservation is not committed yet: its rows are locked, and still
        # look unlocked (locked_at NULL) to everyone else.
        held = execute(
            first,
            statements.reserve_jobs(
                JobFilter(), locked_by="host:a pid:1", limit=3, lock_timeout=HOUR
            ),
        )
        others = execute(
            second,
            statements.reserve_jobs(
                JobFilter(("race",)), locked_by="host:b pid:2", limit=100, lock_timeout=HOUR
            ),
        )
        assert len(held) == 3
        assert {job.id for job in others} == all_ids - {job.id for job in held}
    owners = dict(conn.execute("SELECT id, locked_by FROM delayed_jobs").fetchall())
    assert {owners[job.id] for job in held} == {"host:a pid:1"}
    assert {owners[job.id] for job in others} == {"host:b pid:2"}


def test_a_worker_finds_nothing_while_every_ready_row_is_being_locked(
    database_url: str, conn: Conn
) -> None:
    insert_jobs(conn, 5)
    with connect_no_waiting(database_url) as first, connect_no_waiting(database_url) as second:
        with first.transaction():
            execute(
                first,
                statements.reserve_jobs(JobFilter(), locked_by="a", limit=5, lock_timeout=HOUR),
            )
            during = execute(
                second,
                statements.reserve_jobs(JobFilter(), locked_by="b", limit=5, lock_timeout=HOUR),
            )
            assert during == []
        # Once committed, the locks are fresh: still nothing for the second worker.
        after = execute(
            second, statements.reserve_jobs(JobFilter(), locked_by="b", limit=5, lock_timeout=HOUR)
        )
        assert after == []


def test_a_rolled_back_reservation_leaves_the_jobs_ready(database_url: str, conn: Conn) -> None:
    all_ids = insert_jobs(conn, 4)
    with connect_no_waiting(database_url) as worker_conn:
        with worker_conn.transaction() as tx:
            execute(
                worker_conn,
                statements.reserve_jobs(JobFilter(), locked_by="a", limit=4, lock_timeout=HOUR),
            )
            raise psycopg.Rollback(tx)
        again = execute(
            worker_conn,
            statements.reserve_jobs(JobFilter(), locked_by="b", limit=10, lock_timeout=HOUR),
        )
    assert {job.id for job in again} == all_ids
