"""How many jobs a worker reserves per database round trip: ``read_ahead``.

An explicit integer is what it says: that many jobs per round trip (delayed_job's
``read_ahead``). ``"auto"`` (the default) reserves as many jobs as the process has job
threads free, and reads further ahead only while the group's recent jobs are short: the
batch is sized so that its expected run time, shared by the process's threads, stays under
:data:`BATCH_BOUND`, from a moving average of the jobs' run times in this process::

    limit = clamp(BATCH_BOUND * threads / mean, free threads, AUTO_CAP)

So a queue of 1 ms jobs is drained in batches of up to ``AUTO_CAP`` (the round trip is
shared by many jobs), while 1 s jobs are taken one per free thread: a long job never
waits, locked by this process, behind another while a thread of another worker idles.
Before the first job ends nothing is known, and the limit is the free threads.
"""

from __future__ import annotations

import dataclasses

__all__ = ["AUTO_CAP", "BATCH_BOUND", "ReadAhead"]

#: Seconds a reserved batch is expected to take, at most, with the process's threads.
BATCH_BOUND = 0.05
#: Most jobs reserved in one round trip in auto mode (delayed_job's usual read_ahead, times 20).
AUTO_CAP = 100
#: Weight of the newest job in the moving average (about the last 10 jobs count).
SMOOTHING = 0.2


@dataclasses.dataclass
class ReadAhead:
    """The read-ahead of one worker process. Not thread-safe: its owner (the job feed)
    calls it under its own lock.

    ``fixed``: an explicit setting (None: ``read_ahead = "auto"``, the settings' value);
    ``threads``: the process's job threads.
    """

    fixed: int | None
    threads: int
    mean: float | None = None  # seconds: moving average of job run times

    def observe(self, seconds: float) -> None:
        """A job ran ``seconds`` (success or failure alike)."""
        seconds = max(0.0, seconds)
        if self.mean is None:
            self.mean = seconds
        else:
            self.mean += SMOOTHING * (seconds - self.mean)

    def limit(self, free: int) -> int:
        """Jobs to reserve in the next round trip, with ``free`` job threads idle."""
        free = max(1, free)
        if self.fixed is not None:
            return self.fixed
        if self.mean is None:
            return free
        if self.mean <= 0:
            return max(free, AUTO_CAP)
        ahead = int(BATCH_BOUND * self.threads / self.mean)
        return max(free, min(AUTO_CAP, ahead))

    @property
    def adaptive(self) -> bool:
        return self.fixed is None
