"""The master's loop on fakes with the real interfaces: circusd in memory
(tests/support/memory_circus.py), ``delayed_jobs`` in memory behind the real async
executor (tests/support/memory_store.py), and worker processes the test reads and
signals. What the real-process tests (tests/acceptance, tests/faults) show against
circusd and PostgreSQL, in milliseconds.

Assertions are on what the master did (circus calls, signals, rows) and on the events it
logged (the records' structured ``event``), not on the wording of its log lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from circus_djmaster.config.settings import Database, Settings, parse_settings
from circus_djmaster.contracts.exit_codes import WorkerExit
from circus_djmaster.contracts.locked_by import worker_locked_by
from circus_djmaster.contracts.titles import WorkerState
from circus_djmaster.contracts.watchers import PLUGIN_WATCHER, watcher_name
from circus_djmaster.master.loop import Master
from circus_djmaster.master.metrics import SELF_RETIRED, MetricsRecorder
from circus_djmaster.master.state import LoopExit
from tests.support.memory_circus import MemoryCircus, MemoryProcesses
from tests.support.memory_store import AsyncMemoryConnection, MemoryStore

HOST = "testhost"
WATCHER = watcher_name("mail", "primary")
JOB = '{"callable": "tests.support.jobs:record", "args": ["k"], "kwargs": {}}'


class Rig:
    """A master on memory fakes; ``run`` drives its loop until a condition holds."""

    def __init__(self, settings: Settings, *, watchers: tuple[str, ...] = (WATCHER,)) -> None:
        self.store = MemoryStore()
        self.processes = MemoryProcesses()
        self.metrics = RecordingMetrics()
        self.circus = MemoryCircus(list(watchers), own_watcher=PLUGIN_WATCHER, own_pid=os.getpid())
        self.circus.on_spawn = self._spawned
        self.spawn_state = WorkerState.IDLE

        async def connect(database: Database, role: str) -> Any:
            return AsyncMemoryConnection(self.store)

        self.master = Master(
            settings,
            self.circus,  # type: ignore[arg-type]
            own_watcher=PLUGIN_WATCHER,
            host=HOST,
            processes=self.processes,
            connect=connect,
            metrics=self.metrics,
        )

    def run(self, *steps: tuple[Callable[[], bool], Callable[[], object]]) -> LoopExit:
        """Run the loop; for each step, wait until its condition holds, then act. The
        last action must end the loop (a signal)."""

        async def scenario() -> LoopExit:
            loop = asyncio.create_task(self.master.run())
            for condition, action in steps:
                await until(condition, loop)
                result = action()
                if isinstance(result, Awaitable):
                    await result
            return await asyncio.wait_for(loop, 5)

        return asyncio.run(scenario())

    def _spawned(self, pid: int) -> None:
        self.processes.states[pid] = self.spawn_state
        # circus publishes a spawn event; the plugin hands it to the master.
        self.master.on_event(WATCHER, "spawn", {"process_pid": pid})

    def pids(self) -> list[int]:
        return list(self.circus.watchers[WATCHER.lower()].pids)

    def observed(self, count: int) -> Callable[[], bool]:
        """Condition: ``count`` workers run and the master has seen them all."""
        return lambda: len(self.pids()) == count and set(self.pids()) <= set(self.master.book.known)


class RecordingMetrics(MetricsRecorder):
    """What the master told its metrics, as (method, arguments) in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def told(self, name: str) -> list[tuple[object, ...]]:
        return [args for method, args in self.calls if method == name]

    def scaled_up(self, watcher: str, workers: int) -> None:
        self.calls.append(("scaled_up", (watcher, workers)))

    def retired(self, watcher: str, reason: str) -> None:
        self.calls.append(("retired", (watcher, reason)))

    def killed(self, watcher: str, reason: str) -> None:
        self.calls.append(("killed", (watcher, reason)))

    def crashed(self, watcher: str) -> None:
        self.calls.append(("crashed", (watcher,)))

    def config_error(self, watcher: str) -> None:
        self.calls.append(("config_error", (watcher,)))

    def released(self, database: str, outcome: str) -> None:
        self.calls.append(("released", (database, outcome)))

    def database_error(self, database: str) -> None:
        self.calls.append(("database_error", (database,)))


async def until(condition: Callable[[], bool], loop: asyncio.Task[LoopExit]) -> None:
    for _ in range(500):
        if condition():
            return
        if loop.done():
            loop.result()  # raises what ended the loop too early
            raise AssertionError("the master's loop ended before the condition held")
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")


