"""The master's signals, as the seed (delayed_job_master) defines them, on the plugin's pid.

Handlers only record the signal and wake the master's loop; the loop then calls the
``handle_<name>`` method that :data:`SignalHandling.SIGNAL_HANDLERS` names for it
(gunicorn's arbiter does the same). Worker signals are sent with ``os.kill`` to the pids
circus lists for the master's watchers (never circus' ``signal`` command: it takes
circus' global lock).

======  ==========================================  ====================================
signal  master                                      workers
======  ==========================================  ====================================
TERM    stops now: its watcher is stopped in        TERM: finish current jobs, exit
INT     circus (no respawn) until ``circusctl
        start plugin:djmaster``
WINCH   stops scaling, waits until every worker     TERM: finish current jobs, exit
        is gone, then stops as for TERM
QUIT    stops now, as for TERM                      QUIT: stop now, hand their jobs back
USR1    reopens its log                             USR1: reopen their logs
USR2    exits; circus starts a new master process   USR2: `` [OLD]``, finish current
        (new pid file); the new one counts the old  jobs, exit; new jobs go to workers
        workers against ``max_processes``; with     the new master starts
        ``spawn = "fork"`` the preloader retires
        and the new master starts a new generation
HUP     exits; circus starts a new master, which    untouched
        reads the settings again
======  ==========================================  ====================================

circus itself stops a plugin with TERM too (``circusctl quit``/``stop``/``restart``/
``reload``, circusd's own TERM/INT/QUIT/HUP). The master tells the two apart by asking
circus (``circus_stops_me``): then it only exits, and circus handles the workers with
their ``stop_signal`` (TERM) and ``graceful_timeout``, so ``circusctl quit`` still lets
running jobs finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

from circus_djmaster.circusd.async_client import AsyncCircus
from circus_djmaster.common import logs
from circus_djmaster.common.logs import event
from circus_djmaster.exceptions import CircusError, CircusTimeout
from circus_djmaster.master.preloading import PreloaderSnapshot
from circus_djmaster.master.readings import Processes
from circus_djmaster.master.scaling import RetireReason, WatcherSnapshot, WatcherStatus
from circus_djmaster.master.state import LoopExit, Mode, WorkerBook

__all__ = ["HANDLED_SIGNALS", "PATIENCE", "SignalHandling", "circus_stops_me", "stop_own_watcher"]

log = logging.getLogger(__name__)

#: How long TERM, QUIT and USR2 wait for workers still starting (no handler yet) to
#: become able to take the signal, before the master goes.
PATIENCE = 5.0


class SignalHandling:
    """The master's signal table and its ``handle_<name>`` methods (a base of
    :class:`~circus_djmaster.master.loop.Master`, which provides what is declared here).

    A handler returns a :class:`LoopExit` to end the loop, or None to go on.
    """

    #: Signal -> the method that handles it.
    SIGNAL_HANDLERS: dict[int, str] = {
        signal.SIGTERM: "handle_term",
        signal.SIGINT: "handle_term",
        signal.SIGQUIT: "handle_quit",
        signal.SIGWINCH: "handle_winch",
        signal.SIGUSR1: "handle_usr1",
        signal.SIGUSR2: "handle_usr2",
        signal.SIGHUP: "handle_hup",
    }

    circus: AsyncCircus
    own_watcher: str
    pid: int
    mode: Mode
    snapshots: list[WatcherSnapshot]  # the last observation
    book: WorkerBook
    processes: Processes
    preloader: PreloaderSnapshot | None  # spawn = "fork": the last observation of it

    async def observe(self) -> list[WatcherSnapshot]:
        """Look at circus and the workers again (the loop's observation)."""
        raise NotImplementedError

    def forget_preloader_failure(self) -> None:
        """Remove the note of a preloader that could not load (spawn = "fork"), so that
        the next master tries a new generation instead of taking the failure over."""
        raise NotImplementedError

    async def handle_signal(self, signum: int) -> LoopExit | None:
        """Act on one recorded signal; a LoopExit ends the master's loop."""
        name = signal.Signals(signum).name
        handler = self.SIGNAL_HANDLERS.get(signum)
        if handler is None:
            log.warning("ignoring signal %s", name)
            return None
        result: LoopExit | None = await getattr(self, handler)(name)
        return result

    async def handle_term(self, name: str) -> LoopExit | None:
        """TERM, INT: stop now (unless circus is stopping us: then only exit); the
        workers finish their current jobs."""
        if await circus_stops_me(self.circus, self.own_watcher, self.pid):
            log.info(
                "%s from circus (quit, stop, restart or reload): exiting",
                name,
                extra=event("master_signal", signal=name, workers_signalled=0),
            )
            return LoopExit.RELEASED
        await self._refresh()
        sent = await self.signal_workers(signal.SIGTERM, skip_leaving=True, patience=PATIENCE)
        log.info(
            "%s: the master stops now; %d worker(s) finish their current jobs",
            name,
            sent,
            extra=event("master_signal", signal=name, workers_signalled=sent),
        )
        await stop_own_watcher(self.circus, self.own_watcher, self.pid)
        return LoopExit.STOPPED

    async def handle_quit(self, name: str) -> LoopExit | None:
        """QUIT: stop now; the workers stop now and hand their jobs back."""
        await self._refresh()
        sent = await self.signal_workers(signal.SIGQUIT, patience=PATIENCE)
        log.info(
            "QUIT: the master stops now; %d worker(s) stop now and hand back their jobs",
            sent,
            extra=event("master_signal", signal=name, workers_signalled=sent),
        )
        await stop_own_watcher(self.circus, self.own_watcher, self.pid)
        return LoopExit.STOPPED

    async def handle_winch(self, name: str) -> LoopExit | None:
        """WINCH: no more scaling; the workers finish, then the master stops."""
        if self.mode is Mode.DRAINING:
            log.info("WINCH: already waiting for the workers to finish")
            return None
        self.mode = Mode.DRAINING
        await self._refresh()
        sent = await self.signal_workers(signal.SIGTERM, skip_leaving=True)
        log.info(
            "WINCH: no more scaling; waiting for %d worker(s) to finish, then stopping",
            sent,
            extra=event("master_signal", signal=name, workers_signalled=sent),
        )
        return None

    async def handle_usr1(self, name: str) -> LoopExit | None:
        """USR1: reopen the log, and tell the workers (and the preloader) to reopen theirs."""
        self.reopen_logs()
        await self._refresh()
        sent = await self.signal_workers(signal.SIGUSR1)
        self.signal_preloaders(signal.SIGUSR1)
        log.info(
            "USR1: log reopened; %d worker(s) reopen theirs",
            sent,
            extra=event("master_signal", signal=name, workers_signalled=sent),
        )
        return None

    async def handle_usr2(self, name: str) -> LoopExit | None:
        """USR2: exit for circus to start a new master; the workers become old."""
        await self._refresh()
        sent = await self.signal_workers(signal.SIGUSR2, patience=PATIENCE)
        log.info(
            "USR2: restarting; %d old worker(s) finish their jobs; circus starts a new master",
            sent,
            extra=event("master_signal", signal=name, workers_signalled=sent),
        )
        # spawn = "fork": the new master starts a preloader that imports the new code
        # (even after a configuration error: USR2 is how an operator asks to try again).
        if self.signal_preloaders(signal.SIGUSR2):
            log.info("USR2: the preloader retires; the new master starts a new generation")
        self.forget_preloader_failure()
        return LoopExit.RESTART

    async def handle_hup(self, name: str) -> LoopExit | None:
        """HUP: exit for circus to start a new master, which reads the settings again."""
        log.info(
            "HUP: restarting the master to read its settings again; workers keep running",
            extra=event("master_signal", signal=name, workers_signalled=0),
        )
        return LoopExit.RESTART

    # --- signals to workers ----------------------------------------------------------

    def send_signal(self, pid: int, signum: int) -> bool:
        """os.kill a worker directly (not circus' ``signal``: no global lock). Never
        anything but a worker pid circus listed: circusd dies of USR1/USR2 (docs/master.md,
        "circus 0.19, measured")."""
        if pid <= 1 or pid in (self.pid, os.getppid()) or pid not in self.book.known:
            log.error(
                "refusing to send %s to pid %d: not a worker", signal.Signals(signum).name, pid
            )
            return False
        try:
            self.processes.kill(pid, signum)
        except ProcessLookupError:
            return False
        return True

    def retire_preloader(self, pid: int) -> bool:
        """USR2 to preloader ``pid`` (it forks no more, exits once its workers are gone);
        False when it is gone or not a preloader this master observed."""
        known = self.preloader is not None and any(
            preloader.pid == pid for preloader in self.preloader.preloaders
        )
        if not known or pid <= 1 or pid in (self.pid, os.getppid()):
            return False
        try:
            self.processes.kill(pid, signal.SIGUSR2)
        except ProcessLookupError:
            return False
        return True

    def signal_preloaders(self, signum: int) -> int:
        """Send ``signum`` to the current generation's preloader(s) (USR1: reopen the
        log; USR2: retire); returns how many got it."""
        if self.preloader is None:
            return 0
        sent = 0
        for preloader in self.preloader.current:
            if preloader.pid <= 1 or preloader.pid in (self.pid, os.getppid()):
                continue
            with contextlib.suppress(ProcessLookupError):
                self.processes.kill(preloader.pid, signum)
                sent += 1
        return sent

    async def signal_workers(
        self, signum: int, *, skip_leaving: bool = False, patience: float = 0.0
    ) -> int:
        """Send ``signum`` to every live worker; returns how many got it.

        A worker still starting has no signal handler yet (a TERM would kill it: a
        crash, which circus respawns). It gets the signal once it shows its title,
        observing circus again for up to ``patience`` seconds; with 0 it is skipped.
        """
        sent: set[int] = set()
        deadline = time.monotonic() + patience
        while True:
            starting = False
            for snapshot in self.snapshots:
                for worker in snapshot.workers:
                    if worker.pid in sent or (skip_leaving and worker.leaving):
                        continue
                    if not worker.signalable:
                        starting = True
                    elif self.send_signal(worker.pid, signum):
                        sent.add(worker.pid)
                        if signum == signal.SIGTERM:
                            self.book.retiring.setdefault(worker.pid, RetireReason.MASTER_STOPS)
            if not starting or time.monotonic() >= deadline:
                return len(sent)
            await asyncio.sleep(0.1)
            try:
                await self.observe()
            except (CircusError, CircusTimeout):
                return len(sent)

    async def _drain(self, snapshots: list[WatcherSnapshot]) -> LoopExit | None:
        """WINCH: no scaling; TERM any worker not leaving yet (a respawned one); stop
        the master once every watcher is empty."""
        await self.signal_workers(signal.SIGTERM, skip_leaving=True)
        if any(snapshot.live or snapshot.pending for snapshot in snapshots):
            return None
        log.info("WINCH: every worker is gone")
        await stop_own_watcher(self.circus, self.own_watcher, self.pid)
        return LoopExit.STOPPED

    def reopen_logs(self) -> None:
        """USR1's own part: the master's log file."""
        logs.reopen()

    async def _refresh(self) -> None:
        """Look at circus once more, so the signal reaches workers spawned since the
        last turn; on failure the last observation is used."""
        try:
            await self.observe()
        except (CircusError, CircusTimeout) as error:
            log.warning("circusd: %s; signalling the workers seen last", error)


#: The signals the plugin installs handlers for.
HANDLED_SIGNALS: tuple[signal.Signals, ...] = tuple(
    signal.Signals(signum) for signum in SignalHandling.SIGNAL_HANDLERS
)


async def circus_stops_me(circus: AsyncCircus, own_watcher: str, pid: int) -> bool:
    """Is this TERM circus' own (quit, stop, restart or reload of the plugin)?

    While circus stops the plugin, its watcher is ``stopping``; while circus reloads
    it, a newer process already runs in the watcher. Either way, or if circusd does not
    answer, the workers are circus' business: the master only exits.
    """
    try:
        status = WatcherStatus.parse(await circus.status(own_watcher))
        pids = await circus.pids(own_watcher)
    except (CircusError, CircusTimeout) as error:
        log.info("circusd does not answer (%s): taking TERM as circus stopping us", error)
        return True
    if status in (WatcherStatus.STOPPING, WatcherStatus.STOPPED):
        return True
    return any(other != pid for other in pids)


async def stop_own_watcher(circus: AsyncCircus, own_watcher: str, pid: int) -> None:
    """Stop the master's own watcher in circus, so circus does not respawn it.

    circus answers ``stop`` at once and sends the plugin TERM; the loop has stopped
    listening by then, so that TERM changes nothing. Retried while circus' command
    lock is busy, until circus answers or is itself stopping the plugin.
    """
    log.info(
        "stopping watcher %s in circus; `circusctl start %s` starts the master again",
        own_watcher,
        own_watcher,
    )
    while True:
        try:
            await circus.stop(own_watcher, retry_for=5.0)
            return
        except CircusError as error:
            if not error.busy:
                log.error("cannot stop %s: %s", own_watcher, error)
                return
        except CircusTimeout:
            pass
        if await circus_stops_me(circus, own_watcher, pid):
            return
        await asyncio.sleep(0.2)
