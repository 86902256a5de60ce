"""The jobs every benchmarked system runs, and how they record when they ran.

With ``$DJBENCH_RECORD`` naming a file, each job appends one line ``KIND KEY PID TIME``
(``TIME`` = ``time.time()`` when the job started) with a single ``write`` on an
``O_APPEND`` descriptor: a few microseconds, atomic across threads and processes.
Importing this module (a worker's preload) appends ``preload - PID TIME CREATED`` with the
process' creation time, for the scale-from-zero breakdown (B3).
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

RECORD_ENV = "DJBENCH_RECORD"

_fd: int | None = None


def _write(kind: str, key: str, *extra: float) -> None:
    global _fd
    if _fd is None:
        path = os.environ.get(RECORD_ENV)
        if not path:
            return
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    fields = [kind, key, str(os.getpid()), f"{time.time():.6f}", *(f"{x:.6f}" for x in extra)]
    os.write(_fd, (" ".join(fields) + "\n").encode())


def noop() -> None:
    """A job that does nothing but note when it started (B1)."""
    _write("noop", "-")


def record(key: str) -> None:
    """A job that notes when it started, under ``key`` (B2, B3)."""
    _write("job", str(key))


def sleep(key: str, seconds: float) -> None:
    """A job that notes its start, sleeps ``seconds``, then notes its end (B8)."""
    _write("job", str(key))
    time.sleep(seconds)
    _write("end", str(key))


class Record(NamedTuple):
    kind: str
    key: str
    pid: int
    time: float
    extra: tuple[float, ...]


def read_records(path: str | os.PathLike[str]) -> list[Record]:
    """The lines of a record file (none if it does not exist yet)."""
    rows = []
    try:
        with open(path, encoding="utf-8") as file:
            for line in file:
                parts = line.split()
                if len(parts) >= 4 and line.endswith("\n"):
                    extra = tuple(float(x) for x in parts[4:])
                    rows.append(Record(parts[0], parts[1], int(parts[2]), float(parts[3]), extra))
    except FileNotFoundError:
        pass
    return rows


def process_created() -> float:
    """When this process was created (epoch seconds, 1/CLK_TCK resolution: 10 ms).

    From /proc/self/stat's start time since boot and CLOCK_BOOTTIME, not psutil's
    ``create_time()``, whose boot time is rounded to the second."""
    try:
        with open("/proc/self/stat", encoding="ascii") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def _on_import() -> None:
    if os.environ.get(RECORD_ENV):
        _write("preload", "-", process_created())


_on_import()
