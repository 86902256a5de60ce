"""A job thread: reserve jobs, run them, record their outcomes, on its own connection.

A job thread gets what it uses, not its worker: the fixed facts of its worker
(:class:`ThreadSetup`), the few things it tells the worker and asks of it
(:class:`WorkerLink`, which the worker implements: process.py), the worker's job feed
(feed.py: jobs are reserved for the whole process, as many per round trip as the
read-ahead rule says), the worker's database call deadlines (db_deadlines.py), its
running-jobs file and its run-alone gate. The
worker says when to stop taking jobs, and its watchdog may interrupt a job past its
``max_run_time`` (interruption.py). Job code (the job's function and hooks, sync or
async) is called through :class:`~circus_djmaster.worker.job_code.JobCode`, which
awaits async code on the thread's own event loop and ends any process the code forked
when control comes back into it.

Just over 400 lines: one thread's loop (reserve, run a batch, record each outcome)
with the job hooks around each run; its connection is thread_db.py, the interruption of
a job past max_run_time interruption.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from circus_djmaster.api.context import JobContext, enter_job, leave_job
from circus_djmaster.common.logs import event
from circus_djmaster.config.settings import WorkerGroup
from circus_djmaster.contracts.running_jobs import RunningJobs
from circus_djmaster.contracts.titles import worker_application_name
from circus_djmaster.exceptions import HandlerError, JobTimeout
from circus_djmaster.store import statements
from circus_djmaster.store.statements import (
    FinishedJob,
    FinishOutcome,
    JobFilter,
    ReservedJob,
    Statement,
)
from circus_djmaster.store.sync_executor import connect
from circus_djmaster.worker.db_deadlines import CallDeadlines
from circus_djmaster.worker.feed import JobFeed, Take
from circus_djmaster.worker.interruption import JobSlot
from circus_djmaster.worker.job_code import JobCode
from circus_djmaster.worker.outcomes import (
    Failure,
    JobOutcome,
    Resolved,
    exhausted_failure,
    failure_after_error,
    failure_statement,
    format_error,
    keep_seconds,
    resolve_job,
    result_json,
    timeout_message,
    unresolvable_failure,
)
from circus_djmaster.worker.run_alone import RunAloneGate
from circus_djmaster.worker.thread_db import Connect, ThreadDatabase

__all__ = ["JobThread", "ThreadSetup"]

if TYPE_CHECKING:
    # Only for annotations: a Protocol class costs a worker's start-up time.
    from typing import Protocol

    class WorkerLink(Protocol):
        """What a job thread tells its worker, and asks of it (process.Worker)."""

        def accepting_jobs(self) -> bool:
            """False once the worker stops or retires: take no new job."""
            ...

        def pass_started(self) -> None:
            """About to reserve: the thread is active until :meth:`pass_ended`."""
            ...

        def pass_ended(self, *, found: bool) -> None:
            """The reserve came back empty (``found`` False), or its jobs are done."""
            ...

        def show_busy(self) -> None:
            """A job started or ended: the title may change."""
            ...

        def after_job(self) -> None:
            """A job ended: check the process' memory and age limits."""
            ...

        def thread_crashed(self) -> None:
            """The thread's loop raised: the worker retires (and exits as crashed)."""
            ...

        def thread_exited(self) -> None:
            """The thread ended (it stopped taking jobs)."""
            ...

        def cancel_requested(self, job_id: int) -> bool:
            """Whether job ``job_id`` (held by this worker) was asked to stop."""
            ...


log = logging.getLogger("circus_djmaster.worker")

# How often a thread waiting to run a job alone looks whether its worker is stopping.
GATE_POLL = 0.2


@dataclasses.dataclass(frozen=True)
class ThreadSetup:
    """What a job thread knows of its worker; fixed for the worker's life."""

    group: WorkerGroup
    database_name: str
    database_url: str
    worker_pid: int
    locked_by: str  # contracts.locked_by
    job_filter: JobFilter
    lock_timeout: float  # seconds: Settings.lock_timeout
    database_timeout: float  # seconds: the settings' database_timeout


