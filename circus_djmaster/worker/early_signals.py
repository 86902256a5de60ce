"""Signals that reach a worker before its arbiter loop runs are recorded, not fatal.

Python's default action for TERM, INT, QUIT, USR1 and USR2 ends the process; a worker
told to stop while it imports the application would die with -15, which circus takes
for a crash and respawns. ``install()`` runs first thing in ``python -m circus_djmaster
worker``; the worker replays :func:`take` once its own handlers are in place.
"""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

_pending: list[int] = []


def _record(signum: int, _frame: FrameType | None) -> None:
    _pending.append(signum)


def install() -> None:
    for signum in SIGNALS:
        signal.signal(signum, _record)


def take() -> list[int]:
    """The signals recorded so far, oldest first (and forget them)."""
    taken = list(_pending)
    del _pending[: len(taken)]
    return taken
