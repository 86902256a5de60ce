"""Every store statement against real rows in a real Postgres, on the executor production
runs it with: the workers' statements on a Connection, the master's (counts,
``seconds_to_next``, releases) on its async executor."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from circus_djmaster.master.releases import DeathCharge
from circus_djmaster.store import pgserver, statements
from circus_djmaster.store.statements import (
    ChargedJob,
    JobFilter,
    ReleasedJob,
    ReleaseOutcome,
    ReservedJob,
    Statement,
)
from circus_djmaster.store.sync_executor import connect, execute
from tests.support.executors import run_as_master
from tests.support.release import release_dead

ME = "host:test pid:1"
OTHER = "host:test pid:2"
HOUR = 3600.0
ANY = JobFilter()

Conn = psycopg.Connection[Any]
T = TypeVar("T")


@pytest.fixture(scope="module")
def store_database_url(pg_server_url: str, template_database: str) -> Iterator[str]:
    """One migrated database for this module: these tests only touch delayed_jobs, which
    each test empties first, so a database per test (~0.2 s each) buys nothing here."""
    name = f"djmaster_test_store_{os.getpid()}"
    pgserver.drop_database(pg_server_url, name)
    yield pgserver.create_database(pg_server_url, name, template=template_database)
    pgserver.drop_database(pg_server_url, name)


@pytest.fixture
def conn(store_database_url: str) -> Iterator[Conn]:
    with connect(store_database_url) as connection:
        connection.execute("TRUNCATE delayed_jobs RESTART IDENTITY")
        yield connection


def insert(
    conn: Conn,
    *,
    queue: str | None = None,
    priority: int = 0,
    run_in: float = 0.0,
    locked_by: str | None = None,
    locked_ago: float | None = None,
    failed: bool = False,
    attempts: int = 0,
    handler: str = '{"callable": "tests.support.jobs:record", "args": ["k"]}',
) -> int:
    """Insert a job due ``run_in`` seconds from the database's now() (negative: past)."""
    row = conn.execute(
        """
        INSERT INTO delayed_jobs
            (handler, queue, priority, attempts, run_at, locked_by, locked_at, failed_at)
        VALUES (%(handler)s, %(queue)s, %(priority)s, %(attempts)s,
                now() + make_interval(secs => %(run_in)s), %(locked_by)s,
                now() - make_interval(secs => %(locked_ago)s),
                CASE WHEN %(failed)s THEN now() END)
        RETURNING id
        """,
        {
            "handler": handler,
            "queue": queue,
            "priority": priority,
            "attempts": attempts,
            "run_in": run_in,
            "locked_by": locked_by,
            "locked_ago": locked_ago,
            "failed": failed,
        },
    ).fetchone()
    assert row is not None
    return int(row[0])


def row(conn: Conn, job_id: int) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT *, extract(epoch FROM run_at - now())::float8 AS run_in,"
            " extract(epoch FROM now() - locked_at)::float8 AS locked_ago,"
            " extract(epoch FROM now() - updated_at)::float8 AS updated_ago"
            " FROM delayed_jobs WHERE id = %s",
            (job_id,),
        ).fetchone()


def must_row(conn: Conn, job_id: int) -> dict[str, Any]:
    found = row(conn, job_id)
    assert found is not None, f"job {job_id} is gone"
    return found


def reserve(
    conn: Conn,
    job_filter: JobFilter = ANY,
    *,
    limit: int = 100,
    locked_by: str = ME,
    lock_timeout: float = HOUR,
) -> list[int]:
    jobs = execute(
        conn,
        statements.reserve_jobs(
            job_filter, locked_by=locked_by, limit=limit, lock_timeout=lock_timeout
        ),
    )
    return [job.id for job in jobs]


def ids_of(conn: Conn, where: str) -> set[int]:
    return {r[0] for r in conn.execute(f"SELECT id FROM delayed_jobs WHERE {where}").fetchall()}


# ---------------------------------------------------------------------------- reserve


