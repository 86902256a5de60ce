"""Fork mode under a real circusd: preloader generations, a preloader or a launcher that
dies, circus' own commands, and what the master and ``djmaster status`` read.

The plugin's other acceptance tests run in both spawn modes; these are about what only
fork mode has. The application is a module written into the test's folder (the
settings' working directory), so a test can deploy new code by rewriting it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from tests.acceptance.plugin_helpers import (
    DEADLINE,
    WATCHER,
    circus_pid,
    done,
    master_log,
    running,
    settings_file,
    titles,
    wait_until,
)
from tests.support.circus_run import PRELOADER_WATCHER, CircusRun, read
from tests.support.spawn import spawn_only
from tests.support.worker_run import events, job_row

#: Every test here writes fork-mode settings.
spawn = spawn_only("fork")
pytestmark = pytest.mark.usefixtures("spawn")

APP = "deployed_app"
APP_SOURCE = '''\
"""An application deployed into the test's folder: its jobs say which version ran them."""

import os
import time

from tests.support.jobs import record_event

VERSION = {version}


def version(key, seconds=0.0):
    record_event(key, f"v{{VERSION}} ppid={{os.getppid()}}")
    time.sleep(seconds)
    record_event(key, "done")
'''


def enqueue_app(conn: psycopg.Connection[Any], key: str, seconds: float = 0.0) -> int:
    """Enqueue the application's job with plain SQL."""
    handler = json.dumps({"callable": f"{APP}:version", "args": [key, seconds], "kwargs": {}})
    row = conn.execute(
        "INSERT INTO delayed_jobs (handler, queue) VALUES (%s, 'q1') RETURNING id", (handler,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def deploy(folder: Path, version: int) -> None:
    """Write the application's code (each version has another size: no stale .pyc)."""
    (folder / f"{APP}.py").write_text(APP_SOURCE.format(version=version), encoding="utf-8")


def ran(conn: psycopg.Connection[Any], key: str) -> tuple[int, int, int] | None:
    """(worker pid, version, its parent's pid) of job ``key``'s start, once it started."""
    for _key, event, pid in events(conn, key):
        if event.startswith("v"):
            version, ppid = event.split()
            return pid, int(version[1:]), int(ppid.split("=")[1])
    return None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def preloaders(run: CircusRun) -> dict[int, bool]:
    """Live preloader pids -> whether their title says [OLD]."""
    return {
        pid: title.strip().endswith("[OLD]")
        for pid, title in titles(run.pids(PRELOADER_WATCHER)).items()
    }


def current_preloader(run: CircusRun, not_this: int | None = None) -> int | None:
    current = [pid for pid, old in preloaders(run).items() if not old and pid != not_this]
    return current[0] if len(current) == 1 else None


@pytest.fixture
def app_settings(tmp_path: Path) -> Path:
    deploy(tmp_path, 1)
    return settings_file(tmp_path, app=APP)


@pytest.fixture
def urls(database_url: str) -> dict[str, str]:
    return {"DJMASTER_DATABASE_URL": database_url}


def test_usr2_starts_a_new_preloader_generation_with_the_new_code(
    app_settings: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(app_settings, urls) as run:
        master = run.wait_for_master()
        first = wait_until(lambda: current_preloader(run), DEADLINE, "the preloader")
        enqueue_app(conn, "old", 3.0)
        old = wait_until(lambda: ran(conn, "old"), DEADLINE, "the old job to start")
        assert old[1:] == (1, first)
        deploy(app_settings.parent, 22)
        os.kill(master, signal.SIGUSR2)
        second = wait_until(
            lambda: current_preloader(run, not_this=first), DEADLINE, "a new preloader generation"
        )
        wait_until(lambda: preloaders(run).get(first) is True, DEADLINE, "the old one [OLD]")
        assert "[OLD]" in titles([old[0]])[old[0]]
        enqueue_app(conn, "new")
        new = wait_until(lambda: ran(conn, "new"), DEADLINE, "the new job to run")
        assert new[1:] == (22, second), "new jobs run the new code, forked by the new preloader"
        wait_until(lambda: done(conn, "old"), DEADLINE, "the old job to finish")
        assert ran(conn, "old") == old
        wait_until(lambda: gone(first), DEADLINE, "the old preloader to exit after its worker")
        wait_until(lambda: run.target(PRELOADER_WATCHER) == 1, DEADLINE, "one preloader again")


def test_a_changed_settings_file_starts_a_new_preloader_generation(
    app_settings: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(app_settings, urls) as run:
        run.wait_for_master()
        first = wait_until(lambda: current_preloader(run), DEADLINE, "the preloader")
        deploy(app_settings.parent, 333)
        os.utime(app_settings, None)
        second = wait_until(
            lambda: current_preloader(run, not_this=first), DEADLINE, "a new preloader generation"
        )
        assert f"preloader pid {first} retires (the settings changed)" in master_log(run)
        wait_until(lambda: gone(first), DEADLINE, "the old preloader (no worker) to exit")
        enqueue_app(conn, "after")
        after = wait_until(lambda: ran(conn, "after"), DEADLINE, "a job to run")
        assert after[1:] == (333, second)
        wait_until(lambda: run.target(PRELOADER_WATCHER) == 1, DEADLINE, "one preloader again")


def test_a_killed_preloader_is_respawned_and_its_worker_finishes_unharmed(
    app_settings: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(app_settings, urls) as run:
        run.wait_for_master()
        first = wait_until(lambda: current_preloader(run), DEADLINE, "the preloader")
        job_id = enqueue_app(conn, "busy", 2.0)
        worker = wait_until(lambda: ran(conn, "busy"), DEADLINE, "the job to start")[0]
        launcher = circus_pid(run, worker)
        os.kill(first, signal.SIGKILL)
        second = wait_until(
            lambda: current_preloader(run, not_this=first), DEADLINE, "circus to respawn it"
        )
        wait_until(lambda: done(conn, "busy"), DEADLINE, "the orphaned worker's job")
        wait_until(lambda: gone(launcher) and gone(worker), DEADLINE, "the worker to retire")
        assert job_row(conn, job_id) is None, "done and deleted, nothing left locked"
        assert "preloader pid" in master_log(run) and "killed by SIGKILL" in master_log(run)
        enqueue_app(conn, "next")
        wait_until(lambda: ran(conn, "next"), DEADLINE, "a job after the respawn")
        assert ran(conn, "next")[2] == second  # type: ignore[index]
        assert "of a dead worker" not in master_log(run), "no worker died"


def test_a_launcher_killed_by_circus_takes_its_worker_and_the_job_is_released(
    app_settings: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    """`circusctl signal … KILL` reaches the launcher only (KILL cannot be relayed): its
    worker dies at once with it, and the master releases the job (charged: it ran
    alone), which runs again in a new worker."""
    with running(app_settings, urls) as run:
        run.wait_for_master()
        job_id = enqueue_app(conn, "victim", 60.0)
        worker = wait_until(lambda: ran(conn, "victim"), DEADLINE, "the job to start")[0]
        launcher = circus_pid(run, worker)
        assert launcher != worker
        assert run.ctl("signal", WATCHER, "KILL").returncode == 0
        wait_until(lambda: gone(worker), 2.0, "the worker to die with its launcher")

        def released() -> dict[str, Any] | None:
            row = job_row(conn, job_id)
            return row if row is not None and row["attempts"] == 1 else None

        row = wait_until(released, DEADLINE, "the master to release the job")
        host = socket.gethostname()
        assert f"worker pid {launcher} on {host} was killed by SIGKILL" in (row["last_error"] or "")
        wait_until(
            lambda: len([e for _k, e, _p in events(conn, "victim") if e.startswith("v")]) == 2,
            DEADLINE,
            "the job to run again",
        )
        conn.execute("DELETE FROM delayed_jobs WHERE id = %s", (job_id,))
        assert run.ctl("signal", WATCHER, "QUIT").returncode == 0


def test_circusctl_incr_starts_a_forked_worker_that_retires_when_idle(
    app_settings: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(app_settings, urls) as run:
        run.wait_for_master()
        preloader = wait_until(lambda: current_preloader(run), DEADLINE, "the preloader")
        assert run.ctl("start", WATCHER).returncode == 0
        assert run.ctl("incr", WATCHER).returncode == 0
        enqueue_app(conn, "incr")
        assert wait_until(lambda: ran(conn, "incr"), DEADLINE, "a job")[2] == preloader
        wait_until(
            lambda: run.pids(WATCHER) == [] and run.target(WATCHER) == 0,
            DEADLINE,
            "the workers to retire",
        )


def test_the_master_and_djmaster_status_read_the_forked_worker(
    app_settings: Path, urls: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    with running(app_settings, urls) as run:
        run.wait_for_master()
        enqueue_app(conn, "status", 30.0)
        worker = wait_until(lambda: ran(conn, "status"), DEADLINE, "the job to start")[0]
        launcher = circus_pid(run, worker)
        wait_until(lambda: "[BUSY]" in titles([worker]).get(worker, ""), DEADLINE, "busy")
        result = subprocess.run(
            [sys.executable, "-m", "circus_djmaster", "status", "--settings", str(app_settings)],
            capture_output=True,
            text=True,
            env=run.env,
            timeout=60,
            check=False,
        )
        # The launcher's pid (what circus lists), the forked worker's wid and state.
        assert f"pid {launcher:<7} #1   busy" in result.stdout, result.stdout + result.stderr
        assert f"forked worker pid {worker}" in result.stdout
        assert "preloader djmaster-preloader: active, pid" in result.stdout
        result = subprocess.run(
            [
                *(sys.executable, "-m", "circus_djmaster", "status"),
                *("--settings", str(app_settings), "--json"),
            ],
            capture_output=True,
            text=True,
            env=run.env,
            timeout=60,
            check=False,
        )
        report = json.loads(result.stdout)
        (view,) = report["databases"][0]["groups"][0]["workers"]
        assert (view["pid"], view["state"], view["worker_pid"]) == (launcher, "busy", worker)
        assert view["wid"] == 1, "circus' wid of the launcher, shown by its worker"
        assert 0 < view["uss"] < view["rss"], "its own memory, not what it shares"
        assert report["preloader"]["state"] == "active" and report["problems"] == []
        (generation,) = report["preloader"]["processes"]
        assert generation["old"] is False
        # The master takes the worker for busy too: it starts no other for a new job.
        assert run.pids(WATCHER) == [launcher]
        assert read(run.log_file).count("more worker(s)") == 0
        conn.execute("DELETE FROM delayed_jobs")
        assert run.ctl("signal", WATCHER, "QUIT").returncode == 0
