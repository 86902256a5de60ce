"""What ``before_fork`` receives as its second argument: which worker processes are about
to start.

``before_fork(master, target)`` runs in the master before it starts or grows a watcher
of a group with ``spawn = "exec"``, and in the preloader before each worker it forks
for a group with ``spawn = "fork"`` (``master`` is then the preloader). The same
callback serves both: the attributes are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from circus_djmaster.config.settings import WorkerGroup

__all__ = ["ForkTarget"]


@dataclass(frozen=True)
class ForkTarget:
    """The worker processes about to start."""

    group: WorkerGroup
    database: str  # the database's name (never its URL)
    watcher: str  # djmaster-<group>-<database>
    count: int  # how many processes (1 for a fork by the preloader)
    #: With ``spawn = "fork"``: the pid of the launcher the worker is forked for.
    launcher_pid: int | None = None
    #: With ``spawn = "fork"``: circus' wid of that launcher (the worker shows it).
    wid: int | None = None
