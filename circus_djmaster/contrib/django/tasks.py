"""A ``django.tasks`` backend: ``@task`` functions enqueued with Django's API, run by
circus-djmaster workers.

.. code-block:: python

    TASKS = {
        "default": {
            "BACKEND": "circus_djmaster.contrib.django.tasks.DjmasterBackend",
            "QUEUES": ["default", "mail"],  # Django's check of queue_name ([]: any)
            "OPTIONS": {"DATABASE": "default"},  # the alias jobs are written on
        }
    }

Django 6 has ``django.tasks``; on Django 4.2-5.2 install the ``django-tasks`` backport
(and add ``"django_tasks"`` to INSTALLED_APPS). This module uses ``django.tasks`` when
it exists, the backport otherwise.

* ``task.enqueue()`` writes the job on Django's connection of ``OPTIONS["DATABASE"]``:
  inside ``transaction.atomic()`` the job commits or rolls back with the block.
* ``queue_name`` is the job's queue (serve it with a worker group); ``run_after`` its
  ``run_at``; ``priority`` is mapped: Django's runs larger first (-100..100), ours
  smaller first, so ours = ``-priority`` (Django 100 -> -100, 0 -> 0, -100 -> 100).
* ``takes_context``: the task gets a ``TaskContext`` whose ``task_result.id`` is the job
  id and whose ``attempt`` is the number of this run (1 for the first).
* Async tasks (coroutine functions) run to completion in the worker's job thread.
* A task that raises is retried like any job, up to its worker group's
  ``max_attempts``, then kept failed (see the admin or ``djmaster jobs list``).
* Results: with ``OPTIONS["KEEP_FINISHED"]`` (a duration: ``"7d"``, or seconds) each
  task's job is kept that long once finished (``delayed_jobs_finished``), and
  ``get_result(id)`` / ``task.get_result(id)`` report it: READY or RUNNING while it
  waits or runs, SUCCESSFUL with its return value (JSON, size-capped), FAILED with its
  error (a cancelled task is FAILED too, its error saying so). Without it
  ``supports_get_result`` is False and ``get_result`` raises NotImplementedError: a
  succeeded job is deleted at once, delayed_job's way, and nothing could be reported.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import traceback
from collections.abc import Iterable
from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.utils import timezone
from django.utils.module_loading import import_string

from circus_djmaster.api.django_alias import connection_for
from circus_djmaster.api.jobs import JobRecord, enqueue, job
from circus_djmaster.config.kinds import parse_duration
from circus_djmaster.contracts.locked_by import worker_locked_by
from circus_djmaster.store import statements
from circus_djmaster.store.sync_executor import execute

try:  # Django >= 6
    from django.tasks import TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskError
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    FRAMEWORK = "django.tasks"
except ImportError:  # Django 4.2-5.2 with the django-tasks backport
    from django_tasks import TaskContext, TaskResult, TaskResultStatus  # type: ignore[no-redef]
    from django_tasks.backends.base import BaseTaskBackend  # type: ignore[no-redef]
    from django_tasks.base import Task, TaskError  # type: ignore[no-redef]
    from django_tasks.exceptions import InvalidTaskError as InvalidTask  # type: ignore[no-redef]
    from django_tasks.exceptions import (  # type: ignore[no-redef]
        TaskResultDoesNotExist,
    )
    from django_tasks.signals import (  # type: ignore[no-redef]
        task_enqueued,
        task_finished,
        task_started,
    )
    from django_tasks.utils import normalize_json  # type: ignore[no-redef]

    FRAMEWORK = "django_tasks"

__all__ = ["FRAMEWORK", "DjmasterBackend", "djmaster_priority", "run_task"]

KNOWN_OPTIONS = frozenset({"DATABASE", "KEEP_FINISHED"})


def djmaster_priority(django_priority: int) -> int:
    """Django's priority (-100..100, larger runs sooner) as ours (smaller runs sooner)."""
    return -int(django_priority)


