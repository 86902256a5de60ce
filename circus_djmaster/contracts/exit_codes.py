"""Exit codes: the protocol between a worker, circus' after_reap hook and the master.

* ``RETIRED`` (0): the worker stopped by itself or was stopped gracefully
  (idle, memory/lifetime limit, TERM, USR2). circus must not respawn it: the
  ``after_reap`` hook lowers the watcher's ``numprocesses``.
* ``CONFIG_ERROR`` (78, ``EX_CONFIG`` of sysexits.h): the settings could not be
  loaded or the application could not be preloaded. Respawning would only loop, so
  the hook lowers ``numprocesses`` and the master stops scaling that watcher.
* Anything else (an uncaught exception, a signal, ``os._exit`` from a job) is a
  crash: circus respawns the worker and the master releases its jobs.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    RETIRED = 0
    CONFIG_ERROR = 78
