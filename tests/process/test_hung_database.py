"""A worker whose database connection stops answering: its server backends are stopped
(SIGSTOP) while the connection stays open, so no error ever comes back by itself.

Every database call of the worker is bounded (tests/unit/worker/test_job_safety.py has the
mechanism): an idle worker's hung reserve is cut at its deadline, the worker reconnects
(a new backend) and runs the job enqueued meanwhile; its title shows ``[NO DB]`` while
none of its threads can reach the database; TERM stops it within seconds even while a
reserve hangs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from circus_djmaster import enqueue
from circus_djmaster.contracts.exit_codes import WorkerExit
from tests.support.waiting import wait_until
from tests.support.worker_run import events, start_worker, worker_pid, write_settings

J = "tests.support.jobs"


def title(proc: subprocess.Popen[str]) -> str:
    try:
        return " ".join(psutil.Process(worker_pid(proc.pid)).cmdline()).strip()
    except psutil.Error:
        return ""


def backends_of(conn: psycopg.Connection[Any], worker_pid: int) -> list[int]:
    """Server pids of the worker's connections (their application_name names it)."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s",
        (f"djmaster worker {worker_pid} %",),
    ).fetchall()
    return [row[0] for row in rows]


@pytest.fixture
def stopped() -> Iterator[list[int]]:
    """Backends the test stops; always continued (then they see their client gone)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def stop_backends(
    conn: psycopg.Connection[Any], worker: int, stopped: list[int], *, count: int
) -> None:
    """Stop the backends of the worker's ``count`` connections (its job threads' and its
    LISTEN one), once they all exist: a worker shows its title before its threads have
    connected, and a thread connecting after the stop would find a live backend."""
    pids = wait_until(
        lambda: (found := backends_of(conn, worker)) and len(found) >= count and found,
        10,
        "the worker's connections",
    )
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)


def test_an_idle_worker_whose_backends_hang_reconnects_and_runs_the_next_job(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any], stopped: list[int]
) -> None:
    log_file = tmp_path / "worker.log"
    settings = write_settings(
        tmp_path,
        log_file=str(log_file),
        database_timeout="1s",
        workers=[{"queues": ["q1"], "max_processes": 1, "idle_timeout": "600s",
                  "sleep_delay": 0.3}],
    )  # fmt: skip
    proc = start_worker(settings, database_url)
    try:
        wait_until(lambda: title(proc).endswith("@primary"), 10, "the worker to be idle")
        stop_backends(conn, proc.pid, stopped, count=2)  # job-0, listen
        wait_until(lambda: title(proc).endswith("[NO DB]"), 10, "the [NO DB] title")
        enqueue(f"{J}:record", ["after-hang"], queue="q1", database_url=database_url)
        wait_until(lambda: events(conn, "after-hang"), 15, "the job to run after reconnecting")
        wait_until(lambda: title(proc).endswith("@primary"), 10, "the title without [NO DB]")
        text = log_file.read_text()
        assert "no answer within 3s: connection dropped" in text
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.communicate(timeout=15)


def test_term_stops_a_worker_waiting_on_a_hung_database_within_seconds(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any], stopped: list[int]
) -> None:
    """database_timeout is a minute: only TERM's own handling can end the wait."""
    settings = write_settings(
        tmp_path,
        database_timeout="60s",
        workers=[{"queues": ["q1"], "max_threads": 2, "idle_timeout": "600s",
                  "sleep_delay": 0.3}],
    )  # fmt: skip
    proc = start_worker(settings, database_url)
    try:
        wait_until(lambda: title(proc).endswith("@primary"), 10, "the worker to be idle")
        stop_backends(conn, proc.pid, stopped, count=3)  # job-0, job-1, listen
        wait_until(lambda: title(proc).endswith("[NO DB]"), 10, "a reserve to hang")
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == WorkerExit.RETIRED, err
    assert took < 5, f"TERM took {took:.1f}s"
    assert "stopped waiting for an answer (the worker stops)" in err
