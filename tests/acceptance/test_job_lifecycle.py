"""Issue 15 under a real circusd with the real plugin and real workers: finished jobs
kept with their results (and `djmaster jobs show`), cancelling before a job starts and
while it runs (`djmaster jobs cancel`), and the master pruning kept jobs past their
keep_until. One circusd serves the module's tests (they use jobs of their own)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from circus_djmaster.contracts.exit_codes import CliExit
from tests.acceptance.plugin_helpers import enqueue, running, settings_file
from tests.support.circus_run import REPO_ROOT, circus_env, read
from tests.support.waiting import wait_until
from tests.support.worker_run import events

DEADLINE = 30.0
EXPIRED = 5  # kept rows already past keep_until when the master starts


@pytest.fixture(scope="module")
def life(tmp_path_factory: pytest.TempPathFactory, pg_server_url: str) -> Iterator[Any]:
    from circus_djmaster.store import pgserver
    from tests.conftest import JOB_EVENTS_DDL

    folder = tmp_path_factory.mktemp("lifecycle")
    name = f"djmaster_lifecycle_{id(folder) % 100000}"
    url = pgserver.create_database(pg_server_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        from circus_djmaster.store.sync_executor import migrate

        migrate(conn)
        conn.execute(JOB_EVENTS_DDL)
        conn.execute(
            "INSERT INTO delayed_jobs_finished (job_id, outcome, priority, handler, attempts, "
            "run_at, created_at, finished_at, keep_until) SELECT -i, 'succeeded', 0, '{}', 1, "
            "now(), now(), now(), now() - interval '1 minute' FROM generate_series(1, %s) AS i",
            (EXPIRED,),
        )
    settings = settings_file(
        folder,
        workers=[
            {
                "name": "life",
                "queues": ["life"],
                "max_processes": 2,
                "max_threads": 2,
                "sleep_delay": 0.1,
                "idle_timeout": 2.0,
                "keep_finished": "1h",
            }
        ],
        log_level="info",
    )
    try:
        with (
            running(settings, {"DJMASTER_DATABASE_URL": url}) as run,
            psycopg.connect(url, autocommit=True) as conn,
        ):
            yield run, conn, settings, url
    finally:
        pgserver.drop_database(pg_server_url, name)


def djmaster(settings: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "circus_djmaster", "jobs", "--settings", str(settings), *args],
        capture_output=True,
        text=True,
        env=circus_env({"DJMASTER_DATABASE_URL": url}),
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def finished(conn: psycopg.Connection[Any], job_id: int) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT outcome, result, attempts, last_error, started_at <= finished_at "
        "FROM delayed_jobs_finished WHERE job_id = %s",
        (job_id,),
    ).fetchone()


def test_the_master_prunes_kept_jobs_past_keep_until(life: Any) -> None:
    run, conn, _settings, _url = life

    def pruned() -> bool:
        row = conn.execute("SELECT count(*) FROM delayed_jobs_finished WHERE job_id < 0")
        return row.fetchone() == (0,)

    wait_until(pruned, DEADLINE, "the master to prune the expired kept jobs")
    assert f"pruned {EXPIRED} finished job(s) past keep_until" in read(run.log_file)


def test_a_succeeded_job_is_kept_with_its_result_and_shown(life: Any) -> None:
    _run, conn, settings, url = life
    job_id = enqueue(conn, "add", "sum", 2, 3, queue="life", module="lifecycle_jobs")
    row = wait_until(lambda: finished(conn, job_id), DEADLINE, "the job to be kept")
    assert row == ("succeeded", {"sum": 5, "key": "sum"}, 1, None, True)
    assert conn.execute(
        "SELECT count(*) FROM delayed_jobs WHERE id = %s", (job_id,)
    ).fetchone() == (0,)
    shown = djmaster(settings, url, "show", str(job_id))
    assert shown.returncode == 0, shown.stderr
    assert f"job {job_id}: succeeded" in shown.stdout
    assert 'result: {"key": "sum", "sum": 5}' in shown.stdout  # jsonb's key order
    as_json = json.loads(djmaster(settings, url, "show", str(job_id), "--json").stdout)
    assert as_json["live"] is None and as_json["finished"]["result"] == {"sum": 5, "key": "sum"}


def test_a_job_cancelled_before_it_starts_never_runs(life: Any) -> None:
    _run, conn, settings, url = life
    job_id = enqueue(conn, "add", "later", 1, 1, queue="life", delay=3600, module="lifecycle_jobs")
    result = djmaster(settings, url, "cancel", str(job_id))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"cancelled 1 job(s): {job_id}\n"
    assert finished(conn, job_id) == ("cancelled", None, 0, None, None)
    assert events(conn, "later") == []
    again = djmaster(settings, url, "cancel", str(job_id))
    assert again.returncode == CliExit.FAILED
    assert f"not live (finished, failed or unknown): {job_id}" in again.stderr


def test_a_running_job_asked_to_stop_stops_where_it_can_and_is_not_retried(life: Any) -> None:
    run, conn, settings, url = life
    job_id = enqueue(conn, "cooperative", "coop", 60.0, queue="life", module="lifecycle_jobs")

    def started() -> bool:
        return any(event == "start" for _, event, _ in events(conn, "coop"))

    wait_until(started, DEADLINE, "the cooperative job to start")
    result = djmaster(settings, url, "cancel", str(job_id))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"asked 1 running job(s) to stop: {job_id}\n"
    row = wait_until(lambda: finished(conn, job_id), DEADLINE, "the job to stop and be kept")
    outcome, result_value, attempts, last_error, _ = row
    assert (outcome, result_value, attempts) == ("cancelled", None, 1)
    assert "JobCancelled" in last_error
    assert [event for _, event, _ in events(conn, "coop")] == ["start", "stopping"]
    assert conn.execute(
        "SELECT count(*) FROM delayed_jobs WHERE id = %s", (job_id,)
    ).fetchone() == (0,)
    assert f"job {job_id}: cancel requested" in read(run.log_file)


def test_eight_concurrent_enqueuers_of_a_unique_job_make_one_run(life: Any) -> None:
    """Scheduled a moment ahead (a job keeps its key until a worker takes it), eight
    enqueuers racing with one unique key get one id; the job runs once."""
    import threading

    from circus_djmaster import enqueue as api_enqueue

    _run, conn, _settings, url = life
    barrier = threading.Barrier(8)
    ids: list[int] = []

    def enqueue_one() -> None:
        with psycopg.connect(url, autocommit=True) as own:
            barrier.wait(timeout=30)
            ids.append(
                api_enqueue(
                    "tests.support.lifecycle_jobs:add",
                    ["unique", 1, 1],
                    queue="life",
                    delay=1.0,
                    unique_key="report:1",
                    connection=own,
                )
            )

    threads = [threading.Thread(target=enqueue_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(ids) == 8 and len(set(ids)) == 1, ids
    wait_until(lambda: finished(conn, ids[0]), DEADLINE, "the unique job to run and be kept")
    assert [event for _, event, _ in events(conn, "unique")] == ["done"]
