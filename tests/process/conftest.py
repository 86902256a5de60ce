"""The process tier runs in both spawn modes (tests/support/spawn.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _both_spawn_modes(spawn: str) -> str:
    return spawn
