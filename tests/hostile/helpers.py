"""Shared pieces of the hostile tests (tests/hostile)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import worker_run
from tests.support.circus_run import REPO_ROOT, CircusRun
from tests.support.waiting import wait_until
from tests.support.worker_run import job_row

DEADLINE = 30.0


def minimal_env(urls: Mapping[str, str], **extra: str) -> dict[str, str]:
    """circusd's environment as a service manager gives it: a few variables only.

    systemd starts services with little more than PATH and LANG, so worker processes
    have a small argv+environ area, and that is all setproctitle can write a title into.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.update(urls)
    env.update(extra)
    return env


def toml_string(value: str) -> str:
    """A TOML basic string for any text (json.dumps would write astral characters as
    surrogate pairs, which TOML refuses)."""
    return json.dumps(value, ensure_ascii=False)


def add_group(settings: Path, **values: Any) -> None:
    """Append one more [[workers]] table (write_settings puts them last), in the spawn
    mode of the test (worker_run.DEFAULT_SPAWN) unless ``spawn`` is given."""
    values.setdefault("spawn", worker_run.DEFAULT_SPAWN)
    lines = ["[[workers]]"]
    for key, value in values.items():
        if isinstance(value, str):
            text = toml_string(value)
        elif isinstance(value, (list, tuple)):
            text = "[" + ", ".join(toml_string(item) for item in value) + "]"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    with settings.open("a", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")


def insert_job(
    conn: psycopg.Connection[Any],
    callable_path: str,
    *args: Any,
    queue: str | None,
    priority: int = 0,
) -> int:
    """Enqueue with plain SQL, as any other program would."""
    handler = json.dumps({"callable": callable_path, "args": list(args), "kwargs": {}})
    row = conn.execute(
        "INSERT INTO delayed_jobs (handler, queue, priority) VALUES (%s, %s, %s) RETURNING id",
        (handler, queue, priority),
    ).fetchone()
    assert row is not None
    return int(row[0])


def failed_for_good(conn: psycopg.Connection[Any], job_id: int) -> dict[str, Any] | None:
    row = job_row(conn, job_id)
    return row if row is not None and row["failed_at"] is not None else None


def wait_failed(conn: psycopg.Connection[Any], job_id: int, what: str) -> dict[str, Any]:
    return wait_until(lambda: failed_for_good(conn, job_id), DEADLINE, what)


def done_keys(conn: psycopg.Connection[Any], keys: list[str]) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT job_key FROM job_events WHERE event = 'done' AND job_key = ANY(%s)",
        (keys,),
    ).fetchall()
    return {row[0] for row in rows}


def start_pids(conn: psycopg.Connection[Any], key: str) -> list[int]:
    rows = conn.execute(
        "SELECT pid FROM job_events WHERE job_key = %s AND event = 'start' ORDER BY id", (key,)
    ).fetchall()
    return [int(row[0]) for row in rows]


def pid_file_pid(run: CircusRun) -> int | None:
    path = run.settings.pid_file
    if path is None or not path.exists():
        return None
    text = path.read_text(encoding="ascii").strip()
    return int(text) if text else None


PYTHON = sys.executable


def call_failed(request: pytest.FixtureRequest) -> bool:
    """True once the test's call phase failed (see conftest.pytest_runtest_makereport)."""
    report = getattr(request.node, "report_call", None)
    return bool(report is not None and report.failed)
