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

import threading
import time

from circus_djmaster.worker.job_code import JobCode

__all__ = ["JobSlot"]


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
