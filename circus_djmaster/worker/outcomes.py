"""The outcome rules of a reserved job, and what each outcome writes (delayed_job's
rules, docs/design.md "Job outcomes"):

* success deletes the row (batched into the next reserve: job_thread.py);
* an exception charges an attempt and retries at ``attempts**4 + 5`` s (database clock),
  or at the job's ``reschedule_at``, until ``max_attempts``; then ``failed_at`` is set (or
  the row is deleted with ``destroy_failed_jobs``);
* a handler that cannot be decoded or imported fails the job for good at once;
* a job that runs past its ``max_run_time`` is charged an attempt (the worker's
  watchdog interrupts it: process.py, interruption.py);
* a job reserved with no attempt left (``attempts >= max_attempts``: its worker died on
  its last attempt, or a deploy lowered max_attempts) fails without running.

The jobs of a worker that died are charged by the master (master/releases.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import traceback
from collections.abc import Callable
from typing import Any

from circus_djmaster.api import handler as handler_format
from circus_djmaster.api import wrappers as job_wrappers
from circus_djmaster.api.jobs import JobOptions, JobRecord, options_of
from circus_djmaster.config.settings import WorkerGroup
from circus_djmaster.contracts.running_jobs import JobLimits
from circus_djmaster.exceptions import HandlerError
from circus_djmaster.store import statements
from circus_djmaster.store.statements import ReservedJob, Statement

# last_error is for people: keep it readable and bounded.
MAX_ERROR_LENGTH = 64 * 1024
# A kept job's result (JSON text) is stored up to this size; a larger one is not kept.
MAX_RESULT_LENGTH = 64 * 1024


class JobOutcome(enum.Enum):
    """How one run of a job ended, as recorded in ``delayed_jobs``."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"  # failed_at set
    DESTROYED = "destroyed"  # failed and deleted (destroy_failed_jobs)
    CANCELLED = "cancelled"  # asked to stop (djmaster jobs cancel) and it did: never retried


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A job ready to run: its callable, arguments and effective limits."""

    function: Callable[..., Any]
    record: JobRecord
    options: JobOptions
    max_attempts: int
    max_run_time: float
    destroy_failed_jobs: bool

    @property
    def limits(self) -> JobLimits:
        """What the master needs to charge this job if its worker dies running it."""
        return JobLimits(self.max_attempts, self.destroy_failed_jobs)

    @property
    def exhausted(self) -> bool:
        """No attempt left before this run: fail it without running it."""
        return self.record.attempts >= self.max_attempts


@dataclasses.dataclass(frozen=True)
class Failure:
    """What to write for a failed run."""

    outcome: JobOutcome
    attempts: int
    last_error: str
    run_at: dt.datetime | None = None


def resolve_job(job: ReservedJob, group: WorkerGroup) -> Resolved:
    """Decode and import a job's handler; HandlerError if that is impossible."""
    decoded = handler_format.decode(job.handler)
    target = handler_format.resolve(decoded.callable)
    options = options_of(target)
    record = JobRecord(job.id, job.queue, job.priority, job.attempts, decoded)
    return Resolved(
        function=job_wrappers.wrap(target),
        record=record,
        options=options,
        max_attempts=options.max_attempts or group.max_attempts,
        # A job may ask for less time than its group gives, never more.
        max_run_time=min(options.max_run_time or group.max_run_time, group.max_run_time),
        destroy_failed_jobs=(
            group.destroy_failed_jobs
            if options.destroy_failed_jobs is None
            else options.destroy_failed_jobs
        ),
    )


def format_error(exc: BaseException, *, with_traceback: bool = True) -> str:
    """``last_error`` for an exception: message and traceback, storable as it is."""
    if isinstance(exc, SystemExit):
        text = f"job called sys.exit({exc.code!r})"
    else:
        text = f"{type(exc).__name__}: {_message(exc)}"
    if with_traceback and exc.__traceback__ is not None:
        try:
            text += "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except Exception:  # an exception whose __str__ raises breaks the formatter too
            text += "\n" + "".join(traceback.format_tb(exc.__traceback__))
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 20] + "\n... (truncated)"
    return storable(text)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as broken:
        return f"<str() of the exception raised {type(broken).__name__}>"


