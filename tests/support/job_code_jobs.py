"""Jobs whose code does what real applications do: async code, forks, multiprocessing,
follow-up jobs, reading their own context, killing their worker. Worker processes
import them (PYTHONPATH = repo root); each records what happened in ``job_events``
(tests/support/jobs.py's ``record_event``).
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

from circus_djmaster import JobRecord, current_job, job
from tests.support.jobs import record_event

# --- async jobs ------------------------------------------------------------------------


async def _arecord(key: str, event: str) -> None:
    await asyncio.to_thread(record_event, key, event)


@job(queue="q1")
async def ahello(key: str) -> None:
    """An async job defined with @job: its body must run, not just be created."""
    await asyncio.sleep(0.01)
    await _arecord(key, "done")


async def ahello_plain(key: str) -> None:
    """An async function enqueued by path, without @job."""
    await asyncio.sleep(0)
    await _arecord(key, "done")


async def _add_then_record(key: str, suffix: str) -> None:
    await _arecord(key, f"done{suffix}")


# A module attribute that is a partial of an async function: its result is awaitable.
apartial = functools.partial(_add_then_record, suffix="-partial")


def returns_coroutine(key: str) -> Any:
    """A sync function whose result is a coroutine (a wrapper, as decorators make)."""
    return _add_then_record(key, "-wrapped")


async def afail(key: str) -> None:
    await _arecord(key, "start")
    raise ValueError(f"async job {key} failed")


async def aloop_id(key: str) -> None:
    """Record the id of the event loop the job runs on."""
    loop = asyncio.get_running_loop()
    await _arecord(key, f"loop {id(loop)}")


async def aleave_a_task(key: str) -> None:
    """Start a background task and return at once: the task must not outlive the job."""

    async def background() -> None:
        try:
            await asyncio.sleep(1.0)
            await _arecord(key, "background ran on")
        except asyncio.CancelledError:
            record_event(key, "background cancelled")
            raise

    asyncio.get_running_loop().create_task(background())
    await asyncio.sleep(0)  # let it start
    await _arecord(key, "done")


async def asleep(key: str, seconds: float) -> None:
    """Waits on the event loop: cancellation stops it at once."""
    await _arecord(key, "start")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        record_event(key, "cancelled")
        raise
    await _arecord(key, "done")


async def aspin(key: str, seconds: float) -> None:
    """Busy code inside a coroutine, never yielding to the loop: only an interrupt of
    the thread stops it."""
    await _arecord(key, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    await _arecord(key, "done")


def _async_hook(name: str) -> Any:
    async def hook(job_record: JobRecord, *extra: Any) -> None:
        await asyncio.sleep(0)
        await _arecord(job_record.handler.args[0], name)

    return hook


@job(
    queue="q1",
    before=_async_hook("before"),
    after=_async_hook("after"),
    success=_async_hook("success"),
    error=_async_hook("error"),
    failure=_async_hook("failure"),
    max_attempts=1,
)
async def ahooked(key: str, should_fail: bool) -> None:
    await _arecord(key, "run")
    if should_fail:
        raise ValueError("ahooked failed")


@job(queue="q1", max_run_time=1.0)
async def ashort_limit(key: str) -> None:
    await asleep(key, 60)


@job(queue="q1", max_run_time=1.0)
async def ashort_limit_spin(key: str) -> None:
    await aspin(key, 60)


# --- the job's context and follow-ups --------------------------------------------------


def record_context(key: str) -> None:
    context = current_job()
    assert context is not None
    record_event(
        key,
        f"{context.id} {context.queue} {context.attempts} {context.database} "
        f"{context.group} {context.callable}",
    )


async def arecord_context(key: str) -> None:
    context = current_job()
    assert context is not None
    await _arecord(key, f"{context.id} {context.database} {context.callable}")


@job(queue="q1")
def child(key: str) -> None:
    record_event(key, f"child ran in {current_job().database if current_job() else None}")


def enqueue_follow_up(key: str) -> None:
    """A job that enqueues a follow-up without naming a database."""
    child.delay(f"{key}-child")


# --- forks -------------------------------------------------------------------------------


def fork_child(key: str, how: str) -> None:
    """Fork; the child records, then leaves job code as ``how`` says; the parent waits
    for it and records the child's exit status."""
    pid = os.fork()
    if pid == 0:
        record_event(key, "child")
        if how == "sys.exit":
            sys.exit(0)
        if how == "sys.exit(4)":
            sys.exit(4)
        if how == "raise":
            raise RuntimeError("the child failed")
        if how == "os._exit":
            os._exit(3)
        if how == "KeyboardInterrupt":
            raise KeyboardInterrupt
        return  # "return": back into the worker's code, in the child
    _, status = os.waitpid(pid, 0)
    record_event(key, f"parent: child {pid} exit {os.waitstatus_to_exitcode(status)}")


async def afork_child(key: str) -> None:
    """An async job forking: the child returns from the coroutine on its copy of the loop."""
    pid = os.fork()
    if pid == 0:
        record_event(key, "child")
        return
    status = await asyncio.to_thread(lambda: os.waitpid(pid, 0)[1])
    await _arecord(key, f"parent: child {pid} exit {os.waitstatus_to_exitcode(status)}")


def fork_and_leave_running(key: str) -> None:
    """The child outlives the job a little; the parent returns without waiting."""
    pid = os.fork()
    if pid == 0:
        time.sleep(0.5)
        record_event(key, "late child")
        return
    record_event(key, f"parent {pid}")


def child_gets_term(key: str) -> None:
    """The child waits to be terminated: TERM must end it (default handler), not be
    recorded for a worker loop that does not run in it."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(ready_w, b".")
        time.sleep(60)
        record_event(key, "child not terminated")
        return
    os.read(ready_r, 1)  # the child runs (its at-fork handlers are done)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    record_event(key, f"parent: child exit {os.waitstatus_to_exitcode(status)}")


def square(value: int) -> int:
    return value * value


def _raise_in_process() -> None:
    raise RuntimeError("a multiprocessing child failed")


def use_multiprocessing(key: str, method: str) -> None:
    """A pool of the start method ``method`` maps a function; a Process that raises has
    exit code 1; a Process terminated with TERM ends."""
    context = multiprocessing.get_context(method)
    with context.Pool(2) as pool:
        total = sum(pool.map(square, [1, 2, 3, 4]))
    failing = context.Process(target=_raise_in_process)
    failing.start()
    failing.join(30)
    sleeper = context.Process(target=time.sleep, args=(60,))
    sleeper.start()
    sleeper.terminate()
    sleeper.join(30)
    record_event(key, f"{method} {total} {failing.exitcode} {sleeper.exitcode}")


# --- per-job limits and poison ----------------------------------------------------------


@job(queue="q1", max_attempts=2)
def kill_my_worker(key: str) -> None:
    """SIGKILL the worker running it: a job allowed 2 attempts, whatever its group says."""
    record_event(key, "start")
    os.kill(os.getpid(), signal.SIGKILL)


@job(queue="q1", max_attempts=2, destroy_failed_jobs=True)
def kill_my_worker_destroyed(key: str) -> None:
    record_event(key, "start")
    os.kill(os.getpid(), signal.SIGKILL)


def poison(key: str) -> None:
    """Ends its worker at once, whatever runs beside it."""
    record_event(key, "start")
    os._exit(3)


def short(key: str, seconds: float = 0.3) -> None:
    record_event(key, "start")
    time.sleep(seconds)
    record_event(key, "done")
