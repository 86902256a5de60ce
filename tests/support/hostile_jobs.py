"""Job functions of the hostile-job tests (tests/hostile); the shared ones are in jobs.py.

Each records what it did in the ``job_events`` side table (see jobs.record_event) before
it misbehaves, so a test can tell which worker process ran it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import psycopg

from tests.support.jobs import allocate, record_event


def record_then_exit_process(key: str, code: int) -> None:
    """Record the worker's pid, then end the process without any cleanup."""
    record_event(key, "start")
    os._exit(code)


def _enqueue_follow_up(key: str, queue: str) -> None:
    """Enqueue a harmless job (as jobs often do), which also wakes the master (NOTIFY)."""
    handler = json.dumps(
        {"callable": "tests.support.jobs:record", "args": [f"{key}-follow-up-{os.getpid()}"]}
    )
    with psycopg.connect(os.environ["DJMASTER_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO delayed_jobs (handler, queue, priority) VALUES (%s, %s, 1)",
            (handler, queue),
        )


def enqueue_then_exit_process(key: str, code: int, queue: str) -> None:
    """Record the pid, enqueue a follow-up job in ``queue``, then ``os._exit(code)``."""
    record_event(key, "start")
    _enqueue_follow_up(key, queue)
    os._exit(code)


def enqueue_then_crash(key: str, queue: str) -> None:
    """Record the pid, enqueue a follow-up job in ``queue``, then die of SIGSEGV."""
    import ctypes

    record_event(key, "start")
    _enqueue_follow_up(key, queue)
    ctypes.string_at(0)


def record_then_sys_exit(key: str, code: int) -> None:
    record_event(key, "start")
    sys.exit(code)


def allocate_and_hold(key: str, megabytes: int) -> None:
    """Grow the worker's RSS by ``megabytes`` and keep running (until killed)."""
    record_event(key, "start")
    allocate(f"{key}-allocated", megabytes)
    time.sleep(120)
    record_event(key, "done")


def digest(key: str, payload: str) -> None:
    """Record the size and sha256 of a (large) argument as the event text."""
    sha = hashlib.sha256(payload.encode("utf-8")).hexdigest()
    record_event(key, f"done {len(payload)} {sha}")


def raise_with_nul(key: str) -> None:
    """A job failing with a message that holds a NUL byte (binary data in an error is
    common: a parser quoting the bytes it choked on). PostgreSQL text cannot hold NUL."""
    record_event(key, "start")
    raise ValueError("bad record: b'\x00\x01' at offset 0")


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be shown")


def raise_unprintable(key: str) -> None:
    """A job raising an exception whose ``str()`` itself raises."""
    record_event(key, "start")
    raise _Unprintable()


def raise_with_lone_surrogate(key: str) -> None:
    """A job failing with a message that cannot be encoded as UTF-8 (a lone surrogate,
    as ``os.fsdecode`` produces for undecodable file names)."""
    name = os.fsdecode(b"caf\xe9.txt")  # "caf\udce9.txt"
    record_event(key, "start")
    raise OSError(f"cannot open {name}")
