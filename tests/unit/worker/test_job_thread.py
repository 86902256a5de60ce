"""A worker's job thread on fakes with the real interfaces: ``delayed_jobs`` in memory
behind the real sync executor (tests/support/memory_store.py) and a worker link that
says when to stop. The real-process tests (tests/process) run whole workers.

Assertions are on rows, runs and logged events (the records' structured ``event``).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from circus_djmaster.config.settings import parse_settings
from circus_djmaster.contracts.running_jobs import RunningJobs
from circus_djmaster.store.statements import JobFilter
from circus_djmaster.worker.db_deadlines import CallDeadlines
from circus_djmaster.worker.feed import JobFeed
from circus_djmaster.worker.job_thread import JobThread, ThreadSetup
from circus_djmaster.worker.read_ahead import ReadAhead
from circus_djmaster.worker.run_alone import RunAloneGate
from tests.support import memory_jobs
from tests.support.memory_store import MemoryConnection, MemoryStore

LOCKED_BY = "host:testhost pid:91000000"
_pids = itertools.count(91_000_001)


class Link:
    """The worker side of a job thread (job_thread.WorkerLink): it accepts jobs until
    ``until()`` holds, and counts what the thread told it."""

    def __init__(self, until: Callable[[], bool]) -> None:
        self.until = until
        self.passes = 0
        self.empty_passes = 0
        self.jobs_done = 0
        self.crashed = False
        self.exited = threading.Event()
        self.cancelled: set[int] = set()  # what the worker's cancel check found

    def accepting_jobs(self) -> bool:
        return not self.until()

    def pass_started(self) -> None:
        self.passes += 1

    def pass_ended(self, *, found: bool) -> None:
        self.empty_passes += not found

    def show_busy(self) -> None:
        pass

    def after_job(self) -> None:
        self.jobs_done += 1

    def thread_crashed(self) -> None:
        self.crashed = True

    def thread_exited(self) -> None:
        self.exited.set()

    def cancel_requested(self, job_id: int) -> bool:
        return job_id in self.cancelled


@pytest.fixture(autouse=True)
def fresh_runs() -> Iterator[None]:
    memory_jobs.RUNS.clear()
    yield
    memory_jobs.RUNS.clear()


def handler(function: str, *args: Any) -> str:
    return json.dumps({"callable": f"tests.support.memory_jobs:{function}", "args": list(args)})


def run_thread(
    store: MemoryStore, until: Callable[[Link], bool], **group: Any
) -> tuple[Link, JobThread]:
    """One job thread of a worker of a group serving queue ``q``, until ``until``."""
    data = {
        "databases": {"primary": "postgresql:///unused"},
        "workers": [{"queues": ["q"], "sleep_delay": "10ms"} | group],
    }
    settings = parse_settings(data, Path("/tmp/djmaster-test-thread.toml"))
    worker_group = settings.workers[0]
    setup = ThreadSetup(
        group=worker_group,
        database_name="primary",
        database_url="postgresql:///unused",
        worker_pid=os.getpid(),  # job code ending in another pid is a forked child's
        locked_by=LOCKED_BY,
        job_filter=JobFilter.of(worker_group),
        lock_timeout=settings.lock_timeout,
        database_timeout=settings.database_timeout,
    )
    link = Link(lambda: until(link))
    running = RunningJobs(worker_group.max_threads, pid=next(_pids))
    deadlines = CallDeadlines(5.0)
    thread = JobThread(
        0,
        setup,
        link,
        deadlines=deadlines,
        running=running,
        gate=RunAloneGate(),
        feed=JobFeed(
            worker_group.max_threads,
            ReadAhead(worker_group.read_ahead, worker_group.max_threads),
        ),
        connect=lambda url, **options: MemoryConnection(store),
    )
    try:
        thread.start()
        assert link.exited.wait(5), "the job thread did not stop"
        thread.join(5)
    finally:
        running.close()
        deadlines.close()
    return link, thread


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", None) == name]


def test_a_due_job_is_run_and_deleted() -> None:
    store = MemoryStore()
    store.add(handler("ok", "a"), queue="q")
    store.add(handler("ok", "other queue"), queue="other")
    run_thread(store, lambda link: link.jobs_done == 1)
    assert memory_jobs.RUNS == ["a"]
    assert [job.queue for job in store.jobs.values()] == ["other"]  # deleted once done
    assert store.ran[0] == "reserve_jobs_in_queues"


def test_a_finished_job_leaves_a_line_at_info_with_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker that ran jobs said only "retiring: no job to do" (issue 14)."""
    store = MemoryStore()
    job_id = store.add(handler("ok", "a"), queue="q")
    caplog.set_level(logging.INFO)
    run_thread(store, lambda link: link.jobs_done == 1)
    (done,) = events(caplog, "job_succeeded")
    assert done.levelname == "INFO"
    assert (done.job_id, done.queue, done.callable) == (job_id, "q", "tests.support.memory_jobs:ok")
    assert (done.attempt, done.outcome, done.attempts) == (1, "SUCCEEDED", 1)
    assert isinstance(done.duration, float) and done.duration >= 0
    assert done.getMessage().startswith(f"job {job_id} tests.support.memory_jobs:ok (queue q")


