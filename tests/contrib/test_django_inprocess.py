"""The contrib pieces in this process with Django configured once: the django.tasks
backend (flags, priority mapping, what it refuses, the row it writes), ``using=`` and
its errors, and the management command's settings file look-up.

Django is configured by :func:`django_setup` (session-wide, on a database of its own);
nothing else in the suite uses Django in-process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from circus_djmaster import enqueue
from circus_djmaster.exceptions import EnqueueError
from circus_djmaster.store import pgserver
from circus_djmaster.store.sync_executor import connect

Conn = psycopg.Connection[Any]


def django_database(url: str) -> dict[str, Any]:
    params = psycopg.conninfo.conninfo_to_dict(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", ""),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "OPTIONS": params,
    }


@pytest.fixture(scope="session")
def django_setup(pg_server_url: str, template_database: str) -> Iterator[str]:
    """Django configured in this process on a migrated database; its URL."""
    import importlib.util

    import django
    from django.conf import settings

    name = f"djmaster_test_inprocess_{os.getpid()}"
    pgserver.drop_database(pg_server_url, name)
    url = pgserver.create_database(pg_server_url, name, template=template_database)
    backport = importlib.util.find_spec("django.tasks") is None
    settings.configure(
        INSTALLED_APPS=[*(["django_tasks"] if backport else []), "circus_djmaster.contrib.django"],
        DATABASES={
            "default": django_database(url),
            "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        },
        TASKS={
            "default": {
                "BACKEND": "circus_djmaster.contrib.django.tasks.DjmasterBackend",
                "QUEUES": [],
                "OPTIONS": {"DATABASE": "default"},
            }
        },
        USE_TZ=True,
        LOGGING_CONFIG=None,
        DJMASTER=None,
    )
    django.setup()
    yield url
    from django.db import connections

    connections.close_all()
    pgserver.drop_database(pg_server_url, name)


@pytest.fixture
def url(django_setup: str) -> str:
    with connect(django_setup) as conn:
        conn.execute("TRUNCATE delayed_jobs")
    return django_setup


@pytest.fixture
def observer(url: str) -> Iterator[Conn]:
    with connect(url, application_name="observer") as conn:
        yield conn


def rows(observer: Conn) -> list[tuple[Any, ...]]:
    return observer.execute(
        "SELECT id, queue, priority, run_at, handler FROM delayed_jobs ORDER BY id"
    ).fetchall()


def backend() -> Any:
    from circus_djmaster.contrib.django.tasks import FRAMEWORK

    if FRAMEWORK == "django.tasks":
        from django.tasks import task_backends
    else:
        from django_tasks import task_backends
    return task_backends["default"]


# ------------------------------------------------------------------------- the backend


def test_the_backend_flags_tell_the_truth(url: str) -> None:
    from circus_djmaster.contrib.django.tasks import DjmasterBackend

    tasks_backend = backend()
    assert isinstance(tasks_backend, DjmasterBackend)
    assert tasks_backend.supports_defer is True  # run_after -> run_at (tested below)
    assert tasks_backend.supports_priority is True  # mapped (tested below)
    assert tasks_backend.supports_async_task is True  # run by the worker (test_django_circus)
    # Without KEEP_FINISHED a succeeded job is deleted at once: no result to report.
    assert tasks_backend.supports_get_result is False
    with pytest.raises(NotImplementedError):
        tasks_backend.get_result("1")
    from circus_djmaster.contrib.django.tasks import DjmasterBackend

    kept = DjmasterBackend("kept", {"QUEUES": [], "OPTIONS": {"KEEP_FINISHED": "1h"}})
    assert (kept.supports_get_result, kept.keep_finished) == (True, 3600.0)


def test_a_bad_keep_finished_is_refused_naming_the_option() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from circus_djmaster.contrib.django.tasks import DjmasterBackend

    with pytest.raises(ImproperlyConfigured, match=r"\['KEEP_FINISHED'\]: \"soon\" is not a"):
        DjmasterBackend("bad", {"QUEUES": [], "OPTIONS": {"KEEP_FINISHED": "soon"}})


def test_get_result_reports_a_task_from_enqueue_to_its_kept_result(
    url: str, observer: Conn
) -> None:
    """KEEP_FINISHED: the job is written with keep_finished; get_result reads it while it
    waits, while a worker holds it, and once finished from the kept row. The worker's
    part is played by the statements a worker runs (the circusd test runs real ones)."""
    import time

    from circus_djmaster.contrib.django.tasks import DjmasterBackend, run_task
    from circus_djmaster.store import statements
    from circus_djmaster.store.statements import FinishedJob, FinishOutcome, JobFilter
    from circus_djmaster.store.sync_executor import execute
    from circus_djmaster.worker.outcomes import result_json
    from tests.contrib.inprocess import tasks

    kept = DjmasterBackend("default", {"QUEUES": [], "OPTIONS": {"KEEP_FINISHED": "1h"}})
    enqueued = kept.enqueue(tasks.total, [2], {"b": 3})
    assert kept.get_result(enqueued.id).status == "READY"
    (job,) = execute(
        observer,
        statements.reserve_jobs(JobFilter(), locked_by="host:t pid:1", limit=1, lock_timeout=60),
    )
    assert job.keep_finished == 3600.0
    running = kept.get_result(enqueued.id)
    assert (running.status, running.worker_ids) == ("RUNNING", ["host:t pid:1"])
    handler = json.loads(job.handler)
    value = run_task.func(*handler["args"])  # what the worker's job thread calls
    assert value == {"total": 5}
    text, note = result_json(value)
    execute(
        observer,
        statements.finish_jobs(
            [FinishedJob(job.id, FinishOutcome.SUCCEEDED, 1, 3600.0, time.monotonic(), 0.1, text)],
            now=time.monotonic(),
        ),
    )
    done = kept.get_result(enqueued.id)
    assert (done.status, done.return_value, done.args, done.kwargs) == (
        "SUCCESSFUL",
        {"total": 5},
        [2],
        {"b": 3},
    )
    assert done.finished_at is not None and done.task.name == tasks.total.name
    failed_id = kept.enqueue(tasks.total, [1], {"b": 1}).id
    observer.execute(
        "UPDATE delayed_jobs SET failed_at = now(), last_error = 'ValueError: no' WHERE id = %s",
        (int(failed_id),),
    )
    failed = kept.get_result(failed_id)
    assert failed.status == "FAILED" and failed.errors[0].traceback == "ValueError: no"
    missing = "999999"
    from circus_djmaster.contrib.django.tasks import TaskResultDoesNotExist

    with pytest.raises(TaskResultDoesNotExist):
        kept.get_result(missing)
    assert note is None


def test_enqueue_writes_a_job_that_runs_the_task(url: str, observer: Conn) -> None:
    from tests.contrib.inprocess import tasks

    result = tasks.noop.enqueue(7)
    ((job_id, queue, priority, _, handler),) = rows(observer)
    assert result.id == str(job_id)
    assert (result.status, result.backend, result.args) == ("READY", "default", [7])
    assert (queue, priority) == ("default", 0)
    assert json.loads(handler) == {
        "callable": "circus_djmaster.contrib.django.tasks:run_task",
        "args": ["tests.contrib.inprocess.tasks.noop", [7], {}, "default"],
        "kwargs": {},
    }


def test_priorities_are_mapped_larger_first_to_smaller_first(url: str, observer: Conn) -> None:
    from circus_djmaster.contrib.django.tasks import djmaster_priority
    from tests.contrib.inprocess import tasks

    tasks.soonest.enqueue()
    tasks.noop.enqueue()
    tasks.latest.enqueue()
    tasks.noop.using(priority=-7).enqueue()
    assert [(row[1], row[2]) for row in rows(observer)] == [
        ("mail", -100),
        ("default", 0),
        ("default", 100),
        ("default", 7),
    ]
    # So a worker's order (smaller first) is Django's (larger first).
    assert sorted([100, 0, -100, -7], key=djmaster_priority) == [100, 0, -7, -100]


def test_run_after_is_the_jobs_run_at(url: str, observer: Conn) -> None:
    from tests.contrib.inprocess import tasks

    when = dt.datetime(2031, 5, 4, 3, 2, 1, tzinfo=dt.timezone.utc)
    tasks.noop.using(run_after=when).enqueue()
    assert rows(observer)[0][3] == when


def test_what_the_backend_cannot_do_is_an_invalid_task(url: str, observer: Conn) -> None:
    from django.test import override_settings

    from circus_djmaster.contrib.django.tasks import InvalidTask
    from tests.contrib.inprocess import tasks

    with pytest.raises(InvalidTask, match="priority must be a whole number"):
        tasks.noop.using(priority=101).enqueue()
    with pytest.raises(InvalidTask, match="aware"):
        tasks.noop.using(run_after=dt.datetime(2031, 1, 1)).enqueue()
    with override_settings(USE_TZ=False), pytest.raises(InvalidTask, match="timezone-aware"):
        # Django itself allows a naive run_after without USE_TZ; the database clock doesn't.
        tasks.noop.using(run_after=dt.datetime(2031, 1, 1)).enqueue()
    with pytest.raises(TypeError):
        tasks.noop.enqueue(object())  # not JSON
    assert rows(observer) == []


def test_unknown_options_and_bad_databases_are_reported(url: str) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from circus_djmaster.contrib.django.tasks import DjmasterBackend

    with pytest.raises(ImproperlyConfigured, match="unknown option"):
        DjmasterBackend("x", {"OPTIONS": {"DATABASE_URL": "postgresql://"}})
    ids = [m.id for m in DjmasterBackend("x", {"OPTIONS": {"DATABASE": "nope"}}).check()]
    assert ids == ["djmaster.E001"]
    ids = [m.id for m in DjmasterBackend("x", {"OPTIONS": {"DATABASE": "lite"}}).check()]
    assert ids == ["djmaster.E002"]
    assert list(backend().check()) == []


def test_an_enqueue_inside_atomic_commits_or_rolls_back_with_it(url: str, observer: Conn) -> None:
    from django.db import transaction

    from tests.contrib.inprocess import tasks

    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.noop.enqueue(1)
        raise RuntimeError("rolled back")
    assert rows(observer) == []
    with transaction.atomic():
        result = tasks.noop.enqueue(2)
        assert rows(observer) == []  # not before the commit
    assert [str(row[0]) for row in rows(observer)] == [result.id]


def test_aenqueue_from_async_code(url: str, observer: Conn) -> None:
    from tests.contrib.inprocess import tasks

    result = asyncio.run(tasks.noop.aenqueue(3))
    assert [str(row[0]) for row in rows(observer)] == [result.id]


# ---------------------------------------------------------------------------- using=


def test_using_enqueues_on_djangos_connection(url: str, observer: Conn) -> None:
    from django.db import transaction

    with transaction.atomic():
        job_id = enqueue("tests.support.jobs:record", ["k"], using="default")
        assert rows(observer) == []
    assert [row[0] for row in rows(observer)] == [job_id]


@pytest.mark.parametrize(
    ("alias", "message"),
    [
        (
            "nope",
            r"using='nope': no such database in settings.DATABASES \(it has 'default', 'lite'\)",
        ),
        ("lite", "using='lite': that database is sqlite; circus-djmaster needs PostgreSQL"),
        (3, "using= must be a database alias"),
    ],
)
def test_using_a_bad_alias_is_refused(url: str, alias: Any, message: str) -> None:
    with pytest.raises(EnqueueError, match=message):
        enqueue("tests.support.jobs:record", using=alias)


def test_using_a_django_connection_without_psycopg_3_is_refused(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import connections

    wrapper = connections["default"]
    wrapper.ensure_connection()

    class Psycopg2Connection:  # what Django holds when it runs on psycopg2
        pass

    monkeypatch.setattr(wrapper, "connection", Psycopg2Connection())
    with pytest.raises(EnqueueError, match="not psycopg 3"):
        enqueue("tests.support.jobs:record", using="default")


def test_using_and_another_target_together_are_refused(url: str) -> None:
    with pytest.raises(EnqueueError, match="not database_url and using"):
        enqueue("tests.support.jobs:record", database_url=url, using="default")


def test_djangos_connection_object_passed_as_connection_is_explained(url: str) -> None:
    from django.db import connection

    with pytest.raises(EnqueueError, match="using='<alias>'"):
        enqueue("tests.support.jobs:record", connection=connection)  # type: ignore[arg-type]


# ------------------------------------------------------------------- the command


def test_the_command_reads_settings_djmaster_then_the_variable(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.management.base import CommandError
    from django.test import override_settings

    from circus_djmaster.contrib.django.management.commands.djmaster import settings_file

    monkeypatch.delenv("DJMASTER_SETTINGS", raising=False)
    with pytest.raises(CommandError, match="set DJMASTER = BASE_DIR"):
        settings_file()
    from_env, from_settings = tmp_path / "env.toml", tmp_path / "settings.toml"
    from_env.write_text("")
    from_settings.write_text("")
    monkeypatch.setenv("DJMASTER_SETTINGS", str(from_env))
    assert settings_file() == from_env
    with override_settings(DJMASTER=from_settings):
        assert settings_file() == from_settings
    with (
        override_settings(DJMASTER=tmp_path / "missing.toml"),
        pytest.raises(CommandError, match=r"missing\.toml does not exist"),
    ):
        settings_file()
