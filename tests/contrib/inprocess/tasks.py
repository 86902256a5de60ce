"""Tasks for the in-process tests (imported once Django is configured)."""

from __future__ import annotations

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task


@task
def noop(n: int = 0) -> None:
    pass


@task(priority=100, queue_name="mail")
def soonest() -> None:
    pass


@task(priority=-100)
def latest() -> None:
    pass


@task
def total(a: int, b: int) -> dict[str, int]:
    return {"total": a + b}
