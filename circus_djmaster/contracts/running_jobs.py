"""Which jobs a worker is running right now, in a small file the master can read.

A worker that dies (kill -9, OOM, os._exit) leaves its jobs locked. The master releases
them; what it charges depends on what the worker was running (docs/RELIABILITY.md):
only a job that killed its worker while running alone is charged an attempt, and a
worker may also hold jobs it reserved ahead (``read_ahead``) or finished without
deleting yet, which did nothing wrong. Each job thread writes, into its slot of a
memory-mapped file (``/dev/shm/djmaster-running-PID``; memory writes per job, no system
call, no round trip), the id of the job it runs and that job's own limits
(``max_attempts``, ``destroy_failed_jobs``: a ``@job`` may set them), which the master
cannot know otherwise: it never imports job code. The master reads the file of a dead
worker and applies those limits when it charges the job.

A slot is 16 bytes: job id (int64, 0: none), max_attempts (int32), flags (uint32; bit 0:
destroy_failed_jobs). The job id is written last and cleared first, so a reader never
takes another job's limits for this one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import struct
import tempfile
from pathlib import Path

_SLOT = struct.Struct("<qiI")
_ID = struct.Struct("<q")
_LIMITS = struct.Struct("<iI")
_DESTROY = 1


@dataclasses.dataclass(frozen=True)
class JobLimits:
    """A running job's own limits, as its worker resolved them."""

    max_attempts: int
    destroy_failed_jobs: bool


def folder() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def path_for(pid: int) -> Path:
    return folder() / f"djmaster-running-{pid}"


class RunningJobs:
    """The worker's side: one slot per job thread."""

    def __init__(self, slots: int, pid: int | None = None) -> None:
        self.path = path_for(pid or os.getpid())
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a dead process that had the same pid
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, _SLOT.size * slots)
            self._map = mmap.mmap(fd, _SLOT.size * slots)
        finally:
            os.close(fd)

    def set(self, slot: int, job_id: int, limits: JobLimits) -> None:
        offset = slot * _SLOT.size
        flags = _DESTROY if limits.destroy_failed_jobs else 0
        _LIMITS.pack_into(self._map, offset + _ID.size, limits.max_attempts, flags)
        _ID.pack_into(self._map, offset, job_id)

    def clear(self, slot: int) -> None:
        _ID.pack_into(self._map, slot * _SLOT.size, 0)

    def close(self) -> None:
        """A worker that exits by itself holds no job: nothing for the master to read."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(ValueError):
            self._map.close()


def read_running(pid: int) -> dict[int, JobLimits] | None:
    """The jobs a (dead) worker was running and their limits; None if it left no file
    of ours (then nobody knows what it ran)."""
    path = path_for(pid)
    try:
        if path.stat().st_uid != os.geteuid():
            return None
        data = path.read_bytes()
    except OSError:
        return None
    running: dict[int, JobLimits] = {}
    for offset in range(0, len(data) - _SLOT.size + 1, _SLOT.size):
        job_id, max_attempts, flags = _SLOT.unpack_from(data, offset)
        if job_id > 0:
            running[job_id] = JobLimits(max(1, max_attempts), bool(flags & _DESTROY))
    return running


def forget(pid: int) -> None:
    with contextlib.suppress(OSError):
        path_for(pid).unlink()
