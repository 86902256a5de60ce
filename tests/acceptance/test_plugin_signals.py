"""The signal table (docs/design.md §6) on the master's pid, and circus' own commands."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from tests.acceptance.plugin_helpers import (
    DEADLINE,
    WATCHER,
    done,
    enqueue,
    master_log,
    running,
    settings_file,
    titles,
    wait_until,
)
from tests.support.circus_run import PLUGIN_WATCHER, CircusRun, read
from tests.support.worker_run import events, job_row

pytestmark = pytest.mark.usefixtures("spawn")  # both spawn modes


def started_pid(conn: psycopg.Connection[Any], key: str) -> int | None:
    for _, event, pid in events(conn, key):
        if event == "start":
            return pid
    return None


def done_pid(conn: psycopg.Connection[Any], key: str) -> int | None:
    for _, event, pid in events(conn, key):
        if event == "done":
            return pid
    return None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def pid_file_pid(run: CircusRun) -> int | None:
    assert run.settings.pid_file is not None
    text = read(run.settings.pid_file).strip()
    return int(text) if text else None


def master_stopped(run: CircusRun) -> bool:
    return run.status(PLUGIN_WATCHER) == "stopped"


def stays(condition: Any, seconds: float) -> None:
    """``condition`` holds for ``seconds`` (long enough for circus to respawn)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert condition()
        time.sleep(0.05)


@pytest.fixture
def urls(database_url: str) -> dict[str, str]:
    return {"DJMASTER_DATABASE_URL": database_url}


