"""circusd in memory, behind the interface the master's loop uses of its client
(``circusd.async_client.AsyncCircus``), and worker processes the master can read and
signal (``master.readings.Processes``).

It behaves as circus 0.19 was measured to (docs/master.md, "circus 0.19, measured"): a
watcher at ``numprocesses = 0`` is stopped; ``set`` on a stopped watcher only changes
its target and ``start`` then spawns it; ``incr`` spawns on an active watcher and only
raises the target of a stopped one; ``stop`` stops the processes and keeps the target.
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
from collections.abc import Callable

from circus_djmaster.contracts.titles import WorkerState
from circus_djmaster.exceptions import CircusError
from circus_djmaster.master.readings import WorkerReading

#: Fake pids, far above any real pid_max: no real process (or file of one) has them.
_PIDS = itertools.count(90_000_000)


@dataclasses.dataclass
class MemoryWatcher:
    name: str
    numprocesses: int = 0
    status: str = "stopped"
    pids: list[int] = dataclasses.field(default_factory=list)


class MemoryCircus:
    """The watchers of one circusd, and the calls the master made."""

    def __init__(self, watchers: list[str], *, own_watcher: str, own_pid: int) -> None:
        self.watchers = {name.lower(): MemoryWatcher(name) for name in watchers}
        self.watchers[own_watcher] = MemoryWatcher(own_watcher, 1, "active", [own_pid])
        self.calls: list[tuple[str, str, int | None]] = []
        self.interrupted: Callable[[], bool] = lambda: False
        self.sent = 0  # commands (AsyncCircus.sent); this fake counts its calls instead
        #: Called with each pid spawned (the test decides what the process shows).
        self.on_spawn: Callable[[int], None] = lambda pid: None

    def _spawn(self, watcher: MemoryWatcher) -> None:
        while len(watcher.pids) < watcher.numprocesses:
            pid = next(_PIDS)
            watcher.pids.append(pid)
            self.on_spawn(pid)

    def _get(self, name: str) -> MemoryWatcher:
        watcher = self.watchers.get(name.lower())
        if watcher is None:
            raise CircusError("status", "program not found")
        return watcher

    # --- what the master's loop calls (AsyncCircus) -----------------------------------

    async def statuses(self) -> dict[str, str]:
        return {name: watcher.status for name, watcher in self.watchers.items()}

    async def status(self, name: str) -> str:
        return self._get(name).status

    async def pids(self, name: str) -> list[int]:
        return list(self._get(name).pids)

    async def numprocesses(self, name: str) -> int:
        return self._get(name).numprocesses

    async def incr(self, name: str, count: int) -> None:
        watcher = self._get(name)
        self.calls.append(("incr", name, count))
        watcher.numprocesses += count
        if watcher.status == "active":
            self._spawn(watcher)

    async def set_numprocesses(self, name: str, count: int) -> None:
        watcher = self._get(name)
        self.calls.append(("set", name, count))
        watcher.numprocesses = count

    async def start(self, name: str) -> None:
        watcher = self._get(name)
        self.calls.append(("start", name, None))
        if watcher.status == "stopped" and watcher.numprocesses > 0:
            watcher.status = "active"
            self._spawn(watcher)

    async def stop(self, name: str, *, retry_for: float = 10.0) -> None:
        watcher = self._get(name)
        self.calls.append(("stop", name, None))
        watcher.status = "stopped"
        watcher.pids.clear()

    def close(self) -> None:
        pass

    # --- what happens to processes ----------------------------------------------------

    def vanish(self, pid: int) -> str:
        """``pid`` died (kill -9): circus lists it no more and will respawn it later;
        returns its watcher's name."""
        for watcher in self.watchers.values():
            if pid in watcher.pids:
                watcher.pids.remove(pid)
                return watcher.name
        raise KeyError(pid)


class MemoryProcesses:
    """Worker processes as the master reads them: the state each title shows and their
    RSS (set by the test; 50 MB unless said), and the signals the master sent."""

    def __init__(self) -> None:
        self.states: dict[int, WorkerState] = {}
        self.rss: dict[int, int] = {}
        self.signals: list[tuple[int, signal.Signals]] = []

    def read(self, pid: int, *, retiring: bool) -> WorkerReading | None:
        state = self.states.get(pid)
        if state is None:
            return None
        rss = self.rss.get(pid, 50 * 2**20)
        return WorkerReading(pid, state, rss=rss, age=1.0, retiring=retiring)

    def kill(self, pid: int, signum: int) -> None:
        if pid not in self.states:
            raise ProcessLookupError(pid)
        self.signals.append((pid, signal.Signals(signum)))

    def exit_code(self, pid: int) -> int | None:
        return None
