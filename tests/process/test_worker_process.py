"""Process tier: ``djmaster worker`` as a real subprocess, with real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from circus_djmaster import enqueue
from circus_djmaster.contracts.exit_codes import WorkerExit
from tests.support.waiting import wait_until
from tests.support.worker_run import (
    events,
    job_row,
    start_worker,
    worker_argv,
    worker_env,
    worker_pid,
    write_settings,
)

J = "tests.support.jobs"


def finish(proc: subprocess.Popen[str], timeout: float = 15) -> tuple[int, str]:
    """Wait for the worker to exit; return (exit code, stderr)."""
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"worker did not exit within {timeout}s; stderr:\n{err}") from None
    return proc.returncode, err


def title(proc: subprocess.Popen[str]) -> str:
    """The title of the process running the jobs (the worker a launcher stands for)."""
    try:
        return " ".join(psutil.Process(worker_pid(proc.pid)).cmdline()).strip()
    except psutil.Error:
        return ""


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    return write_settings(tmp_path, workers=[{"queues": ["q1"], "sleep_delay": 0.2}])


def test_exits_at_once_with_retired_code_when_there_is_no_job(
    settings: Path, database_url: str
) -> None:
    code, err = finish(start_worker(settings, database_url))
    assert code == WorkerExit.RETIRED, err
    assert "retiring: no job to do" in err


def test_runs_due_jobs_of_its_queues_then_retires(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    for n in range(5):
        enqueue(f"{J}:record", [f"job{n}"], queue="q1", database_url=database_url)
    other = enqueue(f"{J}:record", ["other"], queue="q2", database_url=database_url)
    code, err = finish(start_worker(settings, database_url))
    assert code == 0, err
    assert sorted(key for key, _event, _pid in events(conn)) == [f"job{n}" for n in range(5)]
    remaining = conn.execute("SELECT id FROM delayed_jobs").fetchall()
    assert remaining == [(other,)]


def test_title_shows_group_queues_database_and_busy(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(
        tmp_path, workers=[{"queues": ["q1"]}, {"queues": ["q1", "q2"], "name": "second"}]
    )
    enqueue(f"{J}:sleep_then_record", ["t", 30], queue="q2", database_url=database_url)
    proc = start_worker(settings, database_url, group="second")
    try:
        wait_until(lambda: events(conn, "t"), 10, "job started")
        busy = wait_until(lambda: "[BUSY]" in title(proc) and title(proc), 5, "BUSY title")
        assert busy == "delayed_job: worker[1] (q1, q2) @primary [BUSY]"
        ps = subprocess.run(
            ["ps", "-o", "args=", "-p", str(worker_pid(proc.pid))], capture_output=True, text=True
        ).stdout
        assert "delayed_job: worker[1] (q1, q2) @primary [BUSY]" in ps
        assert database_url not in ps
    finally:
        proc.send_signal(signal.SIGQUIT)
        finish(proc)


def test_term_mid_job_finishes_the_job_then_exits(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job_id = enqueue(f"{J}:sleep_then_record", ["t", 1.5], queue="q1", database_url=database_url)
    enqueue(f"{J}:record", ["next"], queue="q1", priority=5, database_url=database_url)
    proc = start_worker(settings, database_url)
    wait_until(lambda: events(conn, "t"), 10, "job started")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert [event for _k, event, _p in events(conn, "t")] == ["start", "done"]
    assert job_row(conn, job_id) is None, "the finished job is deleted"
    assert events(conn, "next") == [], "no new job after TERM"
    assert conn.execute(
        "SELECT count(*) FROM delayed_jobs WHERE locked_by IS NOT NULL"
    ).fetchone() == (0,)


def test_second_term_stops_at_once_and_hands_back_the_job(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    log_file = tmp_path / "worker.log"
    settings = write_settings(tmp_path, log_file=str(log_file), workers=[{"queues": ["q1"]}])
    job_id = enqueue(f"{J}:sleep_then_record", ["t", 60], queue="q1", database_url=database_url)
    proc = start_worker(settings, database_url)
    wait_until(lambda: events(conn, "t"), 10, "job started")
    proc.send_signal(signal.SIGTERM)
    # Signals of one kind coalesce: send the second once the first was handled.
    wait_until(lambda: "stopping after the running jobs" in log_file.read_text(), 5)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc, timeout=10)
    assert code == 0, err
    assert "TERM again: stopping now" in log_file.read_text()
    row = job_row(conn, job_id)
    assert row is not None and row["locked_by"] is None and row["attempts"] == 0
    assert [event for _k, event, _p in events(conn, "t")] == ["start"]


def test_quit_mid_job_leaves_the_job_unlocked_without_charging_an_attempt(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job_id = enqueue(f"{J}:sleep_then_record", ["t", 60], queue="q1", database_url=database_url)
    proc = start_worker(settings, database_url)
    wait_until(lambda: events(conn, "t"), 10, "job started")
    locked = job_row(conn, job_id)
    assert (
        locked is not None and locked["locked_by"] == f"host:{os.uname().nodename} pid:{proc.pid}"
    )
    proc.send_signal(signal.SIGQUIT)
    code, err = finish(proc, timeout=10)
    assert code == 0, err
    row = job_row(conn, job_id)
    assert row is not None
    assert (row["locked_by"], row["locked_at"], row["attempts"]) == (None, None, 0)
    assert "handed back 1 job(s)" in err


def test_usr2_marks_the_worker_old_and_stops_it_after_the_job(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    enqueue(f"{J}:sleep_then_record", ["t", 2], queue="q1", database_url=database_url)
    proc = start_worker(settings, database_url)
    wait_until(lambda: events(conn, "t"), 10, "job started")
    proc.send_signal(signal.SIGUSR2)
    wait_until(lambda: title(proc).endswith("[BUSY] [OLD]"), 5, "OLD title")
    code, err = finish(proc)
    assert code == 0, err
    assert [event for _k, event, _p in events(conn, "t")] == ["start", "done"]


def test_usr1_reopens_the_log_file(tmp_path: Path, database_url: str, conn: Any) -> None:
    log_file = tmp_path / "djmaster.log"
    settings = write_settings(
        tmp_path, log_file=str(log_file), workers=[{"queues": ["q1"], "idle_timeout": 60}]
    )
    proc = start_worker(settings, database_url)
    try:
        wait_until(lambda: log_file.exists() and "worker started" in log_file.read_text(), 10)
        log_file.rename(tmp_path / "djmaster.log.1")
        proc.send_signal(signal.SIGUSR1)
        wait_until(
            lambda: log_file.exists() and "log reopened" in log_file.read_text(), 5, "new log"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
    assert code == 0, err


def test_exits_gracefully_when_its_parent_dies(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job_id = enqueue(f"{J}:sleep_then_record", ["t", 1.5], queue="q1", database_url=database_url)
    # bash starts the worker in the background and prints its pid; killing bash makes
    # the worker an orphan, which it notices.
    parent = subprocess.Popen(
        ["bash", "-c", '"$@" & echo $!; wait', "bash", *_worker_argv(settings)],
        stdout=subprocess.PIPE,
        text=True,
        env=worker_env(database_url),
    )
    assert parent.stdout is not None
    worker_pid = int(parent.stdout.readline())
    wait_until(lambda: events(conn, "t"), 10, "job started")
    parent.kill()
    parent.wait()
    wait_until(lambda: _gone(worker_pid), 15, "worker exit")
    assert [event for _k, event, _p in events(conn, "t")] == ["start", "done"]
    assert job_row(conn, job_id) is None


def _worker_argv(settings: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "circus_djmaster", "worker", "--settings", str(settings)),
        *("--group", "worker0", "--database", "primary"),
    ]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_retires_after_the_job_that_took_it_over_max_memory(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(tmp_path, workers=[{"queues": ["q1"], "max_memory": "150MB"}])
    enqueue(f"{J}:allocate", ["big", 200], queue="q1", priority=0, database_url=database_url)
    later = enqueue(f"{J}:record", ["later"], queue="q1", priority=1, database_url=database_url)
    code, err = finish(start_worker(settings, database_url))
    assert code == 0, err
    assert events(conn, "big"), "the job that allocated completed"
    assert "is over max_memory" in err
    assert events(conn, "later") == [], "no job after the limit was reached"
    row = job_row(conn, later)
    assert row is not None and row["locked_by"] is None


def test_runs_max_threads_jobs_at_once(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(tmp_path, workers=[{"queues": ["q1"], "max_threads": 3}])
    for n in range(3):
        enqueue(f"{J}:sleep_then_record", [f"t{n}", 1.0], queue="q1", database_url=database_url)
    code, err = finish(start_worker(settings, database_url))
    assert code == 0, err
    kinds = [event for _k, event, _p in events(conn)]
    # All three started before the first finished: they ran side by side.
    assert kinds[:3] == ["start"] * 3, kinds


def test_a_waiting_worker_wakes_on_notify_instead_of_its_sleep_delay(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(
        tmp_path, workers=[{"queues": ["q1"], "idle_timeout": 60, "sleep_delay": 30}]
    )
    proc = start_worker(settings, database_url)
    try:
        enqueue(f"{J}:record", ["first"], queue="q1", database_url=database_url)
        wait_until(lambda: events(conn, "first"), 10, "first job done")
        # The worker now waits (sleep_delay 30 s): only NOTIFY can wake it this fast.
        enqueue(f"{J}:record", ["second"], queue="q1", database_url=database_url)
        wait_until(lambda: events(conn, "second"), 3, "second job done within 3 s")
        # A job for another queue does not concern it.
        enqueue(f"{J}:record", ["other"], queue="q2", database_url=database_url)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
    assert code == 0, err


def test_term_after_usr2_still_lets_the_running_job_finish(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    log_file = tmp_path / "worker.log"
    settings = write_settings(tmp_path, log_file=str(log_file), workers=[{"queues": ["q1"]}])
    enqueue(f"{J}:sleep_then_record", ["t", 1.5], queue="q1", database_url=database_url)
    proc = start_worker(settings, database_url)
    wait_until(lambda: events(conn, "t"), 10, "job started")
    proc.send_signal(signal.SIGUSR2)
    wait_until(lambda: "USR2: old generation" in log_file.read_text(), 5)
    proc.send_signal(signal.SIGTERM)  # e.g. `circusctl quit` after a graceful restart
    code, err = finish(proc)
    assert code == 0, err
    assert [event for _k, event, _p in events(conn, "t")] == ["start", "done"]


def test_a_term_during_start_up_is_graceful_not_fatal(
    settings: Path, database_url: str, spawn: str
) -> None:
    if spawn == "fork":
        # A launcher starts up until a preloader forks its worker: here none runs yet.
        proc = subprocess.Popen(
            worker_argv(settings),
            env=worker_env(database_url),
            stderr=subprocess.PIPE,
            text=True,
        )
    else:
        proc = start_worker(settings, database_url)
    # As soon as the process catches TERM (the first thing `python -m circus_djmaster
    # worker` does, long before its imports are done; a launcher's first step too),
    # TERM no longer kills it (-15).
    wait_until(lambda: catches(proc.pid, signal.SIGTERM), 10, "TERM handler installed")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == WorkerExit.RETIRED, err
    if spawn == "fork":
        assert "stopped before its worker started" in err
    else:
        assert "SIGTERM: stopping after the running jobs" in err


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for ``signum`` (SigCgt of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False