def test_term_stops_the_master_and_lets_the_job_finish(
    tmp_path: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(settings_file(tmp_path), urls) as run:
        master = run.wait_for_master()
        assert pid_file_pid(run) == master
        enqueue(conn, "sleep_then_record", "t1", 2.0)
        worker = wait_until(lambda: started_pid(conn, "t1"), DEADLINE, "job t1 to start")
        os.kill(master, signal.SIGTERM)
        wait_until(lambda: master_stopped(run) and gone(master), DEADLINE, "the master stopped")
        assert not done(conn, "t1")
        wait_until(lambda: done_pid(conn, "t1") == worker, DEADLINE, "t1 finished by its worker")
        wait_until(lambda: gone(worker), DEADLINE, "the worker to exit")
        # ...and circus reaped the process it knows (with spawn = "fork" its launcher,
        # which exits right after its worker).
        wait_until(lambda: run.pids(WATCHER) == [], DEADLINE, "circus to reap it")
        # Stopped means stopped: no master, no worker comes back for new jobs.
        enqueue(conn, "record", "t2")
        stays(lambda: master_stopped(run) and run.pids(WATCHER) == [], 2.0)
        assert run.settings.pid_file is not None and not run.settings.pid_file.exists()
        # Until an operator starts it again.
        assert run.ctl("start", PLUGIN_WATCHER).returncode == 0
        wait_until(lambda: done(conn, "t2"), DEADLINE, "t2 done by a new master's worker")


def test_quit_stops_workers_at_once_and_hands_back_their_jobs(
    tmp_path: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(settings_file(tmp_path), urls) as run:
        master = run.wait_for_master()
        job_id = enqueue(conn, "sleep_then_record", "q1", 60.0)
        worker = wait_until(lambda: started_pid(conn, "q1"), DEADLINE, "job q1 to start")
        os.kill(master, signal.SIGQUIT)
        wait_until(lambda: gone(worker), 5.0, "the worker to stop at once")
        wait_until(lambda: master_stopped(run), DEADLINE, "the master stopped")
        row = job_row(conn, job_id)
        assert row is not None
        assert row["locked_by"] is None and row["attempts"] == 0 and row["failed_at"] is None
        assert not done(conn, "q1")


def test_winch_waits_for_the_workers_then_stops(
    tmp_path: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(settings_file(tmp_path), urls) as run:
        master = run.wait_for_master()
        enqueue(conn, "sleep_then_record", "w1", 2.0)
        worker = wait_until(lambda: started_pid(conn, "w1"), DEADLINE, "job w1 to start")
        os.kill(master, signal.SIGWINCH)
        wait_until(lambda: "WINCH: no more scaling" in master_log(run), DEADLINE, "WINCH")
        assert not gone(master) and not done(conn, "w1")

        def stopped() -> bool:
            if master_stopped(run):
                assert done(conn, "w1"), "the master stopped before its worker finished"
                return True
            return False

        wait_until(stopped, DEADLINE, "the master to stop after its worker")
        assert done_pid(conn, "w1") == worker
        assert gone(worker)


def test_usr1_reopens_the_logs_of_master_and_workers(
    tmp_path: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(settings_file(tmp_path), urls) as run:
        master = run.wait_for_master()
        enqueue(conn, "sleep_then_record", "l1", 2.0)
        worker = wait_until(lambda: started_pid(conn, "l1"), DEADLINE, "job l1 to start")
        wait_until(lambda: "[BUSY]" in titles([worker]).get(worker, ""), DEADLINE, "busy title")
        rotated = run.log_file.with_name("djmaster.log.1")
        run.log_file.rename(rotated)
        os.kill(master, signal.SIGUSR1)

        def reopened() -> bool:
            text = read(run.log_file)
            return f"[{master}]" in text and f"[{worker}]" in text

        wait_until(reopened, DEADLINE, "master and worker to log into the new file")
        assert "USR1: log reopened; 1 worker(s)" in read(run.log_file)
        assert pid_file_pid(run) == master  # USR1 does not restart anything


def test_usr2_restarts_the_master_and_old_workers_finish(
    tmp_path: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(settings_file(tmp_path), urls) as run:
        master = run.wait_for_master()
        enqueue(conn, "sleep_then_record", "u1", 3.0)
        old = wait_until(lambda: started_pid(conn, "u1"), DEADLINE, "job u1 to start")
        wait_until(lambda: "[BUSY]" in titles([old]).get(old, ""), DEADLINE, "busy title")
        os.kill(master, signal.SIGUSR2)

        def new_master() -> int | None:
            pid = pid_file_pid(run)
            return pid if pid not in (None, master) and run.plugin_pid() == pid else None

        successor = wait_until(new_master, DEADLINE, "a new master (pid file rewritten)")
        assert gone(master)
        assert "[OLD]" in titles([old]).get(old, "")
        enqueue(conn, "record", "u2")
        wait_until(lambda: done(conn, "u2"), DEADLINE, "a new job")
        assert done_pid(conn, "u2") != old, "a new job went to an old worker"
        wait_until(lambda: done_pid(conn, "u1") == old, DEADLINE, "the old worker's job")
        wait_until(lambda: gone(old), DEADLINE, "the old worker to exit")
        assert run.plugin_pid() == successor


def test_circusctl_quit_lets_the_running_job_finish(
    tmp_path: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(settings_file(tmp_path), urls) as run:
        run.wait_for_master()
        enqueue(conn, "sleep_then_record", "cq", 2.0)
        wait_until(lambda: started_pid(conn, "cq"), DEADLINE, "job cq to start")
        run.ctl("quit")
        wait_until(lambda: run.process.poll() is not None, DEADLINE, "circusd to exit")
        assert done(conn, "cq")
        assert "from circus (quit, stop, restart or reload)" in master_log(run)


def test_circusctl_signal_quit_hands_the_jobs_back(
    tmp_path: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(settings_file(tmp_path), urls) as run:
        run.wait_for_master()
        job_id = enqueue(conn, "sleep_then_record", "sq", 60.0)
        worker = wait_until(lambda: started_pid(conn, "sq"), DEADLINE, "job sq to start")
        assert run.ctl("signal", WATCHER, "QUIT").returncode == 0
        wait_until(lambda: gone(worker), 5.0, "the worker to stop at once")
        # Handed back without an attempt charged; the master runs it again at once.
        wait_until(
            lambda: any(pid != worker for _, e, pid in events(conn, "sq") if e == "start"),
            DEADLINE,
            "the job to start again in a new worker",
        )
        row = job_row(conn, job_id)
        assert row is not None and row["attempts"] == 0
        # Do not make circusd's quit wait a minute for the job at teardown.
        conn.execute("DELETE FROM delayed_jobs WHERE id = %s", (job_id,))
        assert run.ctl("signal", WATCHER, "QUIT").returncode == 0
        wait_until(lambda: run.pids(WATCHER) == [], DEADLINE, "no worker left")


def test_a_crashed_master_is_respawned_and_takes_over(
    tmp_path: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(settings_file(tmp_path), urls) as run:
        master = run.wait_for_master()
        enqueue(conn, "sleep_then_record", "x1", 2.0)
        worker = wait_until(lambda: started_pid(conn, "x1"), DEADLINE, "job x1 to start")
        os.kill(master, signal.SIGKILL)
        successor = wait_until(
            lambda: (pid := run.plugin_pid()) not in (None, master) and pid,
            DEADLINE,
            "circus to respawn the master",
        )
        assert successor
        wait_until(lambda: done_pid(conn, "x1") == worker, DEADLINE, "the running job")
        enqueue(conn, "record", "x2")
        wait_until(lambda: done(conn, "x2"), DEADLINE, "a job under the new master")


def test_circusctl_reload_replaces_the_master_quietly(
    tmp_path: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(settings_file(tmp_path), urls) as run:
        master = run.wait_for_master()
        assert run.ctl("reload").returncode == 0
        successor = wait_until(
            lambda: (pid := run.plugin_pid()) not in (None, master) and gone(master) and pid,
            DEADLINE,
            "circus to replace the master",
        )
        assert run.status(PLUGIN_WATCHER) == "active"
        assert "from circus (quit, stop, restart or reload): exiting" in master_log(run)
        wait_until(lambda: pid_file_pid(run) == successor, DEADLINE, "the new pid file")
        enqueue(conn, "record", "r1")
        wait_until(lambda: done(conn, "r1"), DEADLINE, "a job under the new master")
