"""circus hooks; they run inside circusd, on its event loop.

``after_reap`` is how a worker retires for good (docs/design.md §9). With ``respawn = true``
circus respawns every process that exits by itself within ``check_delay``, whatever
its exit code. A worker that wants to stay gone (idle, memory or lifetime limit,
graceful stop, broken configuration) exits with a code of the exit-code protocol
(:mod:`circus_djmaster.contracts.exit_codes`) and this hook lowers the watcher's
``numprocesses`` by one, so the next ``manage_processes`` of circus finds the
watcher already at its target and spawns nothing. Any other exit (a crash, a
signal, ``os._exit`` from a job) keeps the target, so circus respawns the worker.

circus calls a hook as ``hook(watcher=, arbiter=, hook_name=, process_pid=, time=,
exit_code=, process_status=)``: see ``Watcher.reap_process`` in circus/watcher.py.
``exit_code`` is negative for a signal and may be ``None`` when circus could not
learn the status of an already-reaped child.

A hook that raises is logged by circus and ignored for ``after_reap``, but it would
still leave the watcher respawning a retired worker, so this one never raises. It
must also be fast and never block: it runs on circusd's only thread, between two
``waitpid`` calls.

``before_spawn`` installs the **immediate reaper**. circus 0.19 reaps exited children
only in its periodic check (``Arbiter.manage_watchers``, every ``check_delay``; it has no
SIGCHLD handler), so for up to ``check_delay`` (5 s by default) a retired worker is a
zombie: gone from ``circusctl list``, yet still counted in ``numprocesses`` until the
after_reap hook runs. The master took it for a process about to spawn, and a job
enqueued meanwhile waited for the check (issue 11 measured ~4.5 s). The reaper handles
SIGCHLD in circusd: on the next turns of its loop it reaps each dead worker as circus'
check would (``Watcher.reap_process``, which calls the after_reap hook) once circus has
read its output to the end, so a retired worker's slot is free within milliseconds.
Respawning is left to the periodic check, so a crash loop is as throttled as before.
While a circus command runs (they are exclusive, and some wait on processes
themselves), the reap waits for it to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from types import FrameType
from typing import Any

from circus_djmaster.contracts.exit_codes import WorkerExit, is_retiring

# circusd configures the "circus" logger (level and logoutput from circus.ini);
# a line logged here lands next to circus' own "reaping process" lines.
logger = logging.getLogger("circus")


def after_reap(watcher: Any, arbiter: Any, hook_name: str, **kwargs: Any) -> bool:
    """Lower ``watcher.numprocesses`` for a worker that retired; keep it for a crash.

    While circus itself stops the watcher (``circusctl stop``/``restart``/``quit``)
    the workers it sent ``stop_signal`` exit with ``RETIRED`` too; those exits are
    circus' decision, not the worker's, so the target is kept: a later ``start``
    brings back as many workers as were running, as circus users expect, and the
    master retires the surplus by letting idle workers exit.
    """
    try:
        exit_code = kwargs.get("exit_code")
        pid = kwargs.get("process_pid")
        name = getattr(watcher, "name", "?")
        if not is_retiring(exit_code):
            logger.info(
                "djmaster: %s pid %s exited with %s: crash, circus respawns it",
                name,
                pid,
                exit_code,
            )
            return True
        if _is_stopping(watcher):
            logger.info(
                "djmaster: %s pid %s exited with %s while the watcher stops: target kept",
                name,
                pid,
                exit_code,
            )
            return True
        before = int(watcher.numprocesses)
        watcher.numprocesses = max(before - 1, 0)
        logger.info(
            "djmaster: %s pid %s retired (exit %s%s): numprocesses %d -> %d",
            name,
            pid,
            exit_code,
            " config error" if exit_code == WorkerExit.CONFIG_ERROR else "",
            before,
            watcher.numprocesses,
        )
    except Exception:
        # Never let an error escape into circusd's reap loop, not even from logging.
        with contextlib.suppress(Exception):
            logger.exception("djmaster: after_reap hook failed")
    return True


def _is_stopping(watcher: Any) -> bool:
    """True while circus stops the watcher (``Watcher._stop`` sets ``stopping``)."""
    is_stopping = getattr(watcher, "is_stopping", None)
    if not callable(is_stopping):
        return False
    return bool(is_stopping())


#: While circus runs a command, or a dead worker's output is still being read, the
#: immediate reap is tried again this often (seconds).
REAP_RETRY = 0.01
#: A dead worker whose output pipes stay open this long (a process it started keeps
#: them) is left to circus' periodic check.
DRAIN_WAIT = 2.0

_reaper: _Reaper | None = None


class _Reaper:
    """circusd's SIGCHLD handler: reap dead workers at the loop's next turns (see the
    module doc).

    A dead worker is reaped (``Watcher.reap_process``: waitpid, the reap event, the
    after_reap hook) once circus' stream redirector has read its output to the end:
    reaping closes the process' pipes, and closing them under the redirector would lose
    the last lines and break its reads. So each turn reaps the workers that exited
    (``waitid`` with ``WNOWAIT`` looks without reaping) and whose pipes are drained, and
    comes back in :data:`REAP_RETRY` for the others.

    Reads private attributes of circus 0.19 (the Arbiter's
    ``_exclusive_running_command``, ``_restarting`` and ``_stopping``, what
    ``circus.util.synchronized`` checks; a redirector's ``_active`` file descriptors);
    pyproject pins circus below 0.20.
    """

    def __init__(self, arbiter: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.arbiter = arbiter
        self.loop = loop
        self.scheduled = False
        self.waiting: dict[int, float] = {}  # dead pid -> when first seen undrained

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # A Python signal handler runs between two bytecodes of circusd's main thread:
        # schedule, never reap here (circus' own code may be halfway through a reap).
        self._schedule(0.0)

    def _schedule(self, delay: float) -> None:
        if not self.scheduled:
            self.scheduled = True
            if delay:
                self.loop.call_later(delay, self.reap)
            else:
                self.loop.call_soon_threadsafe(self.reap)

    def reap(self) -> None:
        self.scheduled = False
        arbiter = self.arbiter
        if (
            getattr(arbiter, "_exclusive_running_command", None) is not None
            or getattr(arbiter, "_restarting", False)
            or getattr(arbiter, "_stopping", False)
        ):
            self._schedule(REAP_RETRY)
            return
        try:
            if self._reap_dead():
                self._schedule(REAP_RETRY)
        except Exception:
            with contextlib.suppress(Exception):
                logger.exception("djmaster: immediate reap failed")

    def _reap_dead(self) -> bool:
        """Reap the dead workers whose output is drained; True if some must wait."""
        now = time.monotonic()
        waiting = False
        for watcher in list(self.arbiter.iter_watchers()):
            if watcher.is_stopped():
                continue
            for pid, process in list(watcher.processes.items()):
                if not _exited(pid):
                    continue
                first = self.waiting.setdefault(pid, now)
                if not _drained(watcher, process) and now - first < DRAIN_WAIT:
                    waiting = True
                    continue
                self.waiting.pop(pid, None)
                if now - first < DRAIN_WAIT:
                    watcher.reap_process(pid)
        for pid in [pid for pid, first in self.waiting.items() if now - first >= DRAIN_WAIT]:
            del self.waiting[pid]  # left to circus' periodic check
        return waiting


def _exited(pid: int) -> bool:
    """True if our child ``pid`` has exited (a zombie), without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False


def _drained(watcher: Any, process: Any) -> bool:
    """True when circus' redirector has read ``process``' output pipes to the end (it
    stops watching a pipe at its end of file)."""
    redirector = getattr(watcher, "stream_redirector", None)
    if redirector is None:
        return True
    active = getattr(redirector, "_active", {})
    for name in ("stdout", "stderr"):
        pipe = getattr(process, name, None)
        if pipe is None:
            continue
        try:
            fd = pipe.fileno()
        except (ValueError, OSError):
            continue  # closed already
        if fd in active:
            return False
    return True


def before_spawn(watcher: Any, arbiter: Any, hook_name: str, **kwargs: Any) -> bool:
    """Install the immediate reaper in circusd, once; let the spawn go on (True).

    ``hooks.before_spawn`` of every worker watcher (``djmaster-config render`` writes
    it): circus runs it in circusd's main thread before it spawns a process, which is
    where a signal handler can be installed. Never raises: a False or an exception
    would stop the spawn.
    """
    global _reaper
    try:
        if _reaper is not None:
            _reaper.arbiter = arbiter  # the same circusd, possibly a reloaded arbiter
            return True
        loop = getattr(getattr(arbiter, "loop", None), "asyncio_loop", None)
        if loop is None:
            loop = asyncio.get_event_loop()
        _reaper = _Reaper(arbiter, loop)
        signal.signal(signal.SIGCHLD, _reaper.on_signal)
        logger.info("djmaster: circusd reaps exited workers at once (SIGCHLD)")
    except Exception:
        with contextlib.suppress(Exception):
            logger.exception("djmaster: installing the immediate reaper failed")
    return True
