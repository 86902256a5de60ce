"""Process tier, fork mode only: the preloader, the launcher and the forked worker as real
processes, without circus (tests/acceptance/test_fork_mode.py runs them under circusd).

The tier's other tests run in both spawn modes; these are about what only fork mode has:
who forks whom, the pid a forked worker goes by, exit codes and signals through the
launcher, a launcher or a preloader that dies, the preloader's refusals and its folder.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from circus_djmaster import enqueue
from circus_djmaster.config.render import LAUNCHER
from circus_djmaster.contracts import preloader as rendezvous
from circus_djmaster.contracts.exit_codes import WorkerExit
from circus_djmaster.contracts.running_jobs import read_running
from tests.support.fork_app import parse_facts
from tests.support.spawn import spawn_only
from tests.support.waiting import wait_until
from tests.support.worker_run import (
    events,
    job_row,
    preloaders,
    start_preloader,
    start_worker,
    worker_argv,
    worker_env,
    worker_pid,
    write_settings,
)

J = "tests.support.jobs"
F = "tests.support.fork_app"

#: Every test here writes fork-mode settings.
spawn = spawn_only("fork")


def finish(proc: subprocess.Popen[str], timeout: float = 15) -> tuple[int, str, str]:
    """Wait for the launcher to exit: (exit code, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"launcher did not exit within {timeout}s; stderr:\n{err}") from None
    return proc.returncode, out, err


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def facts_of(conn: psycopg.Connection[Any], key: str) -> tuple[int, dict[str, int]]:
    """(pid, facts) the job ``key`` of fork_app.facts recorded when it started."""
    for _key, event, pid in events(conn, key):
        if event.startswith("imported="):
            return pid, parse_facts(event)
    raise AssertionError(f"job {key} recorded no facts")


def started(conn: psycopg.Connection[Any], key: str) -> bool:
    return any(event.startswith("imported=") for _k, event, _p in events(conn, key))


def the_preloader(settings: Path) -> subprocess.Popen[bytes]:
    return preloaders()[Path(os.path.abspath(settings))]


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    return write_settings(
        tmp_path,
        app=F,
        log_file=str(tmp_path / "djmaster.log"),
        workers=[{"queues": ["q1"], "sleep_delay": 0.2}],
    )


def test_the_preloader_forks_the_worker_which_goes_by_its_launchers_pid(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """The app is imported once, in the preloader; the worker is its child, with the
    app's objects frozen; ``locked_by``, the running-jobs file and the database
    application names use the launcher's pid; the launcher's title names the worker."""
    job_id = enqueue(f"{F}:facts", ["f1", 30], queue="q1", database_url=database_url)
    launcher = start_worker(settings, database_url)
    try:
        wait_until(lambda: started(conn, "f1"), 10, "the job to start")
        worker, facts = facts_of(conn, "f1")
        preloader = the_preloader(settings).pid
        assert worker not in (launcher.pid, preloader)
        assert facts["imported"] == preloader, "the app was imported by the preloader"
        assert facts["ppid"] == preloader, "the worker is the preloader's child"
        assert facts["frozen"] > 0, "gc.freeze() ran before the fork"
        assert worker_pid(launcher.pid) == worker
        assert psutil.Process(launcher.pid).name() == f"djl:{worker}"
        row = job_row(conn, job_id)
        assert row is not None
        assert row["locked_by"] == f"host:{socket.gethostname()} pid:{launcher.pid}"
        running = read_running(launcher.pid)
        assert running is not None and job_id in running
        names = conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE "
            "'djmaster worker %%'"
        ).fetchall()
        assert {name for (name,) in names} >= {f"djmaster worker {launcher.pid} job-0"}
    finally:
        launcher.send_signal(signal.SIGQUIT)
        code, _out, err = finish(launcher)
    assert code == WorkerExit.RETIRED, err
    assert gone(worker)


@pytest.mark.parametrize(
    ("function", "args", "expected"),
    [
        ("exit_process", [9], 9),  # os._exit(9) in job code: the worker reports nothing
        ("crash_interpreter", [], -signal.SIGSEGV),  # the worker dies of a signal
        ("record", ["fine"], WorkerExit.RETIRED),  # retires when idle: 0
    ],
)
def test_the_launcher_exits_as_its_worker_did(
    settings: Path, database_url: str, function: str, args: list[Any], expected: int
) -> None:
    enqueue(f"{J}:{function}", args, queue="q1", database_url=database_url)
    code, _out, err = finish(start_worker(settings, database_url))
    assert code == expected, err


