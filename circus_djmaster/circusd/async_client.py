"""An asyncio client of circusd's control socket, for the plugin's event loop.

Why not circus' own clients (measured on circus 0.19, see docs/master.md):

* ``CircusPlugin.call()`` blocks the loop with no timeout, and cannot be used in
  ``handle_init`` (its socket does not exist yet).
* ``AsyncCircusClient`` has no timeout either, and replaces its receive callback on
  every call, so two calls in flight steal each other's answers.

This one sends one command at a time on a DEALER socket, matches the answer by id
(dropping late answers of calls that timed out), and retries commands that circus
refuses because its global command lock is busy ("arbiter is already running …":
docs/master.md, "circus 0.19, measured"). A timeout rebuilds the socket: a DEALER would
otherwise queue requests for a circusd that went away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from circus_djmaster.common.backoff import Backoff
from circus_djmaster.exceptions import CircusError, CircusTimeout

__all__ = ["SCALING_RETRY", "AsyncCircus"]

log = logging.getLogger(__name__)


#: How long a scaling command is retried while circus is busy.
SCALING_RETRY = 3.0
#: Retries while circus is busy: 50 ms doubling up to 1 s.
BUSY_RETRY_FIRST = 0.05
BUSY_RETRY_CAP = 1.0


class AsyncCircus:
    """circusd's control socket, on the master's event loop (one command at a time)."""

    def __init__(self, endpoint: str, *, timeout: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._context = zmq.asyncio.Context()
        self._socket: zmq.asyncio.Socket | None = None
        self._lock = asyncio.Lock()
        #: Set by the master: True stops retries at once (a signal waits to be handled).
        self.interrupted: Callable[[], bool] = lambda: False
        #: Commands sent so far (the master logs how many a turn took: benchmark B7).
        self.sent = 0

    def _connect(self) -> zmq.asyncio.Socket:
        if self._socket is None:
            socket = self._context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.IDENTITY, uuid.uuid4().hex.encode())
            socket.connect(self.endpoint)
            self._socket = socket
        return self._socket

    def _reset(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        self._reset()
        self._context.term()

    async def call(
        self, command: str, *, timeout: float | None = None, **properties: Any
    ) -> dict[str, Any]:
        """One command; raises CircusError (error answer) or CircusTimeout."""
        timeout = self.timeout if timeout is None else timeout
        message_id = uuid.uuid4().hex
        message = {"id": message_id, "command": command, "properties": properties}
        self.sent += 1
        async with self._lock:
            socket = self._connect()
            deadline = time.monotonic() + timeout
            try:
                await asyncio.wait_for(socket.send(json.dumps(message).encode()), timeout)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or not await socket.poll(left * 1000):  # POLLIN
                        raise CircusTimeout(f"circus {command}: no answer within {timeout:g}s")
                    try:
                        answer = json.loads(await socket.recv())
                    except ValueError:
                        continue
                    if isinstance(answer, dict) and answer.get("id") == message_id:
                        break
                    # A late answer to a call that timed out: not ours.
            except (CircusTimeout, asyncio.TimeoutError, zmq.ZMQError) as error:
                self._reset()
                if isinstance(error, CircusTimeout):
                    raise
                raise CircusTimeout(f"circus {command}: {error}") from error
        if answer.get("status") == "error":
            raise CircusError(command, str(answer.get("reason", "unknown error")))
        return answer

    async def command(
        self, command: str, *, retry_for: float = 10.0, **properties: Any
    ) -> dict[str, Any]:
        """``call`` retried with backoff while circus' command lock is busy, up to
        ``retry_for`` seconds; then the last CircusError is raised."""
        deadline = time.monotonic() + retry_for
        backoff = Backoff(BUSY_RETRY_FIRST, BUSY_RETRY_CAP)
        while True:
            try:
                return await self.call(command, **properties)
            except CircusError as error:
                delay = backoff.current
                if not error.busy or time.monotonic() + delay > deadline or self.interrupted():
                    raise
                log.debug("circus busy (%s); %s again in %.2fs", error.reason, command, delay)
            await asyncio.sleep(backoff.next())

    # --- queries (no lock in circus: they never wait) ----------------------------

    async def statuses(self) -> dict[str, str]:
        """Watcher name (lower case) -> status."""
        answer = await self.call("status")
        return {str(name).lower(): str(status) for name, status in answer["statuses"].items()}

    async def status(self, name: str) -> str:
        return str((await self.call("status", name=name))["status"])

    async def pids(self, name: str) -> list[int]:
        """Live processes of a watcher (circus leaves dead and zombie ones out)."""
        return [int(pid) for pid in (await self.call("list", name=name))["pids"]]

    async def numprocesses(self, name: str) -> int:
        """The watcher's target, not its live count."""
        answer = await self.call("get", name=name, keys=["numprocesses"])
        return int(answer["options"]["numprocesses"])

    # --- commands (take circus' global lock; retried when busy) ------------------

    # Scaling commands retry briefly: the next turn of the master plans again anyway.

    async def incr(self, name: str, count: int) -> None:
        await self.command("incr", name=name, nb=count, retry_for=SCALING_RETRY)

    async def set_numprocesses(self, name: str, count: int) -> None:
        await self.command(
            "set", name=name, options={"numprocesses": count}, retry_for=SCALING_RETRY
        )

    async def start(self, name: str) -> None:
        await self.command("start", name=name, match="simple", retry_for=SCALING_RETRY)

    async def stop(self, name: str, *, retry_for: float = 10.0) -> None:
        await self.command("stop", name=name, match="simple", retry_for=retry_for)
