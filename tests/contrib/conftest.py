"""A real Django project (tests/contrib/djproject) on a real PostgreSQL, run by tests.

:class:`DjangoProject` is a copy of the project in a temporary folder, on a database of
its own (created empty: the project's ``manage.py migrate`` makes every table), with
``manage.py`` run as a subprocess of the interpreter given (this one by default; the
Django 6 test passes a Python 3.12 one), and circusd started on a djmaster.toml written
into the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from circus_djmaster.store import pgserver
from tests.support.circus_run import CircusRun, circus_table, start_circus
from tests.support.worker_run import write_settings

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
PROJECT = HERE / "djproject"
MANAGE_TIMEOUT = 120


@dataclass
class DjangoProject:
    folder: Path
    database_url: str
    python: Path = field(default_factory=lambda: Path(sys.executable))
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH"}}
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["DJMASTER_DATABASE_URL"] = self.database_url
        env["DJANGO_SETTINGS_MODULE"] = "djproject.settings"
        env.update(self.extra_env)
        return env

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``python manage.py ARGS`` in the project; fails the test on a non-zero exit
        unless ``check`` is False."""
        result = subprocess.run(
            [str(self.python), "manage.py", *args],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=MANAGE_TIMEOUT,
        )
        if check:
            assert result.returncode == 0, (
                f"manage.py {' '.join(args)} exited {result.returncode}\n"
                f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
            )
        return result

    def shell(self, code: str) -> str:
        """Run ``code`` with Django set up (``manage.py shell -c``); its stdout."""
        return self.manage("shell", "-v", "0", "-c", textwrap.dedent(code)).stdout

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, autocommit=True)

    def write_djmaster_settings(self, **overrides: Any) -> Path:
        """djmaster.toml in the project (settings.DJMASTER): one group for the tasks'
        queues, the Django preload, free circus ports, logs in the project's log/."""
        logs = self.folder / "log"
        logs.mkdir(exist_ok=True)
        workers = overrides.pop(
            "workers",
            [
                {
                    "name": "tasks",
                    "queues": ["default", "tasks"],
                    "max_processes": 1,
                    "max_threads": 2,
                    "max_attempts": 1,
                    "idle_timeout": 1.0,
                }
            ],
        )
        top: dict[str, Any] = {
            "app": "circus_djmaster.contrib.django.worker",
            "log_file": str(logs / "djmaster.log"),
            "pid_file": str(logs / "master.pid"),
            "monitor_interval": 1.0,
            "polling_interval": 30.0,
        }
        top.update(overrides)
        return write_settings(
            self.folder, workers=workers, tables={"circus": circus_table(logs)}, **top
        )

    def start_circus(self) -> CircusRun:
        settings = self.folder / "djmaster.toml"
        other = None if self.python == Path(sys.executable) else self.python
        run = start_circus(settings, self.env, python=other)
        try:
            run.wait_for_master()
        except BaseException:
            run.close()
            raise
        return run


@pytest.fixture
def make_project(tmp_path: Path, pg_server_url: str) -> Iterator[Callable[..., DjangoProject]]:
    """A factory of project copies, each on a fresh, empty database (dropped after)."""
    databases: list[str] = []

    def make(name: str = "project", **kwargs: Any) -> DjangoProject:
        dbname = f"djmaster_test_django_{os.getpid()}_{len(databases)}_{tmp_path.name[-12:]}"
        dbname = "".join(c if c.isalnum() or c == "_" else "_" for c in dbname).lower()
        databases.append(dbname)
        pgserver.drop_database(pg_server_url, dbname)
        url = pgserver.create_database(pg_server_url, dbname, template="template0")
        folder = tmp_path / name
        shutil.copytree(
            PROJECT,
            folder,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "log", "djmaster.toml"),
        )
        return DjangoProject(folder, url, **kwargs)

    yield make
    for dbname in databases:
        pgserver.drop_database(pg_server_url, dbname)
