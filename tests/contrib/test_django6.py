"""Django 6 (``django.tasks`` built in) on Python 3.12: the same project, for real.

The default interpreter of the suite is Python 3.11, where Django stops at 5.2 and the
tests use the django-tasks backport. This test makes a Python 3.12 venv with Django 6
and circus-djmaster's dependencies (pip, from the package index; about 10-15 s here),
then runs the project's migrate and a ``django.tasks`` task enqueued inside
``transaction.atomic()`` under a circusd, master and worker of that interpreter.

The interpreter: ``$DJMASTER_TEST_PYTHON312``, else ``python3.12`` on PATH, else a
pyenv 3.12. Not finding one fails the test: CI has one.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.contrib.conftest import REPO_ROOT, DjangoProject
from tests.support.waiting import wait_until

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Project = Callable[..., DjangoProject]
DEADLINE = 30.0


def find_python312() -> str:
    candidates = [
        os.environ.get("DJMASTER_TEST_PYTHON312"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12"))),
        shutil.which("python3.12"),  # may be a pyenv shim that refuses to run
    ]
    for candidate in filter(None, candidates):
        works = subprocess.run(
            [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if works.returncode == 0:
            return candidate
    pytest.fail("no Python 3.12 found (set DJMASTER_TEST_PYTHON312): Django 6 needs it")


def requirements() -> list[str]:
    """circus-djmaster's dependencies but the embedded server (the suite's serves), and
    Django 6."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = [dep for dep in project["dependencies"] if not dep.startswith("pixeltable")]
    return [*wanted, "django>=6,<7"]


@pytest.fixture(scope="module")
def django6_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("django6-venv")
    started = time.monotonic()
    subprocess.run([find_python312(), "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements()],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    print(f"Python 3.12 venv with Django 6 made in {time.monotonic() - started:.1f}s")
    return python


def test_django6_tasks_run_under_circusd_on_python312(
    make_project: Project, django6_python: Path
) -> None:
    project = make_project(python=django6_python)
    versions = project.shell("import sys, django; print(sys.version_info[:2], django.VERSION[0])")
    assert versions == "(3, 12) 6\n"
    project.manage("migrate")
    assert "No changes detected" in project.manage("makemigrations", "--check", "--dry-run").stdout
    project.write_djmaster_settings()
    run = project.start_circus()
    try:
        out = project.shell(
            """
            from django.db import transaction
            from django.tasks import task_backends
            from shop import tasks
            print("backend", type(task_backends["default"]).__name__)
            with transaction.atomic():
                print("committed", tasks.runtime.enqueue("committed").id)
            try:
                with transaction.atomic():
                    print("rolled", tasks.runtime.enqueue("rolled-back").id)
                    raise RuntimeError
            except RuntimeError:
                pass
            print("context", tasks.with_context.enqueue("context").id)
            """
        )
        assert "backend DjmasterBackend\n" in out
        ids = dict(re.findall(r"^(committed|rolled|context) (\d+)$", out, re.M))

        def keys() -> set[str]:
            with project.connect() as conn:
                return {row[0] for row in conn.execute("SELECT key FROM shop_event")}

        wait_until(lambda: len(keys()) >= 2, DEADLINE, "the committed tasks to run")
        assert project.manage("djmaster", "wait", "--timeout", "30").returncode == 0
        done = keys()
        assert done == {"committed: python 3.12 django " + versions_of(done), "context"}, done
        with project.connect() as conn:
            assert conn.execute(
                "SELECT count(*) FROM delayed_jobs WHERE id = %s", (int(ids["rolled"]),)
            ).fetchone() == (0,)
    except BaseException:
        print(run.logs())
        raise
    finally:
        run.close()


def versions_of(keys: set[str]) -> str:
    """The Django version the worker reported (6.x)."""
    for key in keys:
        found = re.match(r"committed: python 3\.12 django (6\.\S+)$", key)
        if found:
            return found.group(1)
    return "(not 6.x)"
