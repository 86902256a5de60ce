"""Issue 15 on real PostgreSQL: unique keys, cancelling, finished jobs kept and pruned,
recurring runs enqueued once: the store's statements as the API, the CLI, the workers
and the master run them."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from circus_djmaster import cancel, enqueue, enqueue_many, job
from circus_djmaster.api.jobs import JobCall
from circus_djmaster.store import statements
from circus_djmaster.store.statements import FinishedJob, FinishOutcome, JobFilter
from circus_djmaster.store.sync_executor import connect, execute

Conn = psycopg.Connection[Any]
UTC = dt.timezone.utc
CONCURRENT = 8


@job(unique=True, queue="u")
def refresh(key: str) -> None:
    """A job of which at most one equal call waits."""


def reserve(conn: Conn, *, limit: int = 10, queues: tuple[str, ...] = ()) -> list[int]:
    jobs = execute(
        conn,
        statements.reserve_jobs(
            JobFilter(queues), locked_by="host:t pid:1", limit=limit, lock_timeout=3600
        ),
    )
    return [j.id for j in jobs]


def on_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` on ``count`` threads released together; their results."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = work(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


# ---------------------------------------------------------------- unique keys


def test_eight_concurrent_enqueuers_of_one_unique_key_make_one_job(database_url: str) -> None:
    def enqueue_one(_index: int) -> int:
        with connect(database_url) as own:
            return enqueue("tests.support.jobs:record", ["k"], unique_key="k1", connection=own)

    for _round in range(3):  # three races: the index decides each time, not luck
        ids = on_threads(CONCURRENT, enqueue_one)
        assert len(set(ids)) == 1, ids
        with connect(database_url) as conn:
            rows = conn.execute("SELECT id FROM delayed_jobs WHERE unique_key = 'k1'").fetchall()
            assert rows == [(ids[0],)]
            conn.execute("DELETE FROM delayed_jobs")


def test_a_duplicate_returns_the_waiting_jobs_id_and_leaves_the_callers_transaction_alive(
    conn: Conn, database_url: str
) -> None:
    first = enqueue(refresh, ["a"], database_url=database_url)
    other = enqueue(refresh, ["b"], database_url=database_url)
    assert other != first  # other arguments: another key
    with psycopg.connect(database_url) as caller, caller.transaction():
        again = enqueue(refresh, ["a"], connection=caller)
        caller.execute("SELECT 1")  # the transaction is not aborted by the duplicate
    assert again == first
    assert conn.execute("SELECT count(*) FROM delayed_jobs").fetchone() == (2,)


def test_a_taken_job_gives_up_its_key_so_one_more_may_wait(conn: Conn, database_url: str) -> None:
    first = enqueue(refresh, ["a"], database_url=database_url)
    assert reserve(conn, queues=("u",)) == [first]
    key = conn.execute("SELECT unique_key FROM delayed_jobs WHERE id = %s", (first,)).fetchone()
    assert key == (None,)
    second = enqueue(refresh, ["a"], database_url=database_url)
    assert second != first
    assert enqueue(refresh, ["a"], database_url=database_url) == second


def test_enqueue_many_keeps_the_order_with_unique_and_plain_calls(database_url: str) -> None:
    waiting = enqueue(refresh, ["x"], database_url=database_url)
    ids = enqueue_many(
        [
            JobCall("tests.support.jobs:record", ["p1"]),
            refresh.call("x"),
            JobCall("tests.support.jobs:record", ["p2"]),
            refresh.call("y"),
            refresh.call("y"),
        ],
        database_url=database_url,
    )
    assert ids[1] == waiting and ids[3] == ids[4]
    assert len(set(ids)) == 4 and ids[0] < ids[2]


# ---------------------------------------------------------------- cancelling


def test_cancel_removes_waiting_jobs_and_flags_running_ones(conn: Conn, database_url: str) -> None:
    running = enqueue("tests.support.jobs:record", ["r"], queue="c", database_url=database_url)
    assert reserve(conn, queues=("c",)) == [running]
    waiting = enqueue("tests.support.jobs:record", ["w"], queue="c", database_url=database_url)
    failed = enqueue("tests.support.jobs:record", ["f"], queue="c", database_url=database_url)
    conn.execute("UPDATE delayed_jobs SET failed_at = now() WHERE id = %s", (failed,))

    done = cancel([running, waiting, failed, 999999], database_url=database_url)
    assert (done.cancelled, done.requested) == ([waiting], [running])
    left = dict(conn.execute("SELECT id, cancel_requested_at IS NOT NULL FROM delayed_jobs"))
    assert left == {running: True, failed: False}
    # The worker's look-up sees it; a held job reserved again is flagged as cancelled.
    assert execute(conn, statements.cancel_requested([running, failed])) == {running}
    assert conn.execute("SELECT count(*) FROM delayed_jobs_finished").fetchone() == (0,)


def test_cancel_of_a_queue_keeps_the_jobs_as_cancelled_when_asked(
    conn: Conn, database_url: str
) -> None:
    ids = [
        enqueue("tests.support.jobs:record", [i], queue="gone", database_url=database_url)
        for i in range(3)
    ]
    other = enqueue("tests.support.jobs:record", ["o"], queue="stays", database_url=database_url)
    done = cancel(queue="gone", keep_finished=3600, database_url=database_url)
    assert done.cancelled == ids and done.requested == []
    kept = conn.execute(
        "SELECT job_id, outcome, keep_until > now() + interval '59 minutes', started_at "
        "FROM delayed_jobs_finished ORDER BY job_id"
    ).fetchall()
    assert kept == [(i, "cancelled", True, None) for i in ids]
    assert conn.execute("SELECT id FROM delayed_jobs").fetchall() == [(other,)]


def test_a_cancel_racing_a_reserve_either_removes_the_job_or_flags_it(database_url: str) -> None:
    for _ in range(20):
        with connect(database_url) as conn:
            job_id = enqueue("tests.support.jobs:record", ["r"], queue="race", connection=conn)

        def act(index: int, job_id: int = job_id) -> Any:
            with connect(database_url) as own:
                if index == 0:
                    return cancel([job_id], connection=own)
                return reserve(own, queues=("race",))

        result, reserved = on_threads(2, act)
        with connect(database_url) as conn:
            row = conn.execute(
                "SELECT locked_at IS NOT NULL, cancel_requested_at IS NOT NULL "
                "FROM delayed_jobs WHERE id = %s",
                (job_id,),
            ).fetchone()
            if result.cancelled:  # removed before any worker took it
                assert row is None and reserved == []
            else:  # taken first: flagged, the worker will not run it again
                assert result.requested == [job_id] and reserved == [job_id]
                assert row == (True, True)
            conn.execute("DELETE FROM delayed_jobs")


# ---------------------------------------------------------- finished jobs kept


def test_finished_jobs_are_kept_with_result_error_timings_and_attempts(
    conn: Conn, database_url: str
) -> None:
    ok = enqueue("tests.support.jobs:record", ["ok"], database_url=database_url)
    plain = enqueue("tests.support.jobs:record", ["plain"], database_url=database_url)
    assert sorted(reserve(conn)) == [ok, plain]
    ended = time.monotonic() - 2.0  # ended 2 s ago, ran 0.5 s
    execute(
        conn,
        statements.finish_jobs(
            [
                FinishedJob(
                    ok,
                    FinishOutcome.SUCCEEDED,
                    attempts=1,
                    keep=3600.0,
                    ended=ended,
                    run_time=0.5,
                    result=json.dumps({"sum": 3, "items": ["a"]}),
                ),
                FinishedJob(plain, FinishOutcome.SUCCEEDED, attempts=1, keep=0.0, ended=ended),
            ],
            now=time.monotonic(),
        ),
    )
    assert conn.execute("SELECT count(*) FROM delayed_jobs").fetchone() == (0,)
    row = execute(conn, statements.finished_job(ok))
    assert row is not None and execute(conn, statements.finished_job(plain)) is None
    assert row["outcome"] == "succeeded" and row["result"] == {"sum": 3, "items": ["a"]}
    assert row["attempts"] == 1 and row["finished_by"] == "host:t pid:1"
    (now,) = conn.execute("SELECT now()").fetchone()
    assert dt.timedelta(seconds=1.5) < now - row["finished_at"] < dt.timedelta(seconds=10)
    assert row["finished_at"] - row["started_at"] == dt.timedelta(seconds=0.5)

    failed = enqueue("tests.support.jobs:record", ["bad"], database_url=database_url)
    assert reserve(conn) == [failed]
    execute(conn, statements.fail_job(failed, attempts=3, last_error="RuntimeError: no"))
    execute(
        conn,
        statements.keep_failed_job(failed, keep=60.0, run_time=0.25, finished_by="host:t pid:1"),
    )
    kept = execute(conn, statements.finished_job(failed))
    assert kept is not None
    assert (kept["outcome"], kept["attempts"], kept["last_error"]) == (
        "failed",
        3,
        "RuntimeError: no",
    )
    # delayed_job's rule stands: the failed job stays, to be retried.
    assert conn.execute("SELECT failed_at IS NOT NULL FROM delayed_jobs").fetchone() == (True,)


def test_pruning_deletes_only_expired_kept_jobs_in_bounded_batches(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO delayed_jobs_finished (job_id, outcome, priority, handler, attempts, "
        "run_at, created_at, finished_at, keep_until) "
        "SELECT i, 'succeeded', 0, '{}', 1, now(), now(), now(), "
        "  CASE WHEN i <= 25 THEN now() - interval '1 second' ELSE now() + interval '1 hour' END "
        "FROM generate_series(1, 40) AS i"
    )
    assert execute(conn, statements.prune_finished_jobs(limit=10)) == 10
    assert execute(conn, statements.prune_finished_jobs(limit=10)) == 10
    assert execute(conn, statements.prune_finished_jobs(limit=10)) == 5
    assert execute(conn, statements.prune_finished_jobs(limit=10)) == 0
    left = conn.execute("SELECT min(job_id), count(*) FROM delayed_jobs_finished").fetchone()
    assert left == (26, 15)


# ---------------------------------------------------------------- recurring


def test_a_recurring_due_time_is_enqueued_once_by_eight_racing_masters(database_url: str) -> None:
    due = dt.datetime(2030, 1, 1, 3, 0, tzinfo=UTC)

    def enqueue_due(_index: int) -> int | None:
        with connect(database_url) as own:
            return execute(
                own,
                statements.enqueue_recurring_job(
                    name="nightly", due_at=due, handler='{"callable": "m:f"}', queue="r", priority=2
                ),
            )

    results = on_threads(CONCURRENT, enqueue_due)
    made = [r for r in results if r is not None]
    assert len(made) == 1, results
    with connect(database_url) as conn:
        rows = conn.execute("SELECT id, queue, priority, run_at FROM delayed_jobs").fetchall()
        assert rows == [(made[0], "r", 2, due)]
        state = execute(conn, statements.recurring_last_runs(["nightly", "new"], now=due))
        assert state.last_due == {"nightly": due, "new": None}
        runs = conn.execute("SELECT job_id FROM delayed_jobs_recurring_runs").fetchall()
        assert runs == [(made[0],)]


def test_pruning_recurring_runs_keeps_each_entrys_latest(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO delayed_jobs_recurring_runs (name, due_at, job_id, enqueued_at) "
        "SELECT n, now() - make_interval(days => d), d, now() - make_interval(days => d) "
        "FROM unnest(ARRAY['a', 'b']) AS n, generate_series(2, 5) AS d"
    )
    assert execute(conn, statements.prune_recurring_runs(older_than=86400, limit=100)) == 6
    left = conn.execute(
        "SELECT name, job_id FROM delayed_jobs_recurring_runs ORDER BY name"
    ).fetchall()
    assert left == [("a", 2), ("b", 2)]


@pytest.mark.parametrize("keep", [None, 120.0])
def test_keep_finished_given_at_enqueue_reaches_the_worker(
    conn: Conn, database_url: str, keep: float | None
) -> None:
    job_id = enqueue(
        "tests.support.jobs:record", ["k"], keep_finished=keep, database_url=database_url
    )
    (reserved,) = execute(
        conn,
        statements.reserve_jobs(JobFilter(), locked_by="host:t pid:1", limit=1, lock_timeout=60),
    )
    assert (reserved.id, reserved.keep_finished, reserved.cancel_requested) == (job_id, keep, False)


def test_reserving_a_job_without_a_key_stays_a_hot_update(conn: Conn, database_url: str) -> None:
    """The reserve sets unique_key = NULL: unchanged for a job without a key, so no
    indexed column changes and PostgreSQL updates the row in place (HOT), as before the
    partial unique index existed; a job with a key leaves that index (not HOT)."""
    plain = enqueue("tests.support.jobs:record", ["p"], queue="hot", database_url=database_url)
    keyed = enqueue(
        "tests.support.jobs:record", ["k"], queue="hot", unique_key="hot", database_url=database_url
    )

    def reserve_counting(job_id: int) -> tuple[int, int]:
        with conn.transaction():
            conn.execute("UPDATE delayed_jobs SET priority = -1 WHERE id = %s", (job_id,))
            before = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
                "WHERE relname = 'delayed_jobs'"
            ).fetchone()
            assert reserve(conn, limit=1, queues=("hot",)) == [job_id]
            after = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
                "WHERE relname = 'delayed_jobs'"
            ).fetchone()
        assert before is not None and after is not None
        return after[0] - before[0], after[1] - before[1]

    assert reserve_counting(plain) == (1, 1)  # one update, HOT
    assert reserve_counting(keyed) == (1, 0)  # its key leaves the index
