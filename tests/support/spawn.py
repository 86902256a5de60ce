"""The ``spawn`` fixture: the tiers that exercise the process model (process,
acceptance, hostile, faults) run their tests in both spawn modes.

A conftest makes it autouse (``from tests.support.spawn import spawn``); a test module
that is about one mode only overrides it (``spawn = spawn_only("fork")``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import worker_run


def _use(mode: str) -> Iterator[str]:
    worker_run.DEFAULT_SPAWN = mode
    try:
        yield mode
    finally:
        worker_run.stop_preloaders()
        worker_run.DEFAULT_SPAWN = "exec"


@pytest.fixture(params=worker_run.SPAWN_MODES, autouse=True)
def spawn(request: pytest.FixtureRequest) -> Iterator[str]:
    """The spawn mode of the worker groups this test writes (``exec``, ``fork``)."""
    yield from _use(request.param)


def spawn_only(mode: str) -> Any:
    """A ``spawn`` fixture for a module whose tests are about one mode."""

    @pytest.fixture(autouse=True)
    def spawn() -> Iterator[str]:
        yield from _use(mode)

    return spawn
