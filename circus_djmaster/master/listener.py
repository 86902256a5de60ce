"""LISTEN for new jobs on one database, on its own autocommit connection.

The trigger of ``delayed_jobs`` notifies the queues of new jobs (the channel and payload:
:mod:`circus_djmaster.contracts.notify`). The listener hands each payload to a callback that
only records it and wakes the database's poller: a burst of notifications costs one
check (coalescing happens in the poller, which drains everything recorded at once).

The connection is probed (``SELECT 1``) whenever ``probe_interval`` passes without a
notification, so a connection that died silently (a dropped network path, a restarted
server behind a proxy) is noticed and replaced. Reconnects back off exponentially, and
after every (re)connect the poller is woken once: notifications sent while the listener
was away are lost, a count is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from circus_djmaster.common.backoff import Backoff
from circus_djmaster.contracts.notify import queues_from_payload
from circus_djmaster.store import statements
from circus_djmaster.store.async_executor import execute
from circus_djmaster.store.errors import describe_error

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]


class Listener:
    def __init__(
        self,
        database: str,
        connect: Connect,
        on_notify: Callable[[frozenset[str] | None], None],
        *,
        probe_interval: float = 10.0,
        probe_timeout: float = 5.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.database = database
        self._connect = connect
        self._on_notify = on_notify
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self._backoff = backoff or Backoff()
        self.connected = asyncio.Event()  # set while LISTEN is in place (tests, status)

    async def run(self) -> None:
        """Listen until cancelled; never raises anything but CancelledError."""
        failures = 0
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await asyncio.wait_for(self._connect(), self.probe_timeout * 2)
                await asyncio.wait_for(execute(conn, statements.listen()), self.probe_timeout)
                if failures:
                    log.info(
                        "database %s: listening again after %d failure(s)", self.database, failures
                    )
                else:
                    log.info("database %s: listening for new jobs", self.database)
                failures = 0
                self._backoff.reset()
                self.connected.set()
                self._on_notify(None)  # what was sent while away is lost: look at everything
                await self._listen(conn)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.connected.clear()
                failures += 1
                delay = self._backoff.next()
                log.warning(
                    "database %s: LISTEN connection failed (%s); reconnecting in %.1fs "
                    "(attempt %d)",
                    self.database,
                    describe_error(error),
                    delay,
                    failures,
                )
                await _close(conn)
                conn = None
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()
                await _close(conn)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        next_probe = time.monotonic() + self.probe_interval
        while True:
            # What arrived, including notifications read along with a probe's answer.
            async for notify in conn.notifies(timeout=0):
                self._on_notify(queues_from_payload(notify.payload))
            remaining = next_probe - time.monotonic()
            if remaining <= 0:  # make sure the connection lives
                await self._probe(conn)
                next_probe = time.monotonic() + self.probe_interval
            else:
                await _readable(conn, remaining)

    async def _probe(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """A round trip within probe_timeout, or TimeoutError.

        Not asyncio.wait_for: cancelling a query makes psycopg send a cancel request and
        wait for the query to end (5 s more, or longer if the server is unreachable).
        A connection that does not answer is dead: close its socket, then cancel.
        """
        probe = asyncio.ensure_future(execute(conn, statements.probe()))
        done, _ = await asyncio.wait({probe}, timeout=self.probe_timeout)
        if probe in done:
            probe.result()  # raises if the probe failed
            return
        conn.pgconn.finish()
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)
        raise TimeoutError(f"no answer to a probe within {self.probe_timeout:g}s")


async def _readable(conn: psycopg.AsyncConnection[Any], timeout: float) -> None:
    """Until the connection's socket has data, or ``timeout``.

    Not ``conn.notifies(timeout=...)``: psycopg waits in 0.1 s slices, ten wake-ups a
    second per connection, which made most of an idle master's CPU (benchmarks/ B5).
    """
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = conn.pgconn.socket

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(ready, timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)


async def _close(conn: psycopg.AsyncConnection[Any] | None) -> None:
    if conn is None or conn.closed:
        return
    # Closing a broken connection may fail too; it is gone either way.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), 2.0)
