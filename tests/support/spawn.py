"""The ``spawn`` fixture: the tiers that exercise the process model (process,
acceptance, hostile, faults) run their tests in both spawn modes.

tests/conftest.py provides it; a test module opts in with
``pytestmark = pytest.mark.usefixtures("spawn")`` (tests/process does for the whole
tier), a test asks for it by name to know the mode, and a module about one mode only
overrides it with ``spawn = spawn_only("fork")``.

Only what exercises the process model runs twice, to keep the suite's time: the whole
process tier; in acceptance the plugin's scaling, recovery and signals, operating it
(wids, logs, status, metrics) and fork mode's own; in hostile the hostile jobs, job code
and security modules and the preloader's bad settings; in faults the chaos run and two
hosts. The master's database-side faults (faults/test_listener.py,
faults/test_unreachable.py) and the sharing between databases
(acceptance/test_plugin_databases.py) do not depend on how workers start: exec only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import worker_run


def use_spawn(mode: str) -> Iterator[str]:
    """Write ``spawn = mode`` into the worker groups of the settings files written from
    now on (tests/support/worker_run.py); end the preloaders started meanwhile."""
    worker_run.DEFAULT_SPAWN = mode
    try:
        yield mode
    finally:
        worker_run.stop_preloaders()
        worker_run.DEFAULT_SPAWN = "exec"


@pytest.fixture(params=worker_run.SPAWN_MODES)
def spawn(request: pytest.FixtureRequest) -> Iterator[str]:
    """The spawn mode of the worker groups this test writes (``exec``, ``fork``)."""
    yield from use_spawn(request.param)


def spawn_only(mode: str) -> Any:
    """A ``spawn`` fixture for a module whose tests are about one mode."""

    @pytest.fixture
    def spawn() -> Iterator[str]:
        yield from use_spawn(mode)

    return spawn


def spawn_per_module() -> Any:
    """A ``spawn`` fixture of module scope, for modules that share one circusd between
    their tests: each module runs once per spawn mode."""

    @pytest.fixture(scope="module", params=worker_run.SPAWN_MODES)
    def spawn(request: pytest.FixtureRequest) -> Iterator[str]:
        yield from use_spawn(request.param)

    return spawn
