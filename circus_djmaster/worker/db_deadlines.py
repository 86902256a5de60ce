"""Every database round trip of a worker process ends within a deadline.

A backend that stops answering (a stopped or hung server process, a network path that
drops packets without a reset, a proxy that hangs) leaves a psycopg call blocked in the
kernel forever: the server's ``statement_timeout`` cannot fire in a backend that does not
run, and TCP keepalives only probe an idle TCP connection (not a Unix socket, not one
with unacknowledged data: that is ``tcp_user_timeout``'s job, and only on TCP). So the
worker bounds each call itself: the calling thread registers the call's connection with
a deadline (:meth:`CallDeadlines.bounded`); a watchdog thread shuts the connection's
socket down once the deadline passes, so the blocked call returns at once with
``psycopg.OperationalError``, and the caller closes that connection and reconnects.

The same shutdown ends, on request (:meth:`CallDeadlines.abort`), the call of a thread
the worker no longer waits for: a TERM must not wait on a hung idle query.

The watchdog sleeps until the earliest deadline it knows (or one timeout when there is
none) and is woken only by a call whose deadline comes before that: with the common
timeout, deadlines come in the order calls start, so a registration costs a lock and a
dict entry, not a thread switch (this is on the path of every reserve).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["Call", "CallDeadlines", "shut_down"]


@dataclasses.dataclass
class Call:
    """One database round trip under way."""

    fd: int
    what: str
    owner: object
    started: float  # time.monotonic()
    deadline: float
    aborted: str | None = None  # why it was cut short: "timeout" or "stop"


class CallDeadlines:
    """The deadlines of one process's database calls, and the watchdog enforcing them.

    ``timeout`` is in seconds. Thread-safe; the watchdog is a daemon thread started by
    the first call.
    """

    def __init__(self, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout
        self._lock = threading.Condition()
        self._calls: dict[int, Call] = {}
        self._thread: threading.Thread | None = None
        self._wake_at = 0.0  # when the watchdog wakes next (monotonic)
        self._closed = False

    @contextlib.contextmanager
    def bounded(
        self, conn: Any, what: str, owner: object = None, *, timeout: float | None = None
    ) -> Iterator[Call]:
        """Register a call on ``conn`` (a psycopg connection) for its duration, with
        ``timeout`` seconds (default: the common one).

        Yields the :class:`Call`; after a ``psycopg.Error`` its ``aborted`` says
        whether the deadline (or :meth:`abort`) ended it. A connection that is not
        open yet (``conn`` None or closed) is not watched.
        """
        fd = _fd_of(conn)
        now = time.monotonic()
        call = Call(fd, what, owner, now, now + (self.timeout if timeout is None else timeout))
        if fd < 0:
            yield call
            return
        key = id(call)
        with self._lock:
            self._calls[key] = call
            if call.deadline < self._wake_at:
                self._lock.notify_all()
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._watch, name="db-deadlines", daemon=True
                )
                self._thread.start()
        try:
            yield call
        finally:
            with self._lock:
                self._calls.pop(key, None)

    def abort(self, owner: object, why: str = "stop", *, what: str | None = None) -> bool:
        """End the call ``owner`` has under way (only a call named ``what``, if given),
        now. True if there was one."""
        with self._lock:
            found = False
            for call in self._calls.values():
                if what is not None and call.what != what:
                    continue
                if call.owner is owner and call.aborted is None:
                    call.aborted = why
                    shut_down(call.fd)
                    found = True
            return found

    def busy_since(self, owner: object) -> float | None:
        """When ``owner``'s call under way started (monotonic), or None."""
        with self._lock:
            starts = [call.started for call in self._calls.values() if call.owner is owner]
        return min(starts) if starts else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _watch(self) -> None:
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                soonest = now + self.timeout
                for call in self._calls.values():
                    if call.aborted is not None:
                        continue
                    if call.deadline <= now:
                        call.aborted = "timeout"
                        shut_down(call.fd)
                    else:
                        soonest = min(soonest, call.deadline)
                self._wake_at = soonest
                self._lock.wait(soonest - now)


def _fd_of(conn: Any) -> int:
    if conn is None or getattr(conn, "closed", True):
        return -1
    try:
        return int(conn.pgconn.socket)
    except Exception:  # not connected: nothing to watch
        return -1


def shut_down(fd: int) -> None:
    """Shut down (both ways) the socket behind ``fd`` without closing ``fd``: a call
    blocked on it returns at once, and its owner closes the connection as usual."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    with sock, contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
