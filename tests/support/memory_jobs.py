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