def test_reserve_returns_and_locks_a_due_job(conn: Conn) -> None:
    job_id = insert(conn, queue="mail", priority=4, attempts=2, handler='{"callable": "a:b"}')
    (job,) = execute(conn, statements.reserve_jobs(ANY, locked_by=ME, limit=5, lock_timeout=HOUR))
    assert isinstance(job, ReservedJob)
    assert (job.id, job.priority, job.attempts, job.handler, job.queue) == (
        job_id,
        4,
        2,
        '{"callable": "a:b"}',
        "mail",
    )
    assert job.run_at.tzinfo is not None
    locked = must_row(conn, job_id)
    assert locked["locked_by"] == ME
    assert 0 <= locked["locked_ago"] < 5


def test_reserve_in_queues_takes_only_those_queues(conn: Conn) -> None:
    a, b = insert(conn, queue="a"), insert(conn, queue="b")
    insert(conn, queue="c")
    insert(conn, queue=None)
    assert set(reserve(conn, JobFilter(queues=("a", "b")))) == {a, b}
    assert reserve(conn, JobFilter(queues=("a", "b"))) == []


def test_reserve_any_queue_takes_every_queue_and_none(conn: Conn) -> None:
    ids = {insert(conn, queue="a"), insert(conn, queue="c"), insert(conn, queue=None)}
    assert set(reserve(conn, ANY)) == ids


def test_reserve_in_queues_never_takes_a_job_without_queue(conn: Conn) -> None:
    insert(conn, queue=None)
    assert reserve(conn, JobFilter(queues=("default",))) == []


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(0, 5, {0, 5}), (1, None, {5, 10}), (None, 0, {-5, 0}), (None, None, {-5, 0, 5, 10})],
)
def test_reserve_respects_min_and_max_priority(
    conn: Conn, low: int | None, high: int | None, expected: set[int]
) -> None:
    by_priority = {p: insert(conn, queue="q", priority=p) for p in (-5, 0, 5, 10)}
    for job_filter in (JobFilter((), low, high), JobFilter(("q",), low, high)):
        got = set(reserve(conn, job_filter))
        assert got == {by_priority[p] for p in expected}
        execute(conn, statements.unlock_jobs(locked_by=ME))


def test_reserve_skips_jobs_scheduled_in_the_future(conn: Conn) -> None:
    due = insert(conn, queue="q", run_in=-1)
    insert(conn, queue="q", run_in=60)
    assert reserve(conn, ANY) == [due]
    assert reserve(conn, JobFilter(("q",))) == []


def test_reserve_skips_failed_jobs(conn: Conn) -> None:
    insert(conn, queue="q", failed=True)
    assert reserve(conn, ANY) == []
    assert reserve(conn, JobFilter(("q",))) == []


def test_reserve_skips_a_job_with_a_fresh_lock(conn: Conn) -> None:
    insert(conn, queue="q", locked_by=OTHER, locked_ago=10)
    assert reserve(conn, ANY, lock_timeout=HOUR) == []
    assert reserve(conn, JobFilter(("q",)), lock_timeout=HOUR) == []


def test_reserve_takes_again_a_job_whose_lock_is_older_than_the_lock_timeout(conn: Conn) -> None:
    stale = insert(conn, queue="q", locked_by=OTHER, locked_ago=2 * HOUR)
    fresh = insert(conn, queue="q", locked_by=OTHER, locked_ago=HOUR - 60)
    assert reserve(conn, JobFilter(("q",)), lock_timeout=HOUR) == [stale]
    assert must_row(conn, stale)["locked_by"] == ME
    assert must_row(conn, stale)["locked_ago"] < 5
    assert must_row(conn, fresh)["locked_by"] == OTHER


def test_reserve_any_queue_takes_a_stale_lock_too(conn: Conn) -> None:
    stale = insert(conn, locked_by=OTHER, locked_ago=120)
    assert reserve(conn, ANY, lock_timeout=60) == [stale]


