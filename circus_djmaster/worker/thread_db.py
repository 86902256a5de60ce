"""A job thread's own database connection.

Made on demand, autocommit, every call bounded by the worker's deadlines
(db_deadlines.py, registered under the job thread as owner, so the worker can see a
stalled call and cut it short); after an error the connection is dropped and made again,
the thread backing off (:attr:`ThreadDatabase.backoff`). :attr:`ThreadDatabase.ok` says
whether the last call worked: the worker shows `` [NO DB]`` when no idle thread's does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from circus_djmaster.common.backoff import Backoff
from circus_djmaster.store.errors import describe_error
from circus_djmaster.store.statements import Statement
from circus_djmaster.store.sync_executor import connect, execute
from circus_djmaster.worker.db_deadlines import CallDeadlines

__all__ = ["WRITE_TRIES", "Connect", "ThreadDatabase"]

log = logging.getLogger("circus_djmaster.worker")
T = TypeVar("T")

#: Opens a connection: (url, *, application_name, timeout) -> psycopg.Connection.
Connect = Callable[..., psycopg.Connection[Any]]

# Tries of a write of a job's outcome before giving up (backing off between them).
WRITE_TRIES = 5


class ThreadDatabase:
    """The connection of one job thread (``owner``) to ``database`` at ``url``."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        application_name: str,
        timeout: float,
        deadlines: CallDeadlines,
        owner: object,
        connect: Connect = connect,
    ) -> None:
        """``connect`` opens the connection (:func:`store.sync_executor.connect`; the
        unit tests give an in-memory one)."""
        self.url = url
        self.database = database
        self.application_name = application_name
        self.timeout = timeout
        self.deadlines = deadlines
        self.owner = owner
        self._connect = connect
        #: False from a failed (or timed-out) call to the next one that works.
        self.ok = True
        #: The thread's pause after a failed reserve: 0.5 s doubling up to 30 s.
        self.backoff = Backoff()
        #: The last write was refused by the database (not a lost connection).
        self.write_refused = False
        self._conn: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def once(self, what: str, statement: Statement[T]) -> tuple[bool, T | None]:
        """Run ``statement`` once: ``(True, its result)``, or ``(False, None)`` after a
        database error (logged; the connection is dropped)."""
        try:
            conn = self._connection()
            with self.deadlines.bounded(conn, what, owner=self.owner) as call:
                try:
                    result = execute(conn, statement)
                except psycopg.Error as exc:
                    self._drop(exc, call.aborted)
                    return False, None
        except psycopg.Error as exc:  # connecting failed
            self._drop(exc, None)
            return False, None
        self.ok = True
        return True, result

    def write(self, what: str, statement: Statement[Any]) -> bool:
        """Run a write (see :meth:`attempt`); True once done."""
        done, _result = self.attempt(what, statement)
        return done

    def attempt(self, what: str, statement: Statement[T]) -> tuple[bool, T | None]:
        """Run a statement, reconnecting a few times: a job's outcome is worth a retry.
        ``(True, its result)`` once done, ``(False, None)`` when it could not be.

        If the database stays away, give up: the job stays locked by this worker, and
        the master (or the lock timeout) releases it once this worker is gone.
        """
        backoff = Backoff()
        self.write_refused = False
        for attempt in range(WRITE_TRIES):
            aborted: str | None = None
            try:
                conn = self._connection()
                with self.deadlines.bounded(conn, what, owner=self.owner) as call:
                    try:
                        result = execute(conn, statement)
                    finally:
                        aborted = call.aborted
                self.ok = True
                return True, result
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._drop(exc, aborted)
                if attempt == WRITE_TRIES - 1:
                    log.error("giving up writing a job outcome: %s", describe_error(exc))
                    return False, None
                time.sleep(backoff.next())
            except psycopg.Error as exc:
                # Not the connection: the statement itself was refused, and would be
                # again. Log it; the job stays locked until the master releases it.
                log.error("writing a job outcome failed: %s", describe_error(exc))
                self.write_refused = True
                return False, None
        return False, None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect(
                self.url, application_name=self.application_name, timeout=self.timeout
            )
        return self._conn

    def _drop(self, exc: BaseException, aborted: str | None) -> None:
        self.ok = False
        if aborted == "stop":
            log.info("database %s: stopped waiting for an answer (the worker stops)", self.database)
        elif aborted == "timeout":
            log.warning(
                "database %s: no answer within %gs: connection dropped, reconnecting in %.1fs",
                self.database,
                self.deadlines.timeout,
                self.backoff.current,
            )
        else:
            log.warning(
                "database %s: %s (retrying in %.1fs)",
                self.database,
                describe_error(exc),
                self.backoff.current,
            )
        self.close()
