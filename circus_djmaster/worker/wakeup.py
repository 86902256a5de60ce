"""A worker's LISTEN connection: wake idle job threads as soon as jobs for them arrive.

Without it an idle thread looks again only every ``sleep_delay``; with it a warm worker
(``idle_timeout`` > 0) starts a new job within milliseconds of its commit. The worker's
main loop selects on :meth:`NotifyWakeup.fileno` beside its own wake-up pipe, so this
costs no thread. If the connection fails, polling every ``sleep_delay`` still works and
the connection is retried with backoff.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from circus_djmaster.common.backoff import Backoff
from circus_djmaster.contracts.notify import queues_from_payload
from circus_djmaster.store import statements
from circus_djmaster.store.errors import describe_error
from circus_djmaster.store.sync_executor import connect, execute
from circus_djmaster.worker.db_deadlines import CallDeadlines

log = logging.getLogger("circus_djmaster.worker")

# Longest wait (seconds) of the main thread for the LISTEN connection to open.
CONNECT_WAIT = 2.0


class NotifyWakeup:
    def __init__(
        self,
        url: str,
        queues: tuple[str, ...],
        database: str,
        *,
        deadlines: CallDeadlines,
        application_name: str = "djmaster listen",
        timeout: float = 10.0,
    ) -> None:
        self._url = url
        self._queues = frozenset(queues)
        self._database = database
        self._deadlines = deadlines
        self._application_name = application_name
        self._timeout = timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._backoff = Backoff(first=1.0, cap=30.0)
        self._retry_at = 0.0

    def fileno(self) -> int | None:
        """The socket to select on, (re)connecting when due; None while disconnected."""
        if self._conn is None and time.monotonic() >= self._retry_at:
            self._connect()
        return self._conn.fileno() if self._conn is not None else None

    def drain(self) -> bool:
        """Read the pending notifications; True if one may concern this worker's queues."""
        if self._conn is None:
            return False
        relevant = False
        try:
            for notify in self._conn.notifies(timeout=0):
                queues = queues_from_payload(notify.payload)
                if queues is None or not self._queues or queues & self._queues:
                    relevant = True
        except psycopg.Error as exc:
            self._lost(exc)
            return True  # jobs may have arrived while the connection was failing
        return relevant

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self) -> None:
        # On the worker's main thread: short waits, so that signals are handled soon.
        timeout = min(self._timeout, CONNECT_WAIT)
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = connect(self._url, application_name=self._application_name, timeout=timeout)
            with self._deadlines.bounded(conn, "listen", owner=self, timeout=timeout):
                execute(conn, statements.listen())
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()
            self._lost(exc)
            return
        self._conn = conn
        self._backoff.reset()

    def _lost(self, exc: BaseException) -> None:
        delay = self._backoff.next()
        log.warning(
            "database %s: LISTEN connection failed (%s); retrying in %.0fs",
            self._database,
            describe_error(exc),
            delay,
        )
        self.close()
        self._retry_at = time.monotonic() + delay
