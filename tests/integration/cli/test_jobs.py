"""`djmaster jobs`: list, retry and delete failed jobs from the shell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from circus_djmaster import enqueue
from tests.support.worker_run import worker_env, write_settings


def djmaster(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "circus_djmaster", *args],
        env=worker_env(database_url),
        capture_output=True,
        text=True,
        timeout=30,
    )


def make_failed(conn: psycopg.Connection[Any], database_url: str, n: int) -> list[int]:
    ids = [
        enqueue("tests.support.jobs:fail", [f"f{i}"], database_url=database_url) for i in range(n)
    ]
    conn.execute(
        "UPDATE delayed_jobs SET failed_at = now(), attempts = 25, last_error = 'RuntimeError: f'"
        " WHERE id = ANY(%s)",
        (ids,),
    )
    return ids


def test_list_shows_failed_jobs_with_their_error(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(tmp_path)
    failed = make_failed(conn, database_url, 2)
    live = enqueue("tests.support.jobs:record", ["x"], database_url=database_url)
    result = djmaster(database_url, "jobs", "--settings", str(settings), "list")
    assert result.returncode == 0, result.stderr
    assert f"#{failed[0]}" in result.stdout and f"#{failed[1]}" in result.stdout
    assert "RuntimeError: f" in result.stdout
    assert f"#{live} " not in result.stdout
    as_json = djmaster(database_url, "jobs", "--settings", str(settings), "list", "--json")
    assert sorted(row["id"] for row in json.loads(as_json.stdout)) == sorted(failed)


def test_retry_one_makes_it_due_again_with_attempts_reset(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(tmp_path)
    first, second = make_failed(conn, database_url, 2)
    result = djmaster(database_url, "jobs", "--settings", str(settings), "retry", str(first))
    assert result.returncode == 0, result.stderr
    assert f"retried 1 failed job(s): {first}" in result.stdout
    rows = dict(
        conn.execute(
            "SELECT id, (failed_at IS NULL AND attempts = 0 AND run_at <= now()) FROM delayed_jobs"
        ).fetchall()
    )
    assert rows == {first: True, second: False}


def test_retry_all_and_delete_all(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(tmp_path)
    make_failed(conn, database_url, 3)
    retried = djmaster(database_url, "jobs", "--settings", str(settings), "retry", "--all-failed")
    assert "retried 3 failed job(s)" in retried.stdout
    make_failed(conn, database_url, 2)
    deleted = djmaster(database_url, "jobs", "--settings", str(settings), "delete", "--all-failed")
    assert deleted.returncode == 0 and "deleted 2 failed job(s)" in deleted.stdout
    assert conn.execute("SELECT count(*) FROM delayed_jobs").fetchone() == (3,)


def test_delete_refuses_a_job_that_has_not_failed(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(tmp_path)
    live = enqueue("tests.support.jobs:record", ["x"], database_url=database_url)
    result = djmaster(database_url, "jobs", "--settings", str(settings), "delete", str(live))
    assert result.returncode == 1
    assert f"not failed or not found: {live}" in result.stderr
    assert conn.execute("SELECT count(*) FROM delayed_jobs").fetchone() == (1,)


# --- issue 15: recurring list, show, cancel ---------------------------------------------


def test_recurring_list_shows_settings_and_code_entries_with_their_next_runs(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(
        tmp_path,
        recurring=[
            {"name": "nightly", "callable": "m:f", "cron": "0 3 * * *", "timezone": "Asia/Tokyo"}
        ],
        recurring_modules=["tests.support.recurring_jobs"],
    )
    conn.execute(
        "INSERT INTO delayed_jobs_recurring_runs (name, due_at, job_id) "
        "VALUES ('nightly', '2030-01-01T18:00:00Z', 1)"
    )
    result = djmaster(database_url, "recurring", "list", "--settings", str(settings))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == 'nightly @primary: cron "0 3 * * *" (Asia/Tokyo) -> m:f (queue default)'
    assert lines[1] == "  last enqueued: 2030-01-01 18:00:00+00:00"
    assert all(line.endswith("T18:00:00+00:00") for line in lines[2:5])  # 03:00 in Tokyo
    assert "hourly_in_code @primary: every 3600s" in result.stdout
    report = json.loads(
        djmaster(database_url, "recurring", "list", "--settings", str(settings), "--json").stdout
    )
    assert [entry["name"] for entry in report] == ["nightly", "hourly_in_code"]
    assert report[1]["last_enqueued"] is None and len(report[1]["next"]) == 3


def test_show_of_an_unknown_job_fails_and_of_a_live_one_shows_its_state(
    tmp_path: Path, database_url: str
) -> None:
    settings = write_settings(tmp_path)
    job_id = enqueue("tests.support.jobs:record", ["x"], delay=600, database_url=database_url)
    shown = djmaster(database_url, "jobs", "--settings", str(settings), "show", str(job_id))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"job {job_id}: scheduled\n")
    missing = djmaster(database_url, "jobs", "--settings", str(settings), "show", "999999")
    assert missing.returncode == 1
    assert "job 999999: not found" in missing.stderr


def test_cancel_of_a_queue_keeps_jobs_for_the_keep_finished_of_the_group_serving_it(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = write_settings(
        tmp_path, workers=[{"queues": ["kept"], "keep_finished": "1d"}, {"queues": ["gone"]}]
    )
    kept = enqueue("tests.support.jobs:record", ["k"], queue="kept", database_url=database_url)
    gone = enqueue("tests.support.jobs:record", ["g"], queue="gone", database_url=database_url)
    for queue, job_id in (("kept", kept), ("gone", gone)):
        result = djmaster(
            database_url, "jobs", "--settings", str(settings), "cancel", "--queue", queue
        )
        assert result.stdout == f"cancelled 1 job(s): {job_id}\n", result.stderr
    rows = conn.execute("SELECT job_id, outcome FROM delayed_jobs_finished").fetchall()
    assert rows == [(kept, "cancelled")]
    assert conn.execute("SELECT count(*) FROM delayed_jobs").fetchone() == (0,)


def test_settings_may_follow_the_action_or_come_from_the_environment(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """`jobs list --settings X` failed with "--settings is required" (issue 14)."""
    settings = write_settings(tmp_path)
    (failed,) = make_failed(conn, database_url, 1)
    after = djmaster(database_url, "jobs", "list", "--settings", str(settings))
    assert after.returncode == 0, after.stderr
    assert f"#{failed}" in after.stdout
    result = subprocess.run(
        [sys.executable, "-m", "circus_djmaster", "jobs", "retry", str(failed)],
        env=worker_env(database_url, DJMASTER_SETTINGS=str(settings)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"retried 1 failed job(s): {failed}\n"
