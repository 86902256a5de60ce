"""The admin: failed and scheduled jobs, to look at, retry, make due or delete.

Nothing here runs a job or edits one: every field is read-only, there is no add form,
and the actions only change when a job is due (a worker then runs it) or delete it,
through the store's functions (the named queries of ``sql/queries.sql``), as
``djmaster jobs`` does. A job a
worker holds is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from circus_djmaster.contrib.django import connection_for
from circus_djmaster.contrib.django.models import DelayedJob, FailedJob, ScheduledJob
from circus_djmaster.store import statements as store
from circus_djmaster.store.statements import Statement
from circus_djmaster.store.sync_executor import execute

FIELDS = (
    "id",
    "queue",
    "priority",
    "attempts",
    "run_at",
    "locked_at",
    "locked_by",
    "failed_at",
    "created_at",
    "updated_at",
    "handler",
    "last_error",
)


class _JobAdmin(admin.ModelAdmin):
    """Read-only lists of jobs, searchable by queue and handler."""

    search_fields = ("queue", "handler")
    list_filter = ("queue",)
    readonly_fields = FIELDS
    fields = FIELDS
    list_per_page = 50

    @admin.display(description="runs")
    def target(self, job: DelayedJob) -> str:
        return job.target()

    @admin.display(description="last error")
    def error_line(self, job: DelayedJob) -> str:
        lines = (job.last_error or "").strip().splitlines()
        return lines[0][:200] if lines else ""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # No change form: a job is shown read-only. The list's actions ask without obj.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting goes through the actions, which spare the jobs a worker holds.
        return obj is None and super().has_delete_permission(request)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions: dict[str, Any] = super().get_actions(request)
        actions.pop("delete_selected", None)  # the ORM's delete: replaced by our actions
        return actions

    def _run(
        self, queryset: QuerySet[Any], action: Callable[[list[int]], Statement[list[int]]]
    ) -> list[int]:
        """Run a store statement on the selected ids; the ids it changed."""
        ids = [int(pk) for pk in queryset.values_list("pk", flat=True)]
        if not ids:  # never None: to retry_failed_jobs that would mean every failed job
            return []
        return [int(job_id) for job_id in execute(connection_for(queryset.db), action(ids))]

    def _report(
        self, request: HttpRequest, done: Sequence[int], asked: int, verb: str, why: str
    ) -> None:
        self.message_user(request, f"{verb} {len(done)} job(s)", messages.SUCCESS)
        if len(done) < asked:
            self.message_user(
                request, f"{asked - len(done)} job(s) left alone: {why}", messages.WARNING
            )


@admin.register(FailedJob)
class FailedJobAdmin(_JobAdmin):
    """Jobs that failed for good: retry them (due now, attempts reset) or delete them."""

    list_display = ("id", "target", "queue", "priority", "attempts", "failed_at", "error_line")
    actions = ("retry_jobs", "delete_jobs")

    @admin.action(
        description="Retry the selected jobs (due now, attempts reset)", permissions=["change"]
    )
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        asked = queryset.count()
        done = self._run(queryset, store.retry_failed_jobs)
        self._report(request, done, asked, "retried", "not failed any more")

    @admin.action(description="Delete the selected jobs", permissions=["delete"])
    def delete_jobs(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        asked = queryset.count()
        done = self._run(queryset, store.delete_failed_jobs)
        self._report(request, done, asked, "deleted", "not failed any more")


@admin.register(ScheduledJob)
class ScheduledJobAdmin(_JobAdmin):
    """Jobs not failed: due, scheduled later, or running (those are left alone)."""

    list_display = ("id", "target", "queue", "priority", "attempts", "run_at", "state")
    actions = ("make_due_now", "delete_jobs")

    @admin.display(description="state")
    def state(self, job: DelayedJob) -> str:
        if job.locked_at is not None:
            return f"running ({job.locked_by})"
        return "waiting" if job.attempts == 0 else f"waiting (retry {job.attempts})"

    @admin.action(description="Make the selected jobs due now", permissions=["change"])
    def make_due_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        asked = queryset.count()
        done = self._run(queryset, store.due_now_jobs)
        self._report(request, done, asked, "made due now", "running or failed meanwhile")

    @admin.action(description="Delete the selected jobs (not running)", permissions=["delete"])
    def delete_jobs(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        asked = queryset.count()
        done = self._run(queryset, store.delete_waiting_jobs)
        self._report(request, done, asked, "deleted", "running or failed meanwhile")
