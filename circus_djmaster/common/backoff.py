"""Exponential back-off: the one rule for every retry of a connection or command.

Used by the master's pollers and LISTEN connections (0.5 s doubling to 30 s), the
workers' job threads and writes (the same), the workers' LISTEN wake-up (1 s to 30 s)
and the circus client's retries while circus is busy (50 ms to 1 s).
"""

from __future__ import annotations

__all__ = ["Backoff"]


class Backoff:
    """Delays in seconds: ``first``, doubled after each one, capped at ``cap``."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        if first <= 0 or cap < first:
            raise ValueError(f"need 0 < first <= cap, got first={first}, cap={cap}")
        self.first = first
        self.cap = cap
        self._next = first

    @property
    def current(self) -> float:
        """The delay :meth:`next` gives next (for a log line announcing it)."""
        return self._next

    def next(self) -> float:
        """The delay to wait now; the following one doubles (up to ``cap``)."""
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        """After a success: start again from ``first``."""
        self._next = self.first
