"""Job functions for the in-process unit tests of the worker: they record their runs in
memory (:data:`RUNS`) instead of in a database."""

from __future__ import annotations

from circus_djmaster import job

RUNS: list[str] = []


def ok(key: str) -> None:
    RUNS.append(key)


def boom(key: str) -> None:
    RUNS.append(key)
    raise ValueError(f"boom {key}")


@job(max_attempts=1)
def fragile(key: str) -> None:
    RUNS.append(key)
    raise RuntimeError(f"fragile {key}")


def answer(key: str) -> dict[str, object]:
    """Succeeds with a JSON result (kept with keep_finished)."""
    RUNS.append(key)
    return {"key": key, "answer": 42}


def unkeepable(key: str) -> object:
    RUNS.append(key)
    return {1, 2}  # a set is not JSON


@job(keep_finished=600)
def kept_by_its_job(key: str) -> str:
    RUNS.append(key)
    return key.upper()


def wait_for_cancel(key: str) -> None:
    """Polls its context until cancelled (the test sets the event), then stops."""
    import time

    from circus_djmaster import current_job

    context = current_job()
    assert context is not None
    RUNS.append(key)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        context.raise_if_cancel_requested()
        time.sleep(0.01)
    RUNS.append(f"{key} never cancelled")
