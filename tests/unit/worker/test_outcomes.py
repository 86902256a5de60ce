"""The rules of a job's outcome (docs/design.md §3), without a database."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from circus_djmaster import job
from circus_djmaster.api.jobs import DEFAULT_OPTIONS, JobOptions
from circus_djmaster.config.settings import WorkerGroup, parse_settings
from circus_djmaster.exceptions import HandlerError
from circus_djmaster.store.statements import ReservedJob
from circus_djmaster.worker.outcomes import (
    MAX_ERROR_LENGTH,
    Failure,
    JobOutcome,
    Resolved,
    failure_after_error,
    format_error,
    resolve_job,
    unresolvable_failure,
)
from tests.support import jobs as support_jobs

NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def group(**options: Any) -> WorkerGroup:
    data = {"databases": {"primary": "postgresql:///x"}, "workers": [{"queues": ["q"]} | options]}
    return parse_settings(data, Path("/tmp/x.toml")).workers[0]


def reserved(path: str, *, attempts: int = 0, args: list[Any] | None = None) -> ReservedJob:
    handler = json.dumps({"callable": path, "args": args or [], "kwargs": {}})
    return ReservedJob(7, 3, attempts, handler, "q", NOW)


def no_clock() -> dt.datetime:
    raise AssertionError("the database clock is only read for reschedule_at")


# Jobs of this module (importable as tests.unit.test_execution) with options that
# tests/support/jobs.py does not have.
@job(destroy_failed_jobs=False, max_attempts=50, max_run_time=60.0)
def kept_on_failure() -> None:
    pass


@job(max_attempts=5, reschedule_at=lambda now, attempts: now + dt.timedelta(hours=attempts))
def reschedule_datetime() -> None:
    pass


@job(max_attempts=5, reschedule_at=lambda now, attempts: dt.timedelta(minutes=attempts))
def reschedule_timedelta() -> None:
    pass


@job(max_attempts=5, reschedule_at=lambda now, attempts: 2.5 * attempts)
def reschedule_seconds() -> None:
    pass


@job(max_attempts=5, reschedule_at=lambda now, attempts: 30)
def reschedule_int_seconds() -> None:
    pass


def plain_function(a: int, b: int = 0) -> int:
    return a + b


THIS = __name__


# ------------------------------------------------------------------------ resolve_job


def test_resolve_job_of_a_plain_function_uses_the_groups_limits() -> None:
    worker_group = group(max_attempts=7, max_run_time="10m", destroy_failed_jobs=True)
    resolved = resolve_job(reserved(f"{THIS}:plain_function", args=[1, 2]), worker_group)
    assert resolved.function is plain_function
    assert resolved.options is DEFAULT_OPTIONS
    assert (resolved.max_attempts, resolved.max_run_time, resolved.destroy_failed_jobs) == (
        7,
        600.0,
        True,
    )


def test_resolve_job_builds_the_record_hooks_receive() -> None:
    resolved = resolve_job(reserved(f"{THIS}:plain_function", attempts=2, args=[1]), group())
    record = resolved.record
    assert (record.id, record.queue, record.priority, record.attempts) == (7, "q", 3, 2)
    assert record.handler.callable == f"{THIS}:plain_function"
    assert record.handler.args == (1,)


def test_resolve_job_uses_the_jobs_max_attempts_over_the_groups() -> None:
    resolved = resolve_job(reserved("tests.support.jobs:hooked"), group(max_attempts=25))
    assert resolved.max_attempts == 2
    resolved = resolve_job(reserved(f"{THIS}:kept_on_failure"), group(max_attempts=3))
    assert resolved.max_attempts == 50


def test_group_default_max_attempts_is_25() -> None:
    assert resolve_job(reserved(f"{THIS}:plain_function"), group()).max_attempts == 25


def test_resolve_job_lets_a_job_ask_for_less_run_time_than_its_group() -> None:
    resolved = resolve_job(reserved("tests.support.jobs:short_limit"), group(max_run_time="1h"))
    assert resolved.max_run_time == 1.0


def test_resolve_job_caps_a_jobs_run_time_at_its_groups() -> None:
    resolved = resolve_job(reserved(f"{THIS}:kept_on_failure"), group(max_run_time="20s"))
    assert resolved.max_run_time == 20.0


def test_resolve_job_default_max_run_time_is_four_hours() -> None:
    assert resolve_job(reserved(f"{THIS}:plain_function"), group()).max_run_time == 4 * 3600.0


@pytest.mark.parametrize(
    ("path", "group_default", "expected"),
    [
        ("tests.support.jobs:destroyed_on_failure", False, True),  # job says True
        (f"{THIS}:kept_on_failure", True, False),  # job says False
        (f"{THIS}:plain_function", True, True),  # job says nothing: the group's
        (f"{THIS}:plain_function", False, False),
    ],
)
def test_resolve_job_destroy_failed_jobs_job_override_else_group_default(
    path: str, group_default: bool, expected: bool
) -> None:
    resolved = resolve_job(reserved(path), group(destroy_failed_jobs=group_default))
    assert resolved.destroy_failed_jobs is expected


def test_resolve_job_of_a_bad_handler_raises_handler_error() -> None:
    job_row = ReservedJob(1, 0, 0, "not json", None, NOW)
    with pytest.raises(HandlerError, match="handler is not valid JSON"):
        resolve_job(job_row, group())


def test_resolve_job_of_a_missing_callable_raises_handler_error() -> None:
    with pytest.raises(HandlerError, match="has no attribute 'nope'"):
        resolve_job(reserved("tests.support.jobs:nope"), group())


# ---------------------------------------------------------------- failure_after_error


def resolved_for(path: str, *, attempts: int, **group_options: Any) -> Resolved:
    return resolve_job(reserved(path, attempts=attempts), group(**group_options))


def test_failure_below_max_attempts_is_a_retry_at_the_default_backoff() -> None:
    resolved = resolved_for(f"{THIS}:plain_function", attempts=23, max_attempts=25)
    assert failure_after_error(resolved, "boom", no_clock) == Failure(
        JobOutcome.RETRY, 24, "boom", None
    )


def test_failure_reaching_max_attempts_sets_failed() -> None:
    resolved = resolved_for(f"{THIS}:plain_function", attempts=24, max_attempts=25)
    assert failure_after_error(resolved, "boom", no_clock) == Failure(JobOutcome.FAILED, 25, "boom")


def test_failure_reaching_max_attempts_with_destroy_failed_jobs_destroys() -> None:
    resolved = resolved_for(
        f"{THIS}:plain_function", attempts=2, max_attempts=3, destroy_failed_jobs=True
    )
    assert failure_after_error(resolved, "boom", no_clock).outcome is JobOutcome.DESTROYED


def test_failure_with_max_attempts_one_fails_at_the_first_error() -> None:
    resolved = resolved_for(f"{THIS}:plain_function", attempts=0, max_attempts=1)
    assert failure_after_error(resolved, "boom", no_clock).outcome is JobOutcome.FAILED


def test_failure_uses_the_jobs_max_attempts() -> None:
    # hooked has max_attempts=2: the first failure retries, the second fails.
    first = resolved_for("tests.support.jobs:hooked", attempts=0, max_attempts=25)
    second = resolved_for("tests.support.jobs:hooked", attempts=1, max_attempts=25)
    assert failure_after_error(first, "e", no_clock).outcome is JobOutcome.RETRY
    assert failure_after_error(second, "e", no_clock).outcome is JobOutcome.FAILED


def test_failure_of_a_job_that_destroys_on_failure() -> None:
    resolved = resolved_for("tests.support.jobs:destroyed_on_failure", attempts=0)
    assert failure_after_error(resolved, "e", no_clock) == Failure(JobOutcome.DESTROYED, 1, "e")


def test_reschedule_at_returning_a_datetime_is_the_run_at() -> None:
    resolved = resolved_for(f"{THIS}:reschedule_datetime", attempts=1)
    failure = failure_after_error(resolved, "e", lambda: NOW)
    assert failure == Failure(JobOutcome.RETRY, 2, "e", NOW + dt.timedelta(hours=2))


def test_reschedule_at_returning_a_timedelta_is_added_to_the_database_now() -> None:
    resolved = resolved_for(f"{THIS}:reschedule_timedelta", attempts=2)
    failure = failure_after_error(resolved, "e", lambda: NOW)
    assert failure.run_at == NOW + dt.timedelta(minutes=3)


@pytest.mark.parametrize(
    ("name", "attempts", "seconds"),
    [
        ("reschedule_seconds", 0, 2.5),
        ("reschedule_seconds", 3, 10.0),
        ("reschedule_int_seconds", 0, 30.0),
    ],
)
def test_reschedule_at_returning_seconds_is_added_to_the_database_now(
    name: str, attempts: int, seconds: float
) -> None:
    resolved = resolved_for(f"{THIS}:{name}", attempts=attempts)
    failure = failure_after_error(resolved, "e", lambda: NOW)
    assert failure.run_at == NOW + dt.timedelta(seconds=seconds)


def test_reschedule_at_of_the_support_job() -> None:
    resolved = resolved_for("tests.support.jobs:rescheduled", attempts=0)
    assert failure_after_error(resolved, "e", lambda: NOW).run_at == NOW + dt.timedelta(seconds=100)


def test_reschedule_at_is_not_used_when_attempts_are_exhausted() -> None:
    # rescheduled has max_attempts=3.
    resolved = resolved_for("tests.support.jobs:rescheduled", attempts=2)
    assert failure_after_error(resolved, "e", no_clock) == Failure(JobOutcome.FAILED, 3, "e")


def test_reschedule_at_receives_the_new_attempts_count() -> None:
    seen: list[tuple[dt.datetime, int]] = []
    resolved = resolved_for(f"{THIS}:plain_function", attempts=4)
    options = JobOptions(reschedule_at=lambda now, attempts: seen.append((now, attempts)) or 1)
    resolved = Resolved(
        resolved.function, resolved.record, options, 25, resolved.max_run_time, False
    )
    failure_after_error(resolved, "e", lambda: NOW)
    assert seen == [(NOW, 5)]


# ----------------------------------------------------------------------- format_error


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_format_error_of_an_exception_gives_type_message_and_traceback() -> None:
    text = format_error(_raised(ValueError("bad value")))
    first, rest = text.split("\n", 1)
    assert first == "ValueError: bad value"
    assert rest.startswith("Traceback (most recent call last):")
    assert "in _raised" in rest


def test_format_error_without_traceback_is_one_line() -> None:
    assert format_error(_raised(KeyError("k")), with_traceback=False) == "KeyError: 'k'"


def test_format_error_of_an_exception_never_raised_has_no_traceback() -> None:
    assert format_error(RuntimeError("x")) == "RuntimeError: x"


def test_format_error_of_sys_exit_says_the_job_called_it() -> None:
    text = format_error(_raised(SystemExit(3)))
    assert text.splitlines()[0] == "job called sys.exit(3)"


def test_format_error_of_sys_exit_with_a_message() -> None:
    assert format_error(SystemExit("bye")) == "job called sys.exit('bye')"


def test_format_error_truncates_long_errors() -> None:
    text = format_error(ValueError("x" * (2 * MAX_ERROR_LENGTH)))
    assert len(text) <= MAX_ERROR_LENGTH
    assert text.startswith("ValueError: xxx")
    assert text.endswith("\n... (truncated)")


def test_format_error_keeps_an_error_at_the_limit_whole() -> None:
    message = "x" * (MAX_ERROR_LENGTH - len("ValueError: "))
    text = format_error(ValueError(message))
    assert text == f"ValueError: {message}"


# --------------------------------------------------------------- unresolvable_failure


def test_unresolvable_failure_fails_for_good_whatever_attempts_remain() -> None:
    failure = unresolvable_failure(
        reserved("x:y", attempts=1), HandlerError("no module"), group(max_attempts=25)
    )
    assert failure == Failure(JobOutcome.FAILED, 2, "HandlerError: no module")


def test_unresolvable_failure_is_destroyed_with_the_groups_destroy_failed_jobs() -> None:
    failure = unresolvable_failure(
        reserved("x:y"), HandlerError("bad"), group(destroy_failed_jobs=True)
    )
    assert failure.outcome is JobOutcome.DESTROYED


def test_unresolvable_failure_text_of_a_real_resolve_error() -> None:
    job_row = reserved("tests.support.jobs:not_callable")
    with pytest.raises(HandlerError) as info:
        resolve_job(job_row, group())
    failure = unresolvable_failure(job_row, info.value, group())
    assert failure.last_error == (
        "HandlerError: tests.support.jobs:not_callable is not callable (it is a int)"
    )


def test_support_jobs_module_is_the_one_resolved() -> None:
    resolved = resolve_job(reserved("tests.support.jobs:record"), group())
    assert resolved.function is support_jobs.record
    assert sys.modules["tests.support.jobs"] is support_jobs
