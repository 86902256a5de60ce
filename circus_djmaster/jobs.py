"""The enqueue API: the ``@job`` decorator, ``enqueue()`` and ``enqueue_many()``.

A job is a module-level function; its handler names it as ``module:qualname``. Options
set on the decorator (max_attempts, max_run_time, destroy_failed_jobs, reschedule_at,
hooks) are read by the worker when it resolves the handler; queue and priority are
stored in the row and can be overridden per enqueue.

Enqueue runs on the caller's psycopg connection when one is given (the job then commits
or rolls back with the caller's transaction), otherwise on a short-lived connection to
``database_url``; without either, inside a worker process, to the database the worker
serves (so a job's follow-ups go where the job came from, job_context.py), elsewhere to
``$DJMASTER_DATABASE_URL``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Generic, ParamSpec, TypeVar

import psycopg

from . import handler as handler_format
from .exceptions import EnqueueError
from .job_context import default_database_url
from .queries import query

P = ParamSpec("P")
R = TypeVar("R")

DATABASE_URL_ENV = "DJMASTER_DATABASE_URL"
# The queue of jobs enqueued without one (delayed_job's usual default_queue_name): a
# worker group must name its queues or serve them all, and a NULL queue matches no name.
DEFAULT_QUEUE = "default"

Delay = float | dt.timedelta


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """What hooks receive: the job as the worker sees it."""

    id: int
    queue: str | None
    priority: int
    attempts: int
    handler: handler_format.Handler


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """Per-job settings; ``None`` means "the worker group's setting"."""

    queue: str = DEFAULT_QUEUE
    priority: int = 0
    max_attempts: int | None = None
    max_run_time: float | None = None
    destroy_failed_jobs: bool | None = None
    # reschedule_at(db_now, attempts) -> datetime | timedelta | seconds: when to retry.
    reschedule_at: Callable[[dt.datetime, int], dt.datetime | Delay] | None = None
    before: Callable[[JobRecord], object] | None = None
    after: Callable[[JobRecord], object] | None = None
    success: Callable[[JobRecord], object] | None = None
    error: Callable[[JobRecord, BaseException], object] | None = None
    failure: Callable[[JobRecord], object] | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.max_run_time is not None and self.max_run_time <= 0:
            raise ValueError(f"max_run_time must be positive, got {self.max_run_time}")


DEFAULT_OPTIONS = JobOptions()


@dataclasses.dataclass(frozen=True)
class JobCall:
    """One job to enqueue: a callable path, its arguments and where/when to run it."""

    path: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    run_at: dt.datetime | None = None
    delay: Delay | None = None

    def handler(self) -> str:
        return handler_format.encode(self.path, self.args, self.kwargs)


class Job(Generic[P, R]):
    """A function made into a job by :func:`job`. Calling it runs it here and now."""

    def __init__(self, func: Callable[P, R], options: JobOptions) -> None:
        self.func = func
        self.options = options
        self.path = handler_format.callable_path(func)
        self.__name__ = getattr(func, "__name__", self.path)
        self.__qualname__ = getattr(func, "__qualname__", self.path)
        self.__module__ = getattr(func, "__module__", "")
        self.__doc__ = func.__doc__

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Job {self.path}>"

    def call(
        self,
        *args: Any,
        **kwargs: Any,
    ) -> JobCall:
        """A :class:`JobCall` with this job's defaults, for :func:`enqueue_many`."""
        return JobCall(
            self.path, args, kwargs, queue=self.options.queue, priority=self.options.priority
        )

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue with the job's defaults on the default database (the running job's
        inside a worker, else ``$DJMASTER_DATABASE_URL``); return its id."""
        return enqueue(self, args, kwargs)

    def enqueue(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> int:
        """Enqueue with overrides (see :func:`enqueue` for ``options``)."""
        return enqueue(self, args, kwargs, **options)


def job(
    func: Callable[P, R] | None = None,
    *,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    max_attempts: int | None = None,
    max_run_time: float | None = None,
    destroy_failed_jobs: bool | None = None,
    reschedule_at: Callable[[dt.datetime, int], dt.datetime | Delay] | None = None,
    before: Callable[[JobRecord], object] | None = None,
    after: Callable[[JobRecord], object] | None = None,
    success: Callable[[JobRecord], object] | None = None,
    error: Callable[[JobRecord, BaseException], object] | None = None,
    failure: Callable[[JobRecord], object] | None = None,
) -> Any:
    """Make a module-level function a job: ``@job`` or ``@job(queue="mail", ...)``."""
    options = JobOptions(
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        max_run_time=max_run_time,
        destroy_failed_jobs=destroy_failed_jobs,
        reschedule_at=reschedule_at,
        before=before,
        after=after,
        success=success,
        error=error,
        failure=failure,
    )

    def wrap(f: Callable[P, R]) -> Job[P, R]:
        return Job(f, options)

    return wrap(func) if func is not None else wrap


def options_of(target: object) -> JobOptions:
    """The options of a resolved handler target (plain functions get the defaults)."""
    return target.options if isinstance(target, Job) else DEFAULT_OPTIONS


def enqueue(
    target: Job[Any, Any] | Callable[..., Any] | str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    run_at: dt.datetime | None = None,
    delay: Delay | None = None,
    priority: int | None = None,
    queue: str | None = None,
    connection: psycopg.Connection[Any] | None = None,
    database_url: str | None = None,
) -> int:
    """Enqueue one job and return its id.

    ``target`` is a :func:`job`, a module-level function or a ``"module:function"`` path.
    ``run_at`` (an aware datetime) or ``delay`` (seconds or timedelta from the database's
    now()) schedule it; by default it is due at once. With ``connection`` the insert joins
    the caller's transaction.
    """
    call = _make_call(target, args, kwargs, run_at, delay, priority, queue)
    params = {
        "handler": call.handler(),
        "queue": call.queue,
        "priority": call.priority,
        "run_at": call.run_at,
        "delay": _seconds(call.delay),
    }
    with _connection(connection, database_url) as conn:
        row = conn.execute(query("insert_job"), params).fetchone()
    assert row is not None
    return int(row[0])


def enqueue_many(
    calls: Iterable[JobCall],
    *,
    connection: psycopg.Connection[Any] | None = None,
    database_url: str | None = None,
) -> list[int]:
    """Enqueue many jobs in one statement (one round trip, one NOTIFY); return their ids."""
    calls = list(calls)
    if not calls:
        return []
    for call in calls:
        _check_schedule(call.run_at, call.delay)
    params = {
        "handlers": [call.handler() for call in calls],
        "queues": [call.queue for call in calls],
        "priorities": [call.priority for call in calls],
        "run_ats": [call.run_at for call in calls],
        "delays": [_seconds(call.delay) for call in calls],
    }
    with _connection(connection, database_url) as conn:
        rows = conn.execute(query("insert_jobs"), params).fetchall()
    return [int(row[0]) for row in rows]


def _make_call(
    target: Job[Any, Any] | Callable[..., Any] | str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    run_at: dt.datetime | None,
    delay: Delay | None,
    priority: int | None,
    queue: str | None,
) -> JobCall:
    if isinstance(target, Job):
        path, defaults = target.path, target.options
    elif isinstance(target, str):
        path, defaults = target, DEFAULT_OPTIONS
    elif callable(target):
        path, defaults = handler_format.callable_path(target), DEFAULT_OPTIONS
    else:
        raise EnqueueError(f"cannot enqueue {target!r}: not a job, function or path")
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise EnqueueError(f"args must be a list or tuple, got {type(args).__name__}")
    _check_schedule(run_at, delay)
    return JobCall(
        path,
        tuple(args),
        dict(kwargs or {}),
        queue=defaults.queue if queue is None else queue,
        priority=defaults.priority if priority is None else priority,
        run_at=run_at,
        delay=delay,
    )


def _check_schedule(run_at: dt.datetime | None, delay: Delay | None) -> None:
    if run_at is not None and delay is not None:
        raise EnqueueError("give run_at or delay, not both")
    if run_at is not None and run_at.tzinfo is None:
        raise EnqueueError("run_at must be timezone-aware (the database compares with now())")


def _seconds(delay: Delay | None) -> float:
    if delay is None:
        return 0.0
    return delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)


@contextmanager
def _connection(
    connection: psycopg.Connection[Any] | None, database_url: str | None
) -> Iterator[psycopg.Connection[Any]]:
    if connection is not None:
        yield connection
        return
    url = database_url or default_database_url() or os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise EnqueueError(
            f"no database to enqueue into: pass connection= or database_url=, "
            f"or set {DATABASE_URL_ENV}"
        )
    with psycopg.connect(url, autocommit=True, application_name="djmaster enqueue") as conn:
        yield conn
