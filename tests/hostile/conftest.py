"""Fixtures of the hostile tests: a database per test module (several tests share one
circusd there, to keep the tier fast), cloned from the session's migrated template."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from circus_djmaster.store import pgserver
from circus_djmaster.store.sync_executor import connect


def _database(pg_server_url: str, template_database: str) -> Iterator[str]:
    name = f"djmaster_hostile_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = pgserver.create_database(pg_server_url, name, template=template_database)
    yield url
    pgserver.drop_database(pg_server_url, name)


@pytest.fixture(scope="module")
def module_database_url(pg_server_url: str, template_database: str) -> Iterator[str]:
    yield from _database(pg_server_url, template_database)


@pytest.fixture(scope="module")
def module_conn(module_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(module_database_url) as connection:
        yield connection


@pytest.fixture(scope="module")
def mode_database_url(pg_server_url: str, template_database: str, spawn: str) -> Iterator[str]:
    """A database per module and spawn mode, for modules that run once per mode
    (tests/support/spawn.py ``spawn_per_module``): the runs do not see each other's jobs."""
    yield from _database(pg_server_url, template_database)


@pytest.fixture(scope="module")
def mode_conn(mode_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(mode_database_url) as connection:
        yield connection


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so fixtures can tell a failed test."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)