class JobThread(threading.Thread):
    """Job thread ``number`` of a worker (its slot in the running-jobs file)."""

    def __init__(
        self,
        number: int,
        setup: ThreadSetup,
        link: WorkerLink,
        *,
        deadlines: CallDeadlines,
        running: RunningJobs,
        gate: RunAloneGate,
        feed: JobFeed[ReservedJob],
        connect: Connect = connect,
    ) -> None:
        """``connect`` opens the thread's connection (thread_db.py; the unit tests give
        an in-memory one)."""
        super().__init__(name=f"job-{number}", daemon=True)
        self.number = number
        self.setup = setup
        self.link = link
        self.deadlines = deadlines
        self.running = running
        self.gate = gate
        self.feed = feed
        # The process' own pid (a forked worker goes by its launcher's, setup.worker_pid).
        self.code = JobCode(os.getpid())
        self.slot = JobSlot(self.code)
        self.wake = threading.Event()
        self.resolved: Resolved | None = None  # the job running now, for the watchdog
        #: The context of the job running now (its cancel_event is set on a cancel:
        #: cancels.CancelWatch).
        self.context: JobContext | None = None
        self.db = ThreadDatabase(
            setup.database_url,
            setup.database_name,
            application_name=worker_application_name(setup.worker_pid, self.name),
            timeout=setup.database_timeout,
            deadlines=deadlines,
            owner=self,
            connect=connect,
        )

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        try:
            while self.link.accepting_jobs():
                self.link.pass_started()
                taken: ReservedJob | Take = Take.ERROR
                try:
                    taken = self.feed.take(self._reserve)
                    if not isinstance(taken, Take):
                        self._run_taken(taken)
                finally:
                    # A database error is not an empty pass: it says nothing about the
                    # queue, so it must not make the worker retire.
                    self.link.pass_ended(found=taken is not Take.EMPTY)
                if taken is Take.ERROR:  # database trouble: back off, then try again
                    self._pause(self.db.backoff.next())
                elif taken is Take.EMPTY:
                    self._pause(self.setup.group.sleep_delay)
                else:
                    self.db.backoff.reset()
            self._delete_done(self.feed.all_done())
        except BaseException:  # even SystemExit: a dead thread must not go unnoticed
            log.exception("job thread %s crashed", self.name)
            self.link.thread_crashed()
        finally:
            self.code.close()
            self.db.close()
            self.link.thread_exited()

    def _pause(self, seconds: float) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    def _run_taken(self, job: ReservedJob) -> None:
        """Run a job taken from the feed and tell the feed how it ended."""
        started = time.monotonic()
        succeeded: bool | None = None  # None: not run (the worker stops: hand it back)
        try:
            if self.link.accepting_jobs():
                succeeded = self._run_one(job)
        finally:
            if succeeded is None:
                self.feed.not_started()
                self._hand_back([job.id])
            else:
                seconds = time.monotonic() - started
                self.feed.finished(job.id, seconds, succeeded=succeeded)
        due = self.feed.flush_due()
        if due and not self._delete_done(due):
            self.feed.undo_flush(due)

    def _delete_done(self, job_ids: list[int]) -> bool:
        """Delete succeeded jobs (those the next reserve would have deleted)."""
        return not job_ids or self._write("delete", statements.complete_jobs(job_ids))

    def _renew_lock(self, job_id: int) -> None:
        self._write("touch", statements.touch_jobs([job_id], locked_by=self.setup.locked_by))

    # --- one job ----------------------------------------------------------------------

    def _run_one(self, job: ReservedJob) -> bool | None:
        """Run one reserved job and record its outcome: True if it succeeded (its
        deletion is due), False if it ended otherwise, None if the worker began to stop
        while the job waited for its turn (it did not run: hand it back)."""
        group = self.setup.group
        if job.cancel_requested or self.link.cancel_requested(job.id):
            # Cancelled while a worker held it (reserved ahead, or handed back by a
            # worker that stopped): it never runs.
            log.info("job %s was cancelled before it started", job.id)
            keep = keep_seconds(job, None, group)
            self._finish_cancelled(job.id, job.attempts, keep, run_time=None, error=None)
            return False
        try:
            resolved = resolve_job(job, group)
        except HandlerError as exc:
            failure = unresolvable_failure(job, exc, group)
            log.error(
                "job %s (queue %s) cannot run: %s",
                job.id,
                job.queue,
                exc,
                extra=event(
                    "job_failed",
                    job_id=job.id,
                    queue=job.queue,
                    callable=None,
                    attempt=failure.attempts,
                    duration=0.0,
                    outcome=failure.outcome.name,
                    attempts=failure.attempts,
                ),
            )
            self._record_failure(job.id, failure, keep=keep_seconds(job, None, group))
            return False
        if resolved.exhausted:
            self._fail_exhausted(resolved)
            return False
        if not self._enter_gate(job):
            return None
        try:
            keep = keep_seconds(job, resolved, group)
            return self._run_resolved(resolved, alone=job.run_alone, keep=keep)
        finally:
            self.gate.leave(alone=job.run_alone)

    def _enter_gate(self, job: ReservedJob) -> bool:
        began = time.monotonic()
        while not self.gate.enter(alone=job.run_alone, timeout=GATE_POLL):
            if not self.link.accepting_jobs():
                return False
        # Its lock aged while it waited for the jobs beside it to end: renew it before it
        # could look stale (settings.lock_timeout is the longest max_run_time + margin).
        margin = self.setup.lock_timeout - self.setup.group.max_run_time
        if time.monotonic() - began > margin / 2:
            self._renew_lock(job.id)
        return True

    def _run_resolved(self, resolved: Resolved, *, alone: bool, keep: float) -> bool:
        record = resolved.record
        context = JobContext(
            id=record.id,
            queue=record.queue,
            priority=record.priority,
            attempts=record.attempts,
            callable=record.handler.callable,
            database=self.setup.database_name,
            group=self.setup.group.name,
        )
        self.context = context
        token = enter_job(context)
        try:
            return self._run_code(resolved, alone=alone, keep=keep)
        finally:
            leave_job(token)
            self.context = None

    def _run_code(self, resolved: Resolved, *, alone: bool, keep: float) -> bool:
        """Run the job's code and record a failure; True if it succeeded and its
        deletion is due (a job kept once finished is moved here, at once: False)."""
        record = resolved.record
        self.resolved = resolved
        # Before the job's code runs: if it kills the process, the master charges it.
        self.running.set(self.number, record.id, resolved.limits)
        self.slot.begin(record.id, resolved.max_run_time)
        self.link.show_busy()
        log.debug(
            "job %s (%s) started%s", record.id, record.handler.callable, " alone" if alone else ""
        )
        error: BaseException | None = None
        result: Any = None
        try:
            try:
                self._hook(resolved, "before")
                result = self.code.call(
                    resolved.function, *record.handler.args, **record.handler.kwargs
                )
                self._hook(resolved, "success")
            finally:
                self.slot.leave_user_code()
        except BaseException as exc:  # a job may raise anything: SystemExit, JobTimeout...
            error = exc
        finally:
            self._after_hook(resolved)
        elapsed = time.monotonic() - self.slot.started
        if not self.slot.claim_outcome():
            # The watchdog gave up on this job, recorded its failure, and the process is
            # retiring; nothing more to do here.
            return False
        self.slot.end()
        self.running.clear(self.number)
        self.resolved = None
        self.link.show_busy()
        deletion_due = False
        if error is None:
            log.info(
                "job %s %s (queue %s, attempt %d) succeeded in %.3fs",
                record.id,
                record.handler.callable,
                record.queue,
                record.attempts + 1,
                elapsed,
                extra=job_event("job_succeeded", resolved, elapsed, JobOutcome.SUCCEEDED),
            )
            if keep > 0:
                self._keep_succeeded(record.id, record.attempts + 1, keep, elapsed, result)
            else:
                deletion_due = True
        elif self.context is not None and self.context.cancel_requested:
            # Asked to stop, and it did (raising): cancelled, never retried.
            log.info(
                "job %s %s (queue %s) stopped after a cancel request (%.3fs)",
                record.id,
                record.handler.callable,
                record.queue,
                elapsed,
                extra=job_event("job_cancelled", resolved, elapsed, JobOutcome.CANCELLED),
            )
            self._finish_cancelled(
                record.id, record.attempts + 1, keep, run_time=elapsed, error=format_error(error)
            )
        else:
            self._job_failed(resolved, error, elapsed, keep)
        self.link.after_job()
        return deletion_due

    def _hook(self, resolved: Resolved, name: str, *extra: Any) -> None:
        """Run a job hook (sync or async); hooks are job code, their errors the job's."""
        hook = getattr(resolved.options, name)
        if hook is not None:
            self.code.call(hook, resolved.record, *extra)

    def _after_hook(self, resolved: Resolved) -> None:
        try:
            self._hook(resolved, "after")
        except BaseException:  # hooks are job code: never the worker's end
            log.exception("after hook of job %s raised", resolved.record.id)

    def _job_failed(
        self, resolved: Resolved, error: BaseException, elapsed: float, keep: float
    ) -> None:
        if isinstance(error, JobTimeout):
            last_error = timeout_message(resolved.max_run_time, stopped=True)
        else:
            last_error = format_error(error)
        try:
            self._hook(resolved, "error", error)
        except BaseException:  # hooks are job code: never the worker's end
            log.exception("error hook of job %s raised", resolved.record.id)
        try:
            failure = failure_after_error(resolved, last_error, self._database_now)
        except Exception as exc:  # a broken reschedule_at: fall back to the default backoff
            log.exception("reschedule_at of job %s raised", resolved.record.id)
            plain = dataclasses.replace(
                resolved, options=dataclasses.replace(resolved.options, reschedule_at=None)
            )
            failure = failure_after_error(
                plain, f"{last_error}\n(reschedule_at raised {exc!r})", self._database_now
            )
        if failure.outcome is not JobOutcome.RETRY:
            try:
                self._hook(resolved, "failure")
            except BaseException:
                log.exception("failure hook of job %s raised", resolved.record.id)
        log.warning(
            "job %s %s (queue %s) failed after %.3fs (attempt %d of %d, %s): %s",
            resolved.record.id,
            resolved.record.handler.callable,
            resolved.record.queue,
            elapsed,
            failure.attempts,
            resolved.max_attempts,
            failure.outcome.value,
            last_error.splitlines()[0] if last_error else "",
            extra=job_event("job_failed", resolved, elapsed, failure.outcome, failure.attempts),
        )
        self._record_failure(resolved.record.id, failure, keep=keep, run_time=elapsed)

    def _fail_exhausted(self, resolved: Resolved) -> None:
        """A job with no attempt left (its worker died on its last one while the master
        could not tell its limits, or max_attempts was lowered): fail it unrun."""
        failure = exhausted_failure(resolved)
        log.error(
            "job %s %s (queue %s): %s",
            resolved.record.id,
            resolved.record.handler.callable,
            resolved.record.queue,
            failure.last_error,
            extra=job_event("job_failed", resolved, 0.0, failure.outcome, failure.attempts),
        )
        if failure.outcome is JobOutcome.DESTROYED:
            self._record_failure(resolved.record.id, failure)
            return
        self._write(
            "fail", statements.fail_exhausted_job(resolved.record.id, note=failure.last_error)
        )

    def _database_now(self) -> dt.datetime:
        done, now = self.db.attempt("clock", statements.database_now())
        if not done or now is None:
            raise RuntimeError("the database clock could not be read")
        return now

    def _record_failure(
        self, job_id: int, failure: Failure, *, keep: float = 0.0, run_time: float | None = None
    ) -> None:
        """Write a failed run's outcome; with ``keep`` > 0 seconds a job that failed for
        good is kept in delayed_jobs_finished too (a destroyed one only there)."""
        if failure.outcome is JobOutcome.DESTROYED and keep > 0:
            finished = FinishedJob(
                job_id,
                FinishOutcome.FAILED,
                attempts=failure.attempts,
                keep=keep,
                ended=time.monotonic(),
                run_time=run_time,
                error=failure.last_error,
            )
            self._write("record", statements.finish_jobs([finished], now=time.monotonic()))
            return
        written = self._write("record", failure_statement(job_id, failure))
        if not written and self.db.write_refused:
            # The database refused this last_error (format_error makes that unlikely):
            # record the outcome without it rather than leave the job locked.
            plain = dataclasses.replace(failure, last_error="(the job's error could not be stored)")
            written = self._write("record", failure_statement(job_id, plain))
        if written and failure.outcome is JobOutcome.FAILED and keep > 0:
            self._write(
                "keep",
                statements.keep_failed_job(
                    job_id, keep=keep, run_time=run_time, finished_by=self.setup.locked_by
                ),
            )

    def _keep_succeeded(
        self, job_id: int, attempts: int, keep: float, run_time: float, result: Any
    ) -> None:
        """A succeeded job kept once finished: moved to delayed_jobs_finished with its
        result, at once (one statement; plain completions ride on the next reserve)."""
        text, note = result_json(result)
        finished = FinishedJob(
            job_id,
            FinishOutcome.SUCCEEDED,
            attempts=attempts,
            keep=keep,
            ended=time.monotonic(),
            run_time=run_time,
            result=text,
            result_note=note,
        )
        self._write("keep", statements.finish_jobs([finished], now=time.monotonic()))

    def _finish_cancelled(
        self, job_id: int, attempts: int, keep: float, *, run_time: float | None, error: str | None
    ) -> None:
        """A cancelled job: deleted, and kept as cancelled for ``keep`` seconds."""
        finished = FinishedJob(
            job_id,
            FinishOutcome.CANCELLED,
            attempts=attempts,
            keep=keep,
            ended=time.monotonic(),
            run_time=run_time,
            error=error,
        )
        self._write("cancel", statements.finish_jobs([finished], now=time.monotonic()))

    def _hand_back(self, job_ids: list[int]) -> None:
        self._write("hand back", statements.unlock_job_ids(job_ids, locked_by=self.setup.locked_by))

    # --- database ---------------------------------------------------------------------

    @property
    def db_ok(self) -> bool:
        """False from a failed (or timed-out) database call to the next one that works."""
        return self.db.ok

    def _reserve(self, limit: int, done: Sequence[int]) -> list[ReservedJob] | None:
        """Reserve up to ``limit`` jobs for the process, deleting the succeeded ``done``
        ones in the same round trip (the feed calls it); None after a database error."""
        reserve = statements.reserve_jobs(
            self.setup.job_filter,
            locked_by=self.setup.locked_by,
            limit=limit,
            lock_timeout=self.setup.lock_timeout,
            done=list(done),
        )
        ok, jobs = self.db.once("reserve", reserve)
        return jobs if ok and jobs is not None else None

    def _write(self, what: str, statement: Statement[Any]) -> bool:
        return self.db.write(what, statement)


def job_event(
    name: str,
    resolved: Resolved,
    duration: float,
    outcome: JobOutcome,
    attempts: int | None = None,
) -> dict[str, object]:
    """``extra=`` of the line a finished job leaves: ``job_id``, ``queue``, ``callable``,
    ``attempt`` (this run's number, from 1), ``duration`` (seconds), ``outcome`` (a
    :class:`JobOutcome` name) and ``attempts`` (the attempts charged so far)."""
    record = resolved.record
    return event(
        name,
        job_id=record.id,
        queue=record.queue,
        callable=record.handler.callable,
        attempt=record.attempts + 1,
        duration=round(duration, 6),
        outcome=outcome.name,
        attempts=record.attempts + 1 if attempts is None else attempts,
    )
