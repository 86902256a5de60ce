"""Where an enqueue writes: the caller's connection, a pool, a connection factory, a
Django alias, or a short-lived connection to a URL (:func:`~.jobs.enqueue` documents
the choices); the same for the async API on psycopg's ``AsyncConnection``.

Nothing here imports Django or psycopg_pool unless asked to use them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq

from circus_djmaster.api.context import DATABASE_URL_ENV, default_database_url
from circus_djmaster.exceptions import EnqueueError

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

__all__ = ["ConnectionFactory", "async_target", "sync_target"]

# A callable giving a connection for one enqueue: ``pool.connection``, a function returning
# a new psycopg connection, or any context manager yielding one.
ConnectionFactory = Callable[[], Any]


@contextmanager
def _connection(
    connection: psycopg.Connection[Any] | None, database_url: str | None
) -> Iterator[psycopg.Connection[Any]]:
    if connection is not None:
        yield connection
        return
    url = _default_url(database_url, "connection= or database_url=")
    with psycopg.connect(url, autocommit=True, application_name="djmaster enqueue") as conn:
        yield conn


def _default_url(database_url: str | None, choices: str) -> str:
    """``database_url``; else, inside a worker, its database (a job's follow-ups go where
    the job came from); else ``$DJMASTER_DATABASE_URL``. EnqueueError if none."""
    url = database_url or default_database_url() or os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise EnqueueError(
            f"no database to enqueue into: pass {choices}, or set {DATABASE_URL_ENV}"
        )
    return url


def _one_target(**given: object) -> None:
    chosen = [name for name, value in given.items() if value is not None]
    if len(chosen) > 1:
        raise EnqueueError(f"give one of {', '.join(given)}, not {' and '.join(chosen)}")


@contextmanager
def sync_target(
    connection: psycopg.Connection[Any] | None,
    database_url: str | None,
    pool: ConnectionPool[Any] | None,
    connection_factory: ConnectionFactory | None,
    using: str | None,
) -> Iterator[psycopg.Connection[Any]]:
    """The connection an enqueue writes on (see :func:`enqueue`)."""
    _one_target(
        connection=connection,
        database_url=database_url,
        pool=pool,
        connection_factory=connection_factory,
        using=using,
    )
    if connection is not None and not isinstance(connection, psycopg.Connection):
        raise EnqueueError(_wrong_connection(connection, asynchronous=False))
    if pool is not None:
        _check_pool(pool, asynchronous=False)
        with pool.connection() as conn, _one_statement(conn):
            yield conn
    elif connection_factory is not None:
        with _from_factory(connection_factory) as conn, _one_statement(conn):
            yield conn
    elif using is not None:
        # Imported only when asked for: the worker's start never imports Django.
        from circus_djmaster.api.django_alias import connection_for

        yield connection_for(using)
    else:
        with _connection(connection, database_url) as conn:
            yield conn


@contextmanager
def _from_factory(factory: ConnectionFactory) -> Iterator[psycopg.Connection[Any]]:
    if not callable(factory):
        raise EnqueueError(f"connection_factory must be callable, got {type(factory).__name__}")
    made = factory()
    if not hasattr(made, "__enter__"):
        raise EnqueueError(
            "connection_factory must return a psycopg.Connection or a context manager "
            f"yielding one, got {type(made).__name__}"
        )
    with made as conn:
        if not isinstance(conn, psycopg.Connection):
            raise EnqueueError(
                _wrong_connection(conn, asynchronous=False, what="connection_factory")
            )
        yield conn


@contextmanager
def _one_statement(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Run the enqueue's one statement as its own transaction on an idle borrowed
    connection (one round trip instead of BEGIN, INSERT, COMMIT); join a transaction in
    progress."""
    if conn.autocommit or conn.info.transaction_status != pq.TransactionStatus.IDLE:
        yield
        return
    conn.autocommit = True
    try:
        yield
    finally:
        # A broken connection refuses the change; its pool discards it anyway.
        with suppress(psycopg.Error):
            conn.autocommit = False


