"""The preloader's generations (``spawn = "fork"``): pure decisions from a snapshot of its
watcher to actions, no I/O.

The preloader (worker/preloader.py) is its own circus watcher, ``djmaster-preloader``,
rendered with ``numprocesses = 1``. The master keeps exactly one *current* generation
running (a preloader whose title is not `` [OLD]``), and starts a new one when the
code or the settings change:

* **USR2 to the master**, or **the settings file changing**: the current preloader
  gets USR2 and becomes old (it forks no more, and exits 0 once its workers are gone;
  the after_reap hook then lowers the target); the master raises the target by one,
  so circus starts a new preloader, which imports the new code. Workers of either
  generation finish as they are (after USR2 they are `` [OLD]`` too).
* **No current preloader** (an operator stopped it, a generation retired, the master
  restarted after a configuration error): the watcher is started (stopped) or grown by
  one (active), unless circus is about to spawn one anyway.
* **A configuration error** (exit 78: the settings or the application cannot load): the
  watcher is blocked like a worker watcher (state.Blocks, one error line), parked once
  no preloader is left, and the fork-mode watchers are held (no new workers) until the
  settings file changes, ``circusctl start djmaster-preloader``, or the master restarts.
* **More than one current preloader** (``circusctl incr`` by hand): all but the youngest
  retire.

A preloader that dies otherwise is respawned by circus; its workers go on, each with
its launcher.
"""

from __future__ import annotations

from dataclasses import dataclass

from circus_djmaster.contracts.watchers import PRELOADER_WATCHER
from circus_djmaster.master.readings import PreloaderReading
from circus_djmaster.master.scaling import (
    GrowWatcher,
    ParkWatcher,
    StartWatcher,
    WatcherStatus,
)

__all__ = ["PreloaderAction", "PreloaderSnapshot", "RetirePreloader", "plan_preloader"]


@dataclass(frozen=True)
class PreloaderSnapshot:
    """The preloader watcher as the master observed it this turn."""

    status: WatcherStatus
    numprocesses: int  # circus' target
    preloaders: tuple[PreloaderReading, ...] = ()
    blocked: bool = False  # a preloader exited 78: hold the fork-mode watchers
    parked: bool = False  # blocked and already stopped by the master

    @property
    def current(self) -> tuple[PreloaderReading, ...]:
        """Live preloaders of the current generation (not `` [OLD]``)."""
        return tuple(preloader for preloader in self.preloaders if not preloader.old)

    @property
    def pending(self) -> int:
        """Processes circus will spawn by itself (target above live processes)."""
        if self.status not in (WatcherStatus.ACTIVE, WatcherStatus.STARTING):
            return 0
        return max(0, self.numprocesses - len(self.preloaders))


@dataclass(frozen=True)
class RetirePreloader:
    """USR2 to a preloader: it forks no more and exits once its workers are gone."""

    pid: int
    why: str


PreloaderAction = StartWatcher | GrowWatcher | ParkWatcher | RetirePreloader


def plan_preloader(snapshot: PreloaderSnapshot, *, stale: bool = False) -> list[PreloaderAction]:
    """What keeps one current preloader generation running; ``stale``: the settings file
    changed since the current generation started (it must be replaced)."""
    name = PRELOADER_WATCHER
    if snapshot.blocked:
        if (
            not snapshot.parked
            and snapshot.status is WatcherStatus.ACTIVE
            and not snapshot.preloaders
        ):
            return [ParkWatcher(name)]
        return []
    if snapshot.status is WatcherStatus.STOPPED:
        return [StartWatcher(name, 1)]
    if snapshot.status is not WatcherStatus.ACTIVE:
        return []  # starting or stopping: look again next turn
    actions: list[PreloaderAction] = []
    current = sorted(snapshot.current, key=lambda preloader: preloader.age)  # youngest first
    if stale:
        actions += [RetirePreloader(preloader.pid, "the settings changed") for preloader in current]
        current = []
    else:
        actions += [
            RetirePreloader(preloader.pid, "a younger generation runs") for preloader in current[1:]
        ]
    if not current and snapshot.pending == 0:
        actions.append(GrowWatcher(name, 1))
    return actions
