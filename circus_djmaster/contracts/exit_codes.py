"""Exit codes: between a worker, circus' after_reap hook and the master; and of the CLIs.

A worker's exit code (:class:`WorkerExit`) tells circus whether to respawn it:

* ``RETIRED`` (0): the worker stopped by itself or was stopped gracefully (idle,
  memory/lifetime limit, TERM, USR2). circus must not respawn it: the ``after_reap``
  hook (:mod:`circus_djmaster.circusd.hooks`) lowers the watcher's ``numprocesses``.
* ``CONFIG_ERROR`` (78, ``EX_CONFIG`` of sysexits.h): the settings could not be
  loaded or the application could not be preloaded. Respawning would only loop, so
  the hook lowers ``numprocesses`` and the master stops scaling that watcher.
* Anything else (``CRASHED``: a job thread crashed; an uncaught exception, a signal,
  ``os._exit`` from a job) is a crash: circus respawns the worker and the master
  releases its jobs.

``djmaster`` and ``djmaster-config`` share one table (:class:`CliExit`): scripts
and deploy tools read it.
"""

from __future__ import annotations

import enum

__all__ = ["RETIRING_CODES", "CliExit", "WorkerExit", "is_retiring"]


class WorkerExit(enum.IntEnum):
    """How a worker process ends (``djmaster worker``)."""

    RETIRED = 0
    CRASHED = 1
    CONFIG_ERROR = 78


#: Exit codes after which a worker must not come back.
RETIRING_CODES: frozenset[int] = frozenset({WorkerExit.RETIRED, WorkerExit.CONFIG_ERROR})


def is_retiring(exit_code: object) -> bool:
    """True if a worker that exited with ``exit_code`` asked not to be respawned.

    ``exit_code`` is circus' (an int, negative for a signal, or None when unknown).
    """
    # bool is an int subclass; a bool here would be a caller bug, not a code.
    if isinstance(exit_code, bool) or not isinstance(exit_code, int):
        return False
    return exit_code in RETIRING_CODES


class CliExit(enum.IntEnum):
    """How a command of ``djmaster`` or ``djmaster-config`` ends (``djmaster worker``
    ends with a :class:`WorkerExit` instead)."""

    OK = 0
    #: The command ran and something failed: a database or circusd unreachable or
    #: refusing, a file or folder not writable or a file already there, jobs still left
    #: when ``wait`` gave up, a problem found by ``status --check`` (a missing or stopped
    #: watcher, the master not running): 1 is also what Docker's health checks expect.
    FAILED = 1
    #: Nothing was done: a bad command line or bad settings (argparse's own code for
    #: usage errors).
    USAGE = 2
