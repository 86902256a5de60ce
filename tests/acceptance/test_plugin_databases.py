"""One worker group over two databases: fair shares within max_processes (docs/design.md §5)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from circus_djmaster.store.sync_executor import connect
from tests.acceptance.plugin_helpers import (
    DEADLINE,
    done,
    enqueue,
    enqueue_many,
    master_log,
    running,
    settings_file,
    wait_until,
)

# Exec mode only: sharing max_processes between databases is the master's scaling, the
# same whatever the spawn mode (the suite's time: tests/support/spawn.py).

PRIMARY = "djmaster-worker0-primary"
SECONDARY = "djmaster-worker0-secondary"


@pytest.fixture
def second(make_database: Callable[..., str]) -> Iterator[tuple[str, psycopg.Connection[Any]]]:
    url = make_database()
    with connect(url) as connection:
        yield url, connection


def two_database_settings(folder: Path, max_processes: int) -> Path:
    return settings_file(
        folder,
        databases={"primary": "${DJMASTER_DATABASE_URL}", "secondary": "${DJMASTER_SECOND_URL}"},
        workers=[{"queues": ["q1"], "max_processes": max_processes, "sleep_delay": 0.2}],
    )


def test_two_databases_share_max_processes(
    tmp_path: Path,
    database_url: str,
    conn: psycopg.Connection[Any],
    second: tuple[str, psycopg.Connection[Any]],
) -> None:
    second_url, second_conn = second
    settings = two_database_settings(tmp_path, max_processes=2)
    urls = {"DJMASTER_DATABASE_URL": database_url, "DJMASTER_SECOND_URL": second_url}
    # Both backlogs wait before the master starts, so its first pass sees both.
    # Job functions record into the primary database, whichever database ran them.
    keys_a = [f"a{i}" for i in range(6)]
    keys_b = [f"b{i}" for i in range(6)]
    enqueue_many(conn, [("sleep_then_record", (key, 0.4)) for key in keys_a])
    enqueue_many(second_conn, [("sleep_then_record", (key, 0.4)) for key in keys_b])
    with running(settings, urls) as run:
        highest_total = 0
        both_at_once = False
        deadline = time.monotonic() + DEADLINE * 2
        while not all(done(conn, key) for key in keys_a + keys_b):
            a, b = len(run.pids(PRIMARY)), len(run.pids(SECONDARY))
            highest_total = max(highest_total, a + b)
            both_at_once = both_at_once or (a > 0 and b > 0)
            assert time.monotonic() < deadline, "jobs of both databases not done in time"
            time.sleep(0.05)
        assert highest_total <= 2
        assert both_at_once, "one database waited for the other to drain"


def test_a_starved_database_gets_a_slot_from_a_busy_one(
    tmp_path: Path,
    database_url: str,
    conn: psycopg.Connection[Any],
    second: tuple[str, psycopg.Connection[Any]],
) -> None:
    second_url, second_conn = second
    settings = two_database_settings(tmp_path, max_processes=2)
    urls = {"DJMASTER_DATABASE_URL": database_url, "DJMASTER_SECOND_URL": second_url}
    with running(settings, urls) as run:
        backlog = [f"a{i}" for i in range(30)]
        enqueue_many(conn, [("sleep_then_record", (key, 0.5)) for key in backlog])
        wait_until(lambda: len(run.pids(PRIMARY)) == 2, DEADLINE, "primary to take both slots")
        enqueue(second_conn, "record", "b0")
        wait_until(lambda: done(conn, "b0"), DEADLINE, "the secondary's job")
        left = sum(1 for key in backlog if not done(conn, key))
        assert left > 0, "secondary was only served once primary's backlog was drained"
        assert "slot needed by a starved database" in master_log(run)
        wait_until(lambda: all(done(conn, key) for key in backlog), DEADLINE * 2, "the backlog")


def test_a_database_down_does_not_stop_the_others(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    # The secondary's URL names a database that does not exist, with a password.
    broken = database_url.replace("dbname=", "password=s3cret-pw dbname=no_such_db_")
    settings = two_database_settings(tmp_path, max_processes=2)
    urls = {"DJMASTER_DATABASE_URL": database_url, "DJMASTER_SECOND_URL": broken}
    with running(settings, urls) as run:
        enqueue(conn, "record", "ok1")
        wait_until(lambda: done(conn, "ok1"), DEADLINE, "the primary's job")
        wait_until(
            lambda: master_log(run).count("database secondary:") >= 2,
            DEADLINE,
            "retry lines for the secondary",
        )
        text = master_log(run)
        assert "retrying in" in text and "reconnecting in" in text
        assert "s3cret-pw" not in text and "s3cret-pw" not in run.logs()
        assert run.pids(SECONDARY) == []
