"""The master's LISTEN connection under faults, in the real plugin (docs/design.md §8).

tests/integration/master/test_listener.py covers the Listener class alone (a terminated
connection reconnects and hands payloads on again). Here the whole plugin runs under
circusd, and each pickup is timed against what else could have started the job:

* ``polling_interval`` and ``monitor_interval`` are 30 s (every monitor tick also
  counts ready jobs), and workers retire as soon as they find no job
  (``idle_timeout = 0``) and are gone before a job is inserted, so a job that starts
  within 2 s of its insert was picked up through NOTIFY;
* the probe test polls every 6 s: there, polling covers the gap.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.acceptance.plugin_helpers import (
    WATCHER,
    enqueue,
    event_at,
    master_log,
    running,
    settings_file,
)
from tests.support import log_lines
from tests.support.circus_run import CircusRun
from tests.support.pg_servers import EmbeddedServer
from tests.support.waiting import wait_until

# Exec mode only: the master's LISTEN connection does not depend on how workers start
# (the suite's time: tests/support/spawn.py; the process model's tests run in both).

LISTEN_APP = "djmaster-master-listen"
NOTIFY_PICKUP = 2.0  # seconds from insert to the job's start, through NOTIFY
WORKER_START = 3.0  # a worker process's start-up, on top of the pass that wants it
DEADLINE = 30.0
#: The listener probes after this many quiet seconds, and gives the probe this long
#: (Master(probe_interval=10), Listener(probe_timeout=5)).
PROBE_INTERVAL, PROBE_TIMEOUT = 10.0, 5.0
#: circus reaps an exited worker within check_delay (0.5 s here) and publishes a reap
#: event, on which the master runs a pass (a count). A job inserted later than this
#: after the last worker exited cannot be found by that pass.
REAP_QUIET = 1.5


def listen_activity(conn: psycopg.Connection[Any]) -> tuple[int, str, float] | None:
    """The plugin's LISTEN connection to this database: its backend pid, its last
    query (``LISTEN delayed_jobs``, or ``SELECT 1`` once probed) and when that began.
    Found by application_name: after the first probe its query is no longer LISTEN."""
    row = conn.execute(
        "SELECT pid, query, extract(epoch FROM query_start)::float8 FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s",
        (LISTEN_APP,),
    ).fetchone()
    # A connection that has run no query yet (just connected, LISTEN still on its way)
    # has no query_start: not listening yet.
    if row is None or row[2] is None:
        return None
    return int(row[0]), str(row[1]), float(row[2])


def listen_backend(conn: psycopg.Connection[Any]) -> int | None:
    activity = listen_activity(conn)
    return None if activity is None else activity[0]


def quiet_settings(folder: Path, polling_interval: float = 30.0) -> Path:
    # Every monitor tick counts ready jobs too: none in the test's time but the first.
    return settings_file(folder, polling_interval=polling_interval, monitor_interval=120.0)


def counts(run: CircusRun) -> list[float]:
    """When the master counted ready jobs (debug lines; its poll timer restarts at each)."""
    return [line.at for line, _ in log_lines.matching(master_log(run), r"database primary: ready ")]


def settled(run: CircusRun) -> bool:
    """No worker left, the last one exited REAP_QUIET ago (its reap pass is over), and
    the master has not counted for a second (the passes of its start are over)."""
    if run.pids(WATCHER):
        return False
    now = time.time()
    exits = log_lines.matching(master_log(run), r"worker exits ")
    if exits and now - exits[-1][0].at < REAP_QUIET:
        return False
    passes = counts(run)
    return bool(passes) and now - passes[-1] >= 1.0


def just_counted(run: CircusRun) -> bool:
    """The master counted less than 0.3 s ago (its poll timer restarted then)."""
    passes = counts(run)
    return bool(passes) and time.time() - passes[-1] < 0.3


def insert_when_quiet(
    conn: psycopg.Connection[Any], run: CircusRun, key: str, *, after_count: bool = False
) -> float:
    """Insert job ``key`` once no worker is left and the passes are over (with
    ``after_count``, right after the master's next count, so its poll timer is a
    whole polling_interval away); the wall time of the insert."""
    wait_until(lambda: settled(run), DEADLINE, "idle workers to retire and be reaped")
    if after_count:
        wait_until(lambda: just_counted(run), DEADLINE, "the next count")
    inserted = time.time()
    enqueue(conn, "sleep_then_record", key, 0.0)
    return inserted


def started(conn: psycopg.Connection[Any], key: str) -> float:
    return wait_until(lambda: event_at(conn, key, "start"), DEADLINE, f"job {key} to start")


def timed_pickup(conn: psycopg.Connection[Any], run: CircusRun, key: str) -> float:
    """Seconds from the insert of job ``key`` (when quiet) to its start (printed: the
    figures of docs/RELIABILITY.md)."""
    inserted = insert_when_quiet(conn, run, key)
    pickup = started(conn, key) - inserted
    print(f"pickup of job {key}: {pickup:.2f}s")
    return pickup


def test_terminated_listen_connection_reconnects_and_notify_pickup_resumes(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with running(quiet_settings(tmp_path), {"DJMASTER_DATABASE_URL": database_url}) as run:
        first = wait_until(lambda: listen_backend(conn), DEADLINE, "the LISTEN connection")
        assert timed_pickup(conn, run, "before") <= NOTIFY_PICKUP

        conn.execute("SELECT pg_terminate_backend(%s)", (first,))
        wait_until(
            lambda: "database primary: listening again after 1 failure(s)" in master_log(run),
            DEADLINE,
            "the listener to reconnect",
        )
        assert "database primary: LISTEN connection failed" in master_log(run)
        second = wait_until(lambda: listen_backend(conn), DEADLINE, "a new LISTEN connection")
        assert second != first
        assert timed_pickup(conn, run, "after") <= NOTIFY_PICKUP


def test_silently_dead_listen_connection_is_probed_and_polling_covers_the_gap(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """SIGSTOP on the LISTEN backend: the connection looks alive but delivers nothing
    (like a dropped network path). A job inserted meanwhile is started by polling
    (every 3 s, before the listener can possibly notice: its probe needs 5 s to time
    out); the next probe (every probe_interval) finds the dead connection within
    probe_timeout; the listener reconnects and NOTIFY pickups resume."""
    polling = 3.0
    settings = quiet_settings(tmp_path, polling_interval=polling)
    with running(settings, {"DJMASTER_DATABASE_URL": database_url}) as run:
        wait_until(lambda: listen_backend(conn), DEADLINE, "the LISTEN connection")
        wait_until(lambda: settled(run), DEADLINE, "idle workers to retire and be reaped")

        def time_to_stop() -> tuple[int, str, float] | None:
            """Right after a count (the poll timer just restarted) and well before the
            listener's next probe (probe_interval after its LISTEN or its last probe,
            pg_stat_activity's query_start)."""
            activity = listen_activity(conn)
            if activity is None or not just_counted(run):
                return None
            return activity if activity[2] + PROBE_INTERVAL - time.time() >= 3.5 else None

        backend, _, last_query = wait_until(time_to_stop, DEADLINE, "a count, far from a probe")
        last_count = counts(run)[-1]
        next_probe = last_query + PROBE_INTERVAL
        os.kill(backend, signal.SIGSTOP)
        try:
            inserted = time.time()
            enqueue(conn, "sleep_then_record", "gap", 0.0)
            gap = started(conn, "gap") - inserted
            assert gap <= polling + WORKER_START, f"the gap job waited {gap:.1f}s"
            failed = wait_until(
                lambda: log_lines.matching(master_log(run), r"LISTEN connection failed"),
                PROBE_INTERVAL + PROBE_TIMEOUT + DEADLINE,
                "the probe to find the dead connection",
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(backend, signal.SIGCONT)
        noticed = failed[0][0].at
        assert "TimeoutError" in failed[0][0].text, "the probe timed out"
        # Its probe started at next_probe: the failure must come probe_timeout later.
        assert noticed - next_probe >= PROBE_TIMEOUT - 0.5, "noticed before the probe timed out"
        probe_took = noticed - next_probe  # checked last: the rest holds either way
        print(f"gap job started {gap:.2f}s after its insert (polling every {polling:g}s)")
        print(f"probe of the dead connection failed {probe_took:.2f}s after it began")
        # The gap job's worker was started by the poll timer (a whole polling_interval
        # after the count before the insert), before the listener noticed anything.
        scaled = log_lines.matching(master_log(run), rf"{WATCHER}: (started with|\d+ more)")
        when = [line.at for line, _ in scaled if line.at >= inserted]
        assert when, "no worker was started for the gap job"
        assert last_count + polling - 0.1 <= when[0] < noticed, (
            f"the gap job's worker was started {when[0] - last_count:.2f}s after the last "
            f"count before its insert (the poll timer fires after {polling:g}s) and "
            f"{when[0] - noticed:.2f}s after the listener noticed the dead connection"
        )
        wait_until(
            lambda: "database primary: listening again after 1 failure(s)" in master_log(run),
            DEADLINE,
            "the listener to reconnect",
        )
        wait_until(lambda: listen_backend(conn) not in (None, backend), DEADLINE, "new LISTEN")
        inserted = insert_when_quiet(conn, run, "after", after_count=True)
        pickup = started(conn, "after")
        print(f"pickup of a job after the reconnect: {pickup - inserted:.2f}s")
        assert pickup - inserted <= NOTIFY_PICKUP
        # Not the poll timer: it restarts at every count, and the last one was just before.
        last = max(at for at in counts(run) if at <= inserted)
        assert pickup < last + polling, "picked up by the poll timer, not by NOTIFY"
    assert probe_took <= PROBE_TIMEOUT + 1.0, (
        f"the probe on the dead connection failed {probe_took:.1f}s after it began, not "
        f"after its probe_timeout of {PROBE_TIMEOUT:g}s"
    )


def test_postgres_restart_listener_reconnects_and_notify_pickup_resumes(
    tmp_path: Path, own_server: EmbeddedServer
) -> None:
    """Postgres stops (fast: every session is cut) for 3 s and starts again. The
    listener's failure is logged, it backs off and reconnects at its first try after
    the server is back; a job inserted at once runs within polling_interval, and once
    the listener is back NOTIFY pickups take under 2 s again."""
    server = own_server
    url = server.create_database("restarted")
    with running(quiet_settings(tmp_path), {"DJMASTER_DATABASE_URL": url}) as run:
        with psycopg.connect(url, autocommit=True) as conn:
            wait_until(lambda: listen_backend(conn), DEADLINE, "the LISTEN connection")
            assert timed_pickup(conn, run, "before") <= NOTIFY_PICKUP

        server.stop()
        time.sleep(3.0)  # the outage itself
        server.start_again()
        up_at = time.time()
        with psycopg.connect(url, autocommit=True) as conn:
            # Inserted at once: the listener may still be backing off; the pass after
            # its reconnect (or polling) must find it, within polling_interval.
            inserted = time.time()
            enqueue(conn, "sleep_then_record", "at-restart", 0.0)
            assert started(conn, "at-restart") - inserted <= 30.0

            again = wait_until(
                lambda: log_lines.matching(master_log(run), r"database primary: listening again"),
                DEADLINE,
                "the listener to reconnect",
            )
            reconnected = again[-1][0].at
            print(f"listener back {reconnected - up_at:.2f}s after the server")
            failures = log_lines.matching(
                master_log(run),
                r"database primary: LISTEN connection failed .*; reconnecting in ([\d.]+)s",
            )
            before_up = [(line, match) for line, match in failures if line.at <= up_at]
            assert before_up, "the listener did not notice the restart"
            line, match = before_up[-1]
            next_try = line.at + float(match.group(1))
            assert reconnected <= max(next_try, up_at) + 1.0, (
                f"reconnected {reconnected - up_at:.1f}s after the server was back; its "
                f"next try was due {next_try - up_at:.1f}s after"
            )
            assert "database primary: reachable again" in master_log(run)
            assert timed_pickup(conn, run, "after") <= NOTIFY_PICKUP
