"""circus-djmaster: Postgres-backed delayed jobs with a circus plugin as master."""

from __future__ import annotations

from .jobs import Job, JobCall, JobOptions, JobRecord, enqueue, enqueue_many, job

__all__ = ["Job", "JobCall", "JobOptions", "JobRecord", "enqueue", "enqueue_many", "job"]
__version__ = "0.1.0.dev0"
