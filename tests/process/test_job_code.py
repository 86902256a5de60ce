"""Job code as real applications write it, in a real ``djmaster worker`` process: async
jobs and hooks, forks and multiprocessing, the job's own context and its follow-ups.

Each test enqueues jobs, runs a worker until it retires (``idle_timeout = 0``) or is
told to stop, and reads what the jobs recorded (``job_events``) and what is left in
``delayed_jobs``.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from circus_djmaster import enqueue
from circus_djmaster.contracts.exit_codes import WorkerExit
from tests.support.waiting import wait_until
from tests.support.worker_run import events, job_row, start_worker, worker_env, write_settings

C = "tests.support.job_code_jobs"


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"worker did not exit within {timeout}s; stderr:\n{err}") from None
    return proc.returncode, err


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    return write_settings(tmp_path, workers=[{"queues": ["q1"], "sleep_delay": 0.2}])


def run_jobs(settings: Path, database_url: str, *jobs: tuple[str, list[Any]]) -> list[int]:
    """Enqueue ``jobs`` (callable, args) in order, run a worker until it retires."""
    ids = [
        enqueue(path, args, queue="q1", priority=n, database_url=database_url)
        for n, (path, args) in enumerate(jobs)
    ]
    code, err = finish(start_worker(settings, database_url))
    assert code == WorkerExit.RETIRED, err
    return ids


def keyed(conn: psycopg.Connection[Any], key: str) -> list[str]:
    return [event for _key, event, _pid in events(conn, key)]


# --- async jobs ------------------------------------------------------------------------


def test_async_jobs_run_to_completion_however_they_are_defined(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """@job async def, a plain async function by path, a partial of one, and a sync
    function returning a coroutine: each body runs, then the job is deleted."""
    ids = run_jobs(
        settings,
        database_url,
        (f"{C}:ahello", ["decorated"]),
        (f"{C}:ahello_plain", ["plain"]),
        (f"{C}:apartial", ["partial"]),
        (f"{C}:returns_coroutine", ["wrapped"]),
    )
    assert keyed(conn, "decorated") == ["done"]
    assert keyed(conn, "plain") == ["done"]
    assert keyed(conn, "partial") == ["done-partial"]
    assert keyed(conn, "wrapped") == ["done-wrapped"]
    assert [job_row(conn, job_id) for job_id in ids] == [None] * 4


def test_a_failing_async_job_is_retried_with_its_traceback(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    (job_id,) = run_jobs(settings, database_url, (f"{C}:afail", ["f"]))
    row = job_row(conn, job_id)
    assert row is not None and row["attempts"] == 1 and row["failed_at"] is None
    assert row["last_error"].startswith("ValueError: async job f failed")
    assert "in afail" in row["last_error"]


def test_a_job_threads_event_loop_is_reused_and_leftover_tasks_are_cancelled(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    run_jobs(
        settings,
        database_url,
        (f"{C}:aloop_id", ["loop1"]),
        (f"{C}:aleave_a_task", ["left"]),
        (f"{C}:aloop_id", ["loop2"]),
    )
    (first,), (second,) = keyed(conn, "loop1"), keyed(conn, "loop2")
    assert first == second, "one event loop per job thread, reused"
    assert keyed(conn, "left") == ["done", "background cancelled"]


def test_async_hooks_run_around_async_and_sync_outcomes(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    run_jobs(
        settings,
        database_url,
        (f"{C}:ahooked", ["ok", False]),
        (f"{C}:ahooked", ["bad", True]),
    )
    assert keyed(conn, "ok") == ["before", "run", "success", "after"]
    assert keyed(conn, "bad") == ["before", "run", "after", "error", "failure"]


def test_an_async_job_past_max_run_time_is_cancelled_and_the_worker_goes_on(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Awaiting a long sleep (the loop blocked in select): cancellation wakes it at once;
    the job is charged an attempt ("was stopped") and the next job runs in the same
    worker."""
    waiting, after = run_jobs(
        settings,
        database_url,
        (f"{C}:ashort_limit", ["waits"]),
        (f"{C}:ahello", ["after"]),
    )
    assert keyed(conn, "waits") == ["start", "cancelled"]
    row = job_row(conn, waiting)
    assert row is not None and row["attempts"] == 1
    assert "max_run_time of 1s and was stopped" in row["last_error"]
    pids = {pid for _k, _e, pid in events(conn, "waits")} | {
        pid for _k, _e, pid in events(conn, "after")
    }
    assert len(pids) == 1, "the same worker ran the next job"
    assert job_row(conn, after) is None


