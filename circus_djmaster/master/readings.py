"""psutil readings of worker processes: the state their title shows, RSS (children
included) and age; and how a dead worker ended.

circus' ``stats`` rounds memory into strings, so the master reads the pids circus lists
itself (docs/master.md, "circus 0.19, measured"). RSS includes the worker's children (a
job may start processes): common/memory.py.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from circus_djmaster.common.memory import rss_with_children
from circus_djmaster.contracts.titles import WorkerState, state_from_title

__all__ = [
    "OS_PROCESSES",
    "OsProcesses",
    "Processes",
    "WorkerReading",
    "describe_exit",
    "read_worker",
    "zombie_exit_code",
]


@dataclass(frozen=True)
class WorkerReading:
    """A worker process as the master reads it with psutil, each turn."""

    pid: int
    state: WorkerState
    rss: int | None = None  # bytes, children included; None when unreadable
    age: float | None = None  # seconds since the process started
    retiring: bool = False  # the master already sent it SIGTERM (a second one is immediate)

    @property
    def leaving(self) -> bool:
        """Already on its way out: it finishes its jobs and takes no new ones."""
        return self.retiring or self.state is WorkerState.OLD

    @property
    def spare(self) -> bool:
        """Will take a ready job without a new process being started for it."""
        return not self.leaving and self.state in (WorkerState.STARTING, WorkerState.IDLE)

    @property
    def busy(self) -> bool:
        return not self.leaving and self.state is WorkerState.BUSY

    @property
    def signalable(self) -> bool:
        """Its signal handlers are in place: a worker sets its title after installing
        them. Before that, TERM would kill it outright (a crash that circus respawns)."""
        return self.state is not WorkerState.STARTING


def read_worker(pid: int, *, retiring: bool = False) -> WorkerReading | None:
    """The worker's reading, or None if the process is gone (or a zombie)."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            title = " ".join(process.cmdline())
            age = max(0.0, time.time() - process.create_time())
            rss = rss_with_children(process)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        # Not ours to read (should not happen: circus runs workers as our user).
        return WorkerReading(pid, WorkerState.STARTING, retiring=retiring)
    return WorkerReading(pid, state_from_title(title), rss=rss, age=age, retiring=retiring)


def zombie_exit_code(pid: int) -> int | None:
    """How a dead process that circus has not reaped yet ended, in circus' reap terms
    (a negative signal number, or the exit code); None when it is not a zombie.

    circus drops zombies from ``list`` at once but reaps (and publishes the exit code)
    only at its next check: the master may see the pid gone before the ``reap`` event.
    The kernel keeps the status in field 52 of /proc/PID/stat until then.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (the state) on
    if not fields or fields[0] != "Z" or len(fields) < 50:
        return None
    status = int(fields[49])
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else None


def describe_exit(exit_code: int | None) -> str:
    """circus' reap ``exit_code`` in words (negative: killed by that signal)."""
    if exit_code is None:
        return "died (exit status unknown)"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"was killed by {name}"
    return f"exited with code {exit_code}"


class Processes(Protocol):
    """What the master does with worker processes besides asking circus: read them,
    signal them, and read how a dead one ended. :data:`OS_PROCESSES` in production;
    the unit tests of the loop give it processes of their own."""

    def read(self, pid: int, *, retiring: bool) -> WorkerReading | None:
        """The reading of worker ``pid``; None when it is gone (:func:`read_worker`)."""
        ...

    def kill(self, pid: int, signum: int) -> None:
        """Send ``signum``; ProcessLookupError when there is no such process."""
        ...

    def exit_code(self, pid: int) -> int | None:
        """How a dead, not yet reaped process ended (:func:`zombie_exit_code`)."""
        ...


class OsProcesses:
    """:class:`Processes` of this machine: psutil, ``os.kill`` and ``/proc``."""

    def read(self, pid: int, *, retiring: bool) -> WorkerReading | None:
        return read_worker(pid, retiring=retiring)

    def kill(self, pid: int, signum: int) -> None:
        os.kill(pid, signum)

    def exit_code(self, pid: int) -> int | None:
        return zombie_exit_code(pid)


OS_PROCESSES = OsProcesses()
