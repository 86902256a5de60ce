"""The preloader's generations (master/preloading.py) as a table, and the master's loop
keeping them on memory fakes (tests/support/memory_circus.py), in milliseconds."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from circus_djmaster.config.settings import Database, Settings, parse_settings
from circus_djmaster.contracts import preloader as rendezvous
from circus_djmaster.contracts.exit_codes import WorkerExit
from circus_djmaster.contracts.titles import WorkerState
from circus_djmaster.contracts.watchers import PLUGIN_WATCHER, PRELOADER_WATCHER, watcher_name
from circus_djmaster.master.loop import Master
from circus_djmaster.master.preloading import (
    PreloaderSnapshot,
    RetirePreloader,
    plan_preloader,
)
from circus_djmaster.master.readings import PreloaderReading
from circus_djmaster.master.scaling import (
    GrowWatcher,
    ParkWatcher,
    StartWatcher,
    WatcherStatus,
)
from circus_djmaster.master.state import LoopExit
from tests.support.memory_circus import MemoryCircus, MemoryProcesses
from tests.support.memory_store import AsyncMemoryConnection, MemoryStore

ACTIVE, STOPPED = WatcherStatus.ACTIVE, WatcherStatus.STOPPED
P = PRELOADER_WATCHER


def preloader(pid: int, *, old: bool = False, age: float = 10.0) -> PreloaderReading:
    return PreloaderReading(pid, old, age)


@pytest.mark.parametrize(
    ("snapshot", "stale", "actions"),
    [
        # One current generation runs: nothing to do.
        (PreloaderSnapshot(ACTIVE, 1, (preloader(10),)), False, []),
        # Stopped (by an operator, or at numprocesses 0): start one.
        (PreloaderSnapshot(STOPPED, 0), False, [StartWatcher(P, 1)]),
        # Only an old generation (after USR2), nothing pending: one more.
        (PreloaderSnapshot(ACTIVE, 1, (preloader(10, old=True),)), False, [GrowWatcher(P, 1)]),
        # ... unless circus is about to spawn it (target above the live processes).
        (PreloaderSnapshot(ACTIVE, 2, (preloader(10, old=True),)), False, []),
        # A retired generation exited and the hook lowered the target to 0: one more.
        (PreloaderSnapshot(ACTIVE, 0), False, [GrowWatcher(P, 1)]),
        # The settings changed: the current one retires and a new one starts.
        (
            PreloaderSnapshot(ACTIVE, 1, (preloader(10),)),
            True,
            [RetirePreloader(10, "the settings changed"), GrowWatcher(P, 1)],
        ),
        # Two current ones (circusctl incr): the older retires.
        (
            PreloaderSnapshot(ACTIVE, 2, (preloader(10, age=50.0), preloader(11, age=5.0))),
            False,
            [RetirePreloader(10, "a younger generation runs")],
        ),
        # Blocked by exit 78 with no process left: park it (stop, target 1).
        (PreloaderSnapshot(ACTIVE, 0, blocked=True), False, [ParkWatcher(P)]),
        # Blocked and parked, or blocked with a process still there: wait.
        (PreloaderSnapshot(STOPPED, 1, blocked=True, parked=True), False, []),
        (PreloaderSnapshot(ACTIVE, 1, (preloader(10, old=True),), blocked=True), False, []),
        # circus is starting or stopping it: look again next turn.
        (PreloaderSnapshot(WatcherStatus.STOPPING, 1, (preloader(10),)), False, []),
    ],
)
def test_plan_preloader(snapshot: PreloaderSnapshot, stale: bool, actions: list[Any]) -> None:
    assert plan_preloader(snapshot, stale=stale) == actions


# ------------------------------------------------------------------------- the loop

FORKED = watcher_name("mail", "primary")
JOB = '{"callable": "tests.support.jobs:record", "args": ["k"], "kwargs": {}}'


class ForkRig:
    """A master of one fork-mode group on memory fakes, with its preloader watcher."""

    def __init__(self, settings: Settings, *, preloader_old: bool = False) -> None:
        self.store = MemoryStore()
        self.processes = MemoryProcesses()
        self.circus = MemoryCircus(
            [FORKED, PRELOADER_WATCHER], own_watcher=PLUGIN_WATCHER, own_pid=os.getpid()
        )
        self.circus.on_spawn = self._spawned
        self.spawning_preloader = True
        # circus started the preloader with circusd (numprocesses = 1 in circus.ini).
        preloaders = self.circus.watchers[PRELOADER_WATCHER]
        preloaders.numprocesses, preloaders.status = 1, "active"
        self.circus._spawn(preloaders)
        self.first_preloader = preloaders.pids[0]
        self.processes.preloaders[self.first_preloader] = preloader_old

        async def connect(database: Database, role: str) -> Any:
            return AsyncMemoryConnection(self.store)

        self.master = Master(
            settings,
            self.circus,  # type: ignore[arg-type]
            own_watcher=PLUGIN_WATCHER,
            host="testhost",
            processes=self.processes,
            connect=connect,
        )

    def _spawned(self, pid: int) -> None:
        if pid in self.circus.watchers[PRELOADER_WATCHER].pids:
            self.processes.preloaders[pid] = False
        else:
            self.processes.states[pid] = WorkerState.IDLE

    def preloader_pids(self) -> list[int]:
        return list(self.circus.watchers[PRELOADER_WATCHER].pids)

    def run(self, *steps: tuple[Callable[[], bool], Callable[[], object]]) -> LoopExit:
        async def scenario() -> LoopExit:
            loop = asyncio.create_task(self.master.run())
            for condition, action in steps:
                for _ in range(500):
                    if condition():
                        break
                    if loop.done():
                        loop.result()
                        raise AssertionError("the loop ended before the condition held")
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("condition not met within 5 s")
                action()
            return await asyncio.wait_for(loop, 5)

        return asyncio.run(scenario())


def fork_settings(path: Path, **top: Any) -> Settings:
    data = {
        "listen": False,
        "polling_interval": "1h",
        "monitor_interval": "1h",
        "databases": {"primary": "postgresql:///unused"},
        "workers": [{"name": "mail", "queues": ["mail"], "max_processes": 4, "spawn": "fork"}],
        **top,
    }
    path.write_text("# the loop only looks at this file's mtime\n", encoding="utf-8")
    return parse_settings(data, path)


def logged(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", None) == name]


def test_the_master_starts_a_new_generation_when_only_an_old_one_runs(tmp_path: Path) -> None:
    """After USR2 the old master retired the preloader; the new master raises the target
    for a new generation."""
    rig = ForkRig(fork_settings(tmp_path / "djmaster.toml"), preloader_old=True)
    ended = rig.run(
        (lambda: len(rig.preloader_pids()) == 2, lambda: rig.master.record_signal(signal.SIGHUP))
    )
    assert ended is LoopExit.RESTART
    assert ("incr", PRELOADER_WATCHER, 1) in rig.circus.calls


def test_usr2_retires_the_current_preloader_and_makes_the_workers_old(tmp_path: Path) -> None:
    rig = ForkRig(fork_settings(tmp_path / "djmaster.toml"))
    rig.store.add(JOB, queue="mail")
    workers = rig.circus.watchers[FORKED.lower()].pids
    ended = rig.run(
        (lambda: len(workers) == 1, lambda: rig.master.record_signal(signal.SIGUSR2)),
    )
    assert ended is LoopExit.RESTART
    assert (rig.first_preloader, signal.SIGUSR2) in rig.processes.signals
    assert (workers[0], signal.SIGUSR2) in rig.processes.signals


def test_a_changed_settings_file_retires_the_preloader_and_starts_a_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "djmaster.toml"
    rig = ForkRig(fork_settings(path))
    caplog.set_level(logging.INFO)

    def edit() -> None:
        os.utime(path, ns=(1, 1))
        rig.master.request_scaling()  # any wake-up: the mtime is read every turn

    ended = rig.run(
        (lambda: bool(rig.master.preloader), edit),
        (lambda: len(rig.preloader_pids()) == 2, lambda: rig.master.record_signal(signal.SIGHUP)),
    )
    assert ended is LoopExit.RESTART
    assert (rig.first_preloader, signal.SIGUSR2) in rig.processes.signals
    assert ("incr", PRELOADER_WATCHER, 1) in rig.circus.calls
    (retiring,) = logged(caplog, "preloader_retiring")
    assert retiring.pid == rig.first_preloader


def test_a_preloader_exiting_78_is_blocked_and_its_workers_are_held(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One error line; the preloader watcher is parked; the fork-mode watcher starts no
    worker for ready jobs until the settings file changes."""
    path = tmp_path / "djmaster.toml"
    rig = ForkRig(fork_settings(path))
    caplog.set_level(logging.INFO)
    preloaders = rig.circus.watchers[PRELOADER_WATCHER]

    counts_before: list[int] = []

    def preloader_fails() -> None:
        # The preloader exits 78; circus' after_reap hook lowers the target to 0.
        rig.circus.vanish(rig.first_preloader)
        preloaders.numprocesses = 0
        reap = {"process_pid": rig.first_preloader, "exit_code": WorkerExit.CONFIG_ERROR}
        rig.master.on_event(PRELOADER_WATCHER, "reap", reap)
        rig.store.add(JOB, queue="mail")
        counts_before.append(rig.store.ran.count("count_ready_in_queues"))
        rig.master.pollers["primary"].wake(frozenset({"mail"}))

    def held() -> bool:
        counted = rig.store.ran.count("count_ready_in_queues") > counts_before[0]
        return counted and preloaders.status == "stopped"

    ended = rig.run(
        (lambda: bool(rig.master.preloader), preloader_fails),
        (held, lambda: rig.master.record_signal(signal.SIGHUP)),
    )
    assert ended is LoopExit.RESTART
    (blocked,) = logged(caplog, "watcher_blocked")
    assert blocked.watcher == PRELOADER_WATCHER
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == [blocked]
    assert rig.circus.watchers[FORKED.lower()].pids == [], "no worker while it is blocked"
    assert ("stop", PRELOADER_WATCHER, None) in rig.circus.calls
    assert not any(call[1] == FORKED for call in rig.circus.calls)


