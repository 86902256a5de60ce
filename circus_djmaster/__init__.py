"""circus-djmaster: Postgres-backed delayed jobs with a circus plugin as master.

The public API (``job``, ``enqueue``, ``enqueue_many``, ``aenqueue``, ``current_job``...)
is loaded on first use, so that ``python -m circus_djmaster worker`` can install its
signal handlers before the heavy imports (psycopg) and a worker starts as fast as it can.
"""

from __future__ import annotations

# Neither typing nor importlib at import: every process of the package imports this
# module first, a fork-mode launcher included (its start is measured in milliseconds).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from circus_djmaster.api.context import JobContext, current_job
    from circus_djmaster.api.control import cancel
    from circus_djmaster.api.jobs import (
        Job,
        JobCall,
        JobOptions,
        JobRecord,
        aenqueue,
        aenqueue_many,
        enqueue,
        enqueue_many,
        job,
    )
    from circus_djmaster.api.recurring import recurring

__all__ = [
    "Job",
    "JobCall",
    "JobContext",
    "JobOptions",
    "JobRecord",
    "aenqueue",
    "aenqueue_many",
    "cancel",
    "current_job",
    "enqueue",
    "enqueue_many",
    "job",
    "recurring",
]
# Where each public name lives (loaded on first use).
_HOMES = {
    "JobContext": ".api.context",
    "current_job": ".api.context",
    "cancel": ".api.control",
    "recurring": ".api.recurring",
}
__version__ = "0.1.0.dev0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        value = getattr(importlib.import_module(_HOMES.get(name, ".api.jobs"), __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
