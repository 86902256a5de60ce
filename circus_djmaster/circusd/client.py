"""A synchronous client of circusd's control socket: ``djmaster status``, the demo, the
tests and the benchmarks (the master uses async_client.py).

circus' own ``CircusClient`` underneath, with its error answers and timeouts turned
into :class:`~circus_djmaster.exceptions.CircusError` and
:class:`~circus_djmaster.exceptions.CircusTimeout`.
"""

from __future__ import annotations

from typing import Any

from circus_djmaster.exceptions import CircusError, CircusTimeout

__all__ = ["SyncCircus"]


class SyncCircus:
    """circusd at ``endpoint``; each call waits at most ``timeout`` seconds.

    ``context`` is a zmq Context to share (tests making many clients); by default
    circus' client makes its own. Close it with :meth:`close` (or ``with``).
    """

    def __init__(self, endpoint: str, *, timeout: float = 3.0, context: Any = None) -> None:
        # Imported here: nothing on a worker's path needs circus or zmq.
        from circus.client import CircusClient

        self.endpoint = endpoint
        self.timeout = timeout
        self._client = CircusClient(context=context, endpoint=endpoint, timeout=timeout)

    def __enter__(self) -> SyncCircus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.stop()

    def call(self, command: str, **properties: Any) -> dict[str, Any]:
        """One command; raises CircusError (an error answer) or CircusTimeout."""
        from circus.exc import CallError

        try:
            answer: dict[str, Any] = self._client.call(
                {"command": command, "properties": properties}
            )
        except CallError as error:
            raise CircusTimeout(f"circus {command}: {error}") from error
        if answer.get("status") == "error":
            raise CircusError(command, str(answer.get("reason", "unknown error")))
        return answer

    def status(self, name: str) -> str:
        return str(self.call("status", name=name)["status"])

    def statuses(self) -> dict[str, str]:
        """Watcher name (lower case) -> status."""
        answer = self.call("status")
        return {str(name).lower(): str(status) for name, status in answer["statuses"].items()}

    def pids(self, name: str) -> list[int]:
        """Live processes of a watcher (circus leaves dead and zombie ones out)."""
        return [int(pid) for pid in self.call("list", name=name).get("pids") or []]

    def numprocesses(self, name: str) -> int:
        """The watcher's target, not its live count."""
        answer = self.call("get", name=name, keys=["numprocesses"])
        return int(answer["options"]["numprocesses"])
