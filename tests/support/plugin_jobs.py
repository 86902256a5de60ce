"""Job functions of the master plugin's acceptance tests (the shared ones are in jobs.py)."""

from __future__ import annotations

import time

from tests.support.jobs import allocate, record_event


def allocate_then_sleep(key: str, megabytes: int, seconds: float) -> None:
    """Grow the worker's RSS by ``megabytes``, then keep running for ``seconds``."""
    record_event(key, "start")
    allocate(f"{key}-allocated", megabytes)
    time.sleep(seconds)
    record_event(key, "done")
