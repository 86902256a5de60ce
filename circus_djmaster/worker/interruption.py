"""The job a thread runs, shared with the worker's watchdog: how a job past its
``max_run_time`` is interrupted, and who records its outcome.

The job's own thread runs it (job_thread.py); the worker's main thread watches the
deadlines (process.py). When a deadline passes, the watchdog interrupts the job's code
once (:meth:`JobSlot.interrupt`: its task is cancelled if it is async, else
:class:`~circus_djmaster.exceptions.JobTimeout` is raised in its thread), then, for
async code that ignored the cancellation, raises JobTimeout in its thread
(:meth:`JobSlot.interrupt_thread`); if the job still does not end, the watchdog claims
its outcome (:meth:`JobSlot.claim_outcome`) and the worker retires holding its lock.
Whoever claims the outcome first records it: the thread that finished, or the watchdog.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from circus_djmaster.store import statements
from circus_djmaster.store.statements import Statement
from circus_djmaster.worker.job_code import JobCode
from circus_djmaster.worker.outcomes import (
    Resolved,
    failure_after_error,
    failure_statement,
    timeout_message,
)

__all__ = ["JobSlot", "StuckJob", "Watchdog"]

log = logging.getLogger("circus_djmaster.worker")

# How long an interrupted job gets to unwind before the worker gives up on its thread.
STOP_GRACE = 2.0
# How often the locks of stuck jobs are refreshed (well within config.settings.LOCK_MARGIN).
LOCK_REFRESH = 10.0

if TYPE_CHECKING:
    # Only for annotations: a Protocol class costs a worker's start-up time.
    from typing import Protocol

    class Watched(Protocol):
        """What the watchdog reads of a job thread (worker/job_thread.py's JobThread)."""

        @property
        def slot(self) -> JobSlot: ...
        @property
        def ident(self) -> int | None: ...
        @property
        def resolved(self) -> Resolved | None: ...


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


#: Runs a statement on the worker's own (main thread) connection; None on failure.
Control = Callable[[str, Statement[Any]], Any]


@dataclasses.dataclass
class StuckJob:
    """A job past its max_run_time whose thread could not be stopped: the worker keeps
    its lock fresh while its other jobs finish, then retires."""

    thread: Watched
    last_touch: float  # time.monotonic() of the last lock refresh


class Watchdog:
    """``max_run_time`` for one worker's job threads, run on its main thread.

    ``control`` writes on the main thread's connection; ``retire`` makes the worker
    retire (with a reason) once a job cannot be stopped.
    """

    def __init__(self, *, locked_by: str, control: Control, retire: Callable[[str], None]) -> None:
        self.locked_by = locked_by
        self._control = control
        self._retire = retire
        self.stuck: list[StuckJob] = []

    def is_stuck(self, thread: Watched) -> bool:
        return any(stuck.thread is thread for stuck in self.stuck)

    def watch(self, threads: Sequence[Watched], now: float) -> None:
        """Interrupt the jobs past their deadline (``now``: time.monotonic()), in steps:
        cancel or interrupt, interrupt the thread, give up on it."""
        for thread in threads:
            slot = thread.slot
            if slot.job_id is None or now < slot.deadline or self.is_stuck(thread):
                continue
            if not slot.interrupt_sent:
                log.warning(
                    "job %s is past its max_run_time (%gs): interrupting it",
                    slot.job_id,
                    slot.max_run_time,
                )
                # Hold the lock while the job unwinds, so no other worker takes it.
                self._control(
                    "touch", statements.touch_jobs([slot.job_id], locked_by=self.locked_by)
                )
                slot.interrupt(thread.ident or 0)
            elif now >= slot.deadline + STOP_GRACE / 2 and slot.interrupt_thread(thread.ident or 0):
                # Async code that did not yield to its loop after the cancellation.
                log.warning("job %s ignored its cancellation: interrupting its thread", slot.job_id)
            elif now >= slot.deadline + STOP_GRACE and slot.claim_outcome():
                log.error(
                    "job %s could not be stopped: retiring this worker once the other "
                    "jobs are done; the job stays locked until then",
                    slot.job_id,
                )
                self.stuck.append(StuckJob(thread, now))
                self._retire("a job ran past max_run_time and could not be stopped")
        # Keep the stuck jobs' locks fresh while the other jobs finish.
        for stuck in self.stuck:
            if now - stuck.last_touch > LOCK_REFRESH:
                job_id = stuck.thread.slot.job_id
                if job_id is not None:
                    touch = statements.touch_jobs([job_id], locked_by=self.locked_by)
                    self._control("touch", touch)
                stuck.last_touch = now

    def record_stuck(self) -> None:
        """Record the failure of every stuck job (the worker is about to exit)."""
        for stuck in self.stuck:
            resolved = stuck.thread.resolved
            if resolved is None:
                continue
            message = timeout_message(resolved.max_run_time, stopped=False)

            def database_now() -> dt.datetime:
                now = self._control("clock", statements.database_now())
                if now is None:
                    raise RuntimeError("the database clock could not be read")
                assert isinstance(now, dt.datetime)
                return now

            failure = failure_after_error(resolved, message, database_now)
            self._control("record", failure_statement(resolved.record.id, failure))
