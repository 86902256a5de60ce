"""The test project's tasks (django.tasks API) and one plain circus-djmaster job."""

from __future__ import annotations

from django.db import connection

from circus_djmaster import job

from .models import Event, Switch

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task


@task
def record(key: str) -> None:
    Event.objects.create(key=key)


@task(queue_name="tasks", priority=50)
def urgent(key: str) -> None:
    Event.objects.create(key=key)


@task(takes_context=True)
def with_context(context: object, key: str) -> None:
    result = context.task_result  # type: ignore[attr-defined]
    Event.objects.create(key=key, attempt=context.attempt, job_id=result.id)  # type: ignore[attr-defined]


@task
async def arecord(key: str) -> None:
    await Event.objects.acreate(key=key)


@task(takes_context=True)
def flaky(context: object, key: str) -> None:
    """Fails while the switch ``flaky`` is off."""
    if not Switch.objects.filter(name="flaky", on=True).exists():
        raise RuntimeError(f"flaky {key}: the switch is off")
    Event.objects.create(key=key, attempt=context.attempt)  # type: ignore[attr-defined]


@job(queue="default")
def plain_job(key: str) -> None:
    """A plain job; it records the server pid of its thread's Django connection (the
    preload closes that connection after every job: CONN_MAX_AGE is 0)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    Event.objects.create(key=key, job_id=str(pid))


@task
def runtime(key: str) -> None:
    """Records the Python and Django versions the worker runs."""
    import sys

    import django

    version = f"python {sys.version_info[0]}.{sys.version_info[1]} django {django.get_version()}"
    Event.objects.create(key=f"{key}: {version}")
