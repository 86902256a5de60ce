"""The ``delayed_jobs`` table as Django models, for the admin (read-only, unmanaged).

Django never creates or alters the table from these models (``managed = False``): the
schema is ``circus_djmaster/sql/schema.sql``, applied by this app's migration or by
``djmaster migrate``. Two proxy models split it for the admin: :class:`FailedJob` (failed
for good) and :class:`ScheduledJob` (waiting, due, or running).
"""

from __future__ import annotations

import json
from typing import Any

from django.db import models

RUN_TASK = "circus_djmaster.contrib.django.tasks:run_task"


class DelayedJob(models.Model):
    """One row of ``delayed_jobs`` (delayed_job's columns and meaning)."""

    id = models.BigAutoField(primary_key=True)
    priority = models.IntegerField(default=0, help_text="lower runs first")
    attempts = models.IntegerField(default=0)
    handler = models.TextField()
    last_error = models.TextField(null=True, blank=True)
    run_at = models.DateTimeField()
    locked_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    locked_by = models.TextField(null=True, blank=True)
    queue = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "delayed_jobs"
        ordering = ["-id"]
        verbose_name = "delayed job"

    def __str__(self) -> str:
        return f"job {self.pk} ({self.target()})"

    def target(self) -> str:
        """What the job runs: its callable, or the django.tasks task it wraps."""
        try:
            data: Any = json.loads(self.handler)
            path = data["callable"]
            if path == RUN_TASK and data.get("args"):
                return f"task {data['args'][0]}"
            return str(path)
        except (TypeError, ValueError, KeyError, IndexError, RecursionError):
            return "(unreadable handler)"


class FailedJobManager(models.Manager):
    def get_queryset(self) -> models.QuerySet:
        return super().get_queryset().filter(failed_at__isnull=False)


class ScheduledJobManager(models.Manager):
    def get_queryset(self) -> models.QuerySet:
        return super().get_queryset().filter(failed_at__isnull=True)


class FailedJob(DelayedJob):
    """A job that failed for good (``failed_at`` set): retry or delete it."""

    objects = FailedJobManager()

    class Meta:
        proxy = True
        verbose_name = "failed job"


class ScheduledJob(DelayedJob):
    """A job not failed: due now, scheduled later, or running."""

    objects = ScheduledJobManager()

    class Meta:
        proxy = True
        verbose_name = "scheduled job"
