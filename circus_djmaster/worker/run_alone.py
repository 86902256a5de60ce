"""The gate a worker's job threads pass to run a job: side by side, or alone.

A job whose worker died while it ran beside other jobs is marked ``run_alone`` by the
master: nobody knows which of them killed the worker, so none was charged, and each now
runs with nothing else running in its process. If it kills its worker again, it did so
alone, and only it is charged (docs/RELIABILITY.md).

The gate is a readers-writer lock with writer preference: ordinary jobs share it; a
``run_alone`` job waits until the jobs running finish, and no new ordinary job starts
while it waits or runs. Waits are bounded (``timeout``) so that a waiting thread can
notice that its worker is stopping and hand its job back instead.
"""

from __future__ import annotations

import threading

__all__ = ["RunAloneGate"]


class RunAloneGate:
    """Shared for ordinary jobs, exclusive for ``run_alone`` ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0  # ordinary jobs running
        self._alone = False  # a run_alone job is running
        self._waiting_alone = 0

    def enter(self, *, alone: bool, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the right to run; True once granted (then
        :meth:`leave` with the same ``alone``), False if the wait timed out."""
        with self._cond:
            if not alone:
                granted = self._cond.wait_for(
                    lambda: not self._alone and not self._waiting_alone, timeout
                )
                if granted:
                    self._running += 1
                return granted
            self._waiting_alone += 1
            try:
                granted = self._cond.wait_for(
                    lambda: not self._alone and not self._running, timeout
                )
                if granted:
                    self._alone = True
                return granted
            finally:
                self._waiting_alone -= 1
                if not self._waiting_alone:
                    self._cond.notify_all()  # ordinary jobs may go again

    def leave(self, *, alone: bool) -> None:
        with self._cond:
            if alone:
                self._alone = False
            else:
                self._running -= 1
            self._cond.notify_all()
