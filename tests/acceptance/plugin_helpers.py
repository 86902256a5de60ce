"""Shared pieces of the master plugin's acceptance tests (tests/acceptance/test_plugin_*).

Each test writes a settings file into its tmp folder, runs a real circusd on the
rendered circus.ini with the real plugin and real workers against a fresh database,
enqueues jobs with plain SQL and waits on conditions with deadlines.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil
import psycopg

from tests.support.circus_run import CircusRun, circus_env, circus_table, read, start_circus
from tests.support.waiting import wait_until
from tests.support.worker_run import events, write_settings

DEADLINE = 20.0
WATCHER = "djmaster-worker0-primary"


def settings_file(folder: Path, *, check_delay: float = 0.5, **overrides: Any) -> Path:
    """Settings for one group on ``primary`` with short intervals; keys override;
    ``check_delay`` is circusd's."""
    workers = overrides.pop("workers", [{"queues": ["q1"], "max_processes": 2, "sleep_delay": 0.2}])
    top: dict[str, Any] = {
        "monitor_interval": 1.0,
        "polling_interval": 30.0,
        "log_file": str(folder / "djmaster.log"),
        "pid_file": str(folder / "master.pid"),
        "log_level": "debug",
    }
    top.update(overrides)
    tables = {"circus": circus_table(folder, check_delay=check_delay)}
    return write_settings(
        folder,
        workers=workers,
        databases=top.pop("databases", None),
        tables=tables,
        **top,
    )


@contextmanager
def running(settings: Path, urls: Mapping[str, str]) -> Iterator[CircusRun]:
    run = start_circus(settings, circus_env(urls))
    try:
        run.wait_for_master()
        yield run
    except BaseException:
        print(run.logs())  # shown by pytest for a failed test
        raise
    finally:
        run.close()


def handler(function: str, *args: Any, module: str = "jobs") -> str:
    return json.dumps(
        {"callable": f"tests.support.{module}:{function}", "args": list(args), "kwargs": {}}
    )


def enqueue(
    conn: psycopg.Connection[Any],
    function: str,
    *args: Any,
    queue: str = "q1",
    delay: float = 0.0,
    module: str = "jobs",
) -> int:
    row = conn.execute(
        "INSERT INTO delayed_jobs (handler, queue, run_at) "
        "VALUES (%s, %s, now() + make_interval(secs => %s)) RETURNING id",
        (handler(function, *args, module=module), queue, delay),
    ).fetchone()
    assert row is not None
    return int(row[0])


def enqueue_many(
    conn: psycopg.Connection[Any], jobs: list[tuple[str, tuple[Any, ...]]], queue: str = "q1"
) -> None:
    """Many jobs in one statement (one NOTIFY)."""
    conn.execute(
        "INSERT INTO delayed_jobs (handler, queue) SELECT h, %s FROM unnest(%s::text[]) AS h",
        (queue, [handler(function, *args) for function, args in jobs]),
    )


def done(conn: psycopg.Connection[Any], key: str) -> bool:
    return any(event == "done" for _, event, _ in events(conn, key))


def event_at(conn: psycopg.Connection[Any], key: str, event: str) -> float | None:
    row = conn.execute(
        "SELECT extract(epoch FROM at)::float8 FROM job_events WHERE job_key = %s AND event = %s "
        "ORDER BY id LIMIT 1",
        (key, event),
    ).fetchone()
    return None if row is None else float(row[0])


def db_now(conn: psycopg.Connection[Any]) -> float:
    row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


def titles(pids: list[int]) -> dict[int, str]:
    result = {}
    for pid in pids:
        with suppress(psutil.Error):
            result[pid] = " ".join(psutil.Process(pid).cmdline())
    return result


def watch_max(probe: Callable[[], int], until: Callable[[], bool], timeout: float) -> int:
    """The highest value ``probe`` returned while waiting for ``until``."""
    highest = 0
    deadline = time.monotonic() + timeout
    while True:
        highest = max(highest, probe())
        if until():
            return highest
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (highest {highest})")
        time.sleep(0.05)


def master_log(run: CircusRun) -> str:
    return read(run.log_file)


__all__ = [
    "DEADLINE",
    "WATCHER",
    "db_now",
    "done",
    "enqueue",
    "enqueue_many",
    "event_at",
    "master_log",
    "running",
    "settings_file",
    "titles",
    "wait_until",
    "watch_max",
]
