"""A worker thread: reserve jobs, run them, record outcomes, on its own connection.

The process (worker.py) owns the threads' life: it says when to stop taking jobs, and its
watchdog may interrupt a job past its max_run_time (see :meth:`JobSlot.interrupt`).
Job code (the job's function and hooks, sync or async) is called through
:class:`~circus_djmaster.worker.job_code.JobCode`, which awaits async code on the thread's own
event loop and ends any process the code forked when control comes back into it.
Every database call is bounded by the worker's :class:`~circus_djmaster.worker.db_deadlines.
CallDeadlines`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from circus_djmaster.api.context import JobContext, enter_job, leave_job
from circus_djmaster.exceptions import HandlerError
from circus_djmaster.store import statements as store
from circus_djmaster.store.errors import describe_error
from circus_djmaster.worker.job_code import JobCode, JobTimeout
from circus_djmaster.worker.outcomes import (
    Failure,
    Outcome,
    Resolved,
    exhausted_failure,
    failure_after_error,
    format_error,
    resolve_job,
    unresolvable_failure,
)

if TYPE_CHECKING:
    from circus_djmaster.worker.process import Worker

log = logging.getLogger("circus_djmaster.worker")

# A succeeded job waits at most this long for its deletion to share a round trip.
FLUSH_AFTER = 0.05
# Reconnect backoff after a database error: from 0.5 s doubling up to 30 s.
RECONNECT_MIN = 0.5
RECONNECT_MAX = 30.0
# How often a thread waiting to run a job alone looks whether its worker is stopping.
GATE_POLL = 0.2


class JobSlot:
    """The job a thread is running, shared with the watchdog under one lock."""

    def __init__(self, code: JobCode) -> None:
        self.lock = threading.Lock()
        self.code = code
        self.job_id: int | None = None
        self.started: float = 0.0
        self.deadline: float = 0.0
        self.max_run_time: float = 0.0
        self.in_user_code = False
        self.interrupt_sent = False
        self.thread_interrupt_sent = False
        self.outcome_claimed = False  # by the thread (it finished) or the watchdog (stuck)

    def begin(self, job_id: int, max_run_time: float) -> None:
        with self.lock:
            self.job_id = job_id
            self.started = time.monotonic()
            self.max_run_time = max_run_time
            self.deadline = self.started + max_run_time
            self.in_user_code = True
            self.interrupt_sent = False
            self.thread_interrupt_sent = False
            self.outcome_claimed = False

    def leave_user_code(self) -> None:
        """Called by the job's own thread when the job's code is done.

        If the watchdog sent an interrupt that has not fired yet, cancel it, so that it
        can never fire inside the worker's own bookkeeping.
        """
        with self.lock:
            self.in_user_code = False
            if self.thread_interrupt_sent:
                self.code.cancel_thread_interrupt(threading.get_ident())

    def claim_outcome(self) -> bool:
        """Whoever claims first records the job's outcome: its thread or the watchdog."""
        with self.lock:
            if self.outcome_claimed:
                return False
            self.outcome_claimed = True
            return True

    def end(self) -> None:
        with self.lock:
            self.job_id = None
            self.in_user_code = False

    def interrupt(self, thread_id: int) -> bool:
        """Stop the job's code, once: cancel its task if it is async (waking its event
        loop), else raise JobTimeout in its thread."""
        with self.lock:
            if not self.in_user_code or self.interrupt_sent:
                return False
            self.interrupt_sent = True
            if self.code.awaiting:
                return self.code.interrupt(thread_id)
            self.thread_interrupt_sent = True
            return self.code.interrupt_thread(thread_id)

    def interrupt_thread(self, thread_id: int) -> bool:
        """Second step for async code that ignored its cancellation (it does not yield to
        the loop): raise JobTimeout in its thread, once."""
        with self.lock:
            if not self.in_user_code or self.thread_interrupt_sent:
                return False
            self.thread_interrupt_sent = True
            return self.code.interrupt_thread(thread_id)


