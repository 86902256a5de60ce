"""Process titles, as the seed shows them in ``ps``.

``delayed_job: worker[0] (queue1, queue2) @primary [BUSY] [OLD]``; the master reads them
back (psutil) to tell busy, idle and old workers apart. ``[NO DB]`` (instead of
``[BUSY]``: a worker with a job running is busy whatever else happens) says that none of
the worker's job threads can reach its database now (its calls fail or hang): the
master does not count such a worker as one that will take a ready job.
"""

from __future__ import annotations

import enum

import setproctitle

WORKER_PREFIX = "delayed_job: worker["
BUSY_MARK = " [BUSY]"
OLD_MARK = " [OLD]"
NO_DB_MARK = " [NO DB]"
MAX_QUEUES_SHOWN = 60


class WorkerState(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    OLD = "old"
    NO_DB = "no db"  # cannot reach its database now


def worker_title(
    index: int,
    queues: tuple[str, ...],
    database: str,
    *,
    busy: bool = False,
    old: bool = False,
    no_db: bool = False,
) -> str:
    names = ", ".join(queues) if queues else "*"
    if len(names) > MAX_QUEUES_SHOWN:
        # The title must fit the process' argv area (setproctitle cuts it off there),
        # and the master reads [BUSY]/[OLD] at its end.
        names = names[: MAX_QUEUES_SHOWN - 1] + "…"
    title = f"delayed_job: worker[{index}] ({names}) @{database}"
    if busy:
        title += BUSY_MARK
    elif no_db:
        title += NO_DB_MARK
    if old:
        title += OLD_MARK
    return title


def state_from_title(title: str) -> WorkerState | None:
    """The state a worker title shows; None when it is not (yet) a worker title."""
    # setproctitle pads the argv area with spaces (and NULs) when the title is shorter.
    title = title.replace("\0", " ").strip()
    if not title.startswith(WORKER_PREFIX):
        return None
    if title.endswith(OLD_MARK):
        return WorkerState.OLD
    if title.endswith(BUSY_MARK):
        return WorkerState.BUSY
    return WorkerState.NO_DB if title.endswith(NO_DB_MARK) else WorkerState.IDLE


def set_title(title: str) -> None:
    setproctitle.setproctitle(title)
