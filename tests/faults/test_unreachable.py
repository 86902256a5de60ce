"""Databases unreachable when the master starts (docs/design.md §8).

tests/acceptance/test_plugin_databases.py already shows that a database that does not
exist leaves the others served, that retry lines are logged, and that its password is
not. This adds every way of being unreachable at once, next to a working database:

* ``badport``: nothing listens on its port (connection refused);
* ``badpass``: the server answers, but the password is wrong;
* ``late``: its server is down at start and comes up later;
* ``silent``: something accepts the TCP connection and never answers (a hung server,
  or a network path that swallows the replies): each attempt lasts the connect timeout.

and checks, from the log's timestamps, one line per retry and per connection (the
poller's and the listener's), each naming the database and the error, with delays
growing as announced (0.5 s doubling, up to 30 s); that the working database's jobs
run, promptly, meanwhile; that ``late``'s job runs once its server is up; and that no
password appears in any log line or in the rendered circus.ini.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.acceptance.plugin_helpers import (
    db_now,
    done,
    enqueue,
    event_at,
    master_log,
    running,
    settings_file,
)
from tests.support import log_lines
from tests.support.circus_run import free_port, read
from tests.support.pg_servers import EmbeddedServer
from tests.support.waiting import wait_until

# Exec mode only: the master's handling of unreachable databases does not depend on how
# workers start (the suite's time: tests/support/spawn.py).

DEADLINE = 30.0
GOOD_PASSWORD = "late-pw-7c1e9a"
WRONG_PASSWORD = "wrong-pw-52b4d0"
PORT_PASSWORD = "port-pw-a83f11"
SILENT_PASSWORD = "silent-pw-0d6c2e"
PASSWORDS = (GOOD_PASSWORD, WRONG_PASSWORD, PORT_PASSWORD, SILENT_PASSWORD)
POLLER_LINE = r"database (\w+): (.+); retrying in ([\d.]+)s \(attempt (\d+)\)$"
LISTENER_LINE = (
    r"database (\w+): LISTEN connection failed \((.+)\); reconnecting in ([\d.]+)s "
    r"\(attempt (\d+)\)$"
)
#: How long one failed attempt may take on top of the announced delay, for a refused
#: connection or a rejected password (both answer at once).
ATTEMPT_SLACK = 1.0
#: The master waits this long for each database's count (master.COUNT_WAIT): a
#: database that is connecting, and so not known to be down yet, costs a pass that.
COUNT_WAIT = 2.0


def backoff(attempt: int) -> float:
    """The delay announced after failure ``attempt`` (listener.Backoff defaults)."""
    return min(0.5 * 2 ** (attempt - 1), 30.0)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel completes them) and never says
    a word: libpq waits for the server's first message until its connect timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


def retries(text: str, pattern: str, database: str) -> list[tuple[float, str, float, int]]:
    """(time, error, announced delay, attempt) of each retry line of ``database``."""
    return [
        (line.at, match.group(2), float(match.group(3)), int(match.group(4)))
        for line, match in log_lines.matching(text, pattern)
        if match.group(1) == database
    ]


def check_backoff(lines: list[tuple[float, str, float, int]], what: str, slack: float) -> None:
    """One line per attempt, numbered from 1; announced delays 0.5 s doubling; the
    next line comes after the announced delay (plus one attempt's duration)."""
    attempts = [attempt for _, _, _, attempt in lines]
    assert attempts == list(range(1, len(lines) + 1)), f"{what}: attempts {attempts}"
    assert [delay for _, _, delay, _ in lines] == [backoff(n) for n in attempts], what
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(lines)]
    for (_, _, delay, attempt), gap in zip(lines, gaps, strict=False):
        assert delay - 0.05 <= gap <= delay + slack, (
            f"{what}: {gap:.2f}s between attempts {attempt} and {attempt + 1}, announced {delay}s"
        )
    assert gaps == sorted(gaps), f"{what}: intervals do not grow: {gaps}"


