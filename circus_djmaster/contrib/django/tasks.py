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
* Results are not stored yet: ``supports_get_result`` is False and ``get_result``
  raises NotImplementedError.
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

from circus_djmaster.api.jobs import JobRecord, enqueue, job
from circus_djmaster.contracts.locked_by import worker_locked_by

try:  # Django >= 6
    from django.tasks import TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskError
    from django.tasks.exceptions import InvalidTask
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    FRAMEWORK = "django.tasks"
except ImportError:  # Django 4.2-5.2 with the django-tasks backport
    from django_tasks import TaskContext, TaskResult, TaskResultStatus  # type: ignore[no-redef]
    from django_tasks.backends.base import BaseTaskBackend  # type: ignore[no-redef]
    from django_tasks.base import Task, TaskError  # type: ignore[no-redef]
    from django_tasks.exceptions import InvalidTaskError as InvalidTask  # type: ignore[no-redef]
    from django_tasks.signals import (  # type: ignore[no-redef]
        task_enqueued,
        task_finished,
        task_started,
    )
    from django_tasks.utils import normalize_json  # type: ignore[no-redef]

    FRAMEWORK = "django_tasks"

__all__ = ["FRAMEWORK", "DjmasterBackend", "djmaster_priority", "run_task"]

KNOWN_OPTIONS = frozenset({"DATABASE"})


def djmaster_priority(django_priority: int) -> int:
    """Django's priority (-100..100, larger runs sooner) as ours (smaller runs sooner)."""
    return -int(django_priority)


class DjmasterBackend(BaseTaskBackend):
    """Tasks become ``delayed_jobs`` rows run by circus-djmaster workers.

    ``OPTIONS``: ``DATABASE``, the Django database alias jobs are written on (default
    ``"default"``; it must be PostgreSQL on psycopg 3 and hold ``delayed_jobs``).
    Raises ImproperlyConfigured for unknown options.
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
def run_task(module_path: str, args: list[Any], kwargs: dict[str, Any], backend: str) -> None:
    """The job of every task: run ``module_path`` (a ``@task``) with its arguments.

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
            task.call(TaskContext(task_result=result), *args, **kwargs)
        else:
            task.call(*args, **kwargs)
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
    task_finished.send(sender=sender, task_result=result)
