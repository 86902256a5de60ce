"""Process titles (``ps``) and database application names (``pg_stat_activity``).

Workers show the seed's title, ``delayed_job: worker[0] (queue1, queue2) @primary #2``
(``worker[N]``: the group's position in the settings, as the seed's; ``#2``: the
process' circus ``wid``, distinct among the live processes of its watcher), with
`` [BUSY]`` while a job runs, `` [NO DB]`` (instead of `` [BUSY]``: a worker with a
job running is busy whatever else happens) while none of its job threads can reach its
database, and `` [OLD]`` after USR2. The master reads titles back (psutil) to tell
starting, idle, busy, old and cut-off workers apart (:class:`WorkerState`), and so does
``djmaster status``: a title written by one version is read by another during a deploy.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path

__all__ = [
    "BUSY_MARK",
    "NO_DB_MARK",
    "OLD_MARK",
    "WORKER_PREFIX",
    "WorkerState",
    "forked_child_title",
    "master_application_name",
    "master_title",
    "set_title",
    "state_from_title",
    "wid_from_title",
    "worker_application_name",
    "worker_title",
]

WORKER_PREFIX = "delayed_job: worker["
BUSY_MARK = " [BUSY]"
OLD_MARK = " [OLD]"
NO_DB_MARK = " [NO DB]"
MAX_QUEUES_SHOWN = 60


class WorkerState(enum.Enum):
    """What a worker's process title says about it."""

    STARTING = "starting"  # no worker title yet: still importing / preloading
    IDLE = "idle"
    BUSY = "busy"
    OLD = "old"  # told to retire by a restart (USR2): finishes its jobs, takes no more
    NO_DB = "no db"  # cannot reach its database now: will not take a ready job


def worker_title(
    index: int,
    queues: tuple[str, ...],
    database: str,
    *,
    wid: int | None = None,
    busy: bool = False,
    old: bool = False,
    no_db: bool = False,
) -> str:
    """The title of a worker of group ``index`` (its position in the settings) whose
    circus ``wid`` is ``wid`` (None: started by hand, not by circus)."""
    names = ", ".join(queues) if queues else "*"
    if len(names) > MAX_QUEUES_SHOWN:
        # The title must fit the process' argv area (setproctitle cuts it off there),
        # and the master reads [BUSY]/[OLD] at its end.
        names = names[: MAX_QUEUES_SHOWN - 1] + "…"
    title = f"delayed_job: worker[{index}] ({names}) @{database}"
    if wid is not None:
        title += f" #{wid}"
    if busy:
        title += BUSY_MARK
    elif no_db:
        title += NO_DB_MARK
    if old:
        title += OLD_MARK
    return title


def state_from_title(title: str) -> WorkerState:
    """The state a process title shows; STARTING when it is not (yet) a worker title."""
    # setproctitle pads the argv area with spaces (and NULs) when the title is shorter.
    title = title.replace("\0", " ").strip()
    if not title.startswith(WORKER_PREFIX):
        return WorkerState.STARTING
    if title.endswith(OLD_MARK):
        return WorkerState.OLD
    if title.endswith(BUSY_MARK):
        return WorkerState.BUSY
    return WorkerState.NO_DB if title.endswith(NO_DB_MARK) else WorkerState.IDLE


_WID = re.compile(r" #(\d+)(?= \[|$)")


def wid_from_title(title: str) -> int | None:
    """The circus ``wid`` a worker title shows; None when it shows none."""
    title = title.replace("\0", " ").strip()
    if not title.startswith(WORKER_PREFIX):
        return None
    match = _WID.search(title)
    return int(match.group(1)) if match else None


def forked_child_title(parent: int, database: str) -> str:
    """The title of a process forked by job code: not a worker (the master and
    ``djmaster status`` must not take it for one)."""
    return f"delayed_job: job process (forked by pid {parent}) @{database}"


def master_title(settings_path: Path | str) -> str:
    return f"djmaster: master ({settings_path})"


def worker_application_name(pid: int, connection: str = "") -> str:
    """``djmaster worker PID CONNECTION`` (``job-0``, ``listen``, ``control``)."""
    return f"djmaster worker {pid} {connection}".rstrip()


def master_application_name(role: str) -> str:
    """``djmaster-master-ROLE`` (``poll``, ``listen``)."""
    return f"djmaster-master-{role}"


def set_title(title: str) -> None:
    """Set this process' title (setproctitle, imported on first use)."""
    import setproctitle

    setproctitle.setproctitle(title)