def test_reserve_orders_by_priority_then_run_at(conn: Conn) -> None:
    late_high = insert(conn, priority=0, run_in=-10)
    low = insert(conn, priority=5, run_in=-100)
    early_high = insert(conn, priority=0, run_in=-20)
    urgent = insert(conn, priority=-1, run_in=-1)
    expected = [urgent, early_high, late_high, low]
    assert reserve(conn, ANY, limit=10) == expected


@pytest.mark.parametrize("job_filter", [ANY, JobFilter(("q",))])
def test_reserve_one_at_a_time_follows_priority_then_run_at(
    conn: Conn, job_filter: JobFilter
) -> None:
    # With limit 1 the database picks: this checks the SQL's ORDER BY itself.
    late_high = insert(conn, queue="q", priority=0, run_in=-10)
    low = insert(conn, queue="q", priority=5, run_in=-100)
    early_high = insert(conn, queue="q", priority=0, run_in=-20)
    urgent = insert(conn, queue="q", priority=-1, run_in=-1)
    taken = [reserve(conn, job_filter, limit=1) for _ in range(5)]
    assert taken == [[urgent], [early_high], [late_high], [low], []]


def test_reserve_takes_at_most_limit_jobs(conn: Conn) -> None:
    for _ in range(5):
        insert(conn, queue="q")
    sizes = [len(reserve(conn, JobFilter(("q",)), limit=2)) for _ in range(4)]
    assert sizes == [2, 2, 1, 0]


# ------------------------------------------------------------------- complete / touch


def test_reserve_deletes_the_done_jobs_in_the_same_statement(conn: Conn) -> None:
    done = [insert(conn, locked_by=ME, locked_ago=1) for _ in range(2)]
    kept = insert(conn, locked_by=ME, locked_ago=1)
    ready = insert(conn)
    taken = execute(
        conn, statements.reserve_jobs(ANY, locked_by=ME, limit=5, lock_timeout=HOUR, done=done)
    )
    assert [job.id for job in taken] == [ready]
    assert ids_of(conn, "true") == {kept, ready}


@pytest.mark.parametrize("job_filter", [ANY, JobFilter(("q",))])
def test_reserve_deletes_the_done_jobs_even_when_nothing_is_ready(
    conn: Conn, job_filter: JobFilter
) -> None:
    done = insert(conn, queue="q", locked_by=ME, locked_ago=1)
    jobs = execute(
        conn,
        statements.reserve_jobs(job_filter, locked_by=ME, limit=5, lock_timeout=HOUR, done=[done]),
    )
    assert jobs == []
    assert row(conn, done) is None


def test_complete_jobs_deletes_the_given_jobs(conn: Conn) -> None:
    done = [insert(conn, locked_by=ME, locked_ago=1) for _ in range(3)]
    kept = insert(conn, locked_by=ME, locked_ago=1)
    execute(conn, statements.complete_jobs(done))
    assert ids_of(conn, "true") == {kept}
    execute(conn, statements.complete_jobs([]))
    assert ids_of(conn, "true") == {kept}


def test_touch_jobs_refreshes_only_this_workers_locks(conn: Conn) -> None:
    mine = insert(conn, locked_by=ME, locked_ago=500)
    untouched = insert(conn, locked_by=ME, locked_ago=500)
    theirs = insert(conn, locked_by=OTHER, locked_ago=500)
    execute(conn, statements.touch_jobs([mine, theirs], locked_by=ME))
    assert must_row(conn, mine)["locked_ago"] < 5
    assert must_row(conn, untouched)["locked_ago"] >= 500
    assert must_row(conn, theirs)["locked_ago"] >= 500


def test_touch_jobs_of_no_ids_changes_nothing(conn: Conn) -> None:
    job_id = insert(conn, locked_by=ME, locked_ago=500)
    execute(conn, statements.touch_jobs([], locked_by=ME))
    assert must_row(conn, job_id)["locked_ago"] >= 500


# ----------------------------------------------------------------------------- retry