class JobThread(threading.Thread):
    def __init__(self, worker: Worker, number: int) -> None:
        super().__init__(name=f"job-{number}", daemon=True)
        self.number = number
        self.worker = worker
        self.code = JobCode(worker.pid)
        self.slot = JobSlot(self.code)
        self.wake = threading.Event()
        self.resolved: Resolved | None = None  # the job running now, for the watchdog
        # False from a failed (or timed-out) database call to the next one that works.
        self.db_ok = True
        self._conn: psycopg.Connection[Any] | None = None
        self._backoff = RECONNECT_MIN
        # Succeeded jobs not deleted yet: the next reserve deletes them in its round trip.
        self._completed: list[int] = []
        self._completed_since = 0.0
        self._write_refused = False  # the last write was refused (not a lost connection)
        self._locks_taken = 0.0

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        try:
            while self.worker.accepting_jobs():
                self.worker.pass_started()
                jobs: list[store.ReservedJob] | None = None
                try:
                    jobs = self._reserve()
                    if jobs:
                        self._run_batch(jobs)
                finally:
                    # A database error (None) is not an empty pass: it says nothing
                    # about the queue, so it must not make the worker retire.
                    self.worker.pass_ended(found=jobs is None or bool(jobs))
                if jobs is None:  # database trouble: back off, then try again
                    self._pause(self._backoff)
                    self._backoff = min(self._backoff * 2, RECONNECT_MAX)
                elif not jobs:
                    self._pause(self.worker.group.sleep_delay)
                else:
                    self._backoff = RECONNECT_MIN
            self._flush_completed()
        except BaseException:  # even SystemExit: a dead thread must not go unnoticed
            log.exception("job thread %s crashed", self.name)
            self.worker.thread_crashed()
        finally:
            self.code.close()
            if self._conn is not None:
                self._conn.close()
            self.worker.thread_exited()

    def _pause(self, seconds: float) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    def _run_batch(self, jobs: list[store.ReservedJob]) -> None:
        for index, job in enumerate(jobs):
            if not self.worker.accepting_jobs():
                # Stopping: hand back the jobs reserved ahead and not started.
                self._flush_completed()
                self._hand_back([j.id for j in jobs[index:]])
                return
            if index:
                self._keep_locks_fresh([j.id for j in jobs[index:]])
            if not self._run_one(job):
                # Stopping while it waited to run: hand it back with the rest.
                self._flush_completed()
                self._hand_back([j.id for j in jobs[index:]])
                return
            if self._completed and time.monotonic() - self._completed_since > FLUSH_AFTER:
                self._flush_completed()

    def _keep_locks_fresh(self, job_ids: list[int]) -> None:
        """Refresh the locks of jobs reserved ahead before their lock could look stale.

        A lock is stale after settings.lock_timeout (the longest max_run_time plus a
        margin); a job reserved ahead starts later than its lock was taken, so once the
        batch has run for longer than the margin allows, the remaining locks are renewed.
        """
        age = time.monotonic() - self._locks_taken
        budget = self.worker.settings.lock_timeout - self.worker.group.max_run_time
        if age > budget / 2:
            self._with_connection(
                "touch",
                lambda conn: store.touch_jobs(conn, job_ids, locked_by=self.worker.locked_by),
            )
            self._locks_taken = time.monotonic()

    def _flush_completed(self) -> None:
        if self._completed:
            done = self._completed
            if self._with_connection("delete", lambda c: store.complete_jobs(c, done)) is not None:
                self._completed = []

    # --- one job ----------------------------------------------------------------------

    def _run_one(self, job: store.ReservedJob) -> bool:
        """Run one reserved job and record its outcome. False if the worker began to
        stop while the job waited for its turn (it did not run: hand it back)."""
        group = self.worker.group
        try:
            resolved = resolve_job(job, group)
        except HandlerError as exc:
            failure = unresolvable_failure(job, exc, group)
            log.error("job %s cannot run: %s", job.id, exc)
            self._record_failure(job.id, failure)
            return True
        if resolved.exhausted:
            self._fail_exhausted(resolved)
            return True
        if not self._enter_gate(job):
            return False
        try:
            self._run_resolved(resolved, alone=job.run_alone)
        finally:
            self.worker.gate.leave(alone=job.run_alone)
        return True

    def _enter_gate(self, job: store.ReservedJob) -> bool:
        waited = False
        while not self.worker.gate.enter(alone=job.run_alone, timeout=GATE_POLL):
            waited = True
            if not self.worker.accepting_jobs():
                return False
        if waited:  # its lock aged while it waited for the jobs beside it to end
            self._keep_locks_fresh([job.id])
        return True

    def _run_resolved(self, resolved: Resolved, *, alone: bool) -> None:
        record = resolved.record
        context = JobContext(
            id=record.id,
            queue=record.queue,
            priority=record.priority,
            attempts=record.attempts,
            callable=record.handler.callable,
            database=self.worker.database.name,
            group=self.worker.group.name,
        )
        token = enter_job(context)
        try:
            self._run_code(resolved, alone=alone)
        finally:
            leave_job(token)

    def _run_code(self, resolved: Resolved, *, alone: bool) -> None:
        record = resolved.record
        self.resolved = resolved
        # Before the job's code runs: if it kills the process, the master charges it.
        self.worker.running.set(self.number, record.id, resolved.limits)
        self.slot.begin(record.id, resolved.max_run_time)
        self.worker.show_busy()
        log.debug(
            "job %s (%s) started%s", record.id, record.handler.callable, " alone" if alone else ""
        )
        error: BaseException | None = None
        try:
            try:
                self._hook(resolved, "before")
                self.code.call(resolved.function, *record.handler.args, **record.handler.kwargs)
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
            return
        self.slot.end()
        self.worker.running.clear(self.number)
        self.resolved = None
        self.worker.show_busy()
        if error is None:
            log.debug("job %s succeeded in %.3fs", record.id, elapsed)
            if not self._completed:
                self._completed_since = time.monotonic()
            self._completed.append(record.id)
        else:
            self._job_failed(resolved, error, elapsed)
        self.worker.after_job()

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

    def _job_failed(self, resolved: Resolved, error: BaseException, elapsed: float) -> None:
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
        if failure.outcome is not Outcome.RETRY:
            try:
                self._hook(resolved, "failure")
            except BaseException:
                log.exception("failure hook of job %s raised", resolved.record.id)
        log.warning(
            "job %s failed after %.3fs (attempt %d of %d, %s): %s",
            resolved.record.id,
            elapsed,
            failure.attempts,
            resolved.max_attempts,
            failure.outcome.value,
            last_error.splitlines()[0] if last_error else "",
        )
        self._record_failure(resolved.record.id, failure)

    def _fail_exhausted(self, resolved: Resolved) -> None:
        """A job with no attempt left (its worker died on its last one while the master
        could not tell its limits, or max_attempts was lowered): fail it unrun."""
        failure = exhausted_failure(resolved)
        log.error("job %s: %s", resolved.record.id, failure.last_error)
        if failure.outcome is Outcome.DESTROYED:
            self._record_failure(resolved.record.id, failure)
            return
        self._with_connection(
            "fail",
            lambda conn: store.fail_exhausted_job(
                conn, resolved.record.id, note=failure.last_error
            ),
        )

    def _database_now(self) -> Any:
        now = self._with_connection("clock", store.database_now)
        if now is None:
            raise RuntimeError("the database clock could not be read")
        return now

    def _record_failure(self, job_id: int, failure: Failure) -> None:
        def write(failure: Failure) -> Any:
            return self._with_connection(
                "record", lambda conn: record_failure(conn, job_id, failure) or 1
            )

        if write(failure) is None and self._write_refused:
            # The database refused this last_error (format_error makes that unlikely):
            # record the outcome without it rather than leave the job locked.
            write(dataclasses.replace(failure, last_error="(the job's error could not be stored)"))

    def _hand_back(self, job_ids: list[int]) -> None:
        self._with_connection(
            "hand back",
            lambda conn: store.unlock_job_ids(conn, job_ids, locked_by=self.worker.locked_by),
        )

    # --- database ---------------------------------------------------------------------

    def _reserve(self) -> list[store.ReservedJob] | None:
        group = self.worker.group
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = self._connection()
            with self.worker.deadlines.bounded(conn, "reserve", owner=self) as call:
                try:
                    jobs = store.reserve_jobs(
                        conn,
                        self.worker.job_filter,
                        locked_by=self.worker.locked_by,
                        limit=group.read_ahead,
                        lock_timeout=self.worker.settings.lock_timeout,
                        done=self._completed,
                    )
                except psycopg.Error as exc:
                    self._drop_connection(exc, call.aborted)
                    return None
            self._completed = []
            self._locks_taken = time.monotonic()
            self.db_ok = True
            return jobs
        except psycopg.Error as exc:  # connecting failed
            self._drop_connection(exc, None)
            return None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = store.connect(
                self.worker.database_url,
                application_name=f"{self.worker.application_name} {self.name}",
                timeout=self.worker.settings.database_timeout,
            )
        return self._conn

    def _drop_connection(self, exc: BaseException, aborted: str | None) -> None:
        self.db_ok = False
        if aborted == "stop":
            log.info(
                "database %s: stopped waiting for an answer (the worker stops)",
                self.worker.database.name,
            )
        elif aborted == "timeout":
            log.warning(
                "database %s: no answer within %gs: connection dropped, reconnecting in %.1fs",
                self.worker.database.name,
                self.worker.deadlines.timeout,
                self._backoff,
            )
        else:
            log.warning(
                "database %s: %s (retrying in %.1fs)",
                self.worker.database.name,
                describe_error(exc),
                self._backoff,
            )
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _with_connection(self, what: str, action: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Run a write, reconnecting a few times: a job's outcome is worth a retry.

        If the database stays away, give up: the job stays locked by this worker, and
        the master (or the lock timeout) releases it once this worker is gone.
        """
        delay = RECONNECT_MIN
        self._write_refused = False
        for attempt in range(5):
            aborted: str | None = None
            try:
                conn = self._connection()
                with self.worker.deadlines.bounded(conn, what, owner=self) as call:
                    try:
                        result = action(conn)
                    finally:
                        aborted = call.aborted
                self.db_ok = True
                return result
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._drop_connection(exc, aborted)
                if attempt == 4:
                    log.error("giving up writing a job outcome: %s", describe_error(exc))
                    return None
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
            except psycopg.Error as exc:
                # Not the connection: the statement itself was refused, and would be
                # again. Log it; the job stays locked until the master releases it.
                log.error("writing a job outcome failed: %s", describe_error(exc))
                self._write_refused = True
                return None
        return None


def record_failure(conn: psycopg.Connection[Any], job_id: int, failure: Failure) -> None:
    if failure.outcome is Outcome.RETRY:
        store.retry_job(
            conn,
            job_id,
            attempts=failure.attempts,
            last_error=failure.last_error,
            run_at=failure.run_at,
        )
    elif failure.outcome is Outcome.DESTROYED:
        store.delete_job(conn, job_id)
    else:
        store.fail_job(conn, job_id, attempts=failure.attempts, last_error=failure.last_error)


def timeout_message(max_run_time: float, *, stopped: bool) -> str:
    if stopped:
        return f"JobTimeout: job ran past its max_run_time of {max_run_time:g}s and was stopped"
    return (
        f"JobTimeout: job ran past its max_run_time of {max_run_time:g}s and could not be "
        "stopped; its worker retired to end it"
    )