def test_async_code_that_never_yields_is_stopped_by_interrupting_its_thread(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    spinning, after = run_jobs(
        settings,
        database_url,
        (f"{C}:ashort_limit_spin", ["spins"]),
        (f"{C}:aloop_id", ["after"]),
    )
    assert keyed(conn, "spins") == ["start"]
    row = job_row(conn, spinning)
    assert row is not None and row["attempts"] == 1
    assert "and was stopped" in row["last_error"]
    assert keyed(conn, "after")[0].startswith("loop "), "a fresh loop runs the next job"
    assert job_row(conn, after) is None


def test_quit_during_an_async_job_hands_it_back(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job_id = enqueue(f"{C}:asleep", ["long", 60], queue="q1", database_url=database_url)
    proc = start_worker(settings, database_url)
    wait_until(lambda: keyed(conn, "long"), 15, "the async job to start")
    proc.send_signal(signal.SIGQUIT)
    code, err = finish(proc, 10)
    assert code == WorkerExit.RETIRED, err
    row = job_row(conn, job_id)
    assert row is not None and (row["locked_by"], row["attempts"]) == (None, 0)


# --- the job's context and follow-ups --------------------------------------------------


def test_job_code_reads_its_own_context(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    sync_id, async_id = run_jobs(
        settings,
        database_url,
        (f"{C}:record_context", ["sync"]),
        (f"{C}:arecord_context", ["async"]),
    )
    assert keyed(conn, "sync") == [f"{sync_id} q1 0 primary worker0 {C}:record_context"]
    assert keyed(conn, "async") == [f"{async_id} primary {C}:arecord_context"]


def test_a_follow_up_goes_to_the_database_its_job_came_from(
    tmp_path: Path, make_database: Any
) -> None:
    """Databases primary ($DJMASTER_DATABASE_URL) and secondary: a job of secondary
    enqueues a follow-up without naming a database; it lands in, and runs from,
    secondary."""
    primary, secondary = make_database(), make_database()
    settings = write_settings(
        tmp_path,
        databases={"primary": "${DJMASTER_DATABASE_URL}", "secondary": "${SECONDARY_URL}"},
        workers=[{"queues": ["q1"], "sleep_delay": 0.2}],
    )
    env = worker_env(primary, SECONDARY_URL=secondary)
    enqueue(f"{C}:enqueue_follow_up", ["parent"], queue="q1", database_url=secondary)
    proc = start_worker(settings, primary, database="secondary", env=env)
    code, err = finish(proc)
    assert code == WorkerExit.RETIRED, err
    with (
        psycopg.connect(primary, autocommit=True) as first,
        psycopg.connect(secondary, autocommit=True) as second,
    ):
        assert first.execute("SELECT count(*) FROM delayed_jobs").fetchone() == (0,)
        assert second.execute("SELECT count(*) FROM delayed_jobs").fetchone() == (0,)
        # tests/support/jobs.py records into $DJMASTER_DATABASE_URL (primary).
        assert keyed(first, "parent-child") == ["child ran in secondary"]


# --- forks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "status"),
    [
        ("return", 0),
        ("sys.exit", 0),
        ("sys.exit(4)", 4),
        ("raise", 1),
        ("os._exit", 3),
        ("KeyboardInterrupt", 130),
    ],
)
def test_a_forked_child_ends_when_it_leaves_job_code_and_the_job_completes_once(
    how: str, status: int, settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """However control leaves the job function in the child, the child ends at once with
    that status; it never records an outcome or takes another job; the parent's job
    succeeds once; the next job runs in the worker, not in a hidden extra one."""
    job_id, next_id = run_jobs(
        settings,
        database_url,
        (f"{C}:fork_child", [how, how]),
        (f"{C}:short", ["next", 0.0]),
    )
    recorded = events(conn, how)
    assert recorded[0][1] == "child", recorded
    parent_event = recorded[-1][1]
    assert parent_event.endswith(f"exit {status}"), recorded
    assert len(recorded) == 2, recorded
    assert job_row(conn, job_id) is None, "the job succeeded, once"
    assert job_row(conn, next_id) is None
    (child_pid,) = {pid for _k, event, pid in recorded if event == "child"}
    (worker_pid,) = {pid for _k, event, pid in recorded if event != "child"}
    assert {pid for _k, _e, pid in events(conn, "next")} == {worker_pid}
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == "zombie"


def test_an_async_job_that_forks_completes_once(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    (job_id,) = run_jobs(settings, database_url, (f"{C}:afork_child", ["afork"]))
    assert [event.split(":")[0] for event in keyed(conn, "afork")] == ["child", "parent"]
    assert keyed(conn, "afork")[-1].endswith("exit 0")
    assert job_row(conn, job_id) is None


def test_a_forked_child_dies_of_term_like_any_process(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    run_jobs(settings, database_url, (f"{C}:child_gets_term", ["term"]))
    assert keyed(conn, "term") == [f"parent: child exit {-signal.SIGTERM}"]


def test_a_child_outliving_its_job_ends_by_itself(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    (job_id,) = run_jobs(settings, database_url, (f"{C}:fork_and_leave_running", ["late"]))
    (parent,) = [event for event in keyed(conn, "late") if event.startswith("parent")]
    child_pid = int(parent.split()[1])
    wait_until(lambda: "late child" in keyed(conn, "late"), 10, "the child to finish")
    wait_until(lambda: not psutil.pid_exists(child_pid), 10, "the child to end")
    assert keyed(conn, "late").count("late child") == 1
    assert job_row(conn, job_id) is None


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_works_from_jobs(
    method: str, settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    (job_id,) = run_jobs(settings, database_url, (f"{C}:use_multiprocessing", [method, method]))
    assert keyed(conn, method) == [f"{method} 30 1 {-signal.SIGTERM}"]
    assert job_row(conn, job_id) is None


# --- limits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "destroyed"), [("kill_my_worker", False), ("kill_my_worker_destroyed", True)]
)
def test_a_job_reserved_with_no_attempt_left_fails_without_running(
    path: str, destroyed: bool, settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Its worker died on its last attempt while nobody could tell its own max_attempts
    (2): the next worker fails it (or deletes it: destroy_failed_jobs) unrun."""
    job_id = enqueue(f"{C}:{path}", ["unrun"], queue="q1", database_url=database_url)
    conn.execute(
        "UPDATE delayed_jobs SET attempts = 2, last_error = 'worker died' WHERE id = %s",
        (job_id,),
    )
    code, err = finish(start_worker(settings, database_url))
    assert code == WorkerExit.RETIRED, err
    assert keyed(conn, "unrun") == [], "it did not run"
    row = job_row(conn, job_id)
    if destroyed:
        assert row is None
    else:
        assert row is not None and row["failed_at"] is not None and row["attempts"] == 2
        assert row["last_error"] == (
            "failed without running: 2 attempt(s) already made, max_attempts is 2\nworker died"
        )
