"""The master's loop: observe circus and the workers, decide (scaling.py), act.

One asyncio task owns every decision and every circus command (gunicorn's arbiter
pattern): signal handlers, circus events, NOTIFY and timers only record what happened
and wake it. Each turn of the loop:

1. handles recorded signals (signals.py: the table and its ``handle_<name>`` methods);
2. observes: circus ``status`` of every watcher, then ``get numprocesses`` and ``list``
   of the running ones, and psutil readings of every worker pid (title state, RSS with
   children, age). Events are hints; this observation is the truth;
3. releases the jobs of workers that vanished since the last observation (kill -9, OOM,
   a job calling ``os._exit``) for an immediate retry, charged as releases.py says;
4. every ``monitor_interval``: memory and lifetime limits (scaling.plan_limits);
5. when a scaling pass is due (a NOTIFY, a poll timer, a scheduled run_at, a worker
   that exited, the start): asks every database for a ready count *after* the
   observation, then grows watchers (scaling.plan_scaling).

What it remembers between turns is state.py; every decision is scaling.py.

Longer than 400 lines on purpose: the loop is one object that owns every decision and
every circus command, and a turn reads top to bottom here (inputs, the turn, tasks,
observation, dead workers, configuration errors, monitor, scaling, actions). What it
remembers is state.py, what it decides scaling.py, its signals signals.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from circus_djmaster.api.recurring import declared_in
from circus_djmaster.circusd.async_client import SCALING_RETRY, AsyncCircus
from circus_djmaster.common.logs import event
from circus_djmaster.common.recurring import RecurringJob
from circus_djmaster.config.render import watcher_index
from circus_djmaster.config.settings import Database, Settings
from circus_djmaster.config.targets import ForkTarget
from circus_djmaster.contracts import preloader as rendezvous
from circus_djmaster.contracts.exit_codes import WorkerExit, is_retiring
from circus_djmaster.contracts.locked_by import worker_locked_by
from circus_djmaster.contracts.running_jobs import forget, read_running
from circus_djmaster.contracts.titles import master_application_name
from circus_djmaster.contracts.watchers import PRELOADER_WATCHER, watcher_name
from circus_djmaster.exceptions import CircusError, CircusTimeout
from circus_djmaster.master.callbacks import MasterCallbacks
from circus_djmaster.master.listener import Listener
from circus_djmaster.master.metrics import SELF_RETIRED, MetricsRecorder
from circus_djmaster.master.polling import DatabasePoller
from circus_djmaster.master.preloading import (
    PreloaderAction,
    PreloaderSnapshot,
    RetirePreloader,
    plan_preloader,
)
from circus_djmaster.master.readings import OS_PROCESSES, Processes, describe_exit
from circus_djmaster.master.releases import Release, charge_for_death
from circus_djmaster.master.scaling import (
    Action,
    GroupPolicy,
    GrowWatcher,
    KillWorker,
    ParkWatcher,
    RetireWorker,
    StartWatcher,
    WatcherSnapshot,
    WatcherStatus,
    plan_limits,
    plan_scaling,
)
from circus_djmaster.master.signals import SignalHandling
from circus_djmaster.master.state import Blocks, LoopExit, Mode, WorkerBook, mtime_ns
from circus_djmaster.store import async_executor

__all__ = ["Connector", "Master"]

#: Opens a connection of the master to a database, for a role (poll, listen).
Connector = Callable[[Database, str], Awaitable[async_executor.AsyncConnection]]

log = logging.getLogger(__name__)

#: How long a scaling pass waits for each database's count.
COUNT_WAIT = 2.0
#: Turns start at most this often: the first event after a quiet spell is handled at
#: once (a NOTIFY must start a worker fast), the following ones of a burst (spawn,
#: start, reap, a flood of NOTIFYs…) are gathered into the next turn.
MIN_TURN_INTERVAL = 0.05
#: How long a worker the master signalled is remembered until circus reaps it, so that
#: its exit is not counted again in the metrics (seconds).
SIGNALLED_MEMORY = 600.0


class Master(SignalHandling):
    """The master of one settings file's watchers, on the plugin's event loop."""

    def __init__(
        self,
        settings: Settings,
        circus: AsyncCircus,
        *,
        own_watcher: str,
        host: str | None = None,
        probe_interval: float = 10.0,
        processes: Processes = OS_PROCESSES,
        connect: Connector | None = None,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        """``processes`` reads and signals the workers, ``connect(database, role)``
        opens a database connection (default: :func:`async_executor.connect`); the unit
        tests of the loop give in-memory ones. ``metrics`` records what the master does
        (default: nothing; ``master.plugin.metrics_for`` makes the one of the settings)."""
        self.settings = settings
        self.metrics = metrics or MetricsRecorder()
        self.circus = circus
        self.processes = processes
        self.connect = connect or self._connect
        self.own_watcher = own_watcher
        self.pid = os.getpid()
        self.host = host or socket.gethostname()
        self.probe_interval = probe_interval
        self.index = watcher_index(settings)  # lower-cased watcher -> (group, database)
        # spawn = "fork": the preloader's watcher and the watchers of its workers.
        self.fork_watchers = frozenset(
            name for name, (group, _) in self.index.items() if settings.group(group).spawn == "fork"
        )
        self.preloader: PreloaderSnapshot | None = None  # the last observation of it
        self._failure_checked = False  # the note of a preloader that failed before us
        self._circus_events = 0  # reap/stop/start events so far (see _turn)
        self._settings_mtime = mtime_ns(settings.path)
        self.policies = {group.name: GroupPolicy.from_settings(group) for group in settings.workers}
        self.callbacks = MasterCallbacks.load(settings.callbacks)
        self.mode = Mode.RUNNING
        self.snapshots: list[WatcherSnapshot] = []  # the last observation
        self.blocks = Blocks()  # watchers blocked by configuration errors
        self.book = WorkerBook()  # the workers it knows, and their deaths
        self._missing_reported: set[str] = set()
        self._signalled: dict[int, float] = {}  # pid -> when the master sent TERM/KILL
        self._signals: collections.deque[int] = collections.deque()
        self._wake = asyncio.Event()
        self._scale_due = True
        self._next_monitor = 0.0
        self._last_turn = 0.0
        self._rotation = 0
        self._circus_failures = 0
        self.pollers: dict[str, DatabasePoller] = {}
        #: Every recurring entry (the settings' and those of recurring_modules).
        self.recurring: list[RecurringJob] = []
        self._recurring_by_database: dict[str, list[RecurringJob]] = {}
        self.listeners: dict[str, Listener] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # A pending signal (TERM from circus' quit…) must not wait for circus retries.
        circus.interrupted = self._signal_pending

    def _signal_pending(self) -> bool:
        return bool(self._signals)

    # --- inputs: record and wake, never act ----------------------------------------

    def record_signal(self, signum: int) -> None:
        self._signals.append(signum)
        self._wake.set()

    def request_scaling(self) -> None:
        self._scale_due = True
        self._wake.set()

    def on_event(self, watcher: str, event: str, message: Any) -> None:
        """A circus pubsub event (``watcher.<name>.<event>``): a hint to look again."""
        watcher = watcher.lower()
        if watcher == PRELOADER_WATCHER and self.fork_watchers:
            if event == "reap" and isinstance(message, dict):
                self._on_preloader_reap(message)
            self._wake.set()
            return
        if watcher not in self.index:
            return
        if event == "reap" and isinstance(message, dict):
            self._on_reap(watcher, message)
        if event in ("reap", "stop", "start"):
            self._scale_due = True  # a slot was freed, or an operator acted
            self._circus_events += 1
        self._wake.set()

    def _on_reap(self, watcher: str, message: dict[str, Any]) -> None:
        try:
            pid = int(message["process_pid"])
        except (KeyError, TypeError, ValueError):
            return
        exit_code = message.get("exit_code")
        exit_code = exit_code if isinstance(exit_code, int) else None
        self.book.reaped(pid, exit_code)  # for the message when it vanishes from `list`
        self._count_exit(watcher, pid, exit_code)
        if exit_code == WorkerExit.CONFIG_ERROR:
            self._block(watcher)
        elif not is_retiring(exit_code):
            # It died: release now (it may have lived between two observations).
            self._release_jobs(pid, watcher, self.book.death(pid, self.host, exit_code))

    def _on_preloader_reap(self, message: dict[str, Any]) -> None:
        exit_code = message.get("exit_code")
        exit_code = exit_code if isinstance(exit_code, int) else None
        if exit_code == WorkerExit.CONFIG_ERROR:
            self._block(PRELOADER_WATCHER)
        elif not is_retiring(exit_code):
            log.warning(
                "%s: the preloader pid %s %s; circus starts a new one, its workers go on",
                PRELOADER_WATCHER,
                message.get("process_pid"),
                describe_exit(exit_code),
                extra=event("preloader_died", exit_code=exit_code),
            )

    def _count_exit(self, watcher: str, pid: int, exit_code: int | None) -> None:
        """Tell the metrics how a worker of ``watcher`` (lower-cased) ended; an exit the
        master caused (TERM, SIGKILL) was counted when it sent the signal."""
        now = time.monotonic()
        signalled = self._signalled.pop(pid, None) is not None
        for old, when in list(self._signalled.items()):
            if now - when > SIGNALLED_MEMORY:  # its reap event never came
                del self._signalled[old]
        name = watcher_name(*self.index[watcher])
        if exit_code == WorkerExit.CONFIG_ERROR:
            self.metrics.config_error(name)
        elif signalled or exit_code is None:
            return
        elif exit_code == WorkerExit.RETIRED:
            self.metrics.retired(name, SELF_RETIRED)
        else:
            self.metrics.crashed(name)

    # --- the loop ------------------------------------------------------------------

    async def run(self) -> LoopExit:
        self._start_tasks()
        log.info(
            "master started (pid %d, settings %s): %d watcher(s), polling every %gs, "
            "monitor every %gs, LISTEN %s",
            self.pid,
            self.settings.path,
            len(self.index),
            self.settings.polling_interval,
            self.settings.monitor_interval,
            "on" if self.settings.listen else "off",
        )
        try:
            while True:
                ended = await self._handle_signals()
                if ended is not None:
                    return ended
                pause = 0.0
                try:
                    ended = await self._turn()
                except (CircusError, CircusTimeout) as error:
                    pause = self._circus_failed(error)
                else:
                    if self._circus_failures:
                        log.info("circusd answers again")
                    self._circus_failures = 0
                if ended is not None:
                    return ended
                await self._wait(at_least=pause)
        finally:
            await self._stop_tasks()

    async def _turn(self) -> LoopExit | None:
        self._last_turn = time.monotonic()
        sent = self.circus.sent
        # A reap (a slot freed) that arrives while this turn observes may not be in its
        # observation; the turn's scaling then decides on the slot still taken, and the
        # event's request must not be spent on it: the next turn looks again.
        events = self._circus_events
        self._check_blocks()  # before observing: the snapshots carry the blocks
        snapshots = await self.observe()
        self._check_blocks(snapshots)  # parked watchers need a fresh status
        self._release_vanished()
        await self._keep_preloader()
        now = time.monotonic()
        if now >= self._next_monitor:
            self._next_monitor = now + self.settings.monitor_interval
            await self._monitor(snapshots)
            # Reconcile scaling too while workers live or are due: a decision may have
            # waited (a worker still starting cannot be retired yet), and events are only
            # hints. With nothing running, the polling timer and NOTIFY suffice: counting
            # every database every tick would be most of an idle master's CPU.
            if any(s.workers or s.numprocesses for s in snapshots):
                self._scale_due = True
        if self.mode is Mode.DRAINING:
            return await self._drain(snapshots)
        if self._scale_due:
            self._scale_due = False
            await self._scale(snapshots)
            commands = self.circus.sent - sent
            took = (time.monotonic() - self._last_turn) * 1000
            log.debug(
                "scaling turn: %d circus command(s), %.1f ms",
                commands,
                took,
                extra=event("scaling_turn", commands=commands, ms=round(took, 1)),
            )
        if self._circus_events != events:
            self._scale_due = True  # woken already: the next turn scales on a fresh look
        return None

    async def _wait(self, at_least: float = 0.0) -> None:
        """Until something happened (or the next monitor tick); signals cut it short."""
        wake_at = self._next_monitor
        deadline = self.book.next_deadline()  # a vanished worker's release is due
        if deadline is not None:
            wake_at = min(wake_at, deadline)
        timeout = max(0.0, at_least, wake_at - time.monotonic())
        if at_least:
            self._wake.clear()  # old wake-ups must not end a pause after a circus failure
            if self._signals:
                return
        if not self._wake.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                return
        throttle = self._last_turn + MIN_TURN_INTERVAL - time.monotonic()
        if throttle > 0:
            await asyncio.sleep(throttle)
        self._wake.clear()

    def _circus_failed(self, error: Exception) -> float:
        """Log (the first failure, then every 30th); return the pause before a retry."""
        self._circus_failures += 1
        pause = min(5.0, 0.5 * self._circus_failures)
        if self._circus_failures == 1 or self._circus_failures % 30 == 0:
            log.warning(
                "circusd: %s (failure %d); trying again in %.1fs",
                error,
                self._circus_failures,
                pause,
            )
        self._scale_due = True
        return pause

    # --- tasks -----------------------------------------------------------------------

    def _start_tasks(self) -> None:
        self._set_recurring(self.settings.recurring)
        if self.settings.recurring_modules:
            self._tasks.append(
                asyncio.create_task(self._load_recurring_modules(), name="recurring-modules")
            )
        for database in self.settings.databases:
            poller = DatabasePoller(
                self.settings,
                database.name,
                functools.partial(self.connect, database, "poll"),
                self.request_scaling,
                callbacks=self.callbacks,
                master=self,
                host=self.host,
                metrics=self.metrics,
            )
            self.pollers[database.name] = poller
            poller.recurring.entries = self._recurring_by_database.get(database.name, [])
            self._tasks.append(asyncio.create_task(poller.run(), name=f"poll-{database.name}"))
            if self.settings.listen:
                listener = Listener(
                    database.name,
                    functools.partial(self.connect, database, "listen"),
                    poller.wake,
                    probe_interval=self.probe_interval,
                )
                self.listeners[database.name] = listener
                self._tasks.append(
                    asyncio.create_task(listener.run(), name=f"listen-{database.name}")
                )

    def _set_recurring(self, entries: Iterable[RecurringJob]) -> None:
        """Give each database's poller its recurring entries (no database named: the
        first one's)."""
        first = self.settings.databases[0].name
        by_database: dict[str, list[RecurringJob]] = {}
        for entry in entries:
            by_database.setdefault(entry.database or first, []).append(entry)
        self.recurring = list(entries)
        for name, poller in self.pollers.items():
            poller.recurring.entries = by_database.get(name, [])
        self._recurring_by_database = by_database

    async def _load_recurring_modules(self) -> None:
        """Import ``recurring_modules`` in a thread (an import may take its time: never
        on the loop) and add the entries they declare with ``@recurring``. A module that
        fails to import is logged; the settings' entries run regardless."""
        modules = self.settings.recurring_modules
        try:
            declared = await asyncio.to_thread(declared_in, modules)
        except Exception:
            log.exception("recurring_modules: importing %s failed", ", ".join(modules))
            return
        names = {entry.name for entry in self.settings.recurring}
        databases = {database.name for database in self.settings.databases}
        added = []
        for entry in declared:
            if entry.name in names:
                log.error(
                    "recurring %s: declared in the settings and in code; the "
                    "settings' entry is used",
                    entry.name,
                )
            elif entry.database is not None and entry.database not in databases:
                log.error(
                    "recurring %s: no database named %s in %s",
                    entry.name,
                    entry.database,
                    self.settings.path,
                )
            else:
                added.append(entry)
        self._set_recurring([*self.settings.recurring, *added])
        log.info("recurring_modules: %d recurring job(s) declared in code", len(added))

    async def _connect(self, database: Database, role: str) -> async_executor.AsyncConnection:
        """A new master connection to ``database`` (``role``: poll or listen)."""
        return await async_executor.connect(
            database.url(),
            application_name=master_application_name(role),
            timeout=self.settings.database_timeout,
        )

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await asyncio.gather(*(poller.close() for poller in self.pollers.values()))

    # --- observation -------------------------------------------------------------------

    async def observe(self) -> list[WatcherSnapshot]:
        statuses = await self.circus.statuses()
        snapshots = []
        current: dict[int, str] = {}
        for name, (group, database) in self.index.items():
            if name not in statuses:
                if name not in self._missing_reported:
                    self._missing_reported.add(name)
                    self._report_missing(watcher_name(group, database))
                continue
            status = WatcherStatus.parse(statuses[name])
            pids: list[int] = []
            numprocesses = 0
            if status is not WatcherStatus.STOPPED:
                numprocesses = await self.circus.numprocesses(name)
                pids = await self.circus.pids(name)
            workers = []
            for pid in pids:
                current[pid] = name
                worker = self.processes.read(pid, retiring=pid in self.book.retiring)
                if worker is not None:
                    workers.append(worker)
            block = self.blocks.get(name)
            snapshots.append(
                WatcherSnapshot(
                    name=name,
                    group=group,
                    database=database,
                    status=status,
                    numprocesses=numprocesses,
                    workers=tuple(workers),
                    blocked=block is not None,
                    parked=block is not None and block.parked,
                )
            )
        self.book.observed(current)
        self.snapshots = snapshots
        if self.fork_watchers:
            self.preloader = await self._observe_preloader(statuses)
        self.metrics.observed(snapshots)
        return snapshots

    async def _observe_preloader(self, statuses: dict[str, Any]) -> PreloaderSnapshot | None:
        if PRELOADER_WATCHER not in statuses:
            if PRELOADER_WATCHER not in self._missing_reported:
                self._missing_reported.add(PRELOADER_WATCHER)
                self._report_missing(PRELOADER_WATCHER)
            return None
        status = WatcherStatus.parse(statuses[PRELOADER_WATCHER])
        numprocesses, readings = 0, []
        if status is not WatcherStatus.STOPPED:
            numprocesses = await self.circus.numprocesses(PRELOADER_WATCHER)
            for pid in await self.circus.pids(PRELOADER_WATCHER):
                reading = self.processes.read_preloader(pid)
                if reading is not None:
                    readings.append(reading)
        if not self._failure_checked:
            self._failure_checked = True
            if not any(not reading.old for reading in readings):
                self._adopt_failure()
        block = self.blocks.get(PRELOADER_WATCHER)
        return PreloaderSnapshot(
            status,
            numprocesses,
            tuple(readings),
            blocked=block is not None,
            parked=block is not None and block.parked,
        )

    def forget_preloader_failure(self) -> None:
        if self.fork_watchers:
            with contextlib.suppress(OSError):
                rendezvous.clear_failure(rendezvous.folder_for(self.settings.path))

    def _adopt_failure(self) -> None:
        """Block the preloader if it exited 78 before this master was up to see it.

        circusd starts the preloader before the master (it imports the app meanwhile), so
        its reap event may come before the master listens. Its note (contracts/
        preloader.py) tells: written since the settings file last changed, by no live
        preloader, it means the current code and settings cannot load. A new generation
        (the settings file changed, ``circusctl start``, USR2 to the master) removes it.
        """
        folder = rendezvous.folder_for(self.settings.path)
        if rendezvous.read_failure(folder) is None:
            return
        written = mtime_ns(os.path.join(folder, rendezvous.FAILED))
        changed = mtime_ns(self.settings.path)
        if written is not None and changed is not None and written >= changed:
            self._block(PRELOADER_WATCHER)

    def _report_missing(self, watcher: str) -> None:
        circus = self.settings.circus
        circusd_log = "its stdout" if circus.logoutput == "-" else circus.logoutput
        log.error(
            "watcher %s is not in circusd, so none of its jobs can run. Either circusd "
            "could not create it (e.g. it cannot open the workers' output file: a missing "
            "folder, no permission; circusd says why in its own log, %s), or circus.ini is "
            "older than %s (render it again: djmaster-config render %s -o circus.ini, "
            "then circusctl reload)",
            watcher,
            circusd_log,
            self.settings.path,
            self.settings.path,
            extra=event("watcher_missing", watcher=watcher),
        )

    # --- dead workers ------------------------------------------------------------------

    def _release_vanished(self) -> None:
        for pid in self.book.gone:
            if pid not in self.book.exit_codes:
                exit_code = self.processes.exit_code(pid)  # not reaped by circus yet
                if exit_code is not None:
                    self.book.reaped(pid, exit_code)
        # A pid gone without an exit code waits a moment for circus' reap event
        # (REAP_EVENT_WAIT): _on_reap releases a crashed one's jobs as soon as it comes.
        for pid, watcher in self.book.take_gone(time.monotonic()).items():
            exit_code = self.book.exit_codes.get(pid)
            self._release_jobs(pid, watcher, self.book.death(pid, self.host, exit_code))
            self.book.buried(pid)

    def _release_jobs(self, pid: int, watcher: str, death: str) -> None:
        """Queue the release of a gone worker's jobs; a no-op in the database when it
        exited cleanly (it holds no lock)."""
        if not self.book.first_release(pid, time.monotonic()):
            return
        _group, database = self.index[watcher]
        # What it ran when it died (contracts/running_jobs.py) decides who is charged.
        charge = charge_for_death(read_running(pid))
        forget(pid)
        poller = self.pollers.get(database)
        if poller is not None:
            poller.release([Release(worker_locked_by(pid, self.host), death, charge)])

    # --- configuration errors ------------------------------------------------------------

    def _block(self, watcher: str) -> None:
        if not self.blocks.block(watcher, mtime_ns(self.settings.path)):
            return
        if watcher == PRELOADER_WATCHER:
            log.error(
                "%s: the preloader exited with code %d (settings or application import "
                "error; its own error is in %s): no worker of a fork-mode group starts "
                "until %s changes, `circusctl start %s`, or USR2 to the master",
                PRELOADER_WATCHER,
                int(WorkerExit.CONFIG_ERROR),
                self.settings.log_file or "circusd's output",
                self.settings.path,
                PRELOADER_WATCHER,
                extra=event("watcher_blocked", watcher=watcher),
            )
            return
        group, database = self.index[watcher]
        log.error(
            "%s: a worker exited with code %d (settings or application preload error; "
            "the worker's own error is in %s): not starting workers for it until %s "
            "changes, `circusctl start %s`, or USR2 to the master",
            watcher_name(group, database),
            int(WorkerExit.CONFIG_ERROR),
            self.settings.log_file or "circusd's output",
            self.settings.path,
            watcher_name(group, database),
            extra=event("watcher_blocked", watcher=watcher),
        )

    def _check_blocks(self, snapshots: Iterable[WatcherSnapshot] | None = None) -> None:
        """Unblock watchers whose settings changed; with ``snapshots`` (a fresh
        observation), also those an operator started after the master parked them."""
        if not self.blocks:
            return
        statuses = {snapshot.name: snapshot.status for snapshot in snapshots or ()}
        if snapshots is not None and self.preloader is not None:
            statuses[PRELOADER_WATCHER] = self.preloader.status
        unblocked = self.blocks.unblock(mtime_ns(self.settings.path), statuses)
        for watcher, why in unblocked.items():
            self._scale_due = True
            if why == "the settings file changed":
                why = f"{self.settings.path} changed"
            log.info(
                "%s: scaling it again (%s)",
                watcher,
                why,
                extra=event("watcher_unblocked", watcher=watcher),
            )

    # --- monitor ---------------------------------------------------------------------------

    async def _monitor(self, snapshots: list[WatcherSnapshot]) -> None:
        async def block() -> None:
            await self._execute(plan_limits(self.policies, snapshots))

        await self.callbacks.call("before_monitor", self)
        await self.callbacks.around("around_monitor", block, self)
        await self.callbacks.call("after_monitor", self)

    # --- scaling ---------------------------------------------------------------------------

    async def _scale(self, snapshots: list[WatcherSnapshot]) -> None:
        databases = list(self.pollers)
        results = await asyncio.gather(
            *(self.pollers[database].count(COUNT_WAIT) for database in databases)
        )
        counts = dict(zip(databases, results, strict=True))
        # While the preloader cannot load, fork-mode watchers are held as they are.
        held = self.fork_watchers if self.preloader is not None and self.preloader.blocked else ()
        ready = []
        for snapshot in snapshots:
            per_group = counts.get(snapshot.database)
            count = None if per_group is None else per_group.get(snapshot.group)
            ready.append(_with_ready(snapshot, None if snapshot.name in held else count))
        self.snapshots = ready
        actions = plan_scaling(self.policies, ready, rotation=self._rotation)
        self._rotation += 1
        await self._execute(actions, ready)

    async def _execute(
        self, actions: list[Action], snapshots: list[WatcherSnapshot] | None = None
    ) -> None:
        by_name = {snapshot.name: snapshot for snapshot in snapshots or self.snapshots}
        for action in actions:
            try:
                await self._act(action, by_name.get(action.watcher))
            except (CircusError, CircusTimeout) as error:
                log.warning("%s: %s failed: %s", action.watcher, type(action).__name__, error)
                self._scale_due = True  # try again after the next observation

    async def _act(self, action: Action, snapshot: WatcherSnapshot | None) -> None:
        ready = snapshot.ready if snapshot is not None else None
        if isinstance(action, StartWatcher):
            await self._before_fork(action.watcher, action.numprocesses)
            # Stopped: setting the target spawns nothing; start then spawns it (only a
            # stopped watcher is ever started: docs/master.md, "circus 0.19, measured").
            await self.circus.set_numprocesses(action.watcher, action.numprocesses)
            await self.circus.start(action.watcher)
            self.metrics.scaled_up(self._label(action.watcher), action.numprocesses)
            log.info(
                "%s: started with %d worker(s) for %s ready job(s)",
                action.watcher,
                action.numprocesses,
                ready,
                extra=event("watcher_started", watcher=action.watcher, workers=action.numprocesses),
            )
        elif isinstance(action, GrowWatcher):
            await self._before_fork(action.watcher, action.count)
            await self.circus.incr(action.watcher, action.count)
            self.metrics.scaled_up(self._label(action.watcher), action.count)
            log.info(
                "%s: %d more worker(s) for %s ready job(s)",
                action.watcher,
                action.count,
                ready,
                extra=event("watcher_grown", watcher=action.watcher, workers=action.count),
            )
        elif isinstance(action, RetireWorker):
            if self.send_signal(action.pid, signal.SIGTERM):
                self.book.retiring[action.pid] = action.reason
                self._signalled[action.pid] = time.monotonic()
                self.metrics.retired(self._label(action.watcher), action.reason.name.lower())
                log.info(
                    "%s: retiring worker pid %d after its current job (%s)",
                    action.watcher,
                    action.pid,
                    action.reason.value,
                    extra=event(
                        "worker_retiring",
                        watcher=action.watcher,
                        pid=action.pid,
                        reason=action.reason.name,
                    ),
                )
        elif isinstance(action, KillWorker):
            if self.send_signal(action.pid, signal.SIGKILL):
                self.book.killed[action.pid] = action.reason
                self._signalled[action.pid] = time.monotonic()
                self.metrics.killed(self._label(action.watcher), action.reason.name.lower())
                self._wake.set()  # release its jobs as soon as it is gone
                log.warning(
                    "%s: killed worker pid %d (%s); its jobs are released",
                    action.watcher,
                    action.pid,
                    action.reason.value,
                    extra=event(
                        "worker_killed",
                        watcher=action.watcher,
                        pid=action.pid,
                        reason=action.reason.name,
                    ),
                )
        elif isinstance(action, ParkWatcher):
            await self.circus.stop(action.watcher, retry_for=SCALING_RETRY)
            await self.circus.set_numprocesses(action.watcher, 1)
            self.blocks.parked(action.watcher)
            log.info(
                "%s: stopped; `circusctl start %s` runs one worker again",
                action.watcher,
                action.watcher,
                extra=event("watcher_parked", watcher=action.watcher),
            )

    def _label(self, watcher: str) -> str:
        """A watcher's name as the settings spell it (circus lower-cases them)."""
        return watcher_name(*self.index[watcher.lower()])

    async def _before_fork(self, watcher: str, count: int) -> None:
        # spawn = "fork": the preloader runs before_fork, before each fork.
        if "before_fork" not in self.callbacks or watcher in self.fork_watchers:
            return
        group, database = self.index[watcher]
        target = ForkTarget(self.settings.group(group), database, watcher, count)
        await self.callbacks.call("before_fork", self, target)

    # --- the preloader (spawn = "fork") ----------------------------------------------------

    async def _keep_preloader(self) -> None:
        """One current preloader generation; a new one when the settings file changed."""
        if self.preloader is None:
            return
        mtime = mtime_ns(self.settings.path)
        stale = mtime != self._settings_mtime
        self._settings_mtime = mtime
        for action in plan_preloader(self.preloader, stale=stale):
            try:
                await self._act_preloader(action)
            except (CircusError, CircusTimeout) as error:
                log.warning("%s: %s failed: %s", PRELOADER_WATCHER, type(action).__name__, error)

    async def _act_preloader(self, action: PreloaderAction) -> None:
        if isinstance(action, RetirePreloader):
            if self.retire_preloader(action.pid):
                log.info(
                    "%s: preloader pid %d retires (%s): it forks no more and exits once "
                    "its workers are gone",
                    PRELOADER_WATCHER,
                    action.pid,
                    action.why,
                    extra=event("preloader_retiring", pid=action.pid),
                )
            return
        if isinstance(action, ParkWatcher):
            await self._act(action, None)
            return
        # A new generation: a note of a failed one must not stop its launchers.
        self.forget_preloader_failure()
        if isinstance(action, StartWatcher):
            await self.circus.set_numprocesses(PRELOADER_WATCHER, 1)
            await self.circus.start(PRELOADER_WATCHER)
        else:
            await self.circus.incr(PRELOADER_WATCHER, 1)
        log.info(
            "%s: a new preloader generation starts",
            PRELOADER_WATCHER,
            extra=event("preloader_started"),
        )

    # --- the master's own signals --------------------------------------------------------

    async def _handle_signals(self) -> LoopExit | None:
        while self._signals:
            signum = self._signals.popleft()
            ended = await self.handle_signal(signum)
            if ended is not None:
                return ended
        return None


def _with_ready(snapshot: WatcherSnapshot, ready: int | None) -> WatcherSnapshot:
    return dataclasses.replace(snapshot, ready=ready)
