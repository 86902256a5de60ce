"""The master's LISTEN connection and its per-database task, on a real Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import psycopg

from circus_djmaster.common.backoff import Backoff
from circus_djmaster.config.settings import parse_settings
from circus_djmaster.contracts import running_jobs as running
from circus_djmaster.contracts.locked_by import worker_locked_by
from circus_djmaster.master.listener import Listener
from circus_djmaster.master.polling import DatabasePoller
from circus_djmaster.master.releases import Release, charge_for_death
from circus_djmaster.store import async_executor

APP = "djmaster-listener-test"


def insert(url: str, queue: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO delayed_jobs (handler, queue) VALUES ('{}', %s)", (queue,))


def terminate_listener(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (APP,),
        ).fetchall()
    return len(rows)


async def next_item(queue: asyncio.Queue[Any], timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(queue.get(), timeout)


def test_listener_hands_payloads_on_and_reconnects(database_url: str) -> None:
    async def scenario() -> None:
        received: asyncio.Queue[frozenset[str] | None] = asyncio.Queue()
        listener = Listener(
            "primary",
            lambda: async_executor.connect(database_url, application_name=APP),
            received.put_nowait,
            probe_interval=0.2,
            probe_timeout=2.0,
            backoff=Backoff(first=0.05, cap=0.2),
        )
        task = asyncio.create_task(listener.run())
        try:
            assert await next_item(received) is None  # connected: "look at everything"
            await asyncio.to_thread(insert, database_url, "q1")
            assert await next_item(received) == frozenset({"q1"})
            # Several probe intervals pass quietly: the probes keep it alive.
            await asyncio.sleep(0.7)
            assert received.empty()
            assert await asyncio.to_thread(terminate_listener, database_url) == 1
            assert await next_item(received) is None  # reconnected
            await asyncio.to_thread(insert, database_url, "q2")
            assert await next_item(received) == frozenset({"q2"})
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def settings_for(tmp_path: Path) -> Any:
    data = {
        "polling_interval": 30,
        "databases": {"primary": "unused"},
        "workers": [{"name": "w", "queues": ["q1"], "max_processes": 3, "max_attempts": 2}],
    }
    return parse_settings(data, tmp_path / "djmaster.toml")


def test_poller_counts_on_request_and_releases_dead_workers_jobs(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = settings_for(tmp_path)
    for _ in range(5):
        insert(database_url, "q1")
    dead = worker_locked_by(999_999)
    held = conn.execute(
        "UPDATE delayed_jobs SET locked_at = now(), locked_by = %s "
        "WHERE id IN (SELECT id FROM delayed_jobs ORDER BY id LIMIT 2) RETURNING id",
        (dead,),
    ).fetchall()
    ran, reserved_ahead = sorted(row[0] for row in held)
    # The dead worker's running-jobs file: it was running the first job.
    running.RunningJobs(1, pid=999_999).set(0, ran, running.JobLimits(2, False))

    async def scenario() -> None:
        due: list[int] = []
        poller = DatabasePoller(
            settings,
            "primary",
            lambda: async_executor.connect(database_url),
            lambda: due.append(1),
        )
        task = asyncio.create_task(poller.run())
        try:
            assert await poller.count(5.0) == {"w": 3}  # capped at max_processes
            charge = charge_for_death(running.read_running(999_999))
            poller.release([Release(dead, "worker pid 999999 died", charge)])
            for _ in range(100):
                if await poller.count(5.0) == {"w": 3} and not poller._releases:
                    break
                await asyncio.sleep(0.05)
            assert due, "the first timer and the released jobs trigger a pass"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await poller.close()

    try:
        asyncio.run(scenario())
    finally:
        running.forget(999_999)
    rows = conn.execute(
        "SELECT id, attempts, locked_by, last_error, run_alone FROM delayed_jobs "
        "WHERE id = ANY(%s) ORDER BY id",
        ([ran, reserved_ahead],),
    ).fetchall()
    # Released once (one attempt charged to the job it ran), by whichever came first: the
    # explicit release or the poller's own look for vanished pids of this host when it
    # connected. The job it only held goes back as it was.
    (ran_row, ahead_row) = rows
    assert ran_row[1:3] == (1, None) and "pid 999999" in ran_row[3] and not ran_row[4]
    assert ahead_row[1:] == (0, None, None, False)


def test_poller_releases_orphans_on_connect_with_their_own_limits(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A worker died while no master ran; its running-jobs file says it ran a job allowed
    2 attempts, with destroy_failed_jobs: charged its second attempt when the poller
    connects, the job is deleted, whatever the group's max_attempts."""
    settings = settings_for(tmp_path)
    insert(database_url, "q1")
    dead = worker_locked_by(999_998)
    (job_id,) = conn.execute(
        "UPDATE delayed_jobs SET locked_at = now(), locked_by = %s, attempts = 1 RETURNING id",
        (dead,),
    ).fetchone() or (None,)
    running.RunningJobs(1, pid=999_998).set(0, job_id, running.JobLimits(2, True))

    async def scenario() -> None:
        poller = DatabasePoller(
            settings, "primary", lambda: async_executor.connect(database_url), list
        )
        task = asyncio.create_task(poller.run())
        try:
            for _ in range(100):
                gone = await asyncio.to_thread(
                    lambda: conn.execute("SELECT count(*) FROM delayed_jobs").fetchone()
                )
                if gone == (0,):
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await poller.close()

    try:
        asyncio.run(scenario())
    finally:
        running.forget(999_998)
    assert conn.execute("SELECT count(*) FROM delayed_jobs").fetchone() == (0,)


def test_poller_reports_unknown_while_its_database_is_down(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)

    async def refuse() -> Any:
        raise OSError("connection refused")

    async def scenario() -> None:
        poller = DatabasePoller(
            dataclasses.replace(settings),
            "primary",
            refuse,
            lambda: None,
            backoff=Backoff(first=0.05, cap=0.1),
        )
        task = asyncio.create_task(poller.run())
        try:
            assert await poller.count(1.0) is None
            await asyncio.sleep(0.2)
            assert await poller.count(1.0) is None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