def settings(**workers: Any) -> Settings:
    data = {
        "listen": False,  # NOTIFYs are the test's: poller.wake() is what the listener calls
        "polling_interval": "1h",
        "monitor_interval": "1h",
        "databases": {"primary": "postgresql:///unused"},
        "workers": [{"name": "mail", "queues": ["mail"], "max_processes": 4} | workers],
    }
    return parse_settings(data, Path("/tmp/djmaster-test-loop.toml"))


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", None) == name]


def test_a_notify_with_3_ready_jobs_starts_ceil_3_over_threads_workers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(settings(max_threads=2))
    counted = lambda: "count_ready_in_queues" in rig.store.ran  # noqa: E731

    def notify() -> None:
        for _ in range(3):
            rig.store.add(JOB, queue="mail")
        rig.master.pollers["primary"].wake(frozenset({"mail"}))  # what the listener does

    caplog.set_level(logging.INFO)
    ended = rig.run(
        (counted, notify),
        (lambda: len(rig.pids()) == 2, lambda: rig.master.record_signal(signal.SIGHUP)),
    )
    assert ended is LoopExit.RESTART
    assert rig.circus.calls == [("set", WATCHER, 2), ("start", WATCHER, None)]
    (started,) = events(caplog, "watcher_started")
    assert (started.watcher, started.workers) == (WATCHER, 2)


def test_an_active_watcher_grows_by_what_the_new_jobs_need() -> None:
    rig = Rig(settings(max_threads=1))
    rig.spawn_state = WorkerState.BUSY
    rig.store.add(JOB, queue="mail")

    def more_jobs() -> None:
        first = next(iter(rig.store.jobs.values()))
        first.locked_by, first.locked_at = "host:testhost pid:1", rig.store.now  # running
        for _ in range(2):
            rig.store.add(JOB, queue="mail")
        rig.master.pollers["primary"].wake(None)  # a NOTIFY naming every queue

    rig.run(
        (rig.observed(1), more_jobs),
        (lambda: len(rig.pids()) == 3, lambda: rig.master.record_signal(signal.SIGHUP)),
    )
    assert rig.circus.calls[-1] == ("incr", WATCHER, 2)


