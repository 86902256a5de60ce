"""The worker process's main thread: the arbiter of its job threads.

gunicorn's pattern: signal handlers only record the signal and wake the main thread,
which then acts (a table of ``handle_<signal>`` methods), watches the job threads'
deadlines (``max_run_time``), shows the process title and decides when the process
exits. Job threads (job_thread.py) reserve and run jobs; they reach the worker only
through :class:`~circus_djmaster.worker.job_thread.WorkerLink`, which :class:`Worker`
implements. main.py runs the worker's whole life (``djmaster worker``).

Exits (contracts/exit_codes.py): 0 when it retires (idle, memory or lifetime limit, a
stuck job, TERM/INT/USR2 after the running jobs, QUIT at once with its jobs handed
back); 78 when the settings or the preload fail (main.py); anything else is a crash
that circus respawns.

Longer than 400 lines on purpose: the main thread's state (stop mode, idle clock,
title, stuck jobs) is shared with every step of its loop and with its job threads
through :class:`WorkerLink`; splitting it would pass that state around instead.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import logging
import math
import os
import select
import signal
import threading
import time
from typing import Any, TypeVar

import psutil
import psycopg

from circus_djmaster.api.context import set_worker_database
from circus_djmaster.common import logs
from circus_djmaster.common.logs import event
from circus_djmaster.common.memory import rss_with_children, uss_with_children
from circus_djmaster.config.settings import Database, Settings, WorkerGroup
from circus_djmaster.contracts import titles
from circus_djmaster.contracts.exit_codes import WorkerExit
from circus_djmaster.contracts.locked_by import worker_locked_by
from circus_djmaster.contracts.running_jobs import RunningJobs
from circus_djmaster.store import statements
from circus_djmaster.store.errors import describe_error
from circus_djmaster.store.statements import JobFilter, ReservedJob, Statement
from circus_djmaster.store.sync_executor import connect, execute
from circus_djmaster.worker import early_signals, launcher_link
from circus_djmaster.worker.cancels import CancelWatch
from circus_djmaster.worker.db_deadlines import CallDeadlines
from circus_djmaster.worker.feed import JobFeed
from circus_djmaster.worker.interruption import Watchdog
from circus_djmaster.worker.job_code import install_fork_handler
from circus_djmaster.worker.job_thread import JobThread, ThreadSetup
from circus_djmaster.worker.read_ahead import ReadAhead
from circus_djmaster.worker.run_alone import RunAloneGate
from circus_djmaster.worker.wakeup import NotifyWakeup

__all__ = ["StopMode", "Worker", "WorkerInfo", "process_rss"]

log = logging.getLogger("circus_djmaster.worker")
T = TypeVar("T")

HANDLED_SIGNALS = early_signals.SIGNALS
# The main loop wakes at least this often (parent check, deadlines).
TICK = 0.5
# A database call's client-side deadline is the server's statement_timeout plus this:
# the server normally gives up first, with a clean error and a usable connection.
CLIENT_SLACK = 2.0
# A forked worker over max_memory by RSS reads its USS at most this often (seconds).
MEMORY_READ_EVERY = 1.0
# A call unanswered this long counts as trouble: for the [NO DB] title, and a stopping
# worker stops waiting for a reserve this old (a hung idle query is not a running job).
STALLED_AFTER = 1.0


class StopMode(enum.IntEnum):
    """How far the worker is on its way out (it only ever goes further)."""

    NONE = 0
    GRACEFUL = 1  # finish running jobs, take no new ones
    IMMEDIATE = 2  # hand back every job and exit now


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """What worker callbacks receive."""

    settings: Settings
    group: WorkerGroup
    database: Database
    #: The pid circus and ``locked_by`` know: the launcher's with ``spawn = "fork"``
    #: (``os.getpid()`` is the process' own).
    pid: int
    wid: int | None = None  # circus' wid of the process (None: started by hand)


class Worker:
    """One worker process: ``group``'s worker on ``database`` (implements
    :class:`~circus_djmaster.worker.job_thread.WorkerLink` for its job threads)."""

    #: Signal -> the method that handles it (recorded by the handlers, acted on by the
    #: main loop).
    SIGNAL_HANDLERS: dict[int, str] = {
        signal.SIGTERM: "handle_term",
        signal.SIGINT: "handle_term",
        signal.SIGQUIT: "handle_quit",
        signal.SIGUSR1: "handle_usr1",
        signal.SIGUSR2: "handle_usr2",
    }

    def __init__(
        self,
        settings: Settings,
        group: WorkerGroup,
        database: Database,
        *,
        wid: int | None = None,
        launcher_pid: int | None = None,
    ) -> None:
        """``wid``: circus' wid of the process circus started (its title and log lines
        show it; None: started by hand). ``launcher_pid``: the worker was forked by the
        preloader for that launcher (``spawn = "fork"``). It then goes by the launcher's
        pid, the one circus and the master know (``locked_by``, the running-jobs file,
        ``WorkerInfo.pid``, database application names), watches its launcher instead of
        its parent (launcher_link.py: the launcher relays circusd's death as a TERM), and
        compares its unique memory (USS) with ``max_memory``: its RSS counts the pages it
        shares with the preloader.

        Raises SettingsError when the database URL's variable is unset.
        """
        self.settings = settings
        self.group = group
        self.database = database
        self.wid = wid
        self.database_url = database.url()
        self.forked = launcher_pid is not None
        self.pid = launcher_pid if launcher_pid is not None else os.getpid()
        self.locked_by = worker_locked_by(self.pid)
        self.info = WorkerInfo(settings, group, database, self.pid, wid)
        self.setup = ThreadSetup(
            group=group,
            database_name=database.name,
            database_url=self.database_url,
            worker_pid=self.pid,
            locked_by=self.locked_by,
            job_filter=JobFilter.of(group),
            lock_timeout=settings.lock_timeout,
            database_timeout=settings.database_timeout,
        )
        self.started = time.monotonic()
        self._ppid = os.getppid()
        self._memory_read_at = -math.inf
        self._lock = threading.Lock()
        # Threads reserving or holding jobs: the worker is idle only when none is.
        self._active = 0
        self._last_activity = time.monotonic()
        self._empty_pass_at: float | None = None
        self._stop = StopMode.NONE
        self._term_received = False
        self._retire_reason: str | None = None
        self._crashed = False
        self._old = False
        self._busy_shown = False
        self._no_db_shown = False
        self._signals: collections.deque[int] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._threads: list[JobThread] = []
        self.running = RunningJobs(group.max_threads, self.pid)
        self.gate = RunAloneGate()
        self.feed: JobFeed[ReservedJob] = JobFeed(
            group.max_threads, ReadAhead(group.read_ahead, group.max_threads)
        )
        self.deadlines = CallDeadlines(settings.database_timeout + CLIENT_SLACK)
        self.watchdog = Watchdog(
            locked_by=self.locked_by, control=self._control, retire=self.retire
        )
        self._conn: psycopg.Connection[Any] | None = None
        # Cancel requests of held jobs, looked up on a thread of its own (cancels.py).
        self.cancels = CancelWatch(
            lambda: self._threads,
            lambda: (job_id for job_id, _since in self.feed.held_since()),
            url=self.database_url,
            database=database.name,
            application_name=titles.worker_application_name(self.pid, "cancels"),
            timeout=settings.database_timeout,
            deadlines=self.deadlines,
        )
        # A worker that waits for work (idle_timeout > 0) listens, so it wakes at once.
        self._wakeup = (
            NotifyWakeup(
                self.database_url,
                group.queues,
                database.name,
                deadlines=self.deadlines,
                application_name=titles.worker_application_name(self.pid, "listen"),
                timeout=settings.database_timeout,
            )
            if settings.listen and group.idle_timeout > 0
            else None
        )
        # Jobs enqueued in this process without a connection or URL go to its database.
        set_worker_database(self.database_url)
        install_fork_handler(HANDLED_SIGNALS, self._child_title)
        self.set_title()

    # --- signals: handlers only record ------------------------------------------------

    def install_signal_handlers(self) -> None:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._record_signal)

    def replay(self, signals: list[int]) -> None:
        """Signals received before the handlers were in place (early_signals)."""
        for signum in signals:
            self._record_signal(signum, None)

    @property
    def crashed(self) -> bool:
        return self._crashed

    @property
    def retire_reason(self) -> str | None:
        return self._retire_reason

    def _record_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)
        self._poke()

    def _poke(self) -> None:
        # A full pipe means the main loop is awake anyway.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b".")

    def _handle_signals(self) -> None:
        if not self._signals:
            return
        while self._signals:
            signum = self._signals.popleft()
            getattr(self, self.SIGNAL_HANDLERS[signum])(signal.Signals(signum).name)
        self._wake_threads()

    def handle_term(self, name: str) -> None:
        """TERM, INT: finish the running jobs, then exit; a second one: stop now.

        Only a second TERM/INT escalates: after USR2 (or a retirement) a TERM, from
        ``circusctl quit`` say, still lets the running jobs finish.
        """
        if not self._term_received:
            self._term_received = True
            log.info("%s: stopping after the running jobs", name)
            self._stop = max(self._stop, StopMode.GRACEFUL)
        else:
            log.info("%s again: stopping now", name)
            self._stop = StopMode.IMMEDIATE

    def handle_quit(self, name: str) -> None:
        """QUIT: stop now; the jobs are handed back unlocked, no attempt charged."""
        log.info("QUIT: stopping now, handing back the jobs")
        self._stop = StopMode.IMMEDIATE

    def handle_usr1(self, name: str) -> None:
        """USR1: reopen the log file (logrotate)."""
        logs.reopen()
        log.info("USR1: log reopened")

    def handle_usr2(self, name: str) -> None:
        """USR2: `` [OLD]``, finish the running jobs, then exit."""
        log.info("USR2: old generation, stopping after the running jobs")
        self._old = True
        self._stop = max(self._stop, StopMode.GRACEFUL)
        self.set_title()

    # --- state shared with job threads ------------------------------------------------

    def accepting_jobs(self) -> bool:
        return self._stop is StopMode.NONE and self._retire_reason is None

    def pass_started(self) -> None:
        """A thread is about to reserve: it is active until pass_ended()."""
        with self._lock:
            self._active += 1

    def pass_ended(self, *, found: bool) -> None:
        """A thread's reserve came back empty, or the jobs it found are done."""
        with self._lock:
            self._active -= 1
            now = time.monotonic()
            if found:
                self._last_activity = now
            else:
                self._empty_pass_at = now
        self.show_busy()
        if not found:  # only an empty pass can make the worker idle: tell the main loop
            self._poke()

    def after_job(self) -> None:
        """Check the process limits after a job (a worker over them retires after its
        current job)."""
        group = self.group
        if group.max_memory is not None:
            rss = process_rss()
            # USS <= RSS: a forked worker reads its USS (a few ms for a large app) only
            # when its RSS is over the limit, and at most every MEMORY_READ_EVERY.
            now = time.monotonic()
            if not self.forked:
                if rss > group.max_memory:
                    self.retire(f"memory {rss // 2**20} MB is over max_memory")
            elif rss > group.max_memory and now - self._memory_read_at >= MEMORY_READ_EVERY:
                self._memory_read_at = now
                uss = uss_with_children(psutil.Process())
                if uss > group.max_memory:
                    self.retire(f"memory (USS) {uss // 2**20} MB is over max_memory")
        if group.max_execution is not None:
            age = time.monotonic() - self.started
            if age > group.max_execution:
                self.retire(f"age {age:.0f}s is over max_execution")

    def retire(self, reason: str) -> None:
        with self._lock:
            if self._retire_reason is None:
                self._retire_reason = reason
                log.info("retiring: %s", reason, extra=event("worker_retiring", reason=reason))
        self._wake_threads()
        self._poke()

    def thread_exited(self) -> None:
        self._poke()

    def cancel_requested(self, job_id: int) -> bool:
        """Whether held job ``job_id`` was found cancelled (cancels.CancelWatch)."""
        return self.cancels.requested(job_id)

    def thread_crashed(self) -> None:
        self._crashed = True
        self.retire("a job thread crashed")

    def show_busy(self) -> None:
        busy = any(thread.slot.job_id is not None for thread in self._threads)
        if busy != self._busy_shown:
            self._busy_shown = busy
            self.set_title()

    def set_title(self) -> None:
        titles.set_title(
            titles.worker_title(
                self.group.index,
                self.group.queues,
                self.database.name,
                wid=self.wid,
                busy=self._busy_shown,
                old=self._old,
                no_db=self._no_db_shown,
            )
        )

    def _child_title(self, parent: int) -> str:
        return titles.forked_child_title(parent, self.database.name)

    def _show_database_trouble(self) -> None:
        """[NO DB] while the process cannot reserve a job (the job feed's last reserve
        failed, or the one under way is unanswered) and a thread waits for one: the
        master then does not count this worker as one that will take a ready job."""
        idle = any(thread.slot.job_id is None for thread in self._threads)
        trouble = idle and self.feed.database_trouble(STALLED_AFTER)
        if trouble != self._no_db_shown:
            self._no_db_shown = trouble
            if trouble:
                log.warning("database %s: unreachable from every job thread", self.database.name)
            else:
                log.info("database %s: reachable again", self.database.name)
            self.set_title()

    def _stalled(self, thread: JobThread, now: float) -> bool:
        since = self.deadlines.busy_since(thread)
        return since is not None and now - since > STALLED_AFTER

    def _wake_threads(self) -> None:
        for thread in self._threads:
            thread.wake.set()

    # --- the main loop ----------------------------------------------------------------

    def work(self) -> None:
        """Run the job threads until the worker stops or retires."""
        self._threads = [
            JobThread(
                number,
                self.setup,
                self,
                deadlines=self.deadlines,
                running=self.running,
                gate=self.gate,
                feed=self.feed,
            )
            for number in range(self.group.max_threads)
        ]
        for thread in self._threads:
            thread.start()
        self.cancels.start()
        while True:
            self._handle_signals()
            if self._stop is StopMode.IMMEDIATE:
                self._exit_now(hand_back=True)
            if not self.forked and os.getppid() != self._ppid:
                log.warning("parent process went away: stopping after the running jobs")
                self._ppid = os.getppid()
                self._stop = max(self._stop, StopMode.GRACEFUL)
                self._wake_threads()
            self._watch_deadlines()
            self._tend_feed()
            self._show_database_trouble()
            self._check_idle()
            if not self.accepting_jobs():
                self._stop_waiting_on_database()
                alive = [t for t in self._threads if t.is_alive()]
                if all(self.watchdog.is_stuck(thread) for thread in alive):
                    if self.watchdog.stuck:
                        self._exit_now(hand_back=False)
                    break
            self._sleep(self._next_wake())
        for thread in self._threads:
            thread.join()
        # Jobs reserved ahead and never started go back as they were.
        self._hand_back(self.feed.drain())

    def _tend_feed(self) -> None:
        """Jobs the process reserved and no thread has started yet: with ``read_ahead =
        "auto"``, hand back those that waited too long while every thread was busy (an
        idle worker elsewhere takes them); with an explicit read_ahead, renew their locks
        before they could look stale (the jobs wait, as they always did, behind the
        running ones)."""
        self._hand_back(self.feed.take_stale())
        margin = self.settings.lock_timeout - self.group.max_run_time
        old = self.feed.locks_older_than(margin / 2)
        if old:
            self._control("touch", statements.touch_jobs(old, locked_by=self.locked_by))
            self.feed.refreshed(old, time.monotonic())

    def _hand_back(self, job_ids: list[int]) -> None:
        if job_ids:
            self._control("hand back", statements.unlock_job_ids(job_ids, locked_by=self.locked_by))

    def _stop_waiting_on_database(self) -> None:
        """A stopping worker does not wait on a hung reserve: a thread that is not
        running a job and whose reserve is unanswered has its call cut short."""
        now = time.monotonic()
        for thread in self._threads:
            if thread.slot.job_id is None and self._stalled(thread, now):
                self.deadlines.abort(thread, "stop", what="reserve")

    def _check_idle(self) -> None:
        with self._lock:
            empty_at = self._empty_pass_at
            idle = (
                self._active == 0
                and empty_at is not None
                and empty_at >= self._last_activity
                and time.monotonic() - self._last_activity >= self.group.idle_timeout
            )
        if idle and self.accepting_jobs():
            self.retire("no job to do")

    def _next_wake(self) -> float:
        timeout = TICK
        now = time.monotonic()
        for thread in self._threads:
            if thread.slot.job_id is not None:
                timeout = min(timeout, max(thread.slot.deadline - now, 0.01))
        return timeout

    def _sleep(self, timeout: float) -> None:
        readers = [self._wake_r]
        listen_fd = self._wakeup.fileno() if self._wakeup is not None else None
        if listen_fd is not None:
            readers.append(listen_fd)
        ready: list[int] = []
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select(readers, [], [], timeout)
        if listen_fd in ready and self._wakeup is not None and self._wakeup.drain():
            self._wake_threads()
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # --- max_run_time -----------------------------------------------------------------

    def _watch_deadlines(self) -> None:
        self.watchdog.watch(self._threads, time.monotonic())

    def _exit_now(self, *, hand_back: bool) -> None:
        """Record stuck jobs, hand back the rest if asked, and end the process."""
        self.watchdog.record_stuck()
        if hand_back:
            # Jobs that succeeded and wait for their deletion are deleted first: handing
            # them back would run them again.
            done = self.feed.all_done()
            if done:
                self._control("delete", statements.complete_jobs(done))
            released = self._control("hand back", statements.unlock_jobs(locked_by=self.locked_by))
            log.info("handed back %d job(s)", len(released or []))
        log.info("exiting now")
        self.running.close()
        for handler in logging.getLogger().handlers:
            handler.flush()
        code = WorkerExit.CRASHED if self._crashed else WorkerExit.RETIRED
        launcher_link.exit_process(int(code))

    def _control(self, what: str, statement: Statement[T]) -> T | None:
        """Run a statement on the main thread's own connection (one reconnect on
        failure); its result, None when it failed."""
        for attempt in range(2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(
                        self.database_url,
                        application_name=titles.worker_application_name(self.pid, "control"),
                        timeout=self.settings.database_timeout,
                    )
                with self.deadlines.bounded(self._conn, what, owner=self):
                    return execute(self._conn, statement)
            except psycopg.Error as exc:
                log.warning("database %s: %s", self.database.name, describe_error(exc))
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if attempt == 1:
                    return None
        return None

    def close(self) -> None:
        self.cancels.stop()
        self.running.close()
        if self._conn is not None:
            self._conn.close()
        if self._wakeup is not None:
            self._wakeup.close()
        self.deadlines.close()


def process_rss() -> int:
    """Resident memory of this process and its children, in bytes."""
    return rss_with_children(psutil.Process())
