"""The master's LISTEN connection and its per-database task, on a real Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import psycopg

from circus_djmaster import astore
from circus_djmaster.listener import Backoff, Listener
from circus_djmaster.polling import DatabasePoller, Release
from circus_djmaster.settings import parse_settings
from circus_djmaster.store import locked_by_for

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
            lambda: astore.connect(database_url, application_name=APP),
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
    dead = locked_by_for(999_999)
    conn.execute(
        "UPDATE delayed_jobs SET locked_at = now(), locked_by = %s "
        "WHERE id IN (SELECT id FROM delayed_jobs ORDER BY id LIMIT 2)",
        (dead,),
    )

    async def scenario() -> None:
        due: list[int] = []
        poller = DatabasePoller(
            settings,
            "primary",
            lambda: astore.connect(database_url),
            lambda: due.append(1),
        )
        task = asyncio.create_task(poller.run())
        try:
            assert await poller.count(5.0) == {"w": 3}  # capped at max_processes
            poller.release([Release(dead, "w", "worker pid 999999 died")])
            for _ in range(100):
                if await poller.count(5.0) == {"w": 3} and not poller._releases:
                    break
                await asyncio.sleep(0.05)
            assert due, "the first timer and the released jobs trigger a pass"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await poller.close()

    asyncio.run(scenario())
    rows = conn.execute(
        "SELECT attempts, locked_by, last_error FROM delayed_jobs WHERE attempts > 0"
    ).fetchall()
    assert len(rows) == 2
    # Released once (one attempt charged), by whichever came first: the explicit release
    # or the poller's own look for vanished pids of this host when it connected.
    assert all(row[0] == 1 and row[1] is None and "pid 999999" in row[2] for row in rows)


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
