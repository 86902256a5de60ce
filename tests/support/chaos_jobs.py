"""Job functions of the fault tests (tests/faults); worker processes import them.

Each run of a job records itself in the ``job_runs`` side table of the database named by
``$DJMASTER_DATABASE_URL`` (see tests/support/pg_servers.py): a row when it starts
(key, host, pid, database clock) and its end time when it ends. A run whose row has
no end was cut short (its worker died). The recording survives a Postgres restart:
it reconnects and retries for up to a minute, and both writes are idempotent (the
row's primary key is a token made before the first try), so a retried write never
records a run twice.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from typing import Any

import psycopg

RETRY_FOR = 60.0
_local = threading.local()
_tokens = itertools.count()


def _connection() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(
            os.environ["DJMASTER_DATABASE_URL"],
            autocommit=True,
            connect_timeout=5,
            application_name="djmaster-test-job",
        )
        _local.conn = conn
    return conn


def _write(statement: str, params: tuple[Any, ...]) -> None:
    deadline = time.monotonic() + RETRY_FOR
    while True:
        try:
            _connection().execute(statement, params)
            return
        except psycopg.OperationalError:
            conn = getattr(_local, "conn", None)
            if conn is not None:
                conn.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def host() -> str:
    """The host a run is recorded for: ``$DJMASTER_TEST_HOST`` (which circusd of a
    test ran it, when several share one machine), else the host name."""
    return os.environ.get("DJMASTER_TEST_HOST") or socket.gethostname()


def _token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{next(_tokens)}"


def _start(key: str) -> str:
    token = _token()
    _write(
        "INSERT INTO job_runs (token, job_key, host, pid) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (token) DO NOTHING",
        (token, key, host(), os.getpid()),
    )
    return token


def _end(token: str) -> None:
    _write(
        "UPDATE job_runs SET ended_at = clock_timestamp() WHERE token = %s AND ended_at IS NULL",
        (token,),
    )


def run(key: str, seconds: float = 0.0) -> None:
    """Record the start, sleep ``seconds``, record the end."""
    token = _start(key)
    if seconds:
        time.sleep(seconds)
    _end(token)


def run_once(key: str) -> None:
    """A run with no duration: one row, start and end in one statement."""
    _write(
        "INSERT INTO job_runs (token, job_key, host, pid, ended_at) "
        "VALUES (%s, %s, %s, %s, clock_timestamp()) ON CONFLICT (token) DO NOTHING",
        (_token(), key, host(), os.getpid()),
    )


def poison(key: str) -> None:
    """Record the start, then end the worker at once (os._exit(3)), whatever runs beside
    it: the chaos run's poison job."""
    _start(key)
    os._exit(3)