@pytest.mark.parametrize("attempts", [1, 3, 5])
def test_retry_job_default_backoff_is_attempts_to_the_fourth_plus_five_seconds(
    conn: Conn, attempts: int
) -> None:
    job_id = insert(conn, locked_by=ME, locked_ago=1, attempts=attempts - 1, run_in=-50)
    execute(conn, statements.retry_job(job_id, attempts=attempts, last_error="RuntimeError: boom"))
    retried = must_row(conn, job_id)
    # run_in is measured on the database clock a moment after the retry.
    assert attempts**4 + 5 - 2 < retried["run_in"] <= attempts**4 + 5
    assert retried["attempts"] == attempts
    assert retried["last_error"] == "RuntimeError: boom"
    assert retried["locked_at"] is None
    assert retried["locked_by"] is None
    assert retried["failed_at"] is None
    assert retried["updated_ago"] < 5


def test_retry_job_at_an_explicit_run_at(conn: Conn) -> None:
    job_id = insert(conn, locked_by=ME, locked_ago=1)
    when = execute(conn, statements.database_now()) + dt.timedelta(days=2, microseconds=5)
    execute(conn, statements.retry_job(job_id, attempts=1, last_error="e", run_at=when))
    retried = must_row(conn, job_id)
    assert retried["run_at"] == when
    assert (retried["locked_by"], retried["attempts"]) == (None, 1)


def test_a_retried_job_is_not_reserved_before_its_run_at(conn: Conn) -> None:
    job_id = insert(conn, locked_by=ME, locked_ago=1)
    execute(conn, statements.retry_job(job_id, attempts=1, last_error="e"))
    assert reserve(conn, ANY, lock_timeout=0.001) == []


# ------------------------------------------------------------------------ fail/delete


def test_fail_job_sets_failed_at_and_unlocks(conn: Conn) -> None:
    job_id = insert(conn, locked_by=ME, locked_ago=1, attempts=24)
    execute(
        conn, statements.fail_job(job_id, attempts=25, last_error="ValueError: nope\nTraceback")
    )
    failed = must_row(conn, job_id)
    assert failed["failed_at"] is not None
    assert failed["attempts"] == 25
    assert failed["last_error"] == "ValueError: nope\nTraceback"
    assert (failed["locked_at"], failed["locked_by"]) == (None, None)
    assert failed["updated_ago"] < 5
    assert reserve(conn, ANY, lock_timeout=0.001) == []


def test_delete_job_removes_only_that_job(conn: Conn) -> None:
    gone, kept = insert(conn), insert(conn)
    execute(conn, statements.delete_job(gone))
    assert row(conn, gone) is None
    assert row(conn, kept) is not None


# ---------------------------------------------------------------------------- unlock


def test_unlock_jobs_releases_this_workers_live_jobs_only(conn: Conn) -> None:
    mine = [insert(conn, locked_by=ME, locked_ago=1, attempts=2) for _ in range(3)]
    theirs = insert(conn, locked_by=OTHER, locked_ago=1)
    # A failed row still naming this worker (as in a crash between writes) stays as is.
    failed = insert(conn, locked_by=ME, locked_ago=1, failed=True)
    assert sorted(execute(conn, statements.unlock_jobs(locked_by=ME))) == sorted(mine)
    for job_id in mine:
        released = must_row(conn, job_id)
        assert (released["locked_at"], released["locked_by"]) == (None, None)
        assert released["attempts"] == 2  # no attempt charged
    assert must_row(conn, theirs)["locked_by"] == OTHER
    assert must_row(conn, failed)["locked_by"] == ME
    assert sorted(reserve(conn, ANY)) == sorted(mine)


def test_unlock_jobs_of_a_worker_without_jobs_returns_nothing(conn: Conn) -> None:
    insert(conn, locked_by=OTHER, locked_ago=1)
    assert execute(conn, statements.unlock_jobs(locked_by=ME)) == []


