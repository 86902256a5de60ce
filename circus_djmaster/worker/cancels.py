"""Cancel requests reaching the jobs a worker holds (``djmaster jobs cancel``).

A thread of its own (never the main thread: a database that stops answering must not
delay a worker's signals) asks the database, every :data:`CANCEL_POLL` seconds while the
worker holds jobs (running, or reserved ahead in its job feed), which of them were asked
to stop: one look-up of the held ids by primary key (``cancel_requested``), nothing
while it holds none. It sets the running job's ``JobContext.cancel_event`` (the job
sees ``cancel_requested``; it is never interrupted), and remembers the others, which
the thread taking them drops, unrun (:meth:`CancelWatch.requested`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from circus_djmaster.common.backoff import Backoff
from circus_djmaster.common.logs import event
from circus_djmaster.store import statements
from circus_djmaster.store.errors import describe_error
from circus_djmaster.store.sync_executor import connect, execute
from circus_djmaster.worker.db_deadlines import CallDeadlines

if TYPE_CHECKING:
    from circus_djmaster.worker.job_thread import JobThread

__all__ = ["CANCEL_POLL", "CancelWatch"]

log = logging.getLogger("circus_djmaster.worker")

#: Seconds between two look-ups while jobs are held.
CANCEL_POLL = 1.0


class CancelWatch(threading.Thread):
    """The cancel look-ups of one worker process (see the module)."""

    def __init__(
        self,
        threads: Callable[[], Sequence[JobThread]],
        reserved: Callable[[], Iterable[int]],
        *,
        url: str,
        database: str,
        application_name: str,
        timeout: float,
        deadlines: CallDeadlines,
        interval: float = CANCEL_POLL,
        connect: Callable[..., psycopg.Connection[Any]] = connect,
    ) -> None:
        """``threads`` gives the worker's job threads (their running job's context),
        ``reserved`` the ids of the jobs reserved ahead; ``timeout`` bounds the session
        (the settings' database_timeout), ``deadlines`` each call; ``connect`` opens
        the connection (:func:`store.sync_executor.connect`; the unit tests give an
        in-memory one)."""
        super().__init__(name="cancels", daemon=True)
        self._threads = threads
        self._reserved = reserved
        self._url = url
        self._database = database
        self._application_name = application_name
        self._timeout = timeout
        self._deadlines = deadlines
        self._interval = interval
        self._connect = connect
        self._stopped = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._backoff = Backoff()
        #: Held job ids found cancelled (replaced, never mutated: read by job threads).
        self.cancelled: frozenset[int] = frozenset()

    def requested(self, job_id: int) -> bool:
        """Whether held job ``job_id`` was found cancelled."""
        return job_id in self.cancelled

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        pause = self._interval
        while not self._stopped.wait(pause):
            pause = self._interval if self.check() else self._backoff.next()
        if self._conn is not None:
            self._conn.close()

    def check(self) -> bool:
        """One look-up (none while no job is held); False after a database error."""
        threads = list(self._threads())
        contexts = [thread.context for thread in threads]
        held = set(self._reserved()) | {c.id for c in contexts if c is not None}
        self.cancelled = self.cancelled & held
        if not held - self.cancelled:
            return True
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect(
                    self._url, application_name=self._application_name, timeout=self._timeout
                )
            with self._deadlines.bounded(self._conn, "cancels", owner=self):
                found = execute(self._conn, statements.cancel_requested(sorted(held)))
        except psycopg.Error as exc:
            log.warning("database %s: cancel look-up: %s", self._database, describe_error(exc))
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return False
        self._backoff.reset()
        for job_id in sorted(found - self.cancelled):
            log.info(
                "job %s: cancel requested", job_id, extra=event("cancel_requested", job_id=job_id)
            )
        self.cancelled = self.cancelled | frozenset(found)
        for context in contexts:
            if context is not None and context.id in self.cancelled:
                context.cancel_event.set()
        return True
