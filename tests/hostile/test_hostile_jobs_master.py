"""Hostile jobs under the real master: circusd + the plugin + workers (issue 5, item 5).

One circusd serves every test of this module (one worker group per kind of hostility,
so they do not disturb each other), with short intervals. Each test enqueues its
hostile job next to innocent ones and checks that:

* the hostile job ends as a clear ``last_error``, a retry or a release;
* every innocent job completes (nothing else is lost);
* the master survives (same pid, same pid file) and a new job still runs.

Already covered elsewhere and not repeated here: a bare worker failing ``sys.exit``,
wrong arguments, a non-callable and bad JSON (tests/process/test_worker_limits.py
::test_jobs_that_exit_or_have_bad_arguments_fail_with_a_readable_error), a job blocked
in C past max_run_time in a bare worker (…::test_a_job_past_max_run_time_that_cannot_be
_stopped_…), kill -9 of a worker and hard_max_memory without innocent jobs
(tests/acceptance/test_plugin_recovery.py).

circusd runs with a service manager's small environment (helpers.minimal_env): what
systemd gives, and it decides how long a process title may be.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import psycopg
import pytest

from circus_djmaster import enqueue, enqueue_many
from circus_djmaster.api.jobs import JobCall
from circus_djmaster.contracts.titles import WorkerState
from circus_djmaster.master.readings import read_worker
from tests.hostile.helpers import (
    DEADLINE,
    add_group,
    call_failed,
    done_keys,
    insert_job,
    minimal_env,
    pid_file_pid,
    start_pids,
    wait_failed,
)
from tests.support.circus_run import CircusRun, circus_table, read, start_circus
from tests.support.spawn import spawn_per_module
from tests.support.waiting import wait_until
from tests.support.worker_run import job_row, write_settings

#: The module runs once per spawn mode (its circusd is shared by its tests).
spawn = spawn_per_module()

J = "tests.support.jobs"
H = "tests.support.hostile_jobs"
MAX_ATTEMPTS = 3
# Hostile queue names: SQL and JSON metacharacters, psycopg placeholders, non-ASCII
# (two-, three- and four-byte UTF-8), and one of 1,000 characters.
QUOTE_QUEUE = "q'); DROP TABLE delayed_jobs; --"
UNICODE_QUEUE = 'ünï "cødé" 队列 🚀 \\ %s %(queue)s $1'
LONG_QUEUE = ("long-queue-" + "x" * 1000)[:1000]
ODD_QUEUES = [QUOTE_QUEUE, UNICODE_QUEUE, LONG_QUEUE]


@dataclass
class Hostile:
    run: CircusRun
    conn: psycopg.Connection[Any]
    url: str
    master_pid: int

    def assert_master_survived(self, queue: str, key: str) -> None:
        """Same master (pid and pid file), and a new job of ``queue`` still runs."""
        assert self.run.plugin_pid() == self.master_pid, "the master was replaced"
        assert pid_file_pid(self.run) == self.master_pid
        enqueue(f"{J}:record", [key], queue=queue, priority=-1, database_url=self.url)
        wait_until(lambda: done_keys(self.conn, [key]), DEADLINE, f"new job {key} to run")
        assert self.run.plugin_pid() == self.master_pid


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory,
    mode_database_url: str,
    mode_conn: psycopg.Connection[Any],
    spawn: str,
) -> Iterator[Hostile]:
    folder = tmp_path_factory.mktemp("hostile-master")
    common = {"sleep_delay": 0.2, "max_attempts": MAX_ATTEMPTS}
    settings = write_settings(
        folder,
        monitor_interval=1.0,
        polling_interval=30.0,
        log_file=str(folder / "djmaster.log"),
        pid_file=str(folder / "master.pid"),
        log_level="debug",
        tables={"circus": circus_table(folder, check_delay=0.5)},
        workers=[
            {"name": "crash", "queues": ["crash"], "max_processes": 2, **common},
            {"name": "ahead", "queues": ["ahead"], "read_ahead": 3, **common},
            {
                "name": "mem",
                "queues": ["mem"],
                "max_memory": "100MB",
                "hard_max_memory": "200MB",
                **common,
            },
            {"name": "slow", "queues": ["slow"], "max_threads": 2, "max_run_time": "1s", **common},
        ],
    )
    add_group(settings, name="odd", queues=ODD_QUEUES, max_processes=2, sleep_delay=0.2)
    run = start_circus(settings, minimal_env({"DJMASTER_DATABASE_URL": mode_database_url}))
    try:
        master_pid = run.wait_for_master()
        yield Hostile(run, mode_conn, mode_database_url, master_pid)
    finally:
        run.close()


@pytest.fixture
def env(hostile: Hostile, request: pytest.FixtureRequest) -> Iterator[Hostile]:
    yield hostile
    if call_failed(request):
        print(hostile.run.logs()[-30000:])


def test_jobs_killing_their_worker_fail_after_max_attempts_saying_how_it_died(
    env: Hostile,
) -> None:
    """os._exit(9) and a SIGSEGV kill the worker every time: each job is released at
    once with an attempt charged, and fails for good after max_attempts with a
    last_error naming the cause (docs/master.md: "exited with code 9", "was killed by
    SIGSEGV").

    Each poison job first enqueues a harmless follow-up job, as jobs often do: its
    NOTIFY makes the master look at circus right after the death, before circus reaps
    the dead worker (every check_delay), as a busy master would anyway. The follow-ups
    are innocent jobs too and must run. A job calling sys.exit only fails its run: the
    worker lives on, so that job is retried later with the exception as last_error,
    not released as a death."""
    conn = env.conn
    exits = insert_job(conn, f"{H}:enqueue_then_exit_process", "exit9", 9, "crash", queue="crash")
    segv = insert_job(conn, f"{H}:enqueue_then_crash", "segv", "crash", queue="crash")
    sys_exit = insert_job(conn, f"{H}:record_then_sys_exit", "sysexit", 3, queue="crash")
    innocents = [f"crash-innocent-{n}" for n in range(6)]
    for key in innocents:
        insert_job(conn, f"{J}:record", key, queue="crash", priority=1)

    exit_row = wait_failed(conn, exits, "the os._exit job to fail for good")
    segv_row = wait_failed(conn, segv, "the SIGSEGV job to fail for good")
    for row, key in ((exit_row, "exit9"), (segv_row, "segv")):
        assert row["attempts"] == MAX_ATTEMPTS
        assert row["locked_by"] is None
        pids = start_pids(conn, key)
        assert len(pids) == MAX_ATTEMPTS and len(set(pids)) == MAX_ATTEMPTS, pids
        innocents += [f"{key}-follow-up-{pid}" for pid in pids]
    wait_until(lambda: done_keys(conn, innocents) == set(innocents), DEADLINE, "innocent jobs")
    assert "exited with code 9" in exit_row["last_error"], exit_row["last_error"]
    assert "was killed by SIGSEGV" in segv_row["last_error"], segv_row["last_error"]
    # Every release, not only the last one, says how the worker died (the master logs
    # the last_error it writes: "released job N of a dead worker (…) …: <last_error>").
    log = read(env.run.log_file).splitlines()
    for job_id, cause in ((exits, "exited with code 9"), (segv, "was killed by SIGSEGV")):
        releases = [line for line in log if f"job {job_id} of a dead worker" in line]
        assert len(releases) == MAX_ATTEMPTS, releases
        assert all(cause in line for line in releases), releases

    row = wait_until(lambda: job_row(conn, sys_exit), DEADLINE, "the sys.exit job")
    assert row["last_error"].startswith("job called sys.exit(3)"), row["last_error"]
    assert row["failed_at"] is None and row["attempts"] >= 1
    env.assert_master_survived("crash", "crash-after")


def test_jobs_reserved_ahead_by_a_worker_that_dies_are_not_charged_for_its_death(
    env: Hostile,
) -> None:
    """A worker with read_ahead = 3 reserves the poison job and two innocent ones, then
    the poison job kills it, three times. The innocent jobs never ran: they must run
    now, not fail with the poison job after max_attempts deaths they did not cause."""
    conn = env.conn
    poison = insert_job(conn, f"{H}:record_then_exit_process", "ahead-poison", 9, queue="ahead")
    innocents = ["ahead-innocent-1", "ahead-innocent-2"]
    ids = [insert_job(conn, f"{J}:record", key, queue="ahead", priority=1) for key in innocents]
    row = wait_failed(conn, poison, "the poison job to fail for good")
    assert row["attempts"] == MAX_ATTEMPTS

    def settled() -> bool:
        return all(
            (r := job_row(conn, job_id)) is None or r["failed_at"] is not None for job_id in ids
        )

    wait_until(settled, DEADLINE, "the innocent jobs to run or fail")
    assert [job_row(conn, job_id) for job_id in ids] == [None, None], "innocent jobs failed"
    assert done_keys(conn, innocents) == set(innocents)
    env.assert_master_survived("ahead", "ahead-after")


def test_a_job_allocating_past_hard_max_memory_is_killed_charged_and_fails(
    env: Hostile, spawn: str
) -> None:
    """400 MB held by a job of a group with max_memory 100MB, hard_max_memory 200MB: the
    master SIGKILLs the worker at its next monitor tick, releases the job and charges it
    an attempt, every time; after max_attempts it fails, saying the master killed it.
    The innocent jobs of the same group run."""
    conn = env.conn
    hog = insert_job(conn, f"{H}:allocate_and_hold", "hog", 400, queue="mem")
    innocents = [f"mem-innocent-{n}" for n in range(3)]
    for key in innocents:
        insert_job(conn, f"{J}:record", key, queue="mem", priority=1)
    row = wait_failed(conn, hog, "the memory hog to fail for good")
    assert row["attempts"] == MAX_ATTEMPTS
    metric = "USS" if spawn == "fork" else "RSS"  # a forked worker's own memory
    assert f"killed by the master: {metric} over hard_max_memory" in row["last_error"]
    assert len(set(start_pids(conn, "hog"))) == MAX_ATTEMPTS
    assert not done_keys(conn, ["hog"]), "the hog never completed"
    wait_until(lambda: done_keys(conn, innocents) == set(innocents), DEADLINE, "innocent jobs")
    log = read(env.run.log_file)
    assert log.count(f"{metric} over hard_max_memory); its jobs are released") == MAX_ATTEMPTS
    env.assert_master_survived("mem", "mem-after")


def test_a_job_hanging_in_c_past_max_run_time_is_charged_once_and_its_worker_retires(
    env: Hostile,
) -> None:
    """A job blocked in C past max_run_time (1 s) cannot be interrupted: its worker runs
    the innocent jobs on its other thread, records the timeout (one attempt, a retry
    later) and retires. The master sees a clean exit: it charges no second attempt and
    circus does not respawn a crash loop."""
    conn = env.conn
    stuck = insert_job(conn, f"{J}:hang", "stuck", 30, queue="slow")
    innocents = [f"slow-innocent-{n}" for n in range(4)]
    for key in innocents:
        insert_job(conn, f"{J}:sleep_then_record", key, 0.2, queue="slow", priority=1)

    def recorded() -> dict[str, Any] | None:
        row = job_row(conn, stuck)
        return row if row is not None and row["attempts"] >= 1 else None

    row = wait_until(recorded, DEADLINE, "the timeout to be recorded")
    assert row["attempts"] == 1
    assert row["failed_at"] is None and row["locked_by"] is None
    assert "max_run_time of 1s" in row["last_error"] and "could not be stopped" in row["last_error"]
    assert row["due_in"] > 0, "a retry later (attempts**4 + 5 s), not a release"
    (worker,) = start_pids(conn, "stuck")
    wait_until(lambda: worker not in env.run.pids("djmaster-slow-primary"), DEADLINE, "retire")
    wait_until(lambda: done_keys(conn, innocents) == set(innocents), DEADLINE, "innocent jobs")
    assert f"job {stuck} of a dead worker" not in read(env.run.log_file)
    row = job_row(conn, stuck)
    assert row is not None and row["attempts"] == 1, "charged twice"
    env.assert_master_survived("slow", "slow-after")


def test_hostile_queue_names_go_through_enqueue_notify_counts_and_workers(
    env: Hostile,
) -> None:
    """Queue names with quotes and SQL, unicode and 1,000 characters, enqueued by the API,
    in bulk and by plain SQL: the master counts them, starts workers for them and the
    workers run them. The table is still there, and nothing else ran."""
    conn = env.conn
    keys = []
    for n, queue in enumerate(ODD_QUEUES):
        enqueue(f"{J}:record", [f"odd-api-{n}"], queue=queue, database_url=env.url)
        insert_job(conn, f"{J}:record", f"odd-sql-{n}", queue=queue)
        keys += [f"odd-api-{n}", f"odd-sql-{n}", f"odd-bulk-{n}"]
    enqueue_many(
        [JobCall(f"{J}:record", (f"odd-bulk-{n}",), {}, queue=q) for n, q in enumerate(ODD_QUEUES)],
        database_url=env.url,
    )
    wait_until(lambda: done_keys(conn, keys) == set(keys), DEADLINE, "jobs of odd queues")

    def left() -> int:
        query = "SELECT count(*) FROM delayed_jobs WHERE queue = ANY(%s)"
        row = conn.execute(query, (ODD_QUEUES,)).fetchone()
        return -1 if row is None else int(row[0])

    # A completed job is deleted a moment after its last line ran (batched deletes).
    wait_until(lambda: left() == 0, DEADLINE, "the completed jobs to be deleted")
    env.assert_master_survived(QUOTE_QUEUE, "odd-after")


def test_a_busy_worker_serving_a_1000_character_queue_shows_busy_to_the_master(
    env: Hostile,
) -> None:
    """The master tells busy workers from idle ones by their process title (monitor
    .read_worker). A worker serving a queue of 1,000 characters has a title longer than
    setproctitle can write under a service manager's small environment: the state marks
    at its end must survive, or the master counts a busy worker as spare."""
    conn = env.conn
    enqueue(f"{J}:sleep_then_record", ["long-busy", 4.0], queue=LONG_QUEUE, database_url=env.url)
    wait_until(lambda: start_pids(conn, "long-busy"), DEADLINE, "the job to start")
    (pid,) = start_pids(conn, "long-busy")

    def state() -> WorkerState | None:
        worker = read_worker(pid)
        return None if worker is None else worker.state

    try:
        wait_until(lambda: state() is WorkerState.BUSY, 3.0, "a BUSY reading")
    except AssertionError:
        title = " ".join(psutil.Process(pid).cmdline())
        pytest.fail(
            f"the master reads worker {pid} as {state()} while it runs a job; "
            f"its title ({len(title)} characters) ends with {title[-40:]!r}"
        )
    wait_until(lambda: done_keys(conn, ["long-busy"]), DEADLINE, "the job to finish")