def test_unlock_job_ids_releases_the_given_jobs_of_this_worker(conn: Conn) -> None:
    given = insert(conn, locked_by=ME, locked_ago=1)
    kept = insert(conn, locked_by=ME, locked_ago=1)
    theirs = insert(conn, locked_by=OTHER, locked_ago=1)
    execute(conn, statements.unlock_job_ids([given, theirs], locked_by=ME))
    assert must_row(conn, given)["locked_by"] is None
    assert must_row(conn, kept)["locked_by"] == ME
    assert must_row(conn, theirs)["locked_by"] == OTHER
    execute(conn, statements.unlock_job_ids([], locked_by=ME))
    assert must_row(conn, kept)["locked_by"] == ME


# ----------------------------------------------------------------------- dead workers


def charged(job_id: int, max_attempts: int = 25, destroy: bool = False) -> DeathCharge:
    return DeathCharge(charged=(ChargedJob(job_id, max_attempts, destroy),))


def test_the_job_a_dead_worker_ran_alone_is_charged_and_due_at_once(
    conn: Conn, store_database_url: str
) -> None:
    running = insert(conn, locked_by="host:h pid:10", locked_ago=5, attempts=0, run_in=-30)
    held = insert(conn, locked_by="host:h pid:10", locked_ago=5, attempts=3)
    conn.execute("UPDATE delayed_jobs SET last_error = 'old' WHERE id = %s", (held,))
    alive = insert(conn, locked_by="host:h pid:12", locked_ago=5)
    released = release_dead(
        store_database_url, ["host:h pid:10"], charged(running), death="worker 10 died"
    )
    assert released == [
        ReleasedJob(running, 1, ReleaseOutcome.RETRY),
        ReleasedJob(held, 3, ReleaseOutcome.RELEASED),
    ]
    job = must_row(conn, running)
    assert (job["locked_at"], job["locked_by"], job["failed_at"]) == (None, None, None)
    assert (job["attempts"], job["last_error"]) == (1, "worker 10 died while running this job")
    # Held (reserved ahead, not started): back as it was.
    assert (must_row(conn, held)["attempts"], must_row(conn, held)["last_error"]) == (3, "old")
    # Due at once, keeping its place in line: a job due 30 s ago stays due 30 s ago.
    assert -31 < must_row(conn, running)["run_in"] <= -29
    assert must_row(conn, alive)["locked_by"] == "host:h pid:12"
    assert sorted(reserve(conn, ANY)) == sorted([running, held])


def test_a_charged_job_fails_at_its_own_max_attempts(conn: Conn, store_database_url: str) -> None:
    last_try = insert(conn, locked_by=OTHER, locked_ago=5, attempts=1)
    assert release_dead(store_database_url, [OTHER], charged(last_try, max_attempts=2)) == [
        ReleasedJob(last_try, 2, ReleaseOutcome.FAILED)
    ]
    assert must_row(conn, last_try)["failed_at"] is not None
    assert must_row(conn, last_try)["locked_by"] is None
    more_left = insert(conn, locked_by=OTHER, locked_ago=5, attempts=1)
    assert release_dead(store_database_url, [OTHER], charged(more_left, max_attempts=30)) == [
        ReleasedJob(more_left, 2, ReleaseOutcome.RETRY)
    ]
    assert reserve(conn, ANY) == [more_left]


def test_a_charged_job_with_destroy_failed_jobs_is_deleted_at_its_last_attempt(
    conn: Conn, store_database_url: str
) -> None:
    doomed = insert(conn, locked_by=OTHER, locked_ago=5, attempts=0)
    released = release_dead(store_database_url, [OTHER], charged(doomed, 1, destroy=True))
    assert released == [ReleasedJob(doomed, 1, ReleaseOutcome.DESTROYED)]
    assert row(conn, doomed) is None


