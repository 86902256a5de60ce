"""Process tier: max_run_time, preload and settings failures, callbacks, hostile jobs."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from circus_djmaster import enqueue
from circus_djmaster.contracts.exit_codes import WorkerExit
from tests.support.waiting import wait_until
from tests.support.worker_run import (
    events,
    job_row,
    preloaders,
    start_worker,
    worker_env,
    worker_pid,
    write_settings,
)

J = "tests.support.jobs"


def finish(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str]:
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"worker did not exit within {timeout}s; stderr:\n{err}") from None
    return proc.returncode, err


def test_a_job_past_max_run_time_that_cannot_be_stopped_is_charged_and_never_runs_twice(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(
        tmp_path,
        workers=[{"queues": ["q1"], "max_run_time": "1s", "idle_timeout": 60, "sleep_delay": 0.1}],
    )
    job_id = enqueue(f"{J}:hang", ["stuck", 60], queue="q1", database_url=database_url)
    first = start_worker(settings, database_url)
    # A second worker races for the same queue the whole time.
    second = start_worker(settings, database_url)
    try:
        wait_until(lambda: events(conn, "stuck"), 10, "job started")
        owner = events(conn, "stuck")[0][2]
        stuck_worker, other = (first, second) if owner == worker_pid(first.pid) else (second, first)
        # Past max_run_time the job cannot be interrupted (it blocks in C): its worker
        # keeps the lock until it has exited, then the job waits for its retry time.
        code, err = finish(stuck_worker, timeout=15)
        assert code == WorkerExit.RETIRED, err
        assert "could not be stopped" in err
        row = job_row(conn, job_id)
        assert row is not None
        assert row["attempts"] == 1
        assert row["locked_by"] is None
        assert "max_run_time of 1s" in row["last_error"]
        assert "could not be stopped" in row["last_error"]
        assert row["due_in"] > 0, "retried later, not at once"
        assert [pid for _k, _e, pid in events(conn, "stuck")] == [owner]
        assert other.poll() is None
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT)
                finish(proc)


def test_a_job_past_max_run_time_in_python_code_is_interrupted_and_the_worker_goes_on(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    from tests.support import jobs

    settings = write_settings(tmp_path, workers=[{"queues": ["limited", "q1"]}])
    job_id = jobs.short_limit.enqueue(["spin"], database_url=database_url)
    enqueue(f"{J}:record", ["after"], queue="q1", priority=1, database_url=database_url)
    code, err = finish(start_worker(settings, database_url))
    assert code == 0, err
    row = job_row(conn, job_id)
    assert row is not None and row["attempts"] == 1 and row["locked_by"] is None
    assert "ran past its max_run_time of 1s and was stopped" in row["last_error"]
    assert [e for _k, e, _p in events(conn, "spin")] == ["start"]
    assert events(conn, "after"), "the worker went on with the next job"


def config_error(proc: subprocess.Popen[str], settings: Path, spawn: str) -> str:
    """The worker's (exec) or the preloader's (fork) configuration error: they exited
    78; a launcher whose preloader could not load exits 0 (the master holds its watcher
    while the preloader is blocked) and says why. Returns the error text."""
    code, err = finish(proc)
    if spawn == "exec":
        assert code == WorkerExit.CONFIG_ERROR, err
        return err
    assert code == WorkerExit.RETIRED, err
    assert "the preloader could not load, so no worker starts" in err
    preloader = wait_until(lambda: preloaders().get(settings), 10, "the preloader")
    assert preloader.wait(timeout=10) == WorkerExit.CONFIG_ERROR
    return err + settings.with_name("preloader.out").read_text()


def test_preload_failure_exits_with_the_config_error_code(
    tmp_path: Path, database_url: str, spawn: str
) -> None:
    settings = write_settings(tmp_path, app="no_such_app_module", workers=[{"queues": ["q1"]}])
    err = config_error(start_worker(settings, database_url), settings, spawn)
    assert "no_such_app_module" in err
    assert ("preload failed" if spawn == "exec" else "cannot preload") in err


def test_bad_settings_exit_with_the_config_error_code_naming_file_and_key(
    tmp_path: Path, database_url: str, spawn: str
) -> None:
    settings = write_settings(tmp_path, workers=[{"queues": ["q1"], "max_threads": 0}])
    err = config_error(start_worker(settings, database_url), settings, spawn)
    assert str(settings) in err and "workers[0].max_threads" in err


def test_unknown_group_exits_with_the_config_error_code(tmp_path: Path, database_url: str) -> None:
    settings = write_settings(tmp_path, workers=[{"queues": ["q1"]}])
    code, err = finish(start_worker(settings, database_url, group="nope"))
    assert code == WorkerExit.CONFIG_ERROR
    assert "nope" in err


def test_worker_callbacks_run_in_order_and_a_broken_one_is_only_logged(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    callback_log = tmp_path / "callbacks.log"
    settings = write_settings(
        tmp_path,
        workers=[{"queues": ["q1"]}],
        tables={
            "callbacks": {
                "after_fork": "tests.support.callbacks:after_fork",
                "before_work": "tests.support.callbacks:broken",
                "after_work": "tests.support.callbacks:after_work",
                "around_work": "tests.support.callbacks:around_work",
            }
        },
    )
    enqueue(f"{J}:record", ["cb"], queue="q1", database_url=database_url)
    env = worker_env(database_url, DJMASTER_TEST_CALLBACK_LOG=str(callback_log))
    proc = start_worker(settings, database_url, env=env)
    code, err = finish(proc)
    assert code == 0, err
    assert callback_log.read_text().splitlines() == [
        "after_fork worker0 primary",
        "around_work begin",
        "after_work",
        "around_work end",
    ]
    assert "callback before_work raised" in err
    assert events(conn, "cb")


def test_jobs_that_exit_or_have_bad_arguments_fail_with_a_readable_error(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(tmp_path, workers=[{"queues": ["q1"]}])
    exits = enqueue(f"{J}:call_sys_exit", [3], queue="q1", database_url=database_url)
    wrong = enqueue(f"{J}:wrong_arguments", [1, 2], queue="q1", database_url=database_url)
    broken = enqueue(f"{J}:not_callable", queue="q1", database_url=database_url)
    conn.execute(
        "INSERT INTO delayed_jobs (handler, queue) VALUES ('{not json', 'q1') RETURNING id"
    )
    code, err = finish(start_worker(settings, database_url))
    assert code == 0, err
    exit_row, wrong_row, broken_row = (job_row(conn, i) for i in (exits, wrong, broken))
    assert exit_row and exit_row["last_error"].startswith("job called sys.exit(3)")
    assert exit_row["failed_at"] is None and exit_row["attempts"] == 1
    assert wrong_row and wrong_row["last_error"].startswith("TypeError: ")
    assert broken_row and broken_row["failed_at"] is not None
    assert "is not callable" in broken_row["last_error"]
    bad_json = conn.execute(
        "SELECT last_error, failed_at IS NOT NULL FROM delayed_jobs WHERE handler = '{not json'"
    ).fetchone()
    assert bad_json is not None and bad_json[1] is True
    assert bad_json[0].startswith("HandlerError: handler is not valid JSON")


def test_job_hooks_and_per_job_options_apply(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    from tests.support import jobs

    settings = write_settings(tmp_path, workers=[{"queues": ["hooked", "q1"]}])
    jobs.hooked.enqueue(["ok", False], database_url=database_url)
    failing = jobs.hooked.enqueue(["bad", True], database_url=database_url)
    conn.execute("UPDATE delayed_jobs SET attempts = 1 WHERE id = %s", (failing,))
    resched = jobs.rescheduled.enqueue(["r"], queue="q1", database_url=database_url)
    destroyed = jobs.destroyed_on_failure.enqueue(["d"], queue="q1", database_url=database_url)
    code, err = finish(start_worker(settings, database_url))
    assert code == 0, err
    assert [e for _k, e, _p in events(conn, "ok")] == ["before", "run", "success", "after"]
    assert [e for _k, e, _p in events(conn, "bad")] == [
        "before",
        "run",
        "after",
        "error",
        "failure",
    ]
    bad = job_row(conn, failing)
    assert bad and bad["failed_at"] is not None and bad["attempts"] == 2  # max_attempts=2
    r = job_row(conn, resched)
    assert r and 95 < r["due_in"] <= 100, "reschedule_at: 100 s per attempt"
    assert job_row(conn, destroyed) is None, "destroy_failed_jobs deletes it"
