"""Reserving jobs, in real worker processes: ``read_ahead = "auto"`` never keeps a job
locked behind a long one while another worker could run it, and a worker stopped at once
never hands back a job that already succeeded."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from circus_djmaster import JobCall, enqueue, enqueue_many
from circus_djmaster.contracts.exit_codes import WorkerExit
from circus_djmaster.contracts.locked_by import worker_locked_by
from tests.support.waiting import wait_until
from tests.support.worker_run import events, job_row, start_worker, write_settings

J = "tests.support.jobs"


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"worker did not exit within {timeout}s; stderr:\n{err}") from None
    return proc.returncode, err


def pids_of(conn: psycopg.Connection[Any], key: str) -> set[int]:
    return {pid for _key, _event, pid in events(conn, key)}


def test_auto_hands_back_jobs_held_behind_a_long_one_for_another_worker(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """One thread, read_ahead auto. Short jobs teach the worker that jobs are short, so
    its next reserve reads ahead; that batch starts with a 20 s job. The short jobs
    reserved behind it are handed back after about a second, and a second worker started
    meanwhile runs them while the long one still runs."""
    settings = write_settings(
        tmp_path, workers=[{"queues": ["q1"], "sleep_delay": 0.2, "idle_timeout": "30s"}]
    )
    for n in range(5):
        enqueue(f"{J}:record", [f"warm-{n}"], queue="q1", priority=0, database_url=database_url)
    first = start_worker(settings, database_url)
    try:
        wait_until(lambda: all(events(conn, f"warm-{n}") for n in range(5)), 15, "warm-up jobs")
        # One statement, so that the worker's next reserve sees them all.
        _long, *behind = enqueue_many(
            [
                JobCall(f"{J}:sleep_then_record", ["long", 20], queue="q1", priority=0),
                *(
                    JobCall(f"{J}:record", [f"behind-{n}"], queue="q1", priority=1)
                    for n in range(3)
                ),
            ],
            database_url=database_url,
        )
        wait_until(lambda: events(conn, "long"), 15, "the long job to start")
        # Read ahead: the first worker reserved them with the long one...
        locked = {job_id: (job_row(conn, job_id) or {}).get("locked_by") for job_id in behind}
        assert set(locked.values()) == {worker_locked_by(first.pid)}, locked
        # ...and hands them back: another worker runs them while the long one runs.
        second = start_worker(settings, database_url)
        try:
            wait_until(
                lambda: all(job_row(conn, job_id) is None for job_id in behind),
                15,
                "the jobs held behind the long one to run elsewhere",
            )
            assert [event for _k, event, _p in events(conn, "long")] == ["start"], "still runs"
            ran_by = set().union(*(pids_of(conn, f"behind-{n}") for n in range(3)))
            assert ran_by == {second.pid}
        finally:
            second.send_signal(signal.SIGQUIT)
            finish(second)
    finally:
        first.send_signal(signal.SIGQUIT)
        finish(first)


def test_quit_deletes_a_succeeded_job_instead_of_handing_it_back(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """read_ahead 2, one thread: a fast job succeeds, then the long job reserved with it
    runs, so the fast one's deletion waits for the next round trip. QUIT then: the fast
    job is deleted, not handed back (it would run twice); the long one is handed back."""
    settings = write_settings(tmp_path, workers=[{"queues": ["q1"], "read_ahead": 2}])
    fast = enqueue(f"{J}:record", ["fast"], queue="q1", priority=0, database_url=database_url)
    long = enqueue(
        f"{J}:sleep_then_record", ["slow", 60], queue="q1", priority=1, database_url=database_url
    )
    proc = start_worker(settings, database_url)
    wait_until(lambda: events(conn, "slow"), 15, "the long job to start")
    proc.send_signal(signal.SIGQUIT)
    code, err = finish(proc)
    assert code == WorkerExit.RETIRED, err
    assert job_row(conn, fast) is None, "the succeeded job is deleted"
    row = job_row(conn, long)
    assert row is not None and row["locked_by"] is None and row["attempts"] == 0
    assert [event for _k, event, _p in events(conn, "fast")] == ["done"]