def test_jobs_a_dead_worker_ran_side_by_side_are_not_charged_and_run_alone(
    conn: Conn, store_database_url: str
) -> None:
    first = insert(conn, locked_by=OTHER, locked_ago=5, attempts=1)
    second = insert(conn, locked_by=OTHER, locked_ago=5)
    held = insert(conn, locked_by=OTHER, locked_ago=5)
    released = release_dead(
        store_database_url, [OTHER], DeathCharge(isolated=(first, second)), death="w died"
    )
    assert released == [
        ReleasedJob(first, 1, ReleaseOutcome.ISOLATED),
        ReleasedJob(second, 0, ReleaseOutcome.ISOLATED),
        ReleasedJob(held, 0, ReleaseOutcome.RELEASED),
    ]
    rows = {job_id: must_row(conn, job_id) for job_id in (first, second, held)}
    assert rows[first]["last_error"] == (
        "w died while running this job beside 1 other job(s): nobody can tell which one "
        "killed it, so it runs alone from now on; no attempt charged"
    )
    run_alone = dict(conn.execute("SELECT id, run_alone FROM delayed_jobs").fetchall())
    assert run_alone == {first: True, second: True, held: False}
    jobs = execute(conn, statements.reserve_jobs(ANY, locked_by=ME, limit=10, lock_timeout=HOUR))
    assert {job.id: job.run_alone for job in jobs} == run_alone


def test_when_nobody_knows_what_a_dead_worker_ran_its_jobs_run_alone_uncharged(
    conn: Conn, store_database_url: str
) -> None:
    a = insert(conn, locked_by=OTHER, locked_ago=5, attempts=2)
    b = insert(conn, locked_by=OTHER, locked_ago=5)
    released = release_dead(store_database_url, [OTHER], DeathCharge(isolate_all=True))
    assert released == [
        ReleasedJob(a, 2, ReleaseOutcome.ISOLATED),
        ReleasedJob(b, 0, ReleaseOutcome.ISOLATED),
    ]
    assert conn.execute("SELECT bool_and(run_alone) FROM delayed_jobs").fetchone() == (True,)


def test_release_dead_workers_jobs_leaves_failed_rows_alone(
    conn: Conn, store_database_url: str
) -> None:
    failed = insert(conn, locked_by=OTHER, locked_ago=5, failed=True, attempts=25)
    assert release_dead(store_database_url, [OTHER], charged(failed)) == []
    assert must_row(conn, failed)["attempts"] == 25


def test_release_dead_workers_jobs_of_nobody_is_nothing(
    conn: Conn, store_database_url: str
) -> None:
    insert(conn, locked_by=OTHER, locked_ago=5)
    assert release_dead(store_database_url, [], DeathCharge(isolate_all=True)) == []


def test_a_job_reserved_with_no_attempt_left_fails_keeping_its_error(conn: Conn) -> None:
    job_id = insert(conn, locked_by=ME, locked_ago=1, attempts=2)
    conn.execute("UPDATE delayed_jobs SET last_error = 'killed' WHERE id = %s", (job_id,))
    execute(conn, statements.fail_exhausted_job(job_id, note="no attempt left"))
    job = must_row(conn, job_id)
    assert job["failed_at"] is not None and job["locked_by"] is None
    assert job["last_error"] == "no attempt left\nkilled"


# ------------------------------------------------------------------------ count_ready


def as_master(conn: Conn, statement: Statement[T]) -> T:
    """``statement`` on the master's async executor, on ``conn``'s database."""
    url = make_conninfo(conn.info.dsn, password=conn.info.password)
    return run_as_master(url, statement)


def count(
    conn: Conn, job_filter: JobFilter = ANY, *, limit: int = 100, timeout: float = HOUR
) -> int:
    return as_master(conn, statements.count_ready(job_filter, lock_timeout=timeout, limit=limit))


def test_count_ready_counts_due_live_unlocked_jobs(conn: Conn) -> None:
    for _ in range(3):
        insert(conn, queue="q")
    insert(conn, queue="q", run_in=60)
    insert(conn, queue="q", failed=True)
    insert(conn, queue="q", locked_by=OTHER, locked_ago=10)
    assert count(conn) == 3
    assert count(conn, JobFilter(("q",))) == 3


def test_count_ready_is_capped_at_the_limit(conn: Conn) -> None:
    for _ in range(7):
        insert(conn, queue="q")
    assert count(conn, limit=4) == 4
    assert count(conn, JobFilter(("q",)), limit=4) == 4
    assert count(conn, limit=50) == 7


