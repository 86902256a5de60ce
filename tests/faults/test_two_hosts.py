"""Two hosts, one database (docs/design.md §8): two circusd with their own settings, endpoints and
pid files drain the same queues of one database.

When this machine allows it (root, iproute2, unshare: tests/support/netns.py), each
circusd runs in network and UTS namespaces of its own (host names ``djhost-a`` and
``djhost-b``, so ``locked_by`` tells them apart), and the database listens on TCP in
the initial namespace, a third host reachable only over each host's veth pair.
Otherwise both run here on loopback under this machine's host name, as two circusd
on one machine would, and the test asserts the same things (the pids tell the
workers apart).
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.chaos import master_started
from tests.support.circus_run import (
    CircusRun,
    circus_env,
    read,
)
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
from tests.support.worker_run import listed_pid, write_settings

pytestmark = pytest.mark.usefixtures("spawn")  # both spawn modes

SHORT_JOBS = 3000
LONG_JOB = 6.0  # seconds: long enough to kill its worker mid-run
PASSWORD = "two-hosts-secret"
DEADLINE = 60.0


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with two_or_more_hosts(["djhost-a", "djhost-b"]) as made:
        yield made


@pytest.fixture
def server(own_server: EmbeddedServer, hosts: list[Host]) -> EmbeddedServer:
    return serve_hosts(own_server, hosts, PASSWORD)


def host_settings(folder: Path, host: Host) -> Path:
    folder.mkdir()
    circus = host_circus_table(folder, host)
    groups = [
        {
            "name": "short",
            "queues": ["q1"],
            "max_processes": 2,
            "max_threads": 2,
            "sleep_delay": 0.2,
            "idle_timeout": 1.0,
        },
        {"name": "long", "queues": ["long"], "max_processes": 2, "sleep_delay": 0.2},
    ]
    return write_settings(
        folder,
        workers=groups,
        tables={"circus": circus},
        monitor_interval=1.0,
        polling_interval=5.0,
        log_file=str(folder / "djmaster.log"),
        pid_file=str(folder / "master.pid"),
        log_level="info",
    )


def enqueue(conn: psycopg.Connection[Any], queue: str, calls: list[tuple[str, list[Any]]]) -> None:
    handlers = [
        json.dumps({"callable": f"tests.support.chaos_jobs:{name}", "args": args, "kwargs": {}})
        for name, args in calls
    ]
    conn.execute(
        "INSERT INTO delayed_jobs (handler, queue) SELECT h, %s FROM unnest(%s::text[]) AS h",
        (queue, handlers),
    )


def runs(conn: psycopg.Connection[Any], where: str = "true") -> list[tuple[str, str, int, bool]]:
    rows = conn.execute(
        f"SELECT job_key, host, pid, ended_at IS NOT NULL FROM job_runs WHERE {where} "
        "ORDER BY started_at"
    ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def locked_by(conn: psycopg.Connection[Any], key: str) -> tuple[str | None, int, str | None]:
    row = conn.execute(
        "SELECT locked_by, attempts, last_error FROM delayed_jobs "
        "WHERE handler::jsonb -> 'args' ->> 0 = %s",
        (key,),
    ).fetchone()
    return (None, -1, None) if row is None else (row[0], row[1], row[2])


def test_two_hosts_on_one_database_run_each_job_once_and_release_only_their_own(
    tmp_path: Path, hosts: list[Host], server: EmbeddedServer
) -> None:
    """Two circusd (settings, endpoints, pid files of their own; namespaces when
    possible) on one database:

    1. without faults, 3,000 short jobs enqueued at once each run exactly once, and
       both hosts ran some of them;
    2. with a long job running on each host, kill -9 one worker of each: each master
       releases its own worker's job and never the other host's; the job of each host
       that was not killed keeps its lock and runs once; after a kill -9 of host B's
       plugin, B's new master (which releases vanished workers' locks when it
       connects) leaves host A's running jobs alone.
    """
    url = server.create_database("shared")
    labels = [host.name or label for host, label in zip(hosts, ["a", "b"], strict=True)]
    isolated = hosts[0].namespace is not None
    runs_: list[CircusRun] = []
    try:
        for host, label in zip(hosts, labels, strict=True):
            settings = host_settings(tmp_path / label, host)
            env = circus_env({"DJMASTER_DATABASE_URL": host_url(server, host, "shared")})
            env["DJMASTER_TEST_HOST"] = label
            run = start_circus_on(host, settings, env)
            runs_.append(run)
            run.wait_for_master()
        a, b = runs_
        with psycopg.connect(url, autocommit=True) as conn:
            # 1. Thousands of short jobs, no faults: each runs exactly once.
            enqueue(conn, "q1", [("run_once", [f"s{i}"]) for i in range(SHORT_JOBS)])

            def drained() -> bool:
                [(left,)] = conn.execute("SELECT count(*) FROM delayed_jobs").fetchall()
                return left == 0

            wait_until(drained, DEADLINE, "both hosts to drain the short jobs")
            [(total, distinct)] = conn.execute(
                "SELECT count(*), count(DISTINCT job_key) FROM job_runs"
            ).fetchall()
            assert (total, distinct) == (SHORT_JOBS, SHORT_JOBS), "a job ran twice, or never"
            per_host = dict(
                conn.execute("SELECT host, count(*) FROM job_runs GROUP BY host").fetchall()
            )
            print(f"short jobs per host: {per_host}")
            assert set(per_host) == set(labels), f"one host ran nothing: {per_host}"

            # 2. A long job on each host; kill -9 one worker of each.
            longs = [f"long{i}" for i in range(4)]
            enqueue(conn, "long", [("run", [key, LONG_JOB]) for key in longs])

            def busy_on_both() -> dict[str, list[tuple[str, int]]] | None:
                busy: dict[str, list[tuple[str, int]]] = {}
                for key, label, pid, ended in runs(conn, "job_key LIKE 'long%'"):
                    if not ended:
                        busy.setdefault(label, []).append((key, pid))
                return busy if set(busy) == set(labels) else None

            busy = wait_until(busy_on_both, DEADLINE, "long jobs running on both hosts")
            (key_a, worker_a), (key_b, worker_b) = busy[labels[0]][0], busy[labels[1]][0]
            # The pids locked_by names (a launcher's, with spawn = "fork").
            pid_a, pid_b = listed_pid(worker_a), listed_pid(worker_b)
            spared = [key for key in longs if key not in (key_a, key_b)]
            lock_host = {
                label: (host.name if isolated else socket.gethostname())
                for host, label in zip(hosts, labels, strict=True)
            }
            assert locked_by(conn, key_a)[0] == f"host:{lock_host[labels[0]]} pid:{pid_a}"
            assert locked_by(conn, key_b)[0] == f"host:{lock_host[labels[1]]} pid:{pid_b}"
            os.kill(worker_a, signal.SIGKILL)
            os.kill(worker_b, signal.SIGKILL)

            def released(run: CircusRun, lock: str) -> bool:
                return f"of a dead worker ({lock})" in read(run.log_file)

            lock_a = f"host:{lock_host[labels[0]]} pid:{pid_a}"
            lock_b = f"host:{lock_host[labels[1]]} pid:{pid_b}"
            wait_until(lambda: released(a, lock_a), DEADLINE, "host A's master to release A's job")
            wait_until(lambda: released(b, lock_b), DEADLINE, "host B's master to release B's job")
            for key, pid, host in ((key_a, pid_a, hosts[0]), (key_b, pid_b, hosts[1])):
                _, attempts, last_error = locked_by(conn, key)
                if attempts != -1:  # not done yet: the release is on record
                    assert attempts == 1 and f"worker pid {pid}" in (last_error or "")
                    if isolated:
                        assert f"on {host.name}" in (last_error or ""), last_error

            # B's plugin dies and comes back; its new master looks for locks of
            # vanished workers when it connects. A's running jobs are not among them.
            old = b.wait_for_master()
            os.kill(old, signal.SIGKILL)
            wait_until(
                lambda: (pid := b.plugin_pid()) not in (None, old) and master_started(b, pid),
                DEADLINE,
                "host B's master to come back",
            )

            def long_jobs_done() -> bool:
                return {
                    key for key, _, _, ended in runs(conn, "job_key LIKE 'long%'") if ended
                } == set(longs)

            wait_until(long_jobs_done, DEADLINE, "every long job to complete")
            long_runs = runs(conn, "job_key LIKE 'long%'")
            for key in spared:
                mine = [r for r in long_runs if r[0] == key]
                assert len(mine) == 1 and mine[0][3], f"{key} ran {mine}: released while running?"
            for key in (key_a, key_b):
                mine = [r for r in long_runs if r[0] == key]
                assert [r[3] for r in mine] == [False, True], f"{key}: {mine}"
        log_a, log_b = read(a.log_file), read(b.log_file)
        assert f"pid:{pid_b})" not in log_a, "host A's master released a job of host B"
        assert f"pid:{pid_a})" not in log_b, "host B's master released a job of host A"
        assert log_a.count("of a dead worker (") == 1, "host A released something else"
        assert log_b.count("of a dead worker (") == 1, "host B released something else"
    except BaseException:
        for run in runs_:
            print(run.logs()[-8000:])
        raise
    finally:
        for run in runs_:
            run.close()
