"""The jobs one worker process has reserved, shared by its job threads.

A thread that needs a job takes one reserved earlier by any thread of the process; when
none is left, it reserves for the whole process in one round trip (as many as
:class:`~.read_ahead.ReadAhead` says: one per free thread, more while jobs are short),
while the other threads needing a job wait for that round trip instead of making their
own. Succeeded jobs are deleted in the next reserve's round trip (``done``), or by the
thread finishing a job once they waited :data:`FLUSH_AFTER`.

In auto mode a reserved job never waits long behind running ones: when every thread of
the process is busy and a job has waited :data:`HOLD_LIMIT`, the worker hands it back
(:meth:`JobFeed.take_stale`) so an idle worker elsewhere can run it.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from circus_djmaster.worker.read_ahead import ReadAhead

__all__ = ["FLUSH_AFTER", "HOLD_LIMIT", "JobFeed", "Take"]

J = TypeVar("J")  # a reserved job (store.ReservedJob); anything with an ``id``

#: A succeeded job waits at most this long for its deletion to share a round trip.
FLUSH_AFTER = 0.05
#: Auto read-ahead: a reserved job waiting longer than this while every thread is busy
#: is handed back.
HOLD_LIMIT = 1.0


class Take(enum.Enum):
    """Why :meth:`JobFeed.take` returned no job."""

    EMPTY = "empty"  # the last reserve found no job
    ERROR = "error"  # the last reserve failed (database trouble)


@dataclasses.dataclass
class _Held(Generic[J]):
    job: J
    since: float  # time.monotonic() it was reserved
    locked: float  # time.monotonic() its lock was taken or last renewed


class JobFeed(Generic[J]):
    """Reserved jobs of one process, for ``threads`` job threads. Thread-safe."""

    def __init__(self, threads: int, read_ahead: ReadAhead) -> None:
        self.threads = threads
        self.read_ahead = read_ahead
        self._cond = threading.Condition()
        self._ahead: collections.deque[_Held[J]] = collections.deque()
        self._reserving = False
        self._reserving_since = 0.0  # time.monotonic() the reserve under way began
        self._rounds = 0  # reserves finished
        self._last: Take | None = None  # outcome of the last reserve that got no job
        self._busy = 0  # threads running a job they took
        self._done: list[int] = []
        self._done_since = 0.0

    # --- job threads ------------------------------------------------------------------

    def take(self, reserve: Callable[[int, Sequence[int]], Sequence[J] | None]) -> J | Take:
        """The next job for the calling thread; reserving (``reserve(limit, done)``,
        which returns the jobs, or None on a database error) when none is held.

        A thread that gets a job is busy until it calls :meth:`finished` (or
        :meth:`not_started`).
        """
        with self._cond:
            while not self._ahead and self._reserving:
                self._wait_for_round(self._rounds)
                if not self._ahead and self._last is not None:
                    return self._last  # that reserve found nothing (or failed)
            if self._ahead:
                return self._hand_out()
            self._reserving = True
            self._reserving_since = time.monotonic()
            limit = self.read_ahead.limit(self.threads - self._busy)
            done, self._done = self._done, []
        jobs: Sequence[J] | None = None
        try:
            jobs = reserve(limit, done)
        finally:
            self._reserved(jobs, done)
        with self._cond:
            if self._ahead:
                return self._hand_out()
            return self._last or Take.EMPTY

    def _wait_for_round(self, rounds: int) -> None:
        """Under the lock: wait until the reserve under way (round ``rounds``) ended."""
        while self._rounds == rounds:
            self._cond.wait()

    def _reserved(self, jobs: Sequence[J] | None, done: list[int]) -> None:
        """Record a reserve's outcome and wake the threads waiting for it."""
        with self._cond:
            self._reserving = False
            self._rounds += 1
            if jobs is None:
                self._done = done + self._done  # not deleted: with the next round trip
                self._last = Take.ERROR
            elif not jobs:
                self._last = Take.EMPTY
            else:
                self._last = None
                now = time.monotonic()
                self._ahead.extend(_Held(job, now, now) for job in jobs)
            self._cond.notify_all()

    def _hand_out(self) -> J:
        held = self._ahead.popleft()
        self._busy += 1
        return held.job

    def finished(self, job_id: int, seconds: float, *, succeeded: bool) -> None:
        """The calling thread's job ended after ``seconds``; a succeeded one is deleted
        with the next round trip."""
        with self._cond:
            self._busy -= 1
            self.read_ahead.observe(seconds)
            if succeeded:
                if not self._done:
                    self._done_since = time.monotonic()
                self._done.append(job_id)

    def not_started(self) -> None:
        """The calling thread's job was handed back without running (the worker stops)."""
        with self._cond:
            self._busy -= 1

    def flush_due(self) -> list[int]:
        """Succeeded jobs that waited :data:`FLUSH_AFTER` for a reserve: the caller
        deletes them now (and gives them back with :meth:`undo_flush` if it cannot)."""
        with self._cond:
            if not self._done or self._reserving:
                return []
            if time.monotonic() - self._done_since < FLUSH_AFTER:
                return []
            done, self._done = self._done, []
            return done

    def undo_flush(self, done: Sequence[int]) -> None:
        with self._cond:
            self._done = list(done) + self._done

    def all_done(self) -> list[int]:
        """Every succeeded job not deleted yet (the last thread leaving deletes them)."""
        with self._cond:
            done, self._done = self._done, []
            return done

    # --- the worker's main loop -------------------------------------------------------

    def take_stale(self, now: float | None = None) -> list[int]:
        """Auto read-ahead: ids of reserved jobs that waited :data:`HOLD_LIMIT` while every
        thread was busy; removed here, the caller hands them back."""
        if not self.read_ahead.adaptive:
            return []
        now = time.monotonic() if now is None else now
        with self._cond:
            if self._busy < self.threads:
                return []  # a thread is free: it takes them
            stale = [held for held in self._ahead if now - held.since >= HOLD_LIMIT]
            for held in stale:
                self._ahead.remove(held)
            return [_job_id(held.job) for held in stale]

    def held_since(self) -> list[tuple[int, float]]:
        """(id, reserved at) of the jobs reserved and not taken yet."""
        with self._cond:
            return [(_job_id(held.job), held.since) for held in self._ahead]

    def locks_older_than(self, age: float, now: float | None = None) -> list[int]:
        """Ids of held jobs whose lock was taken (or renewed) ``age`` seconds ago or more:
        the caller renews them (then :meth:`refreshed`) before they could look stale."""
        now = time.monotonic() if now is None else now
        with self._cond:
            return [_job_id(held.job) for held in self._ahead if now - held.locked >= age]

    def refreshed(self, job_ids: Sequence[int], now: float) -> None:
        """The locks of ``job_ids`` were renewed at ``now``."""
        wanted = set(job_ids)
        with self._cond:
            for held in self._ahead:
                if _job_id(held.job) in wanted:
                    held.locked = now

    def drain(self) -> list[int]:
        """Ids of every job reserved and not taken (the worker stops: hand them back)."""
        with self._cond:
            ids = [_job_id(held.job) for held in self._ahead]
            self._ahead.clear()
            return ids

    def database_trouble(self, stalled_after: float, now: float | None = None) -> bool:
        """True when the process cannot reserve now: the last reserve failed, or the
        one under way has waited ``stalled_after`` seconds for an answer."""
        now = time.monotonic() if now is None else now
        with self._cond:
            if self._reserving:
                return now - self._reserving_since > stalled_after
            return self._last is Take.ERROR

    @property
    def busy(self) -> int:
        with self._cond:
            return self._busy


def _job_id(job: object) -> int:
    return int(job.id)  # type: ignore[attr-defined]