def test_count_ready_filters_by_queues(conn: Conn) -> None:
    insert(conn, queue="a")
    insert(conn, queue="b")
    insert(conn, queue="b")
    insert(conn, queue=None)
    assert count(conn, JobFilter(("a",))) == 1
    assert count(conn, JobFilter(("b", "c"))) == 2
    assert count(conn, JobFilter(("c",))) == 0
    assert count(conn, ANY) == 4


def test_count_ready_filters_by_priority(conn: Conn) -> None:
    for priority in (-1, 0, 3, 9):
        insert(conn, queue="q", priority=priority)
    assert count(conn, JobFilter(("q",), 0, 3)) == 2
    assert count(conn, JobFilter((), None, 0)) == 2


def test_count_ready_counts_a_stale_lock_but_not_a_fresh_one(conn: Conn) -> None:
    insert(conn, queue="q", locked_by=OTHER, locked_ago=90)
    insert(conn, queue="q", locked_by=OTHER, locked_ago=10)
    assert count(conn, timeout=60) == 1
    assert count(conn, JobFilter(("q",)), timeout=60) == 1
    assert count(conn, timeout=HOUR) == 0


# -------------------------------------------------------------------- seconds_to_next


def test_seconds_to_next_is_none_when_nothing_is_scheduled(conn: Conn) -> None:
    assert as_master(conn, statements.seconds_to_next(ANY)) is None
    insert(conn, queue="q")  # due now: not scheduled
    insert(conn, queue="q", run_in=30, failed=True)
    insert(conn, queue="q", run_in=30, locked_by=OTHER, locked_ago=1)
    assert as_master(conn, statements.seconds_to_next(ANY)) is None
    assert as_master(conn, statements.seconds_to_next(JobFilter(("q",)))) is None


@pytest.mark.parametrize("job_filter", [ANY, JobFilter(("q",))])
def test_seconds_to_next_gives_the_time_to_the_nearest_scheduled_job(
    conn: Conn, job_filter: JobFilter
) -> None:
    insert(conn, queue="q", run_in=300)
    insert(conn, queue="q", run_in=45)
    seconds = as_master(conn, statements.seconds_to_next(job_filter))
    assert seconds is not None
    assert 43 < seconds <= 45


def test_seconds_to_next_filters_by_queue_and_priority(conn: Conn) -> None:
    insert(conn, queue="other", run_in=10)
    insert(conn, queue="q", priority=50, run_in=20)
    insert(conn, queue="q", priority=1, run_in=120)
    seconds = as_master(conn, statements.seconds_to_next(JobFilter(("q",), None, 10)))
    assert seconds is not None
    assert 118 < seconds <= 120


def test_seconds_to_next_answers_as_the_plain_minimum_over_every_case(conn: Conn) -> None:
    """Both hand-written forms (one short scan per queue) against the plain
    ``min(run_at)`` they stand for: several queues, the NULL queue, priorities out of
    range, failed and locked jobs, a queue with nothing scheduled."""
    cases = [
        ("a", 0, 200, False, None),
        ("a", 0, 90, False, OTHER),  # locked: not scheduled
        ("a", 0, 80, True, None),  # failed
        ("b", 7, 60, False, None),
        ("b", 0, 150, False, None),
        (None, 0, 70, False, None),  # no queue: only a group serving every queue
        ("c", 0, 0, False, None),  # due now: not scheduled
        ("d", 20, 30, False, None),
    ]
    for queue, priority, run_in, failed, locked_by in cases:
        insert(
            conn,
            queue=queue,
            priority=priority,
            run_in=run_in,
            failed=failed,
            locked_by=locked_by,
            locked_ago=1 if locked_by else None,
        )
    filters = [
        ANY,
        JobFilter(("a",)),
        JobFilter(("a", "b")),
        JobFilter(("b",), None, 5),
        JobFilter(("c",)),
        JobFilter((), 10, None),
        JobFilter(("a", "b", "d"), 0, 10),
    ]
    for job_filter in filters:
        expected = conn.execute(
            "SELECT extract(epoch FROM min(run_at) - now())::float8 FROM delayed_jobs"
            " WHERE failed_at IS NULL AND locked_at IS NULL AND run_at > now()"
            "   AND (cardinality(%(queues)s::varchar[]) = 0 OR queue = ANY(%(queues)s))"
            "   AND priority BETWEEN %(min_priority)s AND %(max_priority)s",
            job_filter.params(),
        ).fetchone()
        assert expected is not None
        got = as_master(conn, statements.seconds_to_next(job_filter))
        if expected[0] is None:
            assert got is None, job_filter
        else:
            assert got is not None and abs(got - expected[0]) < 1.0, (job_filter, got, expected)


