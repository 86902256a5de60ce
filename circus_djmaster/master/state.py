"""What the master remembers between two turns of its loop, with no I/O: its mode, how
its loop ended, the watchers blocked by configuration errors, and the workers it knew.

The loop (loop.py) observes circus and psutil each turn and feeds this state; the state
answers which pids vanished, which dead worker's jobs are still to release, how a
worker died, and which blocked watchers may scale again.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping
from pathlib import Path

from circus_djmaster.master.readings import describe_exit
from circus_djmaster.master.scaling import RetireReason, WatcherStatus

__all__ = ["Block", "Blocks", "LoopExit", "Mode", "WorkerBook", "mtime_ns"]

#: Released pids are remembered this long (seconds), so a reap event and the vanished
#: pid do not release the same worker's jobs twice.
RELEASED_MEMORY = 120.0

#: How long a vanished worker's release waits for circus' ``reap`` event (seconds).
#: circus reaps a dead worker at once (circusd/hooks.py) and publishes how it ended on
#: its pubsub socket, which reaches the plugin apart from the answers to its commands:
#: the master may see the pid gone from ``list`` before the event, when the kernel no
#: longer keeps the status (no zombie). Releasing then would record "died" where
#: "exited with code 3" was known a few milliseconds later (the chaos test caught it).
#: The event comes in milliseconds; this bounds the wait when it never comes.
REAP_EVENT_WAIT = 1.0


class Mode(enum.Enum):
    """What the master's loop is doing."""

    RUNNING = "running"
    DRAINING = "draining"  # WINCH: workers finish, then the master stops


class LoopExit(enum.Enum):
    """How :meth:`Master.run` ended: what the plugin process does next."""

    STOPPED = "stopped"  # the master's watcher is stopped in circus; exit
    RELEASED = "released"  # circus stops or replaces this process; exit quietly
    RESTART = "restart"  # exit; circus respawns the plugin (USR2, HUP)


def mtime_ns(path: Path | str) -> int | None:
    """The settings file's modification time (ns), None when it cannot be read: the
    master restarts or unblocks watchers when it changes."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


# ------------------------------------------------------------ configuration errors


@dataclasses.dataclass
class Block:
    """A watcher whose workers exited with CONFIG_ERROR (78)."""

    settings_mtime: int | None
    parked: bool = False  # the master stopped it in circus (scaling.ParkWatcher)


class Blocks:
    """Watchers the master does not scale until their configuration is fixed."""

    def __init__(self) -> None:
        self.blocked: dict[str, Block] = {}

    def __bool__(self) -> bool:
        return bool(self.blocked)

    def __contains__(self, watcher: str) -> bool:
        return watcher in self.blocked

    def get(self, watcher: str) -> Block | None:
        return self.blocked.get(watcher)

    def block(self, watcher: str, settings_mtime: int | None) -> bool:
        """Block ``watcher``; False if it already was."""
        if watcher in self.blocked:
            return False
        self.blocked[watcher] = Block(settings_mtime)
        return True

    def parked(self, watcher: str) -> None:
        block = self.blocked.get(watcher)
        if block is not None:
            block.parked = True

    def unblock(
        self, settings_mtime: int | None, statuses: Mapping[str, WatcherStatus]
    ) -> dict[str, str]:
        """Unblock the watchers whose settings changed (the file's mtime differs), and
        the parked ones an operator started (``statuses``: a fresh observation; empty
        before one). Returns watcher -> why."""
        unblocked: dict[str, str] = {}
        for watcher, block in list(self.blocked.items()):
            if block.settings_mtime != settings_mtime:
                unblocked[watcher] = "the settings file changed"
            elif block.parked and statuses.get(watcher) not in (None, WatcherStatus.STOPPED):
                unblocked[watcher] = "an operator started it"
            else:
                continue
            del self.blocked[watcher]
        return unblocked


# ------------------------------------------------------------------ workers


class WorkerBook:
    """The workers the master knows: which pids it saw last, which of them vanished,
    which it retired or killed, how circus says they exited, and whose jobs it already
    released."""

    def __init__(self) -> None:
        self.known: dict[int, str] = {}  # pid -> watcher, as last observed
        self.gone: dict[int, str] = {}  # pids that vanished, not handled yet
        self.retiring: dict[int, RetireReason] = {}  # SIGTERM sent by the master
        self.killed: dict[int, RetireReason] = {}  # SIGKILL sent by the master
        self.exit_codes: dict[int, int | None] = {}  # from circus reap events
        self.released: dict[int, float] = {}  # pid -> when its jobs were released
        self.vanished_at: dict[int, float] = {}  # gone pids waiting for their exit code

    def observed(self, current: Mapping[int, str]) -> None:
        """A new observation (pid -> watcher): pids seen before and absent now vanished.

        Releasing the jobs of one that exited cleanly is a harmless no-op.
        """
        self.gone.update(
            {pid: watcher for pid, watcher in self.known.items() if pid not in current}
        )
        self.known = dict(current)

    def take_gone(self, now: float) -> dict[int, str]:
        """The vanished pids to handle now (forgotten by the book afterwards): those
        whose end is known (an exit code from circus' reap event or the kernel, or the
        master killed them) and those that waited :data:`REAP_EVENT_WAIT` for it; the
        others wait. ``now``: monotonic seconds."""
        ready = {}
        for pid, watcher in list(self.gone.items()):
            since = self.vanished_at.setdefault(pid, now)
            if pid in self.exit_codes or pid in self.killed or now - since >= REAP_EVENT_WAIT:
                ready[pid] = watcher
                del self.gone[pid]
                del self.vanished_at[pid]
                self.retiring.pop(pid, None)
        return ready

    def next_deadline(self) -> float | None:
        """When (monotonic) the first vanished pid stops waiting for its exit code."""
        return min(self.vanished_at.values()) + REAP_EVENT_WAIT if self.vanished_at else None

    def reaped(self, pid: int, exit_code: int | None) -> None:
        """circus reaped ``pid`` (or the kernel keeps its status): keep its exit code
        for the message when it vanishes, or for its release if it already did."""
        if pid in self.known or pid in self.gone:
            self.exit_codes[pid] = exit_code

    def first_release(self, pid: int, now: float) -> bool:
        """True the first time ``pid``'s jobs are released (``now``: monotonic)."""
        for old, when in list(self.released.items()):
            if now - when > RELEASED_MEMORY:
                del self.released[old]
        if pid in self.released:
            return False
        self.released[pid] = now
        return True

    def death(self, pid: int, host: str, exit_code: int | None) -> str:
        """How a worker died, e.g. "worker pid 12 on web1 was killed by SIGKILL"."""
        killed = self.killed.get(pid)
        if killed is not None:
            return f"worker pid {pid} on {host} was killed by the master: {killed.value}"
        how = "died" if exit_code is None else describe_exit(exit_code)
        return f"worker pid {pid} on {host} {how}"

    def buried(self, pid: int) -> None:
        """``pid``'s death is handled: forget what was kept for its message."""
        self.killed.pop(pid, None)
        self.exit_codes.pop(pid, None)
