"""The enqueue API without a database: the decorator, options and argument errors."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from circus_djmaster import Job, JobCall, JobOptions, enqueue, enqueue_many, job
from circus_djmaster.api import jobs as jobs_module
from circus_djmaster.api.context import DATABASE_URL_ENV
from circus_djmaster.api.jobs import DEFAULT_OPTIONS, options_of
from circus_djmaster.exceptions import EnqueueError, HandlerError

AWARE = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


@job
def bare(a: int, b: int = 10) -> int:
    """Adds."""
    return a + b


def on_error(record: Any, exc: BaseException) -> None:
    pass


def every_minute(now: dt.datetime, attempts: int) -> float:
    return 60.0


@job(
    queue="mail",
    priority=5,
    max_attempts=3,
    max_run_time=30.0,
    destroy_failed_jobs=True,
    reschedule_at=every_minute,
    error=on_error,
)
def configured(to: str) -> str:
    return f"sent to {to}"


def plain(x: int) -> int:
    return x


@pytest.fixture
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to connect fails the test: errors must come before database access."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("enqueue touched the database")

    monkeypatch.setattr(jobs_module.psycopg, "connect", refuse)
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://nobody@127.0.0.1:1/none")


# ------------------------------------------------------------------------ decorator


def test_bare_decorator_makes_a_job_with_default_options() -> None:
    assert isinstance(bare, Job)
    assert bare.options == JobOptions()
    assert bare.path == f"{__name__}:bare"


def test_decorator_keeps_the_functions_identity() -> None:
    assert bare.__name__ == "bare"
    assert bare.__qualname__ == "bare"
    assert bare.__module__ == __name__
    assert bare.__doc__ == "Adds."
    assert repr(bare) == f"<Job {__name__}:bare>"


def test_decorator_with_options_records_them() -> None:
    assert isinstance(configured, Job)
    assert configured.options == JobOptions(
        queue="mail",
        priority=5,
        max_attempts=3,
        max_run_time=30.0,
        destroy_failed_jobs=True,
        reschedule_at=every_minute,
        error=on_error,
    )


def test_calling_a_job_runs_the_function_here_and_now() -> None:
    assert bare(1) == 11
    assert bare(1, b=2) == 3
    assert configured("bob") == "sent to bob"


def test_decorating_a_local_function_is_refused_at_once() -> None:
    with pytest.raises(HandlerError, match="is not a module-level function"):

        @job
        def local() -> None:
            pass


def test_decorator_refuses_invalid_options_at_once() -> None:
    with pytest.raises(ValueError, match="max_attempts must be at least 1, got 0"):
        job(max_attempts=0)


def test_options_of_a_plain_function_are_the_defaults() -> None:
    assert options_of(plain) is DEFAULT_OPTIONS
    assert options_of(configured) is configured.options


# ------------------------------------------------------------------------ JobOptions


def test_job_options_defaults_leave_limits_to_the_group() -> None:
    options = JobOptions()
    assert (options.queue, options.priority) == ("default", 0)
    assert options.max_attempts is None
    assert options.max_run_time is None
    assert options.destroy_failed_jobs is None


@pytest.mark.parametrize("value", [0, -1])
def test_job_options_refuse_max_attempts_below_one(value: int) -> None:
    with pytest.raises(ValueError) as info:
        JobOptions(max_attempts=value)
    assert str(info.value) == f"max_attempts must be at least 1, got {value}"


@pytest.mark.parametrize("value", [0, -0.5])
def test_job_options_refuse_a_max_run_time_that_is_not_positive(value: float) -> None:
    with pytest.raises(ValueError) as info:
        JobOptions(max_run_time=value)
    assert str(info.value) == f"max_run_time must be positive, got {value}"


def test_job_options_accept_the_smallest_valid_limits() -> None:
    options = JobOptions(max_attempts=1, max_run_time=0.001)
    assert (options.max_attempts, options.max_run_time) == (1, 0.001)


# ------------------------------------------------------------------------ Job.call


def test_call_carries_the_jobs_defaults() -> None:
    assert configured.call("ann") == JobCall(
        f"{__name__}:configured", ("ann",), {}, queue="mail", priority=5
    )


def test_call_of_a_job_without_options() -> None:
    call = bare.call(1, b=2)
    assert call == JobCall(f"{__name__}:bare", (1,), {"b": 2}, queue="default", priority=0)
    assert (call.run_at, call.delay) == (None, None)


def test_call_handler_is_the_handler_json() -> None:
    assert json.loads(bare.call(1, b=2).handler()) == {
        "callable": f"{__name__}:bare",
        "args": [1],
        "kwargs": {"b": 2},
    }


# ------------------------------------------------------- enqueue errors, no database


@pytest.mark.usefixtures("no_database")
def test_enqueue_refuses_run_at_and_delay_together() -> None:
    with pytest.raises(EnqueueError) as info:
        enqueue(bare, [1], run_at=AWARE, delay=5)
    assert str(info.value) == "give run_at or delay, not both"


@pytest.mark.usefixtures("no_database")
def test_enqueue_refuses_a_naive_run_at() -> None:
    with pytest.raises(EnqueueError) as info:
        enqueue(bare, [1], run_at=dt.datetime(2030, 1, 1, 12, 0))
    assert str(info.value) == ("run_at must be timezone-aware (the database compares with now())")


@pytest.mark.usefixtures("no_database")
@pytest.mark.parametrize(
    ("args", "kind"),
    [("abc", "str"), (b"ab", "bytes"), ({"a": 1}, "dict"), (5, "int"), ({1, 2}, "set")],
)
def test_enqueue_refuses_args_that_are_not_a_list_or_tuple(args: Any, kind: str) -> None:
    with pytest.raises(EnqueueError) as info:
        enqueue(bare, args)
    assert str(info.value) == f"args must be a list or tuple, got {kind}"


@pytest.mark.usefixtures("no_database")
@pytest.mark.parametrize("target", [42, None, object()])
def test_enqueue_refuses_a_target_that_is_not_a_job_function_or_path(target: Any) -> None:
    with pytest.raises(EnqueueError) as info:
        enqueue(target)
    assert str(info.value) == f"cannot enqueue {target!r}: not a job, function or path"


@pytest.mark.usefixtures("no_database")
def test_enqueue_refuses_a_lambda() -> None:
    with pytest.raises(HandlerError, match="is not a module-level function"):
        enqueue(lambda: None)


@pytest.mark.usefixtures("no_database")
def test_enqueue_refuses_an_ill_formed_path() -> None:
    with pytest.raises(HandlerError, match=r'"callable" must look like "module\.path:function"'):
        enqueue("tests.support.jobs.record")


@pytest.mark.usefixtures("no_database")
def test_enqueue_refuses_arguments_that_are_not_json() -> None:
    with pytest.raises(HandlerError, match="are not JSON-serialisable"):
        enqueue(plain, [dt.date(2030, 1, 1)])


def test_enqueue_without_any_database_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    with pytest.raises(EnqueueError) as info:
        enqueue(bare, [1])
    assert str(info.value) == (
        "no database to enqueue into: pass connection= or database_url=, "
        "or set DJMASTER_DATABASE_URL"
    )


def test_delay_without_any_database_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    with pytest.raises(EnqueueError, match=DATABASE_URL_ENV):
        bare.delay(1)


def test_enqueue_with_an_empty_variable_is_no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "")
    with pytest.raises(EnqueueError, match=DATABASE_URL_ENV):
        enqueue(bare, [1])


@pytest.mark.usefixtures("no_database")
def test_enqueue_many_of_nothing_returns_nothing_without_a_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV)
    assert enqueue_many([]) == []
    assert enqueue_many(iter(())) == []


@pytest.mark.usefixtures("no_database")
def test_enqueue_many_checks_every_call_before_the_database() -> None:
    calls = [bare.call(1), JobCall(bare.path, (2,), run_at=dt.datetime(2030, 1, 1))]
    with pytest.raises(EnqueueError, match="run_at must be timezone-aware"):
        enqueue_many(calls)


@pytest.mark.usefixtures("no_database")
def test_enqueue_many_refuses_run_at_and_delay_together() -> None:
    with pytest.raises(EnqueueError, match="give run_at or delay, not both"):
        enqueue_many([JobCall(bare.path, run_at=AWARE, delay=1.0)])


@pytest.mark.usefixtures("no_database")
def test_enqueue_many_refuses_arguments_that_are_not_json() -> None:
    with pytest.raises(HandlerError, match="are not JSON-serialisable"):
        enqueue_many([JobCall(bare.path, (object(),))])


def test_the_enqueue_api_and_the_worker_import_neither_django_nor_psycopg_pool() -> None:
    """The worker's start-up stays lean: Django and psycopg_pool load only when used."""
    import subprocess
    import sys

    code = (
        "import sys, circus_djmaster.api.jobs, circus_djmaster.worker.process;"
        "import circus_djmaster.worker.outcomes;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'django', 'psycopg_pool'}"
        " or m.startswith('circus_djmaster.contrib')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
