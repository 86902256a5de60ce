"""Enqueueing through a pool, a connection factory and the async API, on a real database.

Each target keeps the transaction semantics of the sync API with a connection: a job
written on a borrowed idle connection commits at once; one written inside a caller's
transaction commits or rolls back with it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import psycopg
import pytest
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from circus_djmaster import JobCall, aenqueue, aenqueue_many, enqueue, enqueue_many, job
from circus_djmaster.api.context import DATABASE_URL_ENV
from circus_djmaster.contracts.notify import CHANNEL
from circus_djmaster.exceptions import EnqueueError
from circus_djmaster.store.queries import query
from circus_djmaster.store.sync_executor import connect

Conn = psycopg.Connection[Any]
MARKER = "test-marker"


@job(queue="mail", priority=3)
def welcome(user_id: int, *, lang: str = "en") -> None:
    pass


@pytest.fixture
def url(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    return database_url


@pytest.fixture
def observer(url: str) -> Iterator[Conn]:
    """Another session: it sees only what was committed."""
    with connect(url, application_name="observer") as conn:
        yield conn


@pytest.fixture
def pool(url: str) -> Iterator[ConnectionPool[Any]]:
    with ConnectionPool(url, min_size=1, max_size=2, open=True) as opened:
        yield opened


def committed(observer: Conn) -> list[tuple[int, str, str, int]]:
    rows = observer.execute(
        "SELECT id, handler, queue, priority FROM delayed_jobs ORDER BY id"
    ).fetchall()
    return [(r[0], json.loads(r[1])["callable"], r[2], r[3]) for r in rows]


def notifications_until_marker(listener: Conn, sender: Conn) -> list[str]:
    sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, MARKER))
    payloads = []
    for notify in listener.notifies(timeout=10):
        if notify.payload == MARKER:
            return payloads
        payloads.append(notify.payload)
    raise AssertionError(f"the marker did not arrive within 10 s (got {payloads})")


# --------------------------------------------------------------------------- sync pool


def test_enqueue_on_a_pool_commits_at_once_and_returns_the_connection_idle(
    pool: ConnectionPool[Any], observer: Conn
) -> None:
    job_id = welcome.enqueue([7], pool=pool)
    assert committed(observer) == [(job_id, f"{__name__}:welcome", "mail", 3)]
    with pool.connection() as conn:
        # The borrowed connection went back as it came: not autocommit, no transaction.
        assert conn.autocommit is False
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE


def test_enqueue_many_on_a_pool_is_one_statement_and_one_notify(
    pool: ConnectionPool[Any], observer: Conn, url: str
) -> None:
    with connect(url, application_name="listener") as listener:
        listener.execute(query("listen"))
        ids = enqueue_many([welcome.call(n) for n in range(5)], pool=pool)
        assert notifications_until_marker(listener, observer) == ['["mail"]']
    assert [row[0] for row in committed(observer)] == ids


def test_enqueue_on_an_autocommit_pool(url: str, observer: Conn) -> None:
    with ConnectionPool(url, min_size=1, kwargs={"autocommit": True}) as autocommit_pool:
        job_id = enqueue("tests.support.jobs:record", ["k"], pool=autocommit_pool)
    assert [row[0] for row in committed(observer)] == [job_id]


# ------------------------------------------------------------------- connection factory


def test_a_factory_of_pool_connections(pool: ConnectionPool[Any], observer: Conn) -> None:
    job_id = welcome.enqueue([1], connection_factory=pool.connection)
    assert [row[0] for row in committed(observer)] == [job_id]


def test_a_factory_of_new_connections_commits_and_closes_them(url: str, observer: Conn) -> None:
    made: list[Conn] = []

    def factory() -> Conn:
        made.append(psycopg.connect(url))  # not autocommit: the enqueue must still commit
        return made[-1]

    job_id = welcome.enqueue([1], connection_factory=factory)
    assert [row[0] for row in committed(observer)] == [job_id]
    assert made[0].closed


def test_a_factory_connection_inside_a_transaction_joins_it(url: str, observer: Conn) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1")  # a transaction is now open on it
        job_id = welcome.enqueue([1], connection_factory=lambda: nullcontext(conn))
        assert committed(observer) == []  # not committed by the enqueue
        conn.rollback()
    assert committed(observer) == []
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1")
        job_id = welcome.enqueue([2], connection_factory=lambda: nullcontext(conn))
        conn.commit()
    assert [row[0] for row in committed(observer)] == [job_id]


# ------------------------------------------------------------------------ bad targets


def test_an_async_pool_is_refused_by_the_sync_api(url: str) -> None:
    async def check() -> None:
        async with AsyncConnectionPool(url, min_size=1) as apool:
            with pytest.raises(EnqueueError, match=r"AsyncConnectionPool: use aenqueue\(\)"):
                welcome.enqueue([1], pool=apool)  # type: ignore[arg-type]

    asyncio.run(check())


def test_a_sync_pool_is_refused_by_the_async_api(pool: ConnectionPool[Any]) -> None:
    with pytest.raises(EnqueueError, match=r"is a ConnectionPool: use enqueue\(\)"):
        asyncio.run(welcome.aenqueue([1], pool=pool))  # type: ignore[arg-type]


@pytest.mark.parametrize("not_a_pool", [object(), "postgresql://x", 3])
def test_a_pool_of_the_wrong_kind_is_refused(not_a_pool: Any) -> None:
    with pytest.raises(EnqueueError, match=r"pool= must be a psycopg_pool.ConnectionPool, got"):
        welcome.enqueue([1], pool=not_a_pool)
    with pytest.raises(EnqueueError, match=r"must be a psycopg_pool.AsyncConnectionPool, got"):
        asyncio.run(welcome.aenqueue([1], pool=not_a_pool))


def test_two_targets_at_once_are_refused(pool: ConnectionPool[Any], url: str) -> None:
    with pytest.raises(EnqueueError, match="not database_url and pool"):
        welcome.enqueue([1], database_url=url, pool=pool)
    with pytest.raises(EnqueueError, match="not pool and connection_factory"):
        enqueue_many([welcome.call(1)], pool=pool, connection_factory=pool.connection)


def test_connections_of_the_other_kind_are_refused(url: str) -> None:
    async def check() -> None:
        aconn = await psycopg.AsyncConnection.connect(url)
        async with aconn:
            with pytest.raises(EnqueueError, match=r"AsyncConnection: use aenqueue\(\)"):
                welcome.enqueue([1], connection=aconn)  # type: ignore[arg-type]
        with psycopg.connect(url) as conn:
            with pytest.raises(EnqueueError, match=r"psycopg.Connection: use enqueue\(\)"):
                await welcome.aenqueue([1], connection=conn)  # type: ignore[arg-type]
            with pytest.raises(EnqueueError, match=r"psycopg.Connection: use enqueue\(\)"):
                await aenqueue(welcome, [1], connection_factory=lambda: nullcontext(conn))

    asyncio.run(check())


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (42, "connection_factory must be callable, got int"),
        (lambda: 42, "must return a psycopg.Connection or a context manager yielding one"),
        (lambda: nullcontext("db"), "connection_factory must be a psycopg.Connection, got str"),
    ],
)
def test_a_bad_connection_factory_is_refused(factory: Any, message: str) -> None:
    with pytest.raises(EnqueueError, match=message):
        welcome.enqueue([1], connection_factory=factory)


# ----------------------------------------------------------------------------- async


def test_aenqueue_joins_the_callers_async_transaction(url: str, observer: Conn) -> None:
    class Declined(Exception):
        pass

    async def scenario() -> int:
        aconn = await psycopg.AsyncConnection.connect(url)
        async with aconn:
            with pytest.raises(Declined):
                async with aconn.transaction():
                    await welcome.aenqueue([1], connection=aconn)
                    raise Declined
            async with aconn.transaction():
                job_id = await welcome.aenqueue([2], {"lang": "fr"}, connection=aconn)
                assert committed(observer) == []  # not before the commit
            return job_id

    job_id = asyncio.run(scenario())
    row = observer.execute("SELECT handler FROM delayed_jobs").fetchall()
    assert [r[0] for r in committed(observer)] == [job_id]
    assert json.loads(row[0][0])["kwargs"] == {"lang": "fr"}


def test_aenqueue_on_an_async_pool_commits_at_once(url: str, observer: Conn) -> None:
    async def scenario() -> tuple[int, list[int], bool, pq.TransactionStatus]:
        async with AsyncConnectionPool(url, min_size=1, max_size=2) as apool:
            one = await aenqueue("tests.support.jobs:record", ["a"], queue="q1", pool=apool)
            many = await aenqueue_many(
                [JobCall("tests.support.jobs:record", ["b"]), welcome.call(3, lang="de")],
                pool=apool,
            )
            async with apool.connection() as conn:
                return one, many, conn.autocommit, conn.info.transaction_status

    one, many, autocommit, status = asyncio.run(scenario())
    assert [row[0] for row in committed(observer)] == [one, *many]
    assert [row[2] for row in committed(observer)] == ["q1", "default", "mail"]
    assert (autocommit, status) == (False, pq.TransactionStatus.IDLE)


def test_aenqueue_with_async_factories(url: str, observer: Conn) -> None:
    async def scenario() -> list[int]:
        ids = [
            # An awaitable of a new connection (closed afterwards, not autocommit).
            await welcome.aenqueue(
                [1], connection_factory=lambda: psycopg.AsyncConnection.connect(url)
            )
        ]
        async with AsyncConnectionPool(url, min_size=1) as apool:
            ids.append(await welcome.aenqueue([2], connection_factory=apool.connection))
        return ids

    ids = asyncio.run(scenario())
    assert [row[0] for row in committed(observer)] == ids


def test_adelay_and_aenqueue_use_the_url_or_the_variable(
    url: str, observer: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = asyncio.run(welcome.aenqueue([1], database_url=url, delay=60))
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    second = asyncio.run(welcome.adelay(2, lang="it"))
    assert [row[0] for row in committed(observer)] == [first, second]
    delay = observer.execute(
        "SELECT extract(epoch FROM run_at - created_at) FROM delayed_jobs WHERE id = %s",
        (first,),
    ).fetchone()
    assert delay is not None and float(delay[0]) == pytest.approx(60)


def test_aenqueue_without_a_database_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    with pytest.raises(EnqueueError, match=DATABASE_URL_ENV):
        asyncio.run(welcome.adelay(1))


def test_aenqueue_many_of_nothing_needs_no_database() -> None:
    assert asyncio.run(aenqueue_many([])) == []
