"""Running real ``djmaster worker`` processes from tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg

REPO_ROOT = Path(__file__).resolve().parents[2]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_settings(
    folder: Path,
    *,
    workers: list[Mapping[str, Any]] | None = None,
    databases: Mapping[str, str] | None = None,
    tables: Mapping[str, Mapping[str, Any]] | None = None,
    recurring: list[Mapping[str, Any]] | None = None,
    **top: Any,
) -> Path:
    """Write a djmaster.toml; databases default to primary = ${DJMASTER_DATABASE_URL};
    ``recurring``: ``[[recurring]]`` entries."""
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    lines.append("[databases]")
    for name, url in (databases or {"primary": "${DJMASTER_DATABASE_URL}"}).items():
        lines.append(f"{name} = {toml_value(url)}")
    for table, values in (tables or {}).items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    for worker in workers or [{}]:
        lines.append("[[workers]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in worker.items()]
    for entry in recurring or []:
        lines.append("[[recurring]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in entry.items()]
    path = folder / "djmaster.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def worker_env(database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["DJMASTER_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def start_worker(
    settings: Path,
    database_url: str,
    *,
    group: str = "worker0",
    database: str = "primary",
    **popen: Any,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "circus_djmaster",
            "worker",
            "--settings",
            str(settings),
            "--group",
            group,
            "--database",
            database,
        ],
        env=popen.pop("env", None) or worker_env(database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def events(conn: psycopg.Connection[Any], key: str | None = None) -> list[tuple[str, str, int]]:
    """(job_key, event, pid) rows of job_events, oldest first."""
    if key is None:
        rows = conn.execute("SELECT job_key, event, pid FROM job_events ORDER BY id").fetchall()
    else:
        rows = conn.execute(
            "SELECT job_key, event, pid FROM job_events WHERE job_key = %s ORDER BY id", (key,)
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def job_row(conn: psycopg.Connection[Any], job_id: int) -> dict[str, Any] | None:
    cur = conn.execute(
        "SELECT id, attempts, last_error, locked_by, locked_at, failed_at, "
        "extract(epoch FROM run_at - now())::float8 AS due_in FROM delayed_jobs WHERE id = %s",
        (job_id,),
    )
    row = cur.fetchone()
    if row is None:
        return None
    assert cur.description is not None
    return {col.name: value for col, value in zip(cur.description, row, strict=True)}
