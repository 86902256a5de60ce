"""psutil readings of worker processes: state (from the title), RSS and age.

circus' ``stats`` rounds memory into strings (SPEC §9), so the master reads the pids
circus lists itself. RSS includes the worker's children (a job may start processes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil

from circus_djmaster.contracts.titles import WorkerState as TitleState
from circus_djmaster.contracts.titles import state_from_title
from circus_djmaster.master.scaling import Worker, WorkerState

_FROM_TITLE = {
    TitleState.IDLE: WorkerState.IDLE,
    TitleState.BUSY: WorkerState.BUSY,
    TitleState.OLD: WorkerState.OLD,
    TitleState.NO_DB: WorkerState.NO_DB,
}


def title_state(title: str) -> WorkerState:
    """A worker's state from its process title; STARTING before it set one."""
    state = state_from_title(title)
    return WorkerState.STARTING if state is None else _FROM_TITLE[state]


def read_worker(pid: int, *, retiring: bool = False) -> Worker | None:
    """The worker's reading, or None if the process is gone (or a zombie)."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            title = " ".join(process.cmdline())
            rss = process.memory_info().rss
            age = max(0.0, time.time() - process.create_time())
        for child in _children(process):
            with contextlib.suppress(psutil.Error):  # the child exited meanwhile
                rss += child.memory_info().rss
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        # Not ours to read (should not happen: circus runs workers as our user).
        return Worker(pid, WorkerState.STARTING, retiring=retiring)
    return Worker(pid, title_state(title), rss=rss, age=age, retiring=retiring)


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def is_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


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