class DjmasterBackend(BaseTaskBackend):
    """Tasks become ``delayed_jobs`` rows run by circus-djmaster workers.

    ``OPTIONS``: ``DATABASE``, the Django database alias jobs are written on (default
    ``"default"``; it must be PostgreSQL on psycopg 3 and hold ``delayed_jobs``);
    ``KEEP_FINISHED``, how long finished tasks are kept for :meth:`get_result` (a
    duration such as ``"7d"`` or seconds; unset: not kept, no results).
    Raises ImproperlyConfigured for unknown options and a bad ``KEEP_FINISHED``.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = False
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        unknown = sorted(set(self.options) - KNOWN_OPTIONS)
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']: unknown option(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(KNOWN_OPTIONS))})"
            )
        self.database: str = self.options.get("DATABASE", "default")
        keep = self.options.get("KEEP_FINISHED")
        try:
            self.keep_finished: float | None = None if keep is None else parse_duration(keep)
        except ValueError as error:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['KEEP_FINISHED']: {error}"
            ) from None
        # Results exist only where finished jobs are kept.
        self.supports_get_result = bool(self.keep_finished)

    def validate_task(self, task: Any) -> None:
        """Django's rules, and an aware ``run_after`` (compared with the database clock)."""
        super().validate_task(task)
        if task.run_after is not None and timezone.is_naive(task.run_after):
            raise InvalidTask(
                "run_after must be timezone-aware: jobs are due by the database clock"
            )

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Write the task's job on ``OPTIONS["DATABASE"]``; a READY TaskResult.

        Raises InvalidTask for a task this backend cannot run, TypeError/ValueError for
        arguments that are not JSON, EnqueueError or psycopg's errors from the database.
        """
        self.validate_task(task)
        args = normalize_json(list(args))
        kwargs = normalize_json(dict(kwargs))
        job_id = enqueue(
            run_task,
            [task.module_path, args, kwargs, self.alias],
            queue=task.queue_name,
            priority=djmaster_priority(task.priority),
            run_at=task.run_after,
            keep_finished=self.keep_finished,
            using=self.database,
        )
        result = _result(
            task,
            job_id,
            TaskResultStatus.READY,
            args,
            kwargs,
            self.alias,
            enqueued_at=timezone.now(),
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> Any:
        """The TaskResult of job ``result_id``: from ``delayed_jobs`` while it waits,
        runs or failed, else from the finished jobs kept (``KEEP_FINISHED``).

        Raises NotImplementedError without ``KEEP_FINISHED``, TaskResultDoesNotExist
        for an id that is not a task of this backend, or no longer kept.
        """
        if not self.supports_get_result:
            raise NotImplementedError(
                f"TASKS[{self.alias!r}]: set OPTIONS['KEEP_FINISHED'] to keep results"
            )
        try:
            job_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        conn = connection_for(self.database)  # Django's own: inside its transaction
        row = execute(conn, statements.live_job(job_id))
        kept = None if row is not None else execute(conn, statements.finished_job(job_id))
        return _stored_result(self, result_id, row or kept, live=row is not None)

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        """Errors when ``OPTIONS["DATABASE"]`` is not a PostgreSQL alias of DATABASES."""
        if self.database not in connections.settings:
            yield checks.Error(
                f"TASKS[{self.alias!r}]: OPTIONS['DATABASE'] = {self.database!r} is not in "
                "settings.DATABASES",
                id="djmaster.E001",
            )
        elif connections[self.database].vendor != "postgresql":
            yield checks.Error(
                f"TASKS[{self.alias!r}]: database {self.database!r} is "
                f"{connections[self.database].vendor}; circus-djmaster needs PostgreSQL",
                id="djmaster.E002",
            )


def _result(
    task: Any,
    job_id: int,
    status: Any,
    args: list[Any],
    kwargs: dict[str, Any],
    backend: str,
    *,
    enqueued_at: dt.datetime | None = None,
    started_at: dt.datetime | None = None,
    worker_ids: list[str] | None = None,
) -> Any:
    return TaskResult(
        task=task,
        id=str(job_id),
        status=status,
        enqueued_at=enqueued_at,
        started_at=started_at,
        last_attempted_at=started_at,
        finished_at=None,
        args=args,
        kwargs=kwargs,
        backend=backend,
        errors=[],
        worker_ids=worker_ids or [],
    )


def _stored_result(backend: Any, result_id: str, row: Any, *, live: bool) -> Any:
    """A TaskResult from a row of delayed_jobs (``live``) or delayed_jobs_finished."""
    import json

    if row is None:
        raise TaskResultDoesNotExist(result_id)
    try:
        handler = json.loads(row["handler"])
        module_path, args, kwargs, alias = handler["args"]
        if handler["callable"] != RUN_TASK or alias != backend.alias:
            raise ValueError("not a task of this backend")
        task = _load_task(module_path)
    except (ValueError, TypeError, KeyError, InvalidTask):
        raise TaskResultDoesNotExist(result_id) from None
    error = row["last_error"]
    if live:
        if row["failed_at"] is not None:
            status, finished_at = TaskResultStatus.FAILED, row["failed_at"]
        else:
            running = row["locked_at"] is not None
            status = TaskResultStatus.RUNNING if running else TaskResultStatus.READY
            finished_at, error = None, None
        started_at = row["locked_at"]
    else:
        outcome = row["outcome"]
        status = TaskResultStatus.SUCCESSFUL if outcome == "succeeded" else TaskResultStatus.FAILED
        if outcome == "cancelled":
            error = "cancelled" + (f": {error}" if error else "")
        started_at, finished_at = row["started_at"], row["finished_at"]
    result = TaskResult(
        task=task,
        id=result_id,
        status=status,
        enqueued_at=row["created_at"],
        started_at=started_at,
        last_attempted_at=started_at,
        finished_at=finished_at,
        args=args,
        kwargs=kwargs,
        backend=backend.alias,
        errors=[],
        worker_ids=[row["finished_by"] if not live else row["locked_by"]] if started_at else [],
    )
    if status == TaskResultStatus.FAILED:
        first_line = (error or "").strip().splitlines()
        result.errors.append(
            TaskError(
                exception_class_path=first_line[0].split(":", 1)[0] if first_line else "",
                traceback=error or "",
            )
        )
    if status == TaskResultStatus.SUCCESSFUL:
        text = row["result_json"]
        object.__setattr__(result, "_return_value", None if text is None else json.loads(text))
    return result


# --- in the worker ------------------------------------------------------------------

_running = threading.local()  # the JobRecord of the job this thread runs


def _remember(record: JobRecord) -> None:
    _running.record = record


def _forget(record: JobRecord) -> None:
    _running.record = None


def _load_task(module_path: str) -> Any:
    try:
        found = import_string(module_path)
    except ImportError as exc:
        raise InvalidTask(f"cannot import the task {module_path}: {exc}") from exc
    if not isinstance(found, Task):
        raise InvalidTask(f"{module_path} is not a task (a {type(found).__name__})")
    return found


@job(before=_remember, after=_forget)
def run_task(module_path: str, args: list[Any], kwargs: dict[str, Any], backend: str) -> Any:
    """The job of every task: run ``module_path`` (a ``@task``) with its arguments, and
    return its return value (kept as the job's result, normalised to JSON).

    Sends Django's ``task_started`` and ``task_finished`` signals; an exception of the
    task is the job's (retried up to the worker group's ``max_attempts``).
    """
    task = _load_task(module_path)
    record: JobRecord | None = getattr(_running, "record", None)
    attempt = record.attempts + 1 if record is not None else 1
    now = timezone.now()
    # TaskContext.attempt is len(worker_ids): earlier attempts' workers are not recorded.
    worker_ids = ["(earlier attempt)"] * (attempt - 1) + [worker_locked_by(os.getpid())]
    result = _result(
        task,
        record.id if record is not None else 0,
        TaskResultStatus.RUNNING,
        args,
        kwargs,
        backend,
        started_at=now,
        worker_ids=worker_ids,
    )
    sender = type(task.get_backend())
    task_started.send(sender=sender, task_result=result)
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        value = normalize_json(value)
    except BaseException as exc:
        object.__setattr__(result, "finished_at", timezone.now())
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
        result.errors.append(
            TaskError(
                exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
                traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            )
        )
        task_finished.send(sender=sender, task_result=result)
        raise
    object.__setattr__(result, "finished_at", timezone.now())
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(result, "_return_value", value)
    task_finished.send(sender=sender, task_result=result)
    return value


RUN_TASK = f"{__name__}:run_task"
