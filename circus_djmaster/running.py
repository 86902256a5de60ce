"""Which jobs a worker is running right now, in a small file the master can read.

A worker that dies (kill -9, OOM, os._exit) leaves its jobs locked. The master releases
them, and charges an attempt to the job that killed its worker, so a poison job ends
failed after max_attempts. But a worker may also hold jobs it reserved ahead
(``read_ahead``) or finished without deleting yet: those did nothing wrong. Each job
thread writes the id of the job it runs into its slot of a memory-mapped file
(``/dev/shm/djmaster-running-PID``; a memory write per job, no system call, no round
trip); the master reads the file of a dead worker and charges only those jobs.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import tempfile
from pathlib import Path

_SLOT = struct.Struct("<q")


def folder() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def path_for(pid: int) -> Path:
    return folder() / f"djmaster-running-{pid}"


class RunningJobs:
    """The worker's side: one 8-byte slot per job thread (0: no job)."""

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

    def set(self, slot: int, job_id: int) -> None:
        _SLOT.pack_into(self._map, slot * _SLOT.size, job_id)

    def clear(self, slot: int) -> None:
        _SLOT.pack_into(self._map, slot * _SLOT.size, 0)

    def close(self) -> None:
        """A worker that exits by itself holds no job: nothing for the master to read."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(ValueError):
            self._map.close()


def read_running(pid: int) -> frozenset[int] | None:
    """The jobs a (dead) worker was running; None if it left no file of ours."""
    path = path_for(pid)
    try:
        if path.stat().st_uid != os.geteuid():
            return None
        data = path.read_bytes()
    except OSError:
        return None
    count = len(data) // _SLOT.size
    ids = (_SLOT.unpack_from(data, n * _SLOT.size)[0] for n in range(count))
    return frozenset(job_id for job_id in ids if job_id > 0)


def forget(pid: int) -> None:
    with contextlib.suppress(OSError):
        path_for(pid).unlink()
