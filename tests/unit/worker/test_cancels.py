"""The worker's cancel look-ups (worker/cancels.py) on the in-memory store."""

from __future__ import annotations

import dataclasses

from circus_djmaster.api.context import JobContext
from circus_djmaster.worker.cancels import CancelWatch
from circus_djmaster.worker.db_deadlines import CallDeadlines
from tests.support.memory_store import MemoryConnection, MemoryStore


@dataclasses.dataclass
class FakeThread:
    """What the watch reads of a job thread: its running job."""

    context: JobContext | None = None


def context(job_id: int) -> JobContext:
    return JobContext(job_id, "q", 0, 0, "m:f", "primary", "g")


def watch(
    store: MemoryStore, threads: list[FakeThread], reserved: list[int] | None = None
) -> CancelWatch:
    return CancelWatch(
        lambda: threads,  # type: ignore[arg-type,return-value]
        lambda: reserved or [],
        url="postgresql:///unused",
        database="primary",
        application_name="test",
        timeout=5.0,
        deadlines=CallDeadlines(5.0),
        connect=lambda url, **options: MemoryConnection(store),  # type: ignore[return-value]
    )


def test_a_cancelled_running_job_is_told_and_a_held_one_remembered() -> None:
    store = MemoryStore()
    running, held, other = (store.add("{}", queue="q") for _ in range(3))
    store.jobs[running].cancel_requested_at = store.now
    store.jobs[held].cancel_requested_at = store.now
    threads = [FakeThread(context(running)), FakeThread(context(other))]
    cancels = watch(store, threads, reserved=[held])
    assert cancels.check()
    assert threads[0].context is not None and threads[0].context.cancel_requested
    assert threads[1].context is not None and not threads[1].context.cancel_requested
    assert cancels.requested(held) and not cancels.requested(other)
    assert store.ran == ["cancel_requested"]


def test_nothing_is_asked_while_no_job_is_held_or_all_are_known() -> None:
    store = MemoryStore()
    job_id = store.add("{}", queue="q")
    store.jobs[job_id].cancel_requested_at = store.now
    reserved: list[int] = []
    cancels = watch(store, [FakeThread()], reserved)
    assert cancels.check() and store.ran == []  # idle: no round trip
    reserved.append(job_id)
    assert cancels.check() and cancels.requested(job_id)
    assert cancels.check() and store.ran == ["cancel_requested"]  # known: not asked again
    reserved.clear()
    assert cancels.check() and not cancels.requested(job_id)  # no longer held: forgotten


def test_a_database_error_is_reported_as_a_failed_look_up() -> None:
    store = MemoryStore()
    store.down = True
    cancels = watch(store, [FakeThread()], [store.add("{}")])
    assert cancels.check() is False
