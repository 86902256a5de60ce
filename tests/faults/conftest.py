"""Fixtures of the fault tests (tests/faults): a Postgres of the test's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.pg_servers import EmbeddedServer


@pytest.fixture
def own_server() -> Iterator[EmbeddedServer]:
    """An embedded Postgres for this test alone: it may stop, restart or reconfigure it
    (the session's server is shared by every test and must stay up)."""
    server = EmbeddedServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
