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
"""

from __future__ import annotations

import contextlib
import logging
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
