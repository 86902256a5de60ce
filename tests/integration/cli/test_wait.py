"""`djmaster wait`: it waits for a failed job's retry too, and takes durations."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from circus_djmaster import enqueue
from tests.support.worker_run import worker_env, write_settings


def djmaster(
    database_url: str, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "circus_djmaster", *args],
        env=worker_env(database_url, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.monotonic() - started


def test_wait_does_not_say_no_job_left_while_a_retry_is_scheduled(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """It said "no job left" while a failed job's retry was due seconds later (issue 14)."""
    settings = write_settings(tmp_path)
    job_id = enqueue("tests.support.jobs:record", ["x"], database_url=database_url)
    # What a worker writes after a failed run: an attempt charged, due again later.
    conn.execute(
        "UPDATE delayed_jobs SET attempts = 1, last_error = 'ValueError: x', "
        "run_at = now() + interval '1 hour' WHERE id = %s",
        (job_id,),
    )
    result, took = djmaster(database_url, "wait", "--settings", str(settings), "--timeout", "1s")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 job(s) still to do after 1s" in result.stderr
    assert took < 30
    # Done once the retry ran: the row is gone.
    conn.execute("DELETE FROM delayed_jobs WHERE id = %s", (job_id,))
    result, _ = djmaster(database_url, "wait", "--timeout", "5m", DJMASTER_SETTINGS=str(settings))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no job left\n"


def test_a_job_scheduled_later_counts_only_with_scheduled(
    tmp_path: Path, database_url: str
) -> None:
    settings = write_settings(tmp_path)
    enqueue("tests.support.jobs:record", ["x"], delay=3600, database_url=database_url)
    result, _ = djmaster(database_url, "wait", "--settings", str(settings), "--timeout", "1m")
    assert result.returncode == 0, result.stderr
    result, _ = djmaster(
        database_url, "wait", "--scheduled", "--timeout", "500ms", "--settings", str(settings)
    )
    assert result.returncode == 1
    assert "1 job(s) still to do after 0.5s" in result.stderr