def test_a_preloader_that_exited_78_before_the_master_started_is_blocked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """circusd starts the preloader before the master: its exit 78 (and the after_reap
    hook's target 0) may come before the master listens. Its note makes the master
    block it (one error line) instead of starting a new generation that fails again;
    USR2 to the master removes the note, so the next master tries again."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the rendezvous folder (no socket made)
    path = tmp_path / "djmaster.toml"
    rig = ForkRig(fork_settings(path))
    rig.circus.vanish(rig.first_preloader)
    rig.circus.watchers[PRELOADER_WATCHER].numprocesses = 0
    folder = rendezvous.folder_for(path)
    os.makedirs(folder, mode=0o700)
    rendezvous.write_failure(folder, rig.first_preloader, "importing app 'x' failed")
    caplog.set_level(logging.INFO)
    ended = rig.run(
        (lambda: bool(rig.master.preloader), lambda: rig.master.record_signal(signal.SIGUSR2))
    )
    assert ended is LoopExit.RESTART
    (blocked,) = logged(caplog, "watcher_blocked")
    assert blocked.watcher == PRELOADER_WATCHER
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == [blocked]
    assert not logged(caplog, "preloader_started")
    assert ("incr", PRELOADER_WATCHER, 1) not in rig.circus.calls
    assert rendezvous.read_failure(folder) is None, "USR2: the next master tries again"


def test_an_older_failure_note_does_not_block_a_changed_settings_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    path = tmp_path / "djmaster.toml"
    rig = ForkRig(fork_settings(path))
    rig.circus.vanish(rig.first_preloader)
    rig.circus.watchers[PRELOADER_WATCHER].numprocesses = 0
    folder = rendezvous.folder_for(path)
    os.makedirs(folder, mode=0o700)
    rendezvous.write_failure(folder, rig.first_preloader, "importing app 'x' failed")
    os.utime(os.path.join(folder, rendezvous.FAILED), ns=(1, 1))  # before the last edit
    caplog.set_level(logging.INFO)
    ended = rig.run(
        (lambda: len(rig.preloader_pids()) == 1, lambda: rig.master.record_signal(signal.SIGHUP))
    )
    assert ended is LoopExit.RESTART
    assert not logged(caplog, "watcher_blocked")
    assert logged(caplog, "preloader_started")
    assert rendezvous.read_failure(folder) is None, "a new generation removes the note"


def test_the_master_runs_no_before_fork_for_fork_mode_watchers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preloader runs before_fork before each fork (tests/process/test_fork_mode.py)."""
    notes = tmp_path / "callbacks.log"
    monkeypatch.setenv("DJMASTER_TEST_CALLBACK_LOG", str(notes))
    settings = fork_settings(
        tmp_path / "djmaster.toml",
        callbacks={"before_fork": "tests.support.master_callbacks:before_fork"},
    )
    rig = ForkRig(settings)
    rig.store.add(JOB, queue="mail")
    workers = rig.circus.watchers[FORKED.lower()].pids
    rig.run((lambda: len(workers) == 1, lambda: rig.master.record_signal(signal.SIGHUP)))
    assert not notes.exists()
