"""The process tier runs in both spawn modes (tests/support/spawn.py)."""

from tests.support.spawn import spawn

__all__ = ["spawn"]
