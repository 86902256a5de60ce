"""``locked_by``: which worker holds a job, in delayed_job's form ``host:HOST pid:PID``.

Workers write it when they reserve; the master of each host reads it to release the
jobs of its own host's dead workers (and only those); ``djmaster jobs list`` and the
Django admin show it. Hosts sharing a database, and versions side by side during a
deploy, must agree on it.
"""

from __future__ import annotations

import socket

__all__ = ["host_prefix", "pid_of", "worker_locked_by"]


def worker_locked_by(pid: int, host: str | None = None) -> str:
    """The ``locked_by`` of worker ``pid`` on ``host`` (default: this host's name)."""
    return f"{host_prefix(host or socket.gethostname())}{pid}"


def host_prefix(host: str) -> str:
    """What every ``locked_by`` of ``host``'s workers starts with."""
    return f"host:{host} pid:"


def pid_of(value: str) -> int | None:
    """The pid in a ``locked_by`` value, if it has one."""
    _, sep, pid = value.rpartition(" pid:")
    return int(pid) if sep and pid.isdigit() else None