@asynccontextmanager
async def async_target(
    connection: psycopg.AsyncConnection[Any] | None,
    database_url: str | None,
    pool: AsyncConnectionPool[Any] | None,
    connection_factory: ConnectionFactory | None,
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The async connection an enqueue writes on (see :func:`aenqueue`)."""
    _one_target(
        connection=connection,
        database_url=database_url,
        pool=pool,
        connection_factory=connection_factory,
    )
    if connection is not None:
        if not isinstance(connection, psycopg.AsyncConnection):
            raise EnqueueError(_wrong_connection(connection, asynchronous=True))
        yield connection
    elif pool is not None:
        _check_pool(pool, asynchronous=True)
        async with pool.connection() as conn, _aone_statement(conn):
            yield conn
    elif connection_factory is not None:
        async with _afrom_factory(connection_factory) as conn, _aone_statement(conn):
            yield conn
    else:
        url = _default_url(database_url, "connection=, pool= or database_url=")
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, application_name="djmaster enqueue"
        )
        async with conn:
            yield conn


@asynccontextmanager
async def _afrom_factory(
    factory: ConnectionFactory,
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    if not callable(factory):
        raise EnqueueError(f"connection_factory must be callable, got {type(factory).__name__}")
    made = factory()
    if inspect.isawaitable(made) and not hasattr(made, "__aenter__"):
        made = await made
    if not hasattr(made, "__aenter__"):
        raise EnqueueError(
            "connection_factory must return an async context manager yielding a "
            "psycopg.AsyncConnection, or an awaitable of one, got "
            f"{type(made).__name__}"
        )
    async with made as conn:
        if not isinstance(conn, psycopg.AsyncConnection):
            raise EnqueueError(
                _wrong_connection(conn, asynchronous=True, what="connection_factory")
            )
        yield conn


@asynccontextmanager
async def _aone_statement(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """:func:`_one_statement` for an ``AsyncConnection``."""
    if conn.autocommit or conn.info.transaction_status != pq.TransactionStatus.IDLE:
        yield
        return
    await conn.set_autocommit(True)
    try:
        yield
    finally:
        with suppress(psycopg.Error):
            await conn.set_autocommit(False)


def _check_pool(pool: object, *, asynchronous: bool) -> None:
    try:
        import psycopg_pool
    except ImportError:
        raise EnqueueError(
            "pool= needs psycopg_pool: pip install 'circus-djmaster[pool]'"
        ) from None
    wanted = psycopg_pool.AsyncConnectionPool if asynchronous else psycopg_pool.ConnectionPool
    if isinstance(pool, wanted):
        return
    if asynchronous and isinstance(pool, psycopg_pool.ConnectionPool):
        raise EnqueueError("pool= is a ConnectionPool: use enqueue() (or an AsyncConnectionPool)")
    if not asynchronous and isinstance(pool, psycopg_pool.AsyncConnectionPool):
        raise EnqueueError("pool= is an AsyncConnectionPool: use aenqueue() (or a ConnectionPool)")
    raise EnqueueError(f"pool= must be a psycopg_pool.{wanted.__name__}, got {type(pool).__name__}")


def _wrong_connection(conn: object, *, asynchronous: bool, what: str = "connection") -> str:
    kind = type(conn).__name__
    if asynchronous:
        if isinstance(conn, psycopg.Connection):
            return f"{what} gave a psycopg.Connection: use enqueue() for it, or an AsyncConnection"
        return f"{what} must be a psycopg.AsyncConnection, got {kind}"
    if isinstance(conn, psycopg.AsyncConnection):
        return f"{what} gave a psycopg.AsyncConnection: use aenqueue() for it"
    if type(conn).__module__.startswith("django."):
        return f"{what} must be a psycopg.Connection, got Django's {kind}: pass using='<alias>'"
    return f"{what} must be a psycopg.Connection, got {kind}"
