"""psutil readings of worker processes: the state their title shows, memory (children
included) and age; how a dead worker ended; and the preloader's generation.

circus' ``stats`` rounds memory into strings, so the master reads the pids circus lists
itself (docs/master.md, "circus 0.19, measured"). Memory includes the worker's children
(a job may start processes): common/memory.py.

With ``spawn = "fork"`` the pid circus lists is a launcher standing for a worker forked
by the preloader (worker/launcher.py): its command name names that worker, and the
reading is the worker's (title, age, RSS, and USS, which its limits compare: the pages
it shares with the preloader count in its RSS, not in its USS).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from circus_djmaster.common.memory import rss_with_children, uss_with_children
from circus_djmaster.contracts.preloader import launched_pid
from circus_djmaster.contracts.titles import (
    WORKER_PREFIX,
    WorkerState,
    preloader_is_old,
    state_from_title,
    wid_from_title,
)

__all__ = [
    "OS_PROCESSES",
    "OsProcesses",
    "PreloaderReading",
    "Processes",
    "WorkerReading",
    "describe_exit",
    "forked_worker",
    "read_preloader",
    "read_worker",
    "zombie_exit_code",
]


@dataclass(frozen=True)
class WorkerReading:
    """A worker process as the master reads it with psutil, each turn."""

    pid: int  # the pid circus lists (a launcher's with spawn = "fork")
    state: WorkerState
    rss: int | None = None  # bytes, children included; None when unreadable
    age: float | None = None  # seconds since the process started
    retiring: bool = False  # the master already sent it SIGTERM (a second one is immediate)
    #: spawn = "fork": the worker process the launcher ``pid`` stands for
    forked_pid: int | None = None
    uss: int | None = None  # bytes, children included; read for forked workers only
    wid: int | None = None  # circus' wid, as the worker's title shows it

    @property
    def memory(self) -> int | None:
        """What ``max_memory`` and ``hard_max_memory`` compare: the USS of a forked
        worker (its RSS counts the pages it shares with the preloader), else the RSS."""
        return self.uss if self.forked_pid is not None else self.rss

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
    """The worker's reading, or None if the process is gone (or a zombie).

    ``pid`` is what circus lists; for a launcher (``spawn = "fork"``) the reading is
    its worker's, under the launcher's pid (still ``STARTING`` while the launcher waits
    for its worker, or once its worker has ended and the launcher is about to)."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            title = " ".join(process.cmdline())
            forked = launched_pid(process.name())
            age = max(0.0, time.time() - process.create_time())
            rss = rss_with_children(process)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        # Not ours to read (should not happen: circus runs workers as our user).
        return WorkerReading(pid, WorkerState.STARTING, retiring=retiring)
    if forked is None:
        return WorkerReading(
            pid,
            state_from_title(title),
            rss=rss,
            age=age,
            retiring=retiring,
            wid=wid_from_title(title),
        )
    try:
        worker = psutil.Process(forked)
        with worker.oneshot():
            title = " ".join(worker.cmdline())
            age = max(0.0, time.time() - worker.create_time())
            rss = rss_with_children(worker)
            uss = uss_with_children(worker)
    except psutil.Error:  # ended: its launcher exits next
        return WorkerReading(pid, WorkerState.STARTING, retiring=retiring, forked_pid=forked)
    return WorkerReading(
        pid,
        state_from_title(title),
        rss=rss,
        age=age,
        retiring=retiring,
        forked_pid=forked,
        uss=uss,
        wid=wid_from_title(title),
    )


def forked_worker(pid: int) -> int | None:
    """The worker a launcher ``pid`` stands for, when it has one and that process shows
    a worker's title (so a pid reused meanwhile is never taken for it)."""
    try:
        forked = launched_pid(psutil.Process(pid).name())
        if forked is None:
            return None
        title = " ".join(psutil.Process(forked).cmdline()).replace("\0", " ").strip()
    except psutil.Error:
        return None
    return forked if title.startswith(WORKER_PREFIX) else None


@dataclass(frozen=True)
class PreloaderReading:
    """A preloader process (``spawn = "fork"``): its generation is current unless its
    title says `` [OLD]``."""

    pid: int
    old: bool
    age: float  # seconds since it started


def read_preloader(pid: int) -> PreloaderReading | None:
    """The preloader's reading, or None if the process is gone (or a zombie)."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            title = " ".join(process.cmdline())
            age = max(0.0, time.time() - process.create_time())
    except psutil.Error:
        return None
    return PreloaderReading(pid, preloader_is_old(title), age)


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
        """Send ``signum``; ProcessLookupError when there is no such process. SIGKILL to
        a launcher kills its forked worker first."""
        ...

    def exit_code(self, pid: int) -> int | None:
        """How a dead, not yet reaped process ended (:func:`zombie_exit_code`)."""
        ...

    def read_preloader(self, pid: int) -> PreloaderReading | None:
        """The reading of preloader ``pid``; None when it is gone (:func:`read_preloader`)."""
        ...


class OsProcesses:
    """:class:`Processes` of this machine: psutil, ``os.kill`` and ``/proc``."""

    def read(self, pid: int, *, retiring: bool) -> WorkerReading | None:
        return read_worker(pid, retiring=retiring)

    def kill(self, pid: int, signum: int) -> None:
        if signum == signal.SIGKILL:
            # A launcher relays what it can catch; SIGKILL ends it alone, and the worker
            # would only follow once the preloader or the worker notices: kill it first.
            forked = forked_worker(pid)
            if forked is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(forked, signum)
        os.kill(pid, signum)

    def exit_code(self, pid: int) -> int | None:
        return zombie_exit_code(pid)

    def read_preloader(self, pid: int) -> PreloaderReading | None:
        return read_preloader(pid)


OS_PROCESSES = OsProcesses()
