"""The master's signals (SPEC §6), as the seed defines them, on the plugin's pid.

Handlers only record the signal and wake the master's loop; the loop then calls
:func:`handle`. Worker signals are sent with ``os.kill`` to the pids circus lists for
the master's watchers (never circus' ``signal`` command: it takes circus' global lock).

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
        workers against ``max_processes``           the new master starts
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
import logging
import signal
from typing import TYPE_CHECKING

from circus_djmaster.circusd.async_client import AsyncCircus, CircusError, CircusTimeout
from circus_djmaster.master.scaling import WatcherStatus

if TYPE_CHECKING:
    from circus_djmaster.master.loop import Master, Outcome

log = logging.getLogger(__name__)

#: How long TERM, QUIT and USR2 wait for workers still starting (no handler yet) to
#: become able to take the signal, before the master goes.
PATIENCE = 5.0

HANDLED_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGWINCH,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGHUP,
)


async def handle(master: Master, signum: int) -> Outcome | None:
    """Act on one recorded signal; an Outcome ends the master's loop."""
    from circus_djmaster.master.loop import Mode, Outcome

    name = signal.Signals(signum).name
    if signum in (signal.SIGTERM, signal.SIGINT):
        if await circus_stops_me(master.circus, master.own_watcher, master.pid):
            log.info("%s from circus (quit, stop, restart or reload): exiting", name)
            return Outcome.RELEASED
        await _refresh(master)
        sent = await master.signal_workers(signal.SIGTERM, skip_leaving=True, patience=PATIENCE)
        log.info("%s: the master stops now; %d worker(s) finish their current jobs", name, sent)
        await stop_own_watcher(master.circus, master.own_watcher, master.pid)
        return Outcome.STOPPED
    if signum == signal.SIGQUIT:
        await _refresh(master)
        sent = await master.signal_workers(signal.SIGQUIT, patience=PATIENCE)
        log.info("QUIT: the master stops now; %d worker(s) stop now and hand back their jobs", sent)
        await stop_own_watcher(master.circus, master.own_watcher, master.pid)
        return Outcome.STOPPED
    if signum == signal.SIGWINCH:
        if master.mode is Mode.DRAINING:
            log.info("WINCH: already waiting for the workers to finish")
            return None
        master.mode = Mode.DRAINING
        await _refresh(master)
        sent = await master.signal_workers(signal.SIGTERM, skip_leaving=True)
        log.info("WINCH: no more scaling; waiting for %d worker(s) to finish, then stopping", sent)
        return None
    if signum == signal.SIGUSR1:
        master.reopen_logs()
        await _refresh(master)
        sent = await master.signal_workers(signal.SIGUSR1)
        log.info("USR1: log reopened; %d worker(s) reopen theirs", sent)
        return None
    if signum == signal.SIGUSR2:
        await _refresh(master)
        sent = await master.signal_workers(signal.SIGUSR2, patience=PATIENCE)
        log.info(
            "USR2: restarting; %d old worker(s) finish their jobs; circus starts a new master",
            sent,
        )
        return Outcome.RESTART
    if signum == signal.SIGHUP:
        log.info("HUP: restarting the master to read its settings again; workers keep running")
        return Outcome.RESTART
    log.warning("ignoring signal %s", name)
    return None


async def _refresh(master: Master) -> None:
    """Look at circus once more, so the signal reaches workers spawned since the last
    turn; on failure the last observation is used."""
    try:
        await master.observe()
    except (CircusError, CircusTimeout) as error:
        log.warning("circusd: %s; signalling the workers seen last", error)


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
