"""Dead workers, memory limits and broken workers under the master (docs/design.md §5)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.acceptance.plugin_helpers import (
    DEADLINE,
    WATCHER,
    circus_pid,
    done,
    enqueue,
    master_log,
    memory_metric,
    running,
    settings_file,
    wait_until,
)
from tests.support.circus_run import PRELOADER_WATCHER
from tests.support.worker_run import events, job_row

pytestmark = pytest.mark.usefixtures("spawn")  # both spawn modes

MB = 2**20


def started_pid(conn: psycopg.Connection[Any], key: str) -> int | None:
    for _, event, pid in events(conn, key):
        if event == "start":
            return pid
    return None


def test_kill_9_mid_job_releases_the_job_for_another_worker(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = settings_file(tmp_path, monitor_interval=1.0)
    with running(settings, {"DJMASTER_DATABASE_URL": database_url}) as run:
        job_id = enqueue(conn, "sleep_then_record", "k1", 1.0)
        victim = wait_until(lambda: started_pid(conn, "k1"), DEADLINE, "job k1 to start")
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()

        def released() -> bool:
            row = job_row(conn, job_id)
            return row is None or (row["attempts"] == 1 and row["locked_by"] != _locked(victim))

        wait_until(released, 1.0 + 2.0, "the job of the killed worker to be released")
        assert time.monotonic() - killed_at <= 1.0 + 2.0
        wait_until(lambda: done(conn, "k1"), DEADLINE, "job k1 done by another worker")
        finisher = [pid for _, event, pid in events(conn, "k1") if event == "done"]
        assert finisher and finisher[0] != victim
        assert f"pid {victim}" in master_log(run)


def _locked(pid: int) -> str:
    import socket

    return f"host:{socket.gethostname()} pid:{pid}"


def test_job_killing_its_worker_every_time_fails_after_max_attempts(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    workers = [{"queues": ["q1"], "max_processes": 1, "sleep_delay": 0.2, "max_attempts": 2}]
    settings = settings_file(tmp_path, workers=workers)
    with running(settings, {"DJMASTER_DATABASE_URL": database_url}):
        job_id = enqueue(conn, "exit_process", 9)

        def failed() -> dict[str, Any] | None:
            row = job_row(conn, job_id)
            return row if row is not None and row["failed_at"] is not None else None

        row = wait_until(failed, DEADLINE, "the poison job to fail for good")
        assert row["attempts"] == 2
        assert "exited with code 9" in (row["last_error"] or "") or "died" in (
            row["last_error"] or ""
        )


def test_job_over_max_memory_completes_and_its_worker_retires(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any], spawn: str
) -> None:
    workers = [{"queues": ["q1"], "max_processes": 1, "sleep_delay": 0.2, "max_memory": "100MB"}]
    settings = settings_file(tmp_path, workers=workers, monitor_interval=0.5)
    with running(settings, {"DJMASTER_DATABASE_URL": database_url}) as run:
        # Idle workers retire at once; keep one busy: the allocation, then a 2 s job.
        enqueue(conn, "allocate_then_sleep", "m1", 150, 1.5, module="plugin_jobs")
        worker = wait_until(lambda: started_pid(conn, "m1"), DEADLINE, "job m1 to start")
        listed = circus_pid(run, worker)
        metric = memory_metric(spawn)
        wait_until(lambda: f"{metric} over max_memory" in master_log(run), DEADLINE, "the retire")
        wait_until(lambda: done(conn, "m1"), DEADLINE, "job m1 to complete")
        wait_until(lambda: listed not in run.pids(WATCHER), DEADLINE, "its worker to retire")
        assert f"retiring worker pid {listed} after its current job" in master_log(run)


def test_hard_max_memory_kills_and_charges_an_attempt(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any], spawn: str
) -> None:
    workers = [
        {
            "queues": ["q1"],
            "max_processes": 1,
            "sleep_delay": 0.2,
            "max_memory": "100MB",
            "hard_max_memory": "150MB",
            "max_attempts": 2,
        }
    ]
    settings = settings_file(tmp_path, workers=workers, monitor_interval=0.5)
    with running(settings, {"DJMASTER_DATABASE_URL": database_url}) as run:
        job_id = enqueue(conn, "allocate_then_sleep", "h1", 250, 30, module="plugin_jobs")

        def failed() -> dict[str, Any] | None:
            row = job_row(conn, job_id)
            return row if row is not None and row["failed_at"] is not None else None

        row = wait_until(failed, DEADLINE, "the job to fail after 2 hard kills")
        metric = memory_metric(spawn)
        assert row["attempts"] == 2
        assert f"killed by the master: {metric} over hard_max_memory" in (row["last_error"] or "")
        assert master_log(run).count(f"{metric} over hard_max_memory); its jobs are released") == 2


def test_preload_failure_is_logged_once_without_a_crash_loop(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any], spawn: str
) -> None:
    """exec: the worker cannot import the app; fork: the preloader cannot (each exits
    78). One error line, the watcher (fork: the preloader's) parked, no worker runs; an
    operator's `circusctl start` tries once more, and so does a change of the settings."""
    settings = settings_file(tmp_path, polling_interval=0.5, app="no_such_module_for_djmaster")
    parked = PRELOADER_WATCHER if spawn == "fork" else WATCHER
    blocked = (
        "the preloader exited with code 78" if spawn == "fork" else "a worker exited with code 78"
    )
    own_error = "cannot preload" if spawn == "fork" else "preload failed"
    with running(settings, {"DJMASTER_DATABASE_URL": database_url}) as run:
        enqueue(conn, "record", "c1")
        wait_until(lambda: blocked in master_log(run), DEADLINE, "the config error line")
        wait_until(lambda: run.status(parked) == "stopped", DEADLINE, "the watcher parked")
        wait_until(lambda: run.pids(WATCHER) == [], DEADLINE, "no worker process left")
        # Several polling intervals and check_delays: nothing starts again.
        watch_until = time.monotonic() + 3.0
        while time.monotonic() < watch_until:
            assert run.pids(WATCHER) == [] and run.pids(parked) == []
            time.sleep(0.1)
        text = master_log(run)
        assert text.count(blocked) == 1
        assert text.count(own_error) == 1
        assert not done(conn, "c1")

        # An operator acts: `circusctl start` runs it once again (it fails again).
        assert run.ctl("start", parked).returncode == 0
        wait_until(lambda: master_log(run).count(blocked) == 2, DEADLINE, "a second try")

        # The settings change: the master tries again.
        os.utime(settings, None)
        wait_until(lambda: master_log(run).count(blocked) == 3, DEADLINE, "a third try")


def test_callbacks_run_and_their_errors_do_not_stop_the_master(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    notes = tmp_path / "callbacks.log"
    module = "tests.support.master_callbacks"
    callbacks = {
        name: f"{module}:{name}"
        for name in ("before_fork", "before_polling", "around_polling", "after_monitor")
    }
    settings = settings_file(tmp_path)
    with settings.open("a", encoding="utf-8") as file:
        file.write("[callbacks]\n")
        file.writelines(f'{name} = "{path}"\n' for name, path in callbacks.items())
    urls = {"DJMASTER_DATABASE_URL": database_url, "DJMASTER_TEST_CALLBACK_LOG": str(notes)}
    with running(settings, urls) as run:
        enqueue(conn, "record", "cb1")
        wait_until(lambda: done(conn, "cb1"), DEADLINE, "job cb1 despite broken callbacks")
        lines = notes.read_text(encoding="utf-8").splitlines()
        assert f"before_fork {WATCHER} 1 worker0 primary" in lines
        assert "before_polling primary" in lines and "around_polling primary" in lines
        text = master_log(run)
        assert "callback around_polling raised; going on" in text
        assert "callback after_monitor raised; going on" in text
        enqueue(conn, "record", "cb2")
        wait_until(lambda: done(conn, "cb2"), DEADLINE, "polling goes on")


def test_jobs_of_a_worker_that_died_while_no_master_ran_are_released_at_start(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid no longer exists: a worker that died with no master watching
    job_id = enqueue(conn, "record", "orphan")
    conn.execute(
        "UPDATE delayed_jobs SET locked_at = now(), locked_by = %s WHERE id = %s",
        (_locked(gone.pid), job_id),
    )
    settings = settings_file(tmp_path)
    with running(settings, {"DJMASTER_DATABASE_URL": database_url}) as run:
        wait_until(lambda: done(conn, "orphan"), DEADLINE, "the orphaned job to run")
        assert "releasing the jobs of 1 vanished worker(s)" in master_log(run)
