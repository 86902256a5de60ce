"""An application module for fork-mode tests (``app = "tests.support.fork_app"``): it
notes the process that imported it, and its jobs record facts about the process that
runs them (in ``job_events``, like tests/support/jobs.py)."""

from __future__ import annotations

import gc
import os
import sys
import time

from tests.support.jobs import record_event

#: The pid of the process that imported the application: the preloader's in fork mode.
IMPORTED_IN = os.getpid()


def facts(key: str, seconds: float = 0.0) -> None:
    """Record ``imported=PID ppid=PID frozen=N`` as the event of ``key``, then sleep."""
    record_event(key, f"imported={IMPORTED_IN} ppid={os.getppid()} frozen={gc.get_freeze_count()}")
    time.sleep(seconds)
    record_event(key, "done")


def say(key: str) -> None:
    """Write to the worker's stdout and stderr (circus' streams of the launcher)."""
    print(f"stdout of {key}", flush=True)
    print(f"stderr of {key}", file=sys.stderr, flush=True)
    record_event(key, "done")


def parse_facts(event: str) -> dict[str, int]:
    return {name: int(value) for name, value in (item.split("=") for item in event.split())}


def before_fork(preloader: object, target: object) -> None:
    """A before_fork callback noting where it runs and for whom."""
    with open(os.environ["DJMASTER_TEST_CALLBACK_LOG"], "a", encoding="utf-8") as log:
        log.write(
            f"before_fork pid={os.getpid()} launcher={getattr(target, 'launcher_pid', None)} "
            f"watcher={getattr(target, 'watcher', None)} count={getattr(target, 'count', None)}\n"
        )


def after_fork(worker: object) -> None:
    with open(os.environ["DJMASTER_TEST_CALLBACK_LOG"], "a", encoding="utf-8") as log:
        log.write(f"after_fork pid={os.getpid()} info_pid={getattr(worker, 'pid', None)}\n")
