"""Job code under the real master (circusd + plugin + workers): per-job limits on the
master's release path, a poison job beside innocent ones, and a job that forks.

One circusd serves the module, one worker group per scenario:

* ``limits``: the group's ``max_attempts`` is the default (25); jobs declare their own
  ``max_attempts = 2`` and SIGKILL their worker. The master, which never imports job
  code, must charge them against 2 (read from the dead worker's running-jobs file);
* ``poison``: ``max_threads = 2``, ``max_attempts = 2``, short good jobs and one job that
  calls ``os._exit(3)``: the poison job may kill its worker beside a good job, but only
  a job that kills its worker while running alone is charged, so every good job
  completes and only the poison job fails;
* ``fork`` (its own circusd, as it ends with ``circusctl quit``): a job forks a child
  that calls ``sys.exit(0)``; the job completes once, the child never takes a job, and
  ``circusctl quit`` ends circusd.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from circus_djmaster import enqueue
from tests.hostile.helpers import call_failed, done_keys, insert_job, start_pids, wait_failed
from tests.support.circus_run import CircusRun, circus_env, circus_table, start_circus
from tests.support.spawn import spawn_per_module
from tests.support.waiting import wait_until
from tests.support.worker_run import events, job_row, write_settings

#: The module runs once per spawn mode (its circusd is shared by its tests).
spawn = spawn_per_module()

C = "tests.support.job_code_jobs"
DEADLINE = 60.0


@dataclass
class Env:
    run: CircusRun
    conn: psycopg.Connection[Any]
    url: str


@pytest.fixture(scope="module")
def master(
    tmp_path_factory: pytest.TempPathFactory,
    mode_database_url: str,
    mode_conn: psycopg.Connection[Any],
    spawn: str,
) -> Iterator[Env]:
    folder = tmp_path_factory.mktemp("job-code-master")
    settings = write_settings(
        folder,
        monitor_interval=1.0,
        polling_interval=30.0,
        log_file=str(folder / "djmaster.log"),
        pid_file=str(folder / "master.pid"),
        log_level="debug",
        tables={"circus": circus_table(folder, check_delay=0.5)},
        workers=[
            {"name": "limits", "queues": ["q1"], "sleep_delay": 0.2},
            {
                "name": "poison",
                "queues": ["poison"],
                "max_threads": 2,
                "max_attempts": 2,
                "sleep_delay": 0.2,
            },
        ],
    )
    run = start_circus(settings, circus_env({"DJMASTER_DATABASE_URL": mode_database_url}))
    try:
        run.wait_for_master()
        yield Env(run, mode_conn, mode_database_url)
    finally:
        run.close()


@pytest.fixture
def env(master: Env, request: pytest.FixtureRequest) -> Iterator[Env]:
    yield master
    if call_failed(request):
        print(master.run.logs()[-30000:])


def test_a_jobs_own_max_attempts_holds_when_it_kills_its_worker(env: Env) -> None:
    """Group max_attempts 25, job max_attempts 2: two runs, then failed_at, with the
    master's words for how the worker died."""
    job_id = enqueue(f"{C}:kill_my_worker", ["killer"], queue="q1", database_url=env.url)
    row = wait_failed(env.conn, job_id, "the job to fail after its own 2 attempts")
    assert row["attempts"] == 2
    assert "was killed by SIGKILL while running this job" in row["last_error"]
    assert len(start_pids(env.conn, "killer")) == 2


def test_a_jobs_own_destroy_failed_jobs_holds_when_it_kills_its_worker(env: Env) -> None:
    job_id = enqueue(
        f"{C}:kill_my_worker_destroyed", ["destroyed"], queue="q1", database_url=env.url
    )
    wait_until(lambda: job_row(env.conn, job_id) is None, DEADLINE, "the job to be deleted")
    assert len(start_pids(env.conn, "destroyed")) == 2


def test_a_poison_job_never_fails_an_innocent_job_beside_it(env: Env) -> None:
    conn = env.conn
    good = [f"good-{n}" for n in range(12)]
    for key in good[:6]:
        insert_job(conn, f"{C}:short", key, 0.4, queue="poison")
    poison = insert_job(conn, f"{C}:poison", "poison", queue="poison")
    for key in good[6:]:
        insert_job(conn, f"{C}:short", key, 0.4, queue="poison")
    row = wait_failed(conn, poison, "the poison job to fail for good")
    assert row["attempts"] == 2
    assert "exited with code 3 while running this job" in row["last_error"]
    wait_until(lambda: done_keys(conn, good) == set(good), DEADLINE, "every good job")
    failed = conn.execute(
        "SELECT id, left(last_error, 200) FROM delayed_jobs WHERE failed_at IS NOT NULL "
        "AND queue = 'poison' AND id <> %s",
        (poison,),
    ).fetchall()
    assert failed == [], "innocent jobs failed"
    log = env.run.logs()
    # Once at least, the poison job killed its worker beside a good job: both were
    # released uncharged to run alone (the case this rule exists for).
    assert "to run alone, no attempt charged" in log


def test_a_job_that_forks_leaves_no_hidden_worker_and_circus_quits(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(
        tmp_path,
        log_file=str(tmp_path / "djmaster.log"),
        tables={"circus": circus_table(tmp_path, check_delay=0.5)},
        workers=[{"queues": ["fork"], "max_processes": 1, "idle_timeout": "30s",
                  "sleep_delay": 0.2}],
    )  # fmt: skip
    run = start_circus(settings, circus_env({"DJMASTER_DATABASE_URL": database_url}))
    try:
        run.wait_for_master()
        job_id = enqueue(
            f"{C}:fork_child", ["forked", "sys.exit"], queue="fork", database_url=database_url
        )
        wait_until(lambda: job_row(conn, job_id) is None, DEADLINE, "the forking job")
        recorded = [event for _k, event, _p in events(conn, "forked")]
        assert recorded[0] == "child" and recorded[1].endswith("exit 0"), recorded
        assert len(recorded) == 2, recorded
        after = enqueue(f"{C}:short", ["fork-after", 0.0], queue="fork", database_url=database_url)
        wait_until(lambda: job_row(conn, after) is None, DEADLINE, "the next job")
        # Only the worker circus knows took it: the child recorded nothing more.
        child = next(pid for _k, event, pid in events(conn, "forked") if event == "child")
        assert child not in {pid for _k, _e, pid in events(conn, "fork-after")}
        quit_result = run.ctl("quit", timeout=30)
        assert quit_result.returncode == 0, quit_result.stderr
        run.process.wait(timeout=30)
    except BaseException:
        print(run.logs()[-20000:])
        raise
    finally:
        run.close()
