"""Running real ``djmaster worker`` processes from tests, in either spawn mode.

The process, acceptance, hostile and fault tiers run in both spawn modes: their
``spawn`` fixture (tests/support/spawn.py) sets :data:`DEFAULT_SPAWN`, which
:func:`write_settings` writes into every worker group that does not choose one. With
``spawn = "fork"``, :func:`start_worker` starts the settings file's preloader once
(``python -m circus_djmaster preloader``) and runs a launcher, which stands for the
worker the preloader forks (its pid is the one the worker goes by, its stderr gets the
worker's); :func:`stop_preloaders` ends them and their workers after the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
import psycopg

from circus_djmaster.config.render import LAUNCHER
from circus_djmaster.config.settings import load_settings
from circus_djmaster.contracts import preloader as rendezvous
from circus_djmaster.contracts.preloader import launched_pid

from .waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
SPAWN_MODES = ("exec", "fork")
#: The spawn mode of groups whose settings do not say (the spawn fixture sets it).
DEFAULT_SPAWN = "exec"
#: Preloaders started by start_worker, by settings file.
_preloaders: dict[Path, subprocess.Popen[bytes]] = {}


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
        if "spawn" not in worker and DEFAULT_SPAWN != "exec":
            lines.append(f"spawn = {toml_value(DEFAULT_SPAWN)}")
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


def worker_argv(
    settings: Path, *, group: str = "worker0", database: str = "primary", wait: float = 30.0
) -> list[str]:
    """The command line circus.ini would give a worker of ``group`` (a launcher's when
    the group forks)."""
    where = ["--settings", str(settings), "--group", group, "--database", database]
    if _spawn_of(settings, group) == "fork":
        return [sys.executable, "-S", str(LAUNCHER), *where, "--wait", f"{wait:g}"]
    return [sys.executable, "-m", "circus_djmaster", "worker", *where]


def _spawn_of(settings: Path, group: str) -> str:
    try:
        return load_settings(settings).group(group).spawn
    except Exception:  # bad settings, unknown group: the worker's own exit tells
        return DEFAULT_SPAWN


def start_worker(
    settings: Path,
    database_url: str,
    *,
    group: str = "worker0",
    database: str = "primary",
    **popen: Any,
) -> subprocess.Popen[str]:
    """A worker process (exec mode), or a launcher of one (fork mode: the preloader of
    ``settings`` is started first if it does not run yet)."""
    env = popen.pop("env", None) or worker_env(database_url)
    argv = worker_argv(settings, group=group, database=database)
    if argv[1] == "-S":  # a launcher
        start_preloader(settings, env)
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def start_preloader(
    settings: Path, env: Mapping[str, str], *, timeout: float = 30.0
) -> subprocess.Popen[bytes]:
    """The preloader of ``settings`` (started once; it answers before this returns, or
    has exited: a launcher then reports why)."""
    settings = Path(os.path.abspath(settings))
    running = _preloaders.get(settings)
    if running is not None and running.poll() is None:
        return running
    output = settings.with_name("preloader.out").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "circus_djmaster", "preloader", "--settings", str(settings)],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
    )
    output.close()
    _preloaders[settings] = process
    wait_until(
        lambda: process.poll() is not None or preloader_answers(settings),
        timeout,
        "the preloader to listen",
    )
    return process


def preloaders() -> dict[Path, subprocess.Popen[bytes]]:
    """The preloaders start_worker started, by settings file (absolute path)."""
    return dict(_preloaders)


def preloader_answers(settings: Path) -> bool:
    """A preloader of ``settings`` accepts connections."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        try:
            probe.connect(rendezvous.current_link(rendezvous.folder_for(settings)))
        except OSError:
            return False
    return True


def stop_preloaders() -> None:
    """Kill the preloaders start_worker started, and their workers (a test's end)."""
    for process in _preloaders.values():
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.send_signal(signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.wait()
    _preloaders.clear()


def listed_pid(worker: int) -> int:
    """The pid circus (or a test) started for the process ``worker`` that runs jobs: the
    launcher standing for it (spawn = "fork"), or ``worker`` itself. ``locked_by`` and
    the master's lines name this pid."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if launched_pid(process.name()) == worker:
                return int(process.pid)
    return worker


def worker_pid(pid: int) -> int:
    """The pid of the process running the jobs of circus' (or a test's) process
    ``pid``: the worker a launcher stands for, or ``pid`` itself."""
    with contextlib.suppress(psutil.Error):
        forked = launched_pid(psutil.Process(pid).name())
        if forked is not None:
            return forked
    return pid


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
