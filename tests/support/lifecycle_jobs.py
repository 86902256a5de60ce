"""Job functions of the job-lifecycle tests (issue 15): results, cooperative cancels,
recurring ticks. They record what happened in ``job_events`` (tests/support/jobs.py)."""

from __future__ import annotations

import time

from circus_djmaster import current_job
from tests.support.jobs import record_event


def add(key: str, a: int, b: int) -> dict[str, object]:
    """Returns a JSON result (kept with keep_finished)."""
    record_event(key, "done")
    return {"sum": a + b, "key": key}


def cooperative(key: str, seconds: float) -> str:
    """Works in small steps for up to ``seconds``, stopping where it safely can once it
    is asked to (current_job().raise_if_cancel_requested())."""
    context = current_job()
    assert context is not None
    record_event(key, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if context.cancel_requested:
            record_event(key, "stopping")
        context.raise_if_cancel_requested()
        time.sleep(0.05)
    record_event(key, "done")
    return "finished"


def tick() -> None:
    """A recurring job: records its own id, which the test maps to its due time."""
    context = current_job()
    assert context is not None
    record_event(str(context.id), "tick")