def test_completions_ride_on_the_next_reserve() -> None:
    store = MemoryStore()
    for key in "abc":
        store.add(handler("ok", key), queue="q")
    run_thread(store, lambda link: link.empty_passes >= 1)
    assert memory_jobs.RUNS == ["a", "b", "c"]
    assert store.jobs == {}
    # Each deletion went with a reserve: no statement of its own.
    assert "complete_jobs" not in store.ran


def test_a_job_that_raises_is_retried_after_attempts_to_the_fourth_plus_5_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    job_id = store.add(handler("boom", "x"), queue="q")
    caplog.set_level(logging.INFO)
    run_thread(store, lambda link: link.jobs_done == 1)
    job = store.jobs[job_id]
    assert (job.attempts, job.locked_by, job.failed_at) == (1, None, None)
    assert (job.run_at - store.now).total_seconds() == 1**4 + 5
    assert (job.last_error or "").startswith("ValueError: boom x")
    (failed,) = events(caplog, "job_failed")
    assert (failed.job_id, failed.outcome, failed.attempts) == (job_id, "RETRY", 1)
    assert (failed.queue, failed.attempt) == ("q", 1)
    assert failed.callable == "tests.support.memory_jobs:boom" and failed.duration >= 0


def test_a_job_at_its_own_last_attempt_fails_for_good(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    job_id = store.add(handler("fragile", "x"), queue="q")
    caplog.set_level(logging.INFO)
    run_thread(store, lambda link: link.jobs_done == 1)
    job = store.jobs[job_id]
    assert job.failed_at is not None and job.attempts == 1
    assert [record.outcome for record in events(caplog, "job_failed")] == ["FAILED"]


def test_a_handler_that_cannot_be_imported_fails_at_once() -> None:
    store = MemoryStore()
    job_id = store.add('{"callable": "no.such.module:f"}', queue="q")
    run_thread(store, lambda link: store.jobs[job_id].failed_at is not None)
    assert (store.jobs[job_id].last_error or "").startswith("HandlerError:")
    assert memory_jobs.RUNS == []


def test_a_stopping_worker_keeps_the_jobs_reserved_ahead_for_the_worker_to_hand_back() -> None:
    """One round trip reserved 3 jobs for the process; the thread ran one, then the
    worker stopped: the other two are still held by the feed, whose worker hands them
    back after its threads ended (process.py; tests/process test it end to end)."""
    store = MemoryStore()
    ids = [store.add(handler("ok", key), queue="q") for key in "abc"]
    _link, thread = run_thread(store, lambda link: link.jobs_done >= 1, read_ahead=3)
    assert memory_jobs.RUNS == ["a"]
    assert sorted(store.jobs) == ids[1:]
    assert all(store.jobs[job_id].locked_by == LOCKED_BY for job_id in ids[1:])
    assert sorted(thread.feed.drain()) == ids[1:]


def test_a_database_error_is_not_an_empty_pass_and_the_thread_backs_off() -> None:
    store = MemoryStore()
    store.down = True
    store.add(handler("ok", "a"), queue="q")
    started = time.monotonic()

    def back_later(link: Link) -> bool:
        if link.passes >= 2:
            store.down = False
        return link.jobs_done == 1

    link, thread = run_thread(store, back_later)
    assert memory_jobs.RUNS == ["a"]
    assert link.empty_passes == 0  # a failing database says nothing about the queue
    assert time.monotonic() - started >= 0.5 + 1.0  # backed off 0.5 s, then 1 s
    assert thread.db_ok


# --- issue 15: finished jobs kept, cancels ---------------------------------------------


def test_a_succeeded_job_is_kept_with_its_result_when_its_group_keeps_finished_jobs() -> None:
    store = MemoryStore()
    kept = store.add(handler("answer", "a"), queue="q")
    unkeepable = store.add(handler("unkeepable", "b"), queue="q")
    run_thread(store, lambda link: link.empty_passes >= 1, keep_finished="1h")
    assert store.jobs == {}
    assert json.loads(store.finished[kept]["result"]) == {"key": "a", "answer": 42}
    assert store.finished[kept]["outcome"] == "succeeded"
    assert store.finished[kept]["attempts"] == 1
    row = store.finished[unkeepable]
    assert row["result"] is None and "not JSON (set)" in row["result_note"]
    assert "complete_jobs" not in store.ran  # kept jobs move, batched: no plain deletes


def test_keep_finished_of_the_row_and_of_the_job_override_the_groups() -> None:
    store = MemoryStore()
    by_row = store.add(handler("answer", "r"), queue="q", keep_finished=60.0)
    by_job = store.add(handler("kept_by_its_job", "j"), queue="q")
    not_kept = store.add(handler("answer", "n"), queue="q", keep_finished=0.0)
    run_thread(store, lambda link: link.empty_passes >= 1, keep_finished="1h")
    assert set(store.finished) == {by_row, by_job} and not_kept not in store.jobs
    assert (store.finished[by_row]["keep_until"] - store.now).total_seconds() == 60
    assert (store.finished[by_job]["keep_until"] - store.now).total_seconds() == 600
    assert json.loads(store.finished[by_job]["result"]) == "J"


def test_without_keep_finished_a_succeeded_job_is_deleted_as_delayed_job_does() -> None:
    store = MemoryStore()
    store.add(handler("answer", "a"), queue="q")
    run_thread(store, lambda link: link.empty_passes >= 1)
    assert store.jobs == {} and store.finished == {}


def test_a_job_failing_for_good_stays_failed_and_is_kept_too() -> None:
    store = MemoryStore()
    job_id = store.add(handler("fragile", "f"), queue="q")
    run_thread(store, lambda link: link.jobs_done == 1, keep_finished="1h")
    assert store.jobs[job_id].failed_at is not None  # delayed_job's rule: kept for a retry
    assert store.finished[job_id]["outcome"] == "failed"
    assert "fragile f" in store.finished[job_id]["last_error"]


def test_a_job_cancelled_while_held_never_runs() -> None:
    store = MemoryStore()
    flagged = store.add(handler("answer", "flagged"), queue="q")
    store.jobs[flagged].cancel_requested_at = store.now
    seen = store.add(handler("answer", "seen"), queue="q")
    ran = store.add(handler("answer", "ran"), queue="q")

    def until(link: Link) -> bool:
        link.cancelled.add(seen)  # what the worker's check found
        return link.empty_passes >= 1

    run_thread(store, until, keep_finished="1h", read_ahead=10)
    assert memory_jobs.RUNS == ["ran"]
    assert store.jobs == {}
    outcomes = {job_id: row["outcome"] for job_id, row in store.finished.items()}
    assert outcomes == {flagged: "cancelled", seen: "cancelled", ran: "succeeded"}


def test_a_running_job_that_stops_on_a_cancel_request_is_cancelled_not_retried() -> None:
    store = MemoryStore()
    job_id = store.add(handler("wait_for_cancel", "w"), queue="q")
    done = threading.Event()

    def worker_check() -> None:
        """What the worker's main thread does when the database says "cancelled"
        (process.Worker.check_cancels): set the running job's cancel event."""
        while not done.is_set():
            for thread in threading.enumerate():
                context = getattr(thread, "context", None)
                if isinstance(thread, JobThread) and context is not None:
                    context.cancel_event.set()
            time.sleep(0.01)

    checker = threading.Thread(target=worker_check, daemon=True)
    checker.start()
    try:
        run_thread(store, lambda link: link.jobs_done == 1, keep_finished="1h")
    finally:
        done.set()
        checker.join(5)
    assert memory_jobs.RUNS == ["w"]  # it stopped: "never cancelled" not recorded
    assert job_id not in store.jobs  # not retried: gone
    row = store.finished[job_id]
    assert row["outcome"] == "cancelled" and "JobCancelled" in row["last_error"]
