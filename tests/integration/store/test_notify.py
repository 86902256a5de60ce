"""The NOTIFY triggers, seen by a LISTEN connection as the master's listener sees them.

Each test ends by sending a marker notification after what it checks: notifications
arrive in commit order, so everything before the marker has arrived when the marker does,
and "no notification" is checked without sleeping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from circus_djmaster.contracts.notify import CHANNEL
from circus_djmaster.master.releases import DeathCharge
from circus_djmaster.store import pgserver, statements
from circus_djmaster.store.queries import query
from circus_djmaster.store.statements import ChargedJob, JobFilter, ReleaseOutcome
from circus_djmaster.store.sync_executor import connect, execute
from tests.support.release import release_dead

Conn = psycopg.Connection[Any]
ME = "host:test pid:1"
HOUR = 3600.0
MARKER = "test-marker"


@pytest.fixture(scope="module")
def notify_database_url(pg_server_url: str, template_database: str) -> Iterator[str]:
    """One migrated database for this module (each test empties delayed_jobs first)."""
    name = f"djmaster_test_notify_{os.getpid()}"
    pgserver.drop_database(pg_server_url, name)
    yield pgserver.create_database(pg_server_url, name, template=template_database)
    pgserver.drop_database(pg_server_url, name)


@pytest.fixture
def conn(notify_database_url: str) -> Iterator[Conn]:
    with connect(notify_database_url) as connection:
        connection.execute("TRUNCATE delayed_jobs")
        yield connection


@pytest.fixture
def listener(notify_database_url: str, conn: Conn) -> Iterator[Conn]:
    with connect(notify_database_url, application_name="test listener") as listening:
        listening.execute(query("listen"))
        yield listening


def notifications(listener: Conn, sender: Conn) -> list[str]:
    """Payloads received on the channel up to the marker sent now by ``sender``."""
    sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, MARKER))
    payloads = []
    for notify in listener.notifies(timeout=10):
        assert notify.channel == CHANNEL
        if notify.payload == MARKER:
            return payloads
        payloads.append(notify.payload)
    raise AssertionError(f"the marker did not arrive within 10 s (got {payloads})")


def insert(conn: Conn, queue: str | None = "q", *, locked: bool = False, run_in: float = 0) -> int:
    row = conn.execute(
        "INSERT INTO delayed_jobs (handler, queue, run_at, locked_at, locked_by)"
        " VALUES ('h', %s, now() + make_interval(secs => %s),"
        "         CASE WHEN %s THEN now() END, CASE WHEN %s THEN %s END) RETURNING id",
        (queue, run_in, locked, locked, ME),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_marker_scheme_sees_a_plain_notification(listener: Conn, conn: Conn) -> None:
    conn.execute("SELECT pg_notify('delayed_jobs', 'hello')")
    assert notifications(listener, conn) == ["hello"]


def test_an_insert_of_one_job_notifies_its_queue(listener: Conn, conn: Conn) -> None:
    insert(conn, "mail")
    assert notifications(listener, conn) == ['["mail"]']


def test_a_multi_row_insert_notifies_once_with_the_distinct_queues(
    listener: Conn, conn: Conn
) -> None:
    conn.execute(
        "INSERT INTO delayed_jobs (handler, queue)"
        " SELECT 'h', q FROM unnest(ARRAY['a', 'b', 'a', NULL, 'b', 'c', NULL]) AS q"
    )
    (payload,) = notifications(listener, conn)
    queues = json.loads(payload)
    assert sorted(queues) == ["", "a", "b", "c"]


def test_an_insert_of_a_scheduled_job_notifies_too(listener: Conn, conn: Conn) -> None:
    insert(conn, "later", run_in=3600)
    assert notifications(listener, conn) == ['["later"]']


def test_an_insert_of_only_failed_rows_does_not_notify(listener: Conn, conn: Conn) -> None:
    conn.execute("INSERT INTO delayed_jobs (handler, queue, failed_at) VALUES ('h', 'q', now())")
    assert notifications(listener, conn) == []


def test_a_payload_over_7900_bytes_becomes_a_star(listener: Conn, conn: Conn) -> None:
    # 400 distinct 30-character queue names: well over 7900 bytes of JSON.
    conn.execute(
        "INSERT INTO delayed_jobs (handler, queue)"
        " SELECT 'h', 'queue-' || lpad(n::text, 24, '0') FROM generate_series(1, 400) AS n"
    )
    assert notifications(listener, conn) == ['"*"']


def test_a_payload_just_under_the_limit_lists_the_queues(listener: Conn, conn: Conn) -> None:
    # 200 names of 30 characters: 200 * (30 + 2 quotes + 2 separator) < 7900 bytes.
    conn.execute(
        "INSERT INTO delayed_jobs (handler, queue)"
        " SELECT 'h', 'queue-' || lpad(n::text, 24, '0') FROM generate_series(1, 200) AS n"
    )
    (payload,) = notifications(listener, conn)
    assert len(payload.encode()) <= 7900
    assert len(json.loads(payload)) == 200


def test_a_rolled_back_insert_does_not_notify(listener: Conn, conn: Conn) -> None:
    with conn.transaction() as tx:
        insert(conn, "q")
        raise psycopg.Rollback(tx)
    assert notifications(listener, conn) == []


def test_a_committed_transaction_notifies_at_commit(listener: Conn, conn: Conn) -> None:
    with conn.transaction():
        insert(conn, "tx")
    assert notifications(listener, conn) == ['["tx"]']


def test_reserving_a_job_does_not_notify(listener: Conn, conn: Conn) -> None:
    insert(conn, "q")
    insert(conn, None)
    assert len(notifications(listener, conn)) == 2
    for job_filter in (JobFilter(("q",)), JobFilter()):
        execute(conn, statements.reserve_jobs(job_filter, locked_by=ME, limit=5, lock_timeout=HOUR))
    assert notifications(listener, conn) == []


def test_taking_over_a_stale_lock_does_not_notify(listener: Conn, conn: Conn) -> None:
    job_id = insert(conn, "q", locked=True)
    conn.execute(
        "UPDATE delayed_jobs SET locked_at = now() - interval '2 hours' WHERE id = %s", (job_id,)
    )
    notifications(listener, conn)
    assert execute(
        conn, statements.reserve_jobs(JobFilter(), locked_by="b", limit=1, lock_timeout=HOUR)
    )
    assert notifications(listener, conn) == []


def test_completing_and_touching_jobs_do_not_notify(listener: Conn, conn: Conn) -> None:
    done = [insert(conn, "q", locked=True) for _ in range(3)]
    pending = insert(conn, "q", locked=True)
    notifications(listener, conn)
    execute(conn, statements.complete_jobs(done[:1]))
    execute(
        conn,
        statements.reserve_jobs(
            JobFilter(), locked_by=ME, limit=1, lock_timeout=HOUR, done=done[1:]
        ),
    )
    execute(conn, statements.touch_jobs([pending], locked_by=ME))
    execute(conn, statements.delete_job(pending))
    assert notifications(listener, conn) == []
    assert conn.execute("SELECT count(*) FROM delayed_jobs").fetchone() == (0,)


def test_unlocking_jobs_notifies_their_queues(listener: Conn, conn: Conn) -> None:
    insert(conn, "a", locked=True)
    insert(conn, "b", locked=True)
    insert(conn, None, locked=True)
    notifications(listener, conn)
    assert len(execute(conn, statements.unlock_jobs(locked_by=ME))) == 3
    assert sorted(notifications(listener, conn)) == ['[""]', '["a"]', '["b"]']


def test_unlocking_many_jobs_of_one_queue_notifies_once(listener: Conn, conn: Conn) -> None:
    for _ in range(5):
        insert(conn, "same", locked=True)
    notifications(listener, conn)
    execute(conn, statements.unlock_jobs(locked_by=ME))
    assert notifications(listener, conn) == ['["same"]']


def test_unlocking_job_ids_notifies(listener: Conn, conn: Conn) -> None:
    job_id = insert(conn, "ahead", locked=True)
    notifications(listener, conn)
    execute(conn, statements.unlock_job_ids([job_id], locked_by=ME))
    assert notifications(listener, conn) == ['["ahead"]']


def test_retrying_a_job_notifies(listener: Conn, conn: Conn) -> None:
    job_id = insert(conn, "retry", locked=True)
    notifications(listener, conn)
    execute(conn, statements.retry_job(job_id, attempts=1, last_error="e"))
    assert notifications(listener, conn) == ['["retry"]']


def test_failing_a_job_does_not_notify(listener: Conn, conn: Conn) -> None:
    job_id = insert(conn, "q", locked=True)
    notifications(listener, conn)
    execute(conn, statements.fail_job(job_id, attempts=25, last_error="e"))
    assert notifications(listener, conn) == []


def test_releasing_dead_workers_jobs_notifies_for_those_left_to_retry(
    listener: Conn, conn: Conn, notify_database_url: str
) -> None:
    job_id = insert(conn, "dead", locked=True)
    notifications(listener, conn)
    charge = DeathCharge(charged=(ChargedJob(job_id, 25, False),))
    released = release_dead(notify_database_url, [ME], charge)
    assert [job.outcome for job in released] == [ReleaseOutcome.RETRY]
    assert notifications(listener, conn) == ['["dead"]']


def test_releasing_a_job_that_fails_for_good_does_not_notify(
    listener: Conn, conn: Conn, notify_database_url: str
) -> None:
    job_id = insert(conn, "dead", locked=True)
    notifications(listener, conn)
    charge = DeathCharge(charged=(ChargedJob(job_id, 1, False),))
    (released,) = release_dead(notify_database_url, [ME], charge)
    assert released.outcome is ReleaseOutcome.FAILED
    assert notifications(listener, conn) == []


def test_rescheduling_an_unlocked_job_notifies(listener: Conn, conn: Conn) -> None:
    job_id = insert(conn, "q", run_in=3600)
    notifications(listener, conn)
    conn.execute("UPDATE delayed_jobs SET run_at = now() WHERE id = %s", (job_id,))
    assert notifications(listener, conn) == ['["q"]']


def test_an_update_that_changes_no_watched_column_does_not_notify(
    listener: Conn, conn: Conn
) -> None:
    job_id = insert(conn, "q")
    notifications(listener, conn)
    conn.execute("UPDATE delayed_jobs SET priority = 5, handler = 'x' WHERE id = %s", (job_id,))
    assert notifications(listener, conn) == []
