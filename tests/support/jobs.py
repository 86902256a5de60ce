"""Job functions the tests enqueue; worker processes import them (PYTHONPATH=repo root).

Each records what happened in the ``job_events`` side table of the database named by
``$DJMASTER_DATABASE_URL`` (the tests' template database has that table).
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from typing import Any

import psycopg

from circus_djmaster import JobRecord, job

_held: list[bytes] = []


def record_event(key: str, event: str) -> None:
    with psycopg.connect(os.environ["DJMASTER_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO job_events (job_key, event, pid) VALUES (%s, %s, %s)",
            (key, event, os.getpid()),
        )


def record(key: str) -> None:
    record_event(key, "done")


def sleep_then_record(key: str, seconds: float) -> None:
    record_event(key, "start")
    time.sleep(seconds)
    record_event(key, "done")


def fail(message: str) -> None:
    raise RuntimeError(message)


def exit_process(code: int) -> None:
    os._exit(code)


def call_sys_exit(code: int) -> None:
    sys.exit(code)


def crash_interpreter() -> None:
    ctypes.string_at(0)


def allocate(key: str, megabytes: int) -> None:
    """Hold ``megabytes`` of memory for the rest of the process's life."""
    block = bytearray(megabytes * 2**20)
    for i in range(0, len(block), 4096):  # touch every page so it counts in RSS
        block[i] = 1
    _held.append(bytes(block))
    record_event(key, "done")


def hang(key: str, seconds: float = 3600.0) -> None:
    """Block in C (time.sleep): the watchdog cannot interrupt it."""
    record_event(key, "start")
    time.sleep(seconds)
    record_event(key, "done")


def spin(key: str, seconds: float) -> None:
    """Busy Python code: the watchdog's interrupt stops it."""
    record_event(key, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    record_event(key, "done")


def wrong_arguments(a: int) -> None:
    record_event(str(a), "done")


def _hook(name: str) -> Any:
    def hook(job_record: JobRecord, *extra: Any) -> None:
        record_event(job_record.handler.args[0], name)

    return hook


@job(
    queue="hooked",
    before=_hook("before"),
    after=_hook("after"),
    success=_hook("success"),
    error=_hook("error"),
    failure=_hook("failure"),
    max_attempts=2,
)
def hooked(key: str, should_fail: bool) -> None:
    record_event(key, "run")
    if should_fail:
        raise ValueError("hooked job failed")


@job(max_attempts=3, reschedule_at=lambda now, attempts: 100.0 * attempts)
def rescheduled(key: str) -> None:
    raise ValueError(f"{key} fails")


@job(queue="limited", max_run_time=1.0)
def short_limit(key: str) -> None:
    spin(key, 30)


@job(destroy_failed_jobs=True, max_attempts=1)
def destroyed_on_failure(key: str) -> None:
    raise ValueError(key)


not_callable = 42