def storable(text: str) -> str:
    """Text PostgreSQL accepts: no NUL (refused in text), no lone surrogate (not UTF-8)."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def unresolvable_failure(job: ReservedJob, error: HandlerError, group: WorkerGroup) -> Failure:
    """A handler that can't be decoded or imported fails for good, whatever attempts remain."""
    outcome = JobOutcome.DESTROYED if group.destroy_failed_jobs else JobOutcome.FAILED
    return Failure(outcome, job.attempts + 1, f"HandlerError: {error}")


def exhausted_failure(resolved: Resolved) -> Failure:
    """A job reserved with no attempt left fails (or is deleted) without running."""
    outcome = JobOutcome.DESTROYED if resolved.destroy_failed_jobs else JobOutcome.FAILED
    note = (
        f"failed without running: {resolved.record.attempts} attempt(s) already made, "
        f"max_attempts is {resolved.max_attempts}"
    )
    return Failure(outcome, resolved.record.attempts, note)


def failure_after_error(
    resolved: Resolved, last_error: str, database_now: Callable[[], dt.datetime]
) -> Failure:
    """Retry or fail a job whose run raised (or timed out)."""
    attempts = resolved.record.attempts + 1
    if attempts >= resolved.max_attempts:
        outcome = JobOutcome.DESTROYED if resolved.destroy_failed_jobs else JobOutcome.FAILED
        return Failure(outcome, attempts, last_error)
    run_at = None
    if resolved.options.reschedule_at is not None:
        run_at = _reschedule(resolved.options, database_now(), attempts)
    return Failure(JobOutcome.RETRY, attempts, last_error, run_at)


def _reschedule(options: JobOptions, now: dt.datetime, attempts: int) -> dt.datetime:
    assert options.reschedule_at is not None
    value = options.reschedule_at(now, attempts)
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.timedelta):
        return now + value
    return now + dt.timedelta(seconds=float(value))


def failure_statement(job_id: int, failure: Failure) -> Statement[None]:
    """What a failed run writes: retried, failed for good, or deleted."""
    if failure.outcome is JobOutcome.RETRY:
        return statements.retry_job(
            job_id, attempts=failure.attempts, last_error=failure.last_error, run_at=failure.run_at
        )
    if failure.outcome is JobOutcome.DESTROYED:
        return statements.delete_job(job_id)
    return statements.fail_job(job_id, attempts=failure.attempts, last_error=failure.last_error)


def timeout_message(max_run_time: float, *, stopped: bool) -> str:
    """``last_error`` of a job past its ``max_run_time``: stopped, or (``stopped`` False)
    left running in a worker that retires to end it."""
    if stopped:
        return f"JobTimeout: job ran past its max_run_time of {max_run_time:g}s and was stopped"
    return (
        f"JobTimeout: job ran past its max_run_time of {max_run_time:g}s and could not be "
        "stopped; its worker retired to end it"
    )


def keep_seconds(job: ReservedJob, resolved: Resolved | None, group: WorkerGroup) -> float:
    """How long to keep ``job`` once finished (0: delete it, delayed_job's way): the
    row's ``keep_finished`` (set at enqueue), else its ``@job``'s, else the group's."""
    if job.keep_finished is not None:
        return max(0.0, job.keep_finished)
    if resolved is not None and resolved.options.keep_finished is not None:
        return resolved.options.keep_finished
    return group.keep_finished


def result_json(result: Any) -> tuple[str | None, str | None]:
    """A job's return value as stored in ``delayed_jobs_finished.result``: ``(JSON
    text, None)``, or ``(None, why it is not kept)`` for a value that is not JSON, is
    larger than MAX_RESULT_LENGTH, or holds a NUL (jsonb cannot)."""
    try:
        text = json.dumps(result, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return None, f"the result is not JSON ({type(result).__name__}): {exc}"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_RESULT_LENGTH:
        return None, f"the result is {size} bytes of JSON, over the {MAX_RESULT_LENGTH}-byte cap"
    if "\\u0000" in text or "\x00" in text or storable(text) != text:
        return None, "the result holds a NUL or a lone surrogate, which PostgreSQL cannot store"
    return text, None