def test_unreachable_databases_retry_with_backoff_and_the_others_are_served(
    tmp_path: Path,
    database_url: str,
    conn: psycopg.Connection[Any],
    own_server: EmbeddedServer,
    silent_port: int,
) -> None:
    # `late` and `badpass` live on a server of this test's own, with passwords; it is
    # down when the master starts.
    own_server.create_database("late")
    own_server.create_database("locked")
    own_server.require_password(GOOD_PASSWORD)
    with psycopg.connect(own_server.url("late"), autocommit=True) as late:
        enqueue(late, "record", "late1")  # the job functions record into primary
    with psycopg.connect(own_server.url("locked"), autocommit=True) as locked:
        enqueue(locked, "record", "locked1")
    own_server.stop()

    urls = {
        "DJMASTER_DATABASE_URL": database_url,
        "BADPORT_URL": (f"postgresql://postgres:{PORT_PASSWORD}@127.0.0.1:{free_port()}/djmaster"),
        "BADPASS_URL": own_server.url("locked", password=WRONG_PASSWORD),
        "LATE_URL": own_server.url("late"),
        "SILENT_URL": f"postgresql://postgres:{SILENT_PASSWORD}@127.0.0.1:{silent_port}/x",
    }
    databases = {"primary": "${DJMASTER_DATABASE_URL}"} | {
        name: f"${{{name.upper()}_URL}}" for name in ("badport", "badpass", "late", "silent")
    }
    settings = settings_file(
        tmp_path,
        databases=databases,
        workers=[{"queues": ["q1"], "max_processes": 3, "sleep_delay": 0.2}],
        monitor_interval=60.0,  # no monitor tick counts: pickups come from NOTIFY
    )
    with running(settings, urls) as run:
        # The working database is served at once…
        enqueue(conn, "record", "p1")
        wait_until(lambda: done(conn, "p1"), DEADLINE, "primary's first job")
        # …and keeps being served while the others fail (wait for a few retries).
        wait_until(
            lambda: len(retries(master_log(run), POLLER_LINE, "late")) >= 3,
            DEADLINE,
            "three failed attempts on late",
        )
        inserted = db_now(conn)
        enqueue(conn, "sleep_then_record", "p2", 0.0)
        p2 = wait_until(lambda: event_at(conn, "p2", "start"), DEADLINE, "primary's job p2")
        pickup = p2 - inserted
        print(f"primary's job p2 started {pickup:.2f}s after its insert")

        # `late`'s server comes up: its job runs.
        own_server.start_again()
        up_at = time.time()
        wait_until(lambda: done(conn, "late1"), DEADLINE, "late's job once its server is up")
        late_done = event_at(conn, "late1", "done")
        assert late_done is not None
        print(f"late's job done {late_done - up_at:.2f}s after its server came up")
        wait_until(
            lambda: "password authentication failed" in master_log(run),
            DEADLINE,
            "badpass to fail on its password",
        )
        # `silent` is known to be down once an attempt timed out; a job of the working
        # database enqueued while the master tries it again must not wait for it.
        wait_until(lambda: run.pids("djmaster-worker0-primary") == [], DEADLINE, "no worker")

        def during_a_retry() -> int | None:
            """The number of silent's failed attempts, when the next one has been
            running for a moment and has more than COUNT_WAIT + 0.5 s left."""
            lines = retries(master_log(run), POLLER_LINE, "silent")
            if not lines:
                return None
            at, _, delay, attempt = lines[-1]
            begun = at + delay
            return attempt if begun + 0.2 <= time.time() <= begun + 5.0 - COUNT_WAIT - 0.5 else None

        failed_before = wait_until(during_a_retry, DEADLINE, "silent to be retried")
        inserted = db_now(conn)
        enqueue(conn, "sleep_then_record", "p3", 0.0)
        p3 = wait_until(lambda: event_at(conn, "p3", "start"), DEADLINE, "primary's job p3")
        pickup_while_reconnecting = p3 - inserted
        print(f"primary's job p3 started {pickup_while_reconnecting:.2f}s after its insert")
        reconnecting = len(retries(master_log(run), POLLER_LINE, "silent")) == failed_before
        wait_until(
            lambda: len(retries(master_log(run), POLLER_LINE, "badport")) >= 6,
            DEADLINE,
            "six failed attempts on badport",
        )
        text = master_log(run)
        everything = run.logs() + read(run.ini)
        assert not done(conn, "locked1"), "a job ran on a database with a wrong password"
        assert run.pids("djmaster-worker0-badpass") == []

    # One clear line per retry and per connection, delays growing as announced.
    for pattern, role in ((POLLER_LINE, "poller"), (LISTENER_LINE, "listener")):
        for database in ("badport", "badpass"):
            lines = retries(text, pattern, database)
            assert len(lines) >= 5, f"{role} of {database}: {len(lines)} retry lines"
            check_backoff(lines, f"{role} of {database}", ATTEMPT_SLACK)
        late_lines = [line for line in retries(text, pattern, "late") if line[0] < up_at]
        assert len(late_lines) >= 3, f"{role} of late: {late_lines}"
        check_backoff(late_lines, f"{role} of late", ATTEMPT_SLACK)
        silent = retries(text, pattern, "silent")
        assert silent, f"no retry line of the {role} of silent"
        # Each attempt waits for the connect timeout (5 s) before it fails.
        check_backoff(silent, f"{role} of silent", 5.0 + ATTEMPT_SLACK)
    badport = retries(text, POLLER_LINE, "badport")
    assert all("Connection refused" in error for _, error, _, _ in badport), badport[0]
    assert any(
        "password authentication failed" in e
        for _, e, _, _ in retries(text, POLLER_LINE, "badpass")
    )
    assert all("timeout" in e.lower() for _, e, _, _ in retries(text, POLLER_LINE, "silent"))
    assert "Traceback" not in text, "a failure logged a traceback instead of one line"

    # late: reconnected at its first try after the server came up, and its job ran.
    late_failures = [line for line in retries(text, POLLER_LINE, "late") if line[0] < up_at]
    next_try = late_failures[-1][0] + late_failures[-1][2]
    assert "database late: reachable again" in text
    assert late_done - max(up_at, next_try) <= 3.0, "late's job waited after its reconnect"

    # The working database never waited on the others for more than one count wait.
    assert done(conn, "p1") and pickup <= COUNT_WAIT + 2.0, f"p2 waited {pickup:.1f}s"

    for password in PASSWORDS:
        assert password not in everything, "a password leaked into a log line or circus.ini"

    # Last (the rest holds either way): once `silent` is known to be down, reconnecting
    # to it must not hold up the other databases' passes. (The very first connection
    # may: nothing is known about it yet.)
    assert reconnecting, "sanity: p3 started while the master was reconnecting to silent"
    assert pickup_while_reconnecting < COUNT_WAIT, (
        f"a job of the working database waited {pickup_while_reconnecting:.1f}s: every "
        "scaling pass waits COUNT_WAIT for a database that is known to be down but is "
        "being reconnected to"
    )