def test_a_vanished_pid_releases_its_jobs(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(settings())
    rig.spawn_state = WorkerState.BUSY
    job_id = rig.store.add(JOB, queue="mail")
    dead: list[int] = []

    def kill_the_worker() -> None:
        (pid,) = rig.pids()
        job = rig.store.jobs[job_id]  # the worker had reserved it
        job.locked_by, job.locked_at = worker_locked_by(pid, HOST), rig.store.now
        rig.circus.vanish(pid)  # kill -9: circus lists it no more, no reap event yet
        dead.append(pid)
        rig.master.request_scaling()  # any wake-up: the next turn observes

    caplog.set_level(logging.INFO)
    rig.run(
        (rig.observed(1), kill_the_worker),
        (
            lambda: rig.store.jobs[job_id].locked_by is None,
            lambda: rig.master.record_signal(signal.SIGHUP),
        ),
    )
    job = rig.store.jobs[job_id]
    # Nobody knows what it ran (no running-jobs file): not charged, runs alone from now on.
    assert (job.attempts, job.run_alone, job.failed_at) == (0, True, None)
    (released,) = events(caplog, "job_released")
    assert (released.job_id, released.outcome) == (job_id, "ISOLATED")
    assert released.owner == worker_locked_by(dead[0], HOST)


def test_a_reap_event_after_the_pid_left_list_still_names_the_exit_code() -> None:
    """circus reaps at once and publishes `reap` on its pubsub socket; the answer to the
    master's `list` may come first (no zombie left to read). The chaos test recorded
    "died while running this job" for a worker that exited with code 3."""
    rig = Rig(settings())
    rig.spawn_state = WorkerState.BUSY
    job_id = rig.store.add(JOB, queue="mail")
    dead: list[int] = []

    def exit_3() -> None:
        (pid,) = rig.pids()
        job = rig.store.jobs[job_id]
        job.locked_by, job.locked_at = worker_locked_by(pid, HOST), rig.store.now
        rig.circus.vanish(pid)  # reaped: gone from `list`, the reap event still on its way
        dead.append(pid)
        rig.master.request_scaling()

    rig.run(
        (rig.observed(1), exit_3),
        (
            lambda: bool(dead) and dead[0] not in rig.master.book.known,
            lambda: rig.master.on_event(WATCHER, "reap", {"process_pid": dead[0], "exit_code": 3}),
        ),
        (
            lambda: rig.store.jobs[job_id].locked_by is None,
            lambda: rig.master.record_signal(signal.SIGHUP),
        ),
    )
    last_error = rig.store.jobs[job_id].last_error or ""
    assert f"worker pid {dead[0]} on {HOST} exited with code 3" in last_error, last_error


def test_term_to_the_master_stops_the_workers_gracefully_then_its_watcher(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(settings(max_threads=1))
    for _ in range(2):
        rig.store.add(JOB, queue="mail")
    caplog.set_level(logging.INFO)
    ended = rig.run(
        (rig.observed(2), lambda: rig.master.record_signal(signal.SIGTERM)),
    )
    assert ended is LoopExit.STOPPED
    assert sorted(rig.processes.signals) == [(pid, signal.SIGTERM) for pid in sorted(rig.pids())]
    assert rig.circus.watchers[PLUGIN_WATCHER].status == "stopped"  # circus will not respawn it
    (term,) = events(caplog, "master_signal")
    assert (term.signal, term.workers_signalled) == ("SIGTERM", 2)


def test_term_from_circus_itself_only_ends_the_master() -> None:
    rig = Rig(settings())
    rig.store.add(JOB, queue="mail")

    def circus_quits() -> None:
        rig.circus.watchers[PLUGIN_WATCHER].status = "stopping"  # `circusctl quit`
        rig.master.record_signal(signal.SIGTERM)

    ended = rig.run((lambda: len(rig.pids()) == 1, circus_quits))
    assert ended is LoopExit.RELEASED
    assert rig.processes.signals == []  # circus stops the workers with their stop_signal


def test_quit_hands_the_workers_jobs_back() -> None:
    rig = Rig(settings())
    rig.store.add(JOB, queue="mail")
    ended = rig.run(
        (rig.observed(1), lambda: rig.master.record_signal(signal.SIGQUIT)),
    )
    assert ended is LoopExit.STOPPED
    assert rig.processes.signals == [(rig.pids()[0], signal.SIGQUIT)]


def test_a_worker_exiting_78_blocks_its_watcher_which_is_parked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(settings())
    rig.spawn_state = WorkerState.STARTING
    rig.store.add(JOB, queue="mail")

    def config_error() -> None:
        (pid,) = rig.pids()
        rig.circus.vanish(pid)
        watcher = rig.circus.watchers[WATCHER.lower()]
        watcher.numprocesses = 0  # the after_reap hook lowers it for exit 78
        rig.master.on_event(WATCHER, "reap", {"process_pid": pid, "exit_code": 78})

    caplog.set_level(logging.INFO)
    rig.run(
        (lambda: len(rig.pids()) == 1, config_error),
        (
            lambda: ("stop", WATCHER, None) in rig.circus.calls,
            lambda: rig.master.record_signal(signal.SIGHUP),
        ),
    )
    assert rig.circus.calls[-2:] == [("stop", WATCHER, None), ("set", WATCHER, 1)]
    assert [record.watcher for record in events(caplog, "watcher_blocked")] == [WATCHER]
    assert events(caplog, "watcher_parked")
    assert int(WorkerExit.CONFIG_ERROR) == 78


def test_a_database_that_is_down_holds_its_watchers_as_they_are() -> None:
    rig = Rig(settings())
    rig.store.down = True
    rig.store.add(JOB, queue="mail")

    def attempts() -> bool:
        poller = rig.master.pollers.get("primary")
        return poller is not None and poller._failures >= 1

    rig.run((attempts, lambda: rig.master.record_signal(signal.SIGHUP)))
    assert rig.circus.calls == []  # its count is unknown: no worker started for nothing
    assert ("primary",) in rig.metrics.told("database_error")


# --------------------------------------------------------- what it reports


def test_a_watcher_missing_from_circusd_is_reported_with_its_possible_causes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """circusd drops a watcher it cannot create (an output file it cannot open): the
    master says so, not only "render circus.ini again" (issue 14)."""
    rig = Rig(settings(), watchers=())
    caplog.set_level(logging.INFO)
    rig.run(
        (
            lambda: bool(events(caplog, "watcher_missing")),
            lambda: rig.master.record_signal(signal.SIGHUP),
        ),
    )
    (missing,) = events(caplog, "watcher_missing")
    assert missing.levelname == "ERROR" and missing.watcher == WATCHER
    message = missing.getMessage()
    assert "circusd could not create it" in message
    assert "circusd says why in its own log, its stdout" in message  # logoutput "-"
    assert "older than /tmp/djmaster-test-loop.toml" in message
    assert "djmaster-config render" in message


def test_metrics_are_told_of_scale_ups_exits_and_releases() -> None:
    rig = Rig(settings(max_threads=1))
    rig.spawn_state = WorkerState.BUSY
    job_id = rig.store.add(JOB, queue="mail")
    rig.store.add(JOB, queue="mail")
    pids: list[int] = []

    def workers_end() -> None:
        first, second = rig.pids()
        pids.extend((first, second))
        job = rig.store.jobs[job_id]
        job.locked_by, job.locked_at = worker_locked_by(first, HOST), rig.store.now
        for pid in (first, second):
            rig.circus.vanish(pid)
        rig.master.on_event(WATCHER, "reap", {"process_pid": first, "exit_code": -9})
        rig.master.on_event(WATCHER, "reap", {"process_pid": second, "exit_code": 0})

    rig.run(
        (rig.observed(2), workers_end),
        (
            lambda: bool(rig.metrics.told("released")),
            lambda: rig.master.record_signal(signal.SIGHUP),
        ),
    )
    assert rig.metrics.told("scaled_up") == [(WATCHER, 2)]
    assert rig.metrics.told("crashed") == [(WATCHER,)]
    assert rig.metrics.told("retired") == [(WATCHER, SELF_RETIRED)]
    assert rig.metrics.told("released") == [("primary", "isolated")]


def test_metrics_count_a_retirement_the_master_asked_for_once() -> None:
    rig = Rig(settings(max_memory="100MB", max_threads=1))
    rig.spawn_state = WorkerState.IDLE
    rig.store.add(JOB, queue="mail")
    pids: list[int] = []

    def grow() -> None:
        (pid,) = rig.pids()
        pids.append(pid)
        rig.processes.rss[pid] = 200 * 2**20
        rig.master._next_monitor = 0.0  # monitor at the next turn
        rig.master.request_scaling()

    def exits() -> None:
        rig.circus.vanish(pids[0])
        rig.master.on_event(WATCHER, "reap", {"process_pid": pids[0], "exit_code": 0})

    rig.run(
        (rig.observed(1), grow),
        (lambda: (pids[0], signal.SIGTERM) in rig.processes.signals, exits),
        (
            lambda: pids[0] not in rig.master.book.known,
            lambda: rig.master.record_signal(signal.SIGHUP),
        ),
    )
    assert rig.metrics.told("retired") == [(WATCHER, "max_memory")]


def test_a_reap_while_a_turn_observes_brings_another_look() -> None:
    """A worker retires while a turn, woken by a NOTIFY, observes circus: that turn saw
    its slot still taken (the target not yet lowered) and starts nobody. The reap
    event's request must not be spent on it: the next turn looks again and starts a
    worker for the ready job (a job stayed ready until polling_interval otherwise)."""
    rig = Rig(settings(max_processes=1, max_threads=1))
    rig.spawn_state = WorkerState.BUSY
    rig.store.add(JOB, queue="mail")
    watcher = rig.circus.watchers[WATCHER.lower()]
    listed = rig.circus.pids
    armed: list[int] = []

    async def pids(name: str) -> list[int]:
        found = await listed(name)
        if armed and name.lower() == WATCHER.lower() and armed[0] in found:
            pid = armed.pop()
            # It retires now: circus reaps it, the hook lowers the target, the event comes.
            rig.circus.vanish(pid)
            watcher.numprocesses -= 1
            rig.processes.states.pop(pid, None)
            rig.master.on_event(WATCHER, "reap", {"process_pid": pid, "exit_code": 0})
        return found

    rig.circus.pids = pids  # type: ignore[method-assign]
    first: list[int] = []

    def next_job() -> None:
        first.extend(rig.pids())
        rig.store.jobs.clear()  # the first job is done
        rig.store.add(JOB, queue="mail")
        armed.append(first[0])
        rig.master.pollers["primary"].wake(frozenset({"mail"}))

    ended = rig.run(
        (rig.observed(1), next_job),
        (
            lambda: bool(rig.pids()) and rig.pids() != first,
            lambda: rig.master.record_signal(signal.SIGHUP),
        ),
    )
    assert ended is LoopExit.RESTART
    assert not armed, "the worker retired during an observation"