# ------------------------------------------------------------------------ database_now


def test_database_now_is_the_servers_aware_now(conn: Conn) -> None:
    before = conn.execute("SELECT now()").fetchone()
    now = execute(conn, statements.database_now())
    after = conn.execute("SELECT now()").fetchone()
    assert before is not None and after is not None
    assert now.tzinfo is not None
    assert before[0] <= now <= after[0]


# ------------------------------------------------------------------------- raw inserts


def test_a_plain_sql_insert_makes_a_due_job_with_defaults(conn: Conn) -> None:
    cur = conn.execute(
        "INSERT INTO delayed_jobs (handler, queue) VALUES (%s, %s) RETURNING id",
        ('{"callable": "tests.support.jobs:record", "args": ["raw"]}', "mail"),
    )
    (job_id,) = cur.fetchone() or (None,)
    job = must_row(conn, job_id)
    assert (job["priority"], job["attempts"]) == (0, 0)
    assert job["run_at"] is not None and job["run_in"] <= 0
    assert job["created_at"] == job["run_at"] == job["updated_at"]
    assert (job["locked_at"], job["locked_by"], job["failed_at"], job["last_error"]) == (
        None,
        None,
        None,
        None,
    )
    assert reserve(conn, JobFilter(("mail",))) == [job_id]


def test_reserving_a_job_is_a_hot_update(conn: Conn) -> None:
    """No index covers the lock columns: PostgreSQL updates the row in place."""
    for _ in range(3):
        insert(conn)
    hot_updates = "SELECT pg_stat_get_xact_tuples_hot_updated('delayed_jobs'::regclass)"
    with conn.transaction():
        (before,) = conn.execute(hot_updates).fetchone()
        reserved = reserve(conn, ANY, limit=3)
        (after,) = conn.execute(hot_updates).fetchone()
    assert len(reserved) == 3
    assert after - before == 3


# ----------------------------------------------------------------------- group stats


@pytest.mark.parametrize("job_filter", [ANY, JobFilter(("q",))])
def test_group_stats_count_retries_waiting_for_their_back_off(
    conn: Conn, job_filter: JobFilter
) -> None:
    insert(conn, queue="q")  # ready
    insert(conn, queue="q", locked_by=OTHER, locked_ago=1)  # running
    insert(conn, queue="q", run_in=600)  # scheduled, never tried
    insert(conn, queue="q", run_in=6, attempts=1)  # a failed run's retry, due in 6 s
    insert(conn, queue="q", run_in=90, attempts=3)  # another, later
    insert(conn, queue="q", failed=True, attempts=25)  # failed for good
    stats = execute(conn, statements.group_stats(job_filter, lock_timeout=HOUR))
    assert (stats.ready, stats.running, stats.scheduled, stats.failed) == (1, 1, 3, 1)
    assert stats.retrying == 2
    assert stats.next_retry_in is not None and 4 < stats.next_retry_in <= 6
    assert stats.oldest_ready_age is not None and stats.oldest_ready_age >= 0


def test_group_stats_without_retries(conn: Conn) -> None:
    insert(conn, queue="q", run_in=600)
    stats = execute(conn, statements.group_stats(ANY, lock_timeout=HOUR))
    assert (stats.scheduled, stats.retrying, stats.next_retry_in) == (1, 0, None)
