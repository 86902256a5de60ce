"""The enqueue API: the ``@job`` decorator, ``enqueue()`` and ``enqueue_many()``.

A job is a module-level function; its handler names it as ``module:qualname``. Options
set on the decorator (max_attempts, max_run_time, destroy_failed_jobs, reschedule_at,
hooks) are read by the worker when it resolves the handler; queue and priority are
stored in the row and can be overridden per enqueue.

Where a job is written (give at most one; see :func:`enqueue`):

* ``connection=``: the caller's psycopg connection; the job commits or rolls back with
  the caller's transaction;
* ``pool=``: a ``psycopg_pool`` pool (``ConnectionPool``, or ``AsyncConnectionPool`` for
  the async API); ``connection_factory=``: a callable giving a connection (see
  :func:`enqueue`);
* ``using=``: a Django database alias (``circus_djmaster.contrib.django``): Django's own
  connection, so the job joins the request's transaction;
* otherwise a short-lived connection to ``database_url``; without one, inside a worker
  process, to the database the worker serves (so a job's follow-ups go where the job
  came from: context.py), elsewhere to ``$DJMASTER_DATABASE_URL``.

:func:`aenqueue` and :func:`aenqueue_many` are the same on psycopg's ``AsyncConnection``.
Nothing here imports Django or psycopg_pool unless asked to use them.

Longer than 400 lines on purpose: it is the API users read (the ``@job`` decorator with
its typed overloads and the four enqueue functions with their documentation); where a
job is written is targets.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypedDict, TypeVar, overload

import psycopg

from circus_djmaster.api import handler as handler_format
from circus_djmaster.api.targets import ConnectionFactory, async_target, sync_target
from circus_djmaster.exceptions import EnqueueError
from circus_djmaster.store import statements, sync_executor
from circus_djmaster.store.statements import NewJob, Statement

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool
    from typing_extensions import Unpack

P = ParamSpec("P")
R = TypeVar("R")

# The queue of jobs enqueued without one (delayed_job's usual default_queue_name): a
# worker group must name its queues or serve them all, and a NULL queue matches no name.
DEFAULT_QUEUE = "default"

Delay = float | dt.timedelta


class EnqueueOptions(TypedDict, total=False):
    """The keyword options of :meth:`Job.enqueue` (see :func:`enqueue`)."""

    run_at: dt.datetime | None
    delay: Delay | None
    priority: int | None
    queue: str | None
    unique_key: str | None
    keep_finished: Delay | None
    connection: psycopg.Connection[Any] | None
    database_url: str | None
    pool: ConnectionPool[Any] | None
    connection_factory: ConnectionFactory | None
    using: str | None


class AsyncEnqueueOptions(TypedDict, total=False):
    """The keyword options of :meth:`Job.aenqueue` (see :func:`aenqueue`)."""

    run_at: dt.datetime | None
    delay: Delay | None
    priority: int | None
    queue: str | None
    unique_key: str | None
    keep_finished: Delay | None
    connection: psycopg.AsyncConnection[Any] | None
    database_url: str | None
    pool: AsyncConnectionPool[Any] | None
    connection_factory: ConnectionFactory | None


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
    # At most one waiting job per callable and arguments (unique_key_of).
    unique: bool = False
    # Seconds to keep the finished job (None: the worker group's keep_finished).
    keep_finished: float | None = None
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
        if self.keep_finished is not None and self.keep_finished < 0:
            raise ValueError(f"keep_finished must not be negative, got {self.keep_finished}")


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
    #: At most one waiting job per key (None: no key).
    unique_key: str | None = None
    #: Seconds to keep the finished job (None: the worker group's keep_finished).
    keep_finished: float | None = None

    def handler(self) -> str:
        return handler_format.encode(self.path, self.args, self.kwargs)


def unique_key_of(path: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The key of ``@job(unique=True)``: the callable and a digest of its arguments
    (``"myapp.jobs:refresh:5f1c…"``), so equal calls share it.

    Raises HandlerError for arguments that are not JSON (as the handler would).
    """
    handler = handler_format.encode(path, args, kwargs)  # checks the arguments
    arguments = json.loads(handler)
    canonical = json.dumps([arguments["args"], arguments["kwargs"]], sort_keys=True)
    return f"{path}:{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"


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

    def call(self, *args: P.args, **kwargs: P.kwargs) -> JobCall:
        """A :class:`JobCall` with this job's defaults, for :func:`enqueue_many`."""
        return JobCall(
            self.path,
            args,
            kwargs,
            queue=self.options.queue,
            priority=self.options.priority,
            unique_key=unique_key_of(self.path, args, kwargs) if self.options.unique else None,
            keep_finished=self.options.keep_finished,
        )

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue with the job's defaults on the default database (the running job's
        inside a worker, else ``$DJMASTER_DATABASE_URL``); return its id."""
        return enqueue(self, args, kwargs)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """:meth:`delay` on an ``AsyncConnection`` to ``$DJMASTER_DATABASE_URL``."""
        return await aenqueue(self, args, kwargs)

    def enqueue(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> int:
        """Enqueue with overrides (see :func:`enqueue` for ``options``); return its id."""
        return enqueue(self, args, kwargs, **options)

    async def aenqueue(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[AsyncEnqueueOptions],
    ) -> int:
        """Enqueue with overrides (see :func:`aenqueue` for ``options``); return its id."""
        return await aenqueue(self, args, kwargs, **options)


@overload
def job(
    func: Callable[P, R],
    *,
    queue: str = ...,
    priority: int = ...,
    max_attempts: int | None = ...,
    max_run_time: float | None = ...,
    destroy_failed_jobs: bool | None = ...,
    unique: bool = ...,
    keep_finished: Delay | None = ...,
    reschedule_at: Callable[[dt.datetime, int], dt.datetime | Delay] | None = ...,
    before: Callable[[JobRecord], object] | None = ...,
    after: Callable[[JobRecord], object] | None = ...,
    success: Callable[[JobRecord], object] | None = ...,
    error: Callable[[JobRecord, BaseException], object] | None = ...,
    failure: Callable[[JobRecord], object] | None = ...,
) -> Job[P, R]: ...


@overload
def job(
    func: None = None,
    *,
    queue: str = ...,
    priority: int = ...,
    max_attempts: int | None = ...,
    max_run_time: float | None = ...,
    destroy_failed_jobs: bool | None = ...,
    unique: bool = ...,
    keep_finished: Delay | None = ...,
    reschedule_at: Callable[[dt.datetime, int], dt.datetime | Delay] | None = ...,
    before: Callable[[JobRecord], object] | None = ...,
    after: Callable[[JobRecord], object] | None = ...,
    success: Callable[[JobRecord], object] | None = ...,
    error: Callable[[JobRecord, BaseException], object] | None = ...,
    failure: Callable[[JobRecord], object] | None = ...,
) -> Callable[[Callable[P, R]], Job[P, R]]: ...


def job(
    func: Callable[P, R] | None = None,
    *,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    max_attempts: int | None = None,
    max_run_time: float | None = None,
    destroy_failed_jobs: bool | None = None,
    unique: bool = False,
    keep_finished: Delay | None = None,
    reschedule_at: Callable[[dt.datetime, int], dt.datetime | Delay] | None = None,
    before: Callable[[JobRecord], object] | None = None,
    after: Callable[[JobRecord], object] | None = None,
    success: Callable[[JobRecord], object] | None = None,
    error: Callable[[JobRecord, BaseException], object] | None = None,
    failure: Callable[[JobRecord], object] | None = None,
) -> Any:
    """Make a module-level function a job: ``@job`` or ``@job(queue="mail", ...)``.

    The :class:`Job` keeps the function's signature for type checkers: ``delay``,
    ``adelay``, ``call`` and calling the job check their arguments against it.

    ``unique``: enqueueing it while an equal job (same arguments) waits returns that
    job's id instead of a new one (:func:`enqueue`'s ``unique_key``). ``keep_finished``
    (seconds or timedelta): keep the finished job that long in ``delayed_jobs_finished``
    (None: the worker group's ``keep_finished``).
    """
    options = JobOptions(
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        max_run_time=max_run_time,
        destroy_failed_jobs=destroy_failed_jobs,
        unique=unique,
        keep_finished=None if keep_finished is None else _seconds(keep_finished),
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
    unique_key: str | None = None,
    keep_finished: Delay | None = None,
    connection: psycopg.Connection[Any] | None = None,
    database_url: str | None = None,
    pool: ConnectionPool[Any] | None = None,
    connection_factory: ConnectionFactory | None = None,
    using: str | None = None,
) -> int:
    """Enqueue one job and return its id.

    ``target`` is a :func:`job`, a module-level function or a ``"module:function"`` path;
    ``args`` a list or tuple and ``kwargs`` a mapping, both JSON-serialisable.
    ``run_at`` (an aware datetime) or ``delay`` (seconds or timedelta from the database's
    now()) schedule it; by default it is due at once. ``priority`` (lower runs first) and
    ``queue`` override the job's.

    ``unique_key`` (a ``@job(unique=True)`` makes one from the callable and arguments):
    at most one job with that key waits. If one already waits, nothing is written and
    **its id is returned**: the caller wanted that work done soon, and it will be (a
    duplicate is not an error, so a caller's transaction is never aborted by one). A job
    gives up its key when a worker takes it, so one job per key may wait while others
    run. ``keep_finished`` (seconds or timedelta): keep the job that long once finished,
    in ``delayed_jobs_finished`` (None: its worker group's ``keep_finished``).

    Where it is written, at most one of:

    * ``connection``: a ``psycopg.Connection``; the insert joins the caller's transaction
      (on an autocommit connection, or outside a transaction, it commits at once);
    * ``pool``: a ``psycopg_pool.ConnectionPool``: a connection is borrowed for the one
      statement, which commits at once;
    * ``connection_factory``: a callable returning a context manager that yields a
      ``psycopg.Connection`` (``pool.connection``), or returning a new connection (closed
      afterwards). On an idle connection the insert commits at once; on one already in a
      transaction it joins it, and whoever owns that transaction commits it;
    * ``using``: a Django database alias (needs ``circus_djmaster.contrib.django``):
      Django's connection, so the job commits or rolls back with ``transaction.atomic``;
    * ``database_url``, else ``$DJMASTER_DATABASE_URL``: a short-lived connection.

    Raises :class:`EnqueueError` for bad arguments or targets (before any database
    access), and psycopg's errors for database failures.
    """
    call = _make_call(
        target, args, kwargs, run_at, delay, priority, queue, unique_key, keep_finished
    )
    insert = _insert_statement(call)  # bad arguments fail here, before any connection
    with sync_target(connection, database_url, pool, connection_factory, using) as conn:
        return _insert_sync(conn, call, insert)


def enqueue_many(
    calls: Iterable[JobCall],
    *,
    connection: psycopg.Connection[Any] | None = None,
    database_url: str | None = None,
    pool: ConnectionPool[Any] | None = None,
    connection_factory: ConnectionFactory | None = None,
    using: str | None = None,
) -> list[int]:
    """Enqueue many jobs in one statement (one round trip, one NOTIFY); return their ids.

    The targets are those of :func:`enqueue`; the ids come in the order of ``calls``.
    Calls with a ``unique_key`` are written one statement each after the others (each
    may give back the id of a job already waiting, as :func:`enqueue` says).
    """
    calls = _check_calls(calls)
    if not calls:
        return []
    many = _insert_many([call for call in calls if call.unique_key is None])
    unique = {index: _insert_statement(c) for index, c in enumerate(calls) if c.unique_key}
    with sync_target(connection, database_url, pool, connection_factory, using) as conn:
        ids = iter(sync_executor.execute(conn, many))
        return [
            _insert_sync(conn, call, unique[index]) if index in unique else next(ids)
            for index, call in enumerate(calls)
        ]


async def aenqueue(
    target: Job[Any, Any] | Callable[..., Any] | str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    run_at: dt.datetime | None = None,
    delay: Delay | None = None,
    priority: int | None = None,
    queue: str | None = None,
    unique_key: str | None = None,
    keep_finished: Delay | None = None,
    connection: psycopg.AsyncConnection[Any] | None = None,
    database_url: str | None = None,
    pool: AsyncConnectionPool[Any] | None = None,
    connection_factory: ConnectionFactory | None = None,
) -> int:
    """:func:`enqueue` on psycopg's ``AsyncConnection``; return the job's id.

    The same arguments and transaction semantics, with ``connection`` an
    ``AsyncConnection``, ``pool`` a ``psycopg_pool.AsyncConnectionPool`` and
    ``connection_factory`` returning an async context manager (``pool.connection``) or
    an awaitable of a new ``AsyncConnection`` (closed afterwards). There is no
    ``using``: Django's connections are synchronous (the django.tasks backend's
    ``aenqueue`` runs the sync enqueue in Django's thread for that).
    """
    call = _make_call(
        target, args, kwargs, run_at, delay, priority, queue, unique_key, keep_finished
    )
    insert = _insert_statement(call)  # bad arguments fail here, before any connection
    async with async_target(connection, database_url, pool, connection_factory) as conn:
        from circus_djmaster.store import async_executor  # not on a worker's start-up path

        for _ in range(UNIQUE_TRIES):
            done = await async_executor.execute(conn, insert)
            if not isinstance(done, statements.UniqueInsert):
                return done
            if done.id is not None:
                return done.id
        raise _unique_failed(call)


async def aenqueue_many(
    calls: Iterable[JobCall],
    *,
    connection: psycopg.AsyncConnection[Any] | None = None,
    database_url: str | None = None,
    pool: AsyncConnectionPool[Any] | None = None,
    connection_factory: ConnectionFactory | None = None,
) -> list[int]:
    """:func:`enqueue_many` on psycopg's ``AsyncConnection`` (targets of :func:`aenqueue`)."""
    calls = _check_calls(calls)
    if not calls:
        return []
    if any(call.unique_key is not None for call in calls):
        # Each unique call is its own statement (see enqueue_many): on one connection.
        async with async_target(connection, database_url, pool, connection_factory) as conn:
            return [
                await aenqueue(
                    call.path,
                    call.args,
                    call.kwargs,
                    run_at=call.run_at,
                    delay=call.delay,
                    priority=call.priority,
                    queue=call.queue,
                    unique_key=call.unique_key,
                    keep_finished=call.keep_finished,
                    connection=conn,
                )
                for call in calls
            ]
    insert = _insert_many(calls)
    async with async_target(connection, database_url, pool, connection_factory) as conn:
        from circus_djmaster.store import async_executor  # not on a worker's start-up path

        return await async_executor.execute(conn, insert)


#: How often a unique insert is tried when the waiting job it met was taken meanwhile.
UNIQUE_TRIES = 5


def _insert_one(call: JobCall) -> Statement[int]:
    return statements.insert_job(
        handler=call.handler(),
        queue=call.queue,
        priority=call.priority,
        run_at=call.run_at,
        delay=_seconds(call.delay),
        keep_finished=call.keep_finished,
    )


def _insert_unique(call: JobCall) -> Statement[statements.UniqueInsert]:
    assert call.unique_key is not None
    return statements.insert_unique_job(
        handler=call.handler(),
        queue=call.queue,
        priority=call.priority,
        run_at=call.run_at,
        delay=_seconds(call.delay),
        unique_key=call.unique_key,
        keep_finished=call.keep_finished,
    )


def _insert_statement(call: JobCall) -> Statement[int | statements.UniqueInsert]:
    return _insert_one(call) if call.unique_key is None else _insert_unique(call)


def _insert_sync(
    conn: psycopg.Connection[Any],
    call: JobCall,
    insert: Statement[int | statements.UniqueInsert],
) -> int:
    """Run ``insert`` (of ``call``) on ``conn``: the new job's id or, with a unique
    key, the id of the job waiting with it (the statement runs again if that one was
    just taken by a worker)."""
    for _ in range(UNIQUE_TRIES):
        done = sync_executor.execute(conn, insert)
        if not isinstance(done, statements.UniqueInsert):
            return done
        if done.id is not None:
            return done.id
    raise _unique_failed(call)


def _unique_failed(call: JobCall) -> EnqueueError:
    # Only under a stream of jobs with this key each taken at once, or in a caller's
    # REPEATABLE READ transaction that cannot see the waiting job it collides with.
    return EnqueueError(
        f"unique key {call.unique_key!r}: neither inserted nor found after "
        f"{UNIQUE_TRIES} tries (the waiting job with this key is not visible to this "
        "transaction)"
    )


def _check_calls(calls: Iterable[JobCall]) -> list[JobCall]:
    calls = list(calls)
    for call in calls:
        if not isinstance(call, JobCall):
            raise EnqueueError(f"enqueue_many takes JobCall objects, got {type(call).__name__}")
        _check_schedule(call.run_at, call.delay)
    return calls


def _insert_many(calls: Sequence[JobCall]) -> Statement[list[int]]:
    return statements.insert_jobs(
        [
            NewJob(
                handler=call.handler(),
                queue=call.queue,
                priority=call.priority,
                run_at=call.run_at,
                delay=_seconds(call.delay),
                keep_finished=call.keep_finished,
            )
            for call in calls
        ]
    )


def _make_call(
    target: Job[Any, Any] | Callable[..., Any] | str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    run_at: dt.datetime | None,
    delay: Delay | None,
    priority: int | None,
    queue: str | None,
    unique_key: str | None = None,
    keep_finished: Delay | None = None,
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
    if unique_key is None and defaults.unique:
        unique_key = unique_key_of(path, args, kwargs or {})
    if unique_key is not None and (not isinstance(unique_key, str) or not unique_key):
        raise EnqueueError(f"unique_key must be a non-empty string, got {unique_key!r}")
    keep = defaults.keep_finished if keep_finished is None else _seconds(keep_finished)
    if keep is not None and keep < 0:
        raise EnqueueError(f"keep_finished must not be negative, got {keep_finished!r}")
    return JobCall(
        path,
        tuple(args),
        dict(kwargs or {}),
        queue=defaults.queue if queue is None else queue,
        priority=defaults.priority if priority is None else priority,
        run_at=run_at,
        delay=delay,
        unique_key=unique_key,
        keep_finished=keep,
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
