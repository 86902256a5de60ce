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
