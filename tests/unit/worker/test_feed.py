"""The worker's read-ahead rule and its shared job feed (pure logic, real threads)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

from circus_djmaster.worker.feed import HOLD_LIMIT, JobFeed, Take
from circus_djmaster.worker.read_ahead import AUTO_CAP, BATCH_BOUND, ReadAhead
from tests.support.waiting import wait_until


@dataclasses.dataclass(frozen=True)
class Job:
    id: int


# --- the rule -------------------------------------------------------------------------


def test_an_explicit_read_ahead_is_what_it_says() -> None:
    rule = ReadAhead(fixed=7, threads=4)
    assert rule.limit(free=4) == 7
    rule.observe(0.0001)
    assert rule.limit(free=1) == 7


def test_auto_takes_one_job_per_free_thread_until_it_knows_the_jobs() -> None:
    rule = ReadAhead(fixed=None, threads=4)
    assert rule.limit(free=4) == 4
    assert rule.limit(free=0) == 1, "the asking thread is free"


def test_auto_reads_ahead_while_jobs_are_short_and_not_when_they_are_long() -> None:
    short = ReadAhead(fixed=None, threads=4)
    for _ in range(20):
        short.observe(0.001)
    assert short.limit(free=1) == min(AUTO_CAP, int(BATCH_BOUND * 4 / 0.001))
    noop = ReadAhead(fixed=None, threads=4)
    noop.observe(0.0)
    assert noop.limit(free=1) == AUTO_CAP
    long = ReadAhead(fixed=None, threads=1)
    long.observe(1.0)
    assert long.limit(free=1) == 1
    mixed = ReadAhead(fixed=None, threads=2)
    for seconds in (0.001, 1.0) * 10:
        mixed.observe(seconds)
    assert mixed.limit(free=2) == 2, "a queue with long jobs in it: one job per free thread"


def test_the_average_follows_the_recent_jobs() -> None:
    rule = ReadAhead(fixed=None, threads=1)
    for _ in range(30):
        rule.observe(1.0)
    assert rule.limit(free=1) == 1
    for _ in range(60):  # the weight of the old ones falls as 0.8 ** n
        rule.observe(0.0001)
    assert rule.limit(free=1) == AUTO_CAP


# --- the feed -------------------------------------------------------------------------


class Store:
    """Reserves from a list of ids; records every call (limit, done)."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.waiting = list(ids)
        self.calls: list[tuple[int, list[int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def reserve(self, limit: int, done: Sequence[int]) -> list[Job] | None:
        self.gate.wait(5)
        self.calls.append((limit, list(done)))
        if self.fail:
            return None
        taken, self.waiting = self.waiting[:limit], self.waiting[limit:]
        return [Job(i) for i in taken]


def test_one_round_trip_serves_every_free_thread() -> None:
    feed: JobFeed[Job] = JobFeed(3, ReadAhead(fixed=None, threads=3))
    store = Store(range(1, 10))
    assert feed.take(store.reserve) == Job(1)
    assert store.calls == [(3, [])], "one per free thread"
    assert feed.take(store.reserve) == Job(2)
    assert feed.take(store.reserve) == Job(3)
    assert len(store.calls) == 1, "the others came from the same round trip"


def test_threads_needing_a_job_wait_for_the_reserve_under_way() -> None:
    feed: JobFeed[Job] = JobFeed(2, ReadAhead(fixed=None, threads=2))
    store = Store([1, 2])
    store.gate.clear()
    got: list[object] = []
    first = threading.Thread(target=lambda: got.append(feed.take(store.reserve)))
    first.start()
    wait_until(lambda: feed._reserving, 5, "the first thread to reserve")
    second = threading.Thread(target=lambda: got.append(feed.take(store.reserve)))
    second.start()
    store.gate.set()
    first.join(5)
    second.join(5)
    assert sorted(job.id for job in got if isinstance(job, Job)) == [1, 2]
    assert len(store.calls) == 1


def test_an_empty_or_failed_reserve_is_the_answer_of_every_waiting_thread() -> None:
    feed: JobFeed[Job] = JobFeed(2, ReadAhead(fixed=None, threads=2))
    store = Store([])
    assert feed.take(store.reserve) is Take.EMPTY
    store.fail = True
    assert feed.take(store.reserve) is Take.ERROR


def test_succeeded_jobs_are_deleted_with_the_next_reserve_or_after_a_while() -> None:
    feed: JobFeed[Job] = JobFeed(1, ReadAhead(fixed=1, threads=1))
    store = Store([1, 2, 3])
    job = feed.take(store.reserve)
    assert job == Job(1)
    feed.finished(1, 0.01, succeeded=True)
    assert feed.take(store.reserve) == Job(2)
    assert store.calls[-1] == (1, [1]), "deleted in the next reserve's round trip"
    feed.finished(2, 0.01, succeeded=False)  # a failure is recorded by its thread
    assert feed.take(store.reserve) == Job(3)
    assert store.calls[-1] == (1, [])
    feed.finished(3, 0.01, succeeded=True)
    wait_until(lambda: feed.flush_due() == [3], 5, "the deletion to be due")


def test_deletions_survive_a_failed_reserve() -> None:
    feed: JobFeed[Job] = JobFeed(1, ReadAhead(fixed=1, threads=1))
    store = Store([1, 2])
    feed.take(store.reserve)
    feed.finished(1, 0.0, succeeded=True)
    store.fail = True
    assert feed.take(store.reserve) is Take.ERROR
    store.fail = False
    assert feed.take(store.reserve) == Job(2)
    assert store.calls[-1] == (1, [1])


def test_auto_hands_back_jobs_held_while_every_thread_is_busy() -> None:
    rule = ReadAhead(fixed=None, threads=1)
    rule.observe(0.0)
    feed: JobFeed[Job] = JobFeed(1, rule)
    store = Store(range(1, 6))
    assert feed.take(store.reserve) == Job(1)  # busy from now on, 4 held
    now = wait_until(lambda: feed.held_since(), 5)[0][1]
    assert feed.take_stale(now + HOLD_LIMIT / 2) == [], "not long enough"
    assert feed.take_stale(now + HOLD_LIMIT) == [2, 3, 4, 5]
    assert feed.held_since() == []


def test_no_hand_back_while_a_thread_is_free_or_read_ahead_is_explicit() -> None:
    rule = ReadAhead(fixed=None, threads=2)
    rule.observe(0.0)
    feed: JobFeed[Job] = JobFeed(2, rule)
    store = Store(range(1, 6))
    feed.take(store.reserve)
    assert feed.take_stale(10**9) == [], "the other thread is free: it takes them"
    fixed: JobFeed[Job] = JobFeed(1, ReadAhead(fixed=5, threads=1))
    fixed.take(Store(range(1, 6)).reserve)
    assert fixed.take_stale(10**9) == [], "an explicit read_ahead holds its batch"
    assert sorted(fixed.drain()) == [2, 3, 4, 5]
