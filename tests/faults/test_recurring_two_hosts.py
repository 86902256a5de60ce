"""Recurring jobs on two hosts over a minute (issue 15): two circusd with the same
``[[recurring]]`` entry (every 2 s) on one database enqueue each due time exactly once,
and none is missed, while each host's master is killed with SIGKILL in turn (circus
starts a new one). Hosts in namespaces of their own when this machine allows it, as in
test_two_hosts.py; otherwise two circusd here.

The database decides, not the clocks: ``delayed_jobs_recurring_runs``' primary key
(name, due_at) admits one insert per due time, made by the statement that inserts the
job."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.chaos import master_started
from tests.support.circus_run import CircusRun, circus_env, read
from tests.support.netns import (
    Host,
    host_circus_table,
    host_url,
    serve_hosts,
    start_circus_on,
    two_or_more_hosts,
)
from tests.support.pg_servers import EmbeddedServer
from tests.support.waiting import wait_until
from tests.support.worker_run import write_settings

EVERY = 2.0  # seconds between due times
DURATION = 60.0  # seconds the two hosts run
KILLS_AT = (20.0, 40.0)  # seconds into the run: host A's master, then host B's
PASSWORD = "recurring-secret"


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with two_or_more_hosts(["djrec-a", "djrec-b"]) as made:
        yield made


@pytest.fixture
def server(own_server: EmbeddedServer, hosts: list[Host]) -> EmbeddedServer:
    return serve_hosts(own_server, hosts, PASSWORD)


def host_settings(folder: Path, host: Host) -> Path:
    folder.mkdir()
    circus = host_circus_table(folder, host)
    return write_settings(
        folder,
        workers=[{"name": "ticks", "queues": ["ticks"], "sleep_delay": 0.2, "idle_timeout": 5.0}],
        tables={"circus": circus},
        recurring=[
            {
                "name": "tick",
                "callable": "tests.support.lifecycle_jobs:tick",
                "every": EVERY,
                "queue": "ticks",
            }
        ],
        monitor_interval=1.0,
        polling_interval=5.0,
        log_file=str(folder / "djmaster.log"),
        pid_file=str(folder / "master.pid"),
        log_level="info",
    )


def db_now(conn: psycopg.Connection[object]) -> dt.datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def kill_master(run: CircusRun) -> None:
    """SIGKILL the master; wait for circus to start a new one."""
    old = run.wait_for_master()
    os.kill(old, signal.SIGKILL)
    wait_until(
        lambda: (pid := run.plugin_pid()) not in (None, old) and master_started(run, pid),
        30.0,
        "a new master after the kill",
    )


def test_two_hosts_enqueue_each_due_time_once_over_a_minute_across_master_kills(
    tmp_path: Path, hosts: list[Host], server: EmbeddedServer
) -> None:
    url = server.create_database("shared")
    runs: list[CircusRun] = []
    try:
        for host, label in zip(hosts, ["a", "b"], strict=True):
            settings = host_settings(tmp_path / label, host)
            env = circus_env({"DJMASTER_DATABASE_URL": host_url(server, host, "shared")})
            run = start_circus_on(host, settings, env)
            runs.append(run)
            run.wait_for_master()
        with psycopg.connect(url, autocommit=True) as conn:
            started = db_now(conn)
            began = time.monotonic()
            for run, at in zip(runs, KILLS_AT, strict=True):
                time.sleep(max(0.0, began + at - time.monotonic()))  # a scenario's pacing
                kill_master(run)
            time.sleep(max(0.0, began + DURATION - time.monotonic()))
            ended = db_now(conn)
            # Every due time strictly inside the run: after the first one either master
            # could have missed while starting, before the last one's job could run.
            first = started + dt.timedelta(seconds=EVERY)
            last = ended - dt.timedelta(seconds=EVERY)

            def ran() -> list[tuple[dt.datetime, int, int]] | None:
                rows = conn.execute(
                    "SELECT r.due_at, r.job_id, count(e.id) FROM delayed_jobs_recurring_runs r "
                    "LEFT JOIN job_events e ON e.job_key = r.job_id::text AND e.event = 'tick' "
                    "WHERE r.name = 'tick' AND r.due_at BETWEEN %s AND %s "
                    "GROUP BY r.due_at, r.job_id ORDER BY r.due_at",
                    (first, last),
                ).fetchall()
                return rows if rows and all(count >= 1 for _, _, count in rows) else None

            rows = wait_until(ran, 30.0, "the jobs of every due time to run")
        expected = int((last - first).total_seconds() // EVERY)
        dues = [due for due, _, _ in rows]
        gaps = [b - a for a, b in itertools.pairwise(dues)]
        assert all(gap == dt.timedelta(seconds=EVERY) for gap in gaps), f"a due time missed: {dues}"
        assert len(dues) >= expected, (len(dues), expected)
        assert all(count == 1 for _, _, count in rows), f"a due time ran twice: {rows}"
        for due in dues:
            assert due.timestamp() % EVERY == 0, due  # the epoch-anchored grid
        with psycopg.connect(url, autocommit=True) as conn:
            (jobs,) = conn.execute(
                "SELECT count(*) FROM job_events WHERE event = 'tick'"
            ).fetchone()  # type: ignore[misc]
            (enqueued,) = conn.execute(
                "SELECT count(*) FROM delayed_jobs_recurring_runs"
            ).fetchone()  # type: ignore[misc]
        assert jobs <= enqueued  # no job of the entry ran twice, however it was enqueued
        per_host = [read(run.log_file).count("recurring tick due") for run in runs]
        print(f"due times {len(dues)}, enqueued per host {per_host}")
        assert sum(per_host) == enqueued
    except BaseException:
        for run in runs:
            print(run.logs()[-6000:])
        raise
    finally:
        for run in runs:
            run.close()