def test_a_worker_killed_by_sigkill_makes_its_launcher_die_of_sigkill(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    enqueue(f"{F}:facts", ["k1", 30], queue="q1", database_url=database_url)
    launcher = start_worker(settings, database_url)
    wait_until(lambda: started(conn, "k1"), 10, "the job to start")
    worker, _ = facts_of(conn, "k1")
    os.kill(worker, signal.SIGKILL)
    code, _out, err = finish(launcher)
    assert code == -signal.SIGKILL, err


@pytest.mark.parametrize(
    ("signum", "outcome"),
    [
        (signal.SIGTERM, "finished"),  # graceful: the running job finishes
        (signal.SIGUSR2, "finished"),  # [OLD], finishes, exits
        (signal.SIGQUIT, "handed back"),  # at once, the job handed back
        (signal.SIGHUP, "killed"),  # a worker has no HUP handler: it dies of it
    ],
)
def test_signals_to_the_launcher_reach_the_worker(
    settings: Path,
    database_url: str,
    conn: psycopg.Connection[Any],
    signum: signal.Signals,
    outcome: str,
) -> None:
    job_id = enqueue(f"{F}:facts", ["s1", 1.5], queue="q1", database_url=database_url)
    launcher = start_worker(settings, database_url)
    wait_until(lambda: started(conn, "s1"), 10, "the job to start")
    launcher.send_signal(signum)
    code, _out, err = finish(launcher)
    kinds = [event for _k, event, _p in events(conn, "s1")]
    row = job_row(conn, job_id)
    if outcome == "finished":
        assert code == WorkerExit.RETIRED, err
        assert kinds[-1] == "done" and row is None
    elif outcome == "handed back":
        assert code == WorkerExit.RETIRED, err
        assert row is not None and row["locked_by"] is None and row["attempts"] == 0
    else:
        assert code == -signum, err
        assert row is not None and row["locked_by"] is not None  # the master releases it


def test_a_sigkilled_launcher_takes_its_worker_down_at_once(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """The preloader sees the launcher's connection close and kills the worker: no job
    runs on unseen while the master releases the launcher's jobs. The job stays locked
    by the launcher's pid, and its running-jobs file says it ran (for the master)."""
    job_id = enqueue(f"{F}:facts", ["l1", 30], queue="q1", database_url=database_url)
    launcher = start_worker(settings, database_url)
    wait_until(lambda: started(conn, "l1"), 10, "the job to start")
    worker, _ = facts_of(conn, "l1")
    launcher.kill()
    finish(launcher)
    wait_until(lambda: gone(worker), 2.0, "the worker to die with its launcher")
    row = job_row(conn, job_id)
    assert row is not None and row["locked_by"] == f"host:{socket.gethostname()} pid:{launcher.pid}"
    running = read_running(launcher.pid)
    assert running is not None and job_id in running


def test_a_worker_whose_preloader_and_launcher_are_gone_ends_itself(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Without its preloader, the worker still dies with its launcher: it watches the
    control socket and ends when the launcher's end closes."""
    enqueue(f"{F}:facts", ["l2", 30], queue="q1", database_url=database_url)
    launcher = start_worker(settings, database_url)
    wait_until(lambda: started(conn, "l2"), 10, "the job to start")
    worker, _ = facts_of(conn, "l2")
    the_preloader(settings).kill()
    the_preloader(settings).wait()
    launcher.kill()
    finish(launcher)
    wait_until(lambda: gone(worker), 2.0, "the worker to end itself")


def test_a_dead_preloader_leaves_its_workers_running_and_supervised(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """kill -9 of the preloader: the running job finishes, the worker retires and its
    launcher exits 0 (the worker reported its code itself); nothing stays locked."""
    job_id = enqueue(f"{F}:facts", ["p1", 1.5], queue="q1", database_url=database_url)
    launcher = start_worker(settings, database_url)
    wait_until(lambda: started(conn, "p1"), 10, "the job to start")
    the_preloader(settings).kill()
    the_preloader(settings).wait()
    code, _out, err = finish(launcher)
    assert code == WorkerExit.RETIRED, err
    assert [event for _k, event, _p in events(conn, "p1")][-1] == "done"
    assert job_row(conn, job_id) is None


def test_an_orphaned_worker_killed_by_a_signal_counts_as_a_crash(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """With its preloader gone nobody can tell how the worker died: its launcher exits
    as a crash (1), so circus respawns and the master releases its jobs."""
    enqueue(f"{F}:facts", ["p2", 30], queue="q1", database_url=database_url)
    launcher = start_worker(settings, database_url)
    wait_until(lambda: started(conn, "p2"), 10, "the job to start")
    worker, _ = facts_of(conn, "p2")
    the_preloader(settings).kill()
    the_preloader(settings).wait()
    os.kill(worker, signal.SIGKILL)
    code, _out, err = finish(launcher)
    assert code == WorkerExit.CRASHED, err
    assert f"worker pid {worker} ended without an exit status" in err


def test_the_workers_output_goes_to_the_launchers_stdout_and_stderr(
    settings: Path, database_url: str
) -> None:
    enqueue(f"{F}:say", ["o1"], queue="q1", database_url=database_url)
    code, out, err = finish(start_worker(settings, database_url))
    assert code == WorkerExit.RETIRED, err
    assert "stdout of o1" in out
    assert "stderr of o1" in err


def test_before_fork_runs_in_the_preloader_and_after_fork_in_the_worker(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    notes = tmp_path / "callbacks.log"
    settings = write_settings(
        tmp_path,
        app=F,
        workers=[{"queues": ["q1"]}],
        tables={"callbacks": {"before_fork": f"{F}:before_fork", "after_fork": f"{F}:after_fork"}},
    )
    enqueue(f"{F}:facts", ["c1"], queue="q1", database_url=database_url)
    env = worker_env(database_url, DJMASTER_TEST_CALLBACK_LOG=str(notes))
    launcher = start_worker(settings, database_url, env=env)
    code, _out, err = finish(launcher)
    assert code == WorkerExit.RETIRED, err
    worker, _ = facts_of(conn, "c1")
    preloader = the_preloader(settings).pid
    assert notes.read_text().splitlines() == [
        f"before_fork pid={preloader} launcher={launcher.pid} "
        "watcher=djmaster-worker0-primary count=1",
        f"after_fork pid={worker} info_pid={launcher.pid}",
    ]


def test_an_app_that_starts_threads_at_import_is_refused_with_the_remedy(
    tmp_path: Path, database_url: str
) -> None:
    settings = write_settings(tmp_path, app="tests.support.threaded_app")
    code, _out, err = finish(start_worker(settings, database_url))
    preloader = the_preloader(settings)
    assert preloader.wait(timeout=10) == WorkerExit.CONFIG_ERROR
    said = settings.with_name("preloader.out").read_text()
    assert "1 thread(s) run in the preloader after the import (app-poller)" in said
    assert "forking a process that runs threads is unsafe" in said
    assert "Start them in an after_fork callback" in said
    # The launcher says why and exits 0: the master holds the watcher meanwhile.
    assert code == WorkerExit.RETIRED and "app-poller" in err


def test_a_changed_settings_file_retires_the_preloader_before_its_next_fork(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """The settings changed since the preloader loaded them: it forks no more (the
    launcher waits), exits once its workers are gone, and the next generation forks."""
    old = start_preloader(settings, worker_env(database_url))
    os.utime(settings, ns=(1, 1))
    enqueue(f"{F}:facts", ["g1"], queue="q1", database_url=database_url)
    launcher = subprocess.Popen(
        worker_argv(settings),
        env=worker_env(database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert old.wait(timeout=10) == WorkerExit.RETIRED, "the old generation exits"
    assert (
        "changed: old generation, forking no more" in settings.with_name("djmaster.log").read_text()
    )
    new = start_preloader(settings, worker_env(database_url))
    code, _out, err = finish(launcher)
    assert code == WorkerExit.RETIRED, err
    _worker, facts = facts_of(conn, "g1")
    assert facts["imported"] == new.pid != old.pid


def test_the_rendezvous_folder_is_private_to_the_user(settings: Path, database_url: str) -> None:
    start_preloader(settings, worker_env(database_url))
    folder = Path(rendezvous.folder_for(settings))
    for path in (folder.parent, folder):
        info = path.lstat()
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700, path
        assert info.st_uid == os.geteuid()
    socket_path = folder / os.readlink(rendezvous.current_link(str(folder)))
    assert stat.S_ISSOCK(socket_path.lstat().st_mode)
    assert stat.S_IMODE(socket_path.lstat().st_mode) == 0o600


def test_a_preloader_refuses_a_folder_others_may_enter(tmp_path: Path, database_url: str) -> None:
    settings = write_settings(tmp_path)
    folder = Path(rendezvous.private_folder(rendezvous.folder_for(settings)))
    folder.chmod(0o755)
    try:
        preloader = start_preloader(settings, worker_env(database_url))
        assert preloader.wait(timeout=10) == WorkerExit.CONFIG_ERROR
        said = settings.with_name("preloader.out").read_text()
        assert f"{folder}: mode 755 lets other users in (must be 700)" in said
    finally:
        folder.chmod(0o700)


def test_the_launchers_exit_codes_are_the_protocols() -> None:
    """The launcher spells the exit codes out (contracts/exit_codes.py's enum would cost
    its start 3 ms): they must stay WorkerExit's."""
    from circus_djmaster.worker import launcher

    assert (launcher.RETIRED, launcher.CRASHED, launcher.CONFIG_ERROR) == (
        WorkerExit.RETIRED,
        WorkerExit.CRASHED,
        WorkerExit.CONFIG_ERROR,
    )


def test_a_launcher_imports_nothing_heavy_and_refuses_a_bad_command_line() -> None:
    """What a launcher loads, run as circus.ini runs it (``python -S``), when it gives up
    at once on a command line circus.ini would never give: the standard library's C
    cores and the package's contracts only (its start is measured in milliseconds)."""
    result = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", str(LAUNCHER), "--settings", "s.toml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == WorkerExit.CONFIG_ERROR
    assert "usage: launch --settings FILE --group NAME --database NAME" in result.stderr
    loaded = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "circus_djmaster.contracts.preloader" in loaded
    heavy = {
        *("psycopg", "psutil", "circus", "zmq", "jinja2", "tomllib", "circus_djmaster.config"),
        *("typing", "json", "pathlib", "hashlib", "contextlib", "enum", "socket", "signal"),
    }
    assert not loaded & heavy, loaded & heavy
