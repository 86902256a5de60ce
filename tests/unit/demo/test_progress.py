"""The demo's progress line: never wider than a terminal, and it says why it waits."""

from __future__ import annotations

from circus_djmaster.demo.command import GROUPS, Progress, fit_line, progress_line
from circus_djmaster.store.statements import GroupStats


def stats(ready: int = 0, running: int = 0, retrying: int = 0, next_in: float = 0.0) -> GroupStats:
    return GroupStats(
        ready=ready,
        running=running,
        scheduled=retrying,
        retrying=retrying,
        next_retry_in=next_in if retrying else None,
        failed=0,
        oldest_ready_age=None,
    )


def test_the_widest_line_fits_80_columns() -> None:
    """It was 86 columns: every redraw left a wrapped line behind (issue 14)."""
    progress = Progress({"mail": 240, "reports": 61})
    progress.started -= 99.9  # the widest elapsed time the demo allows
    line = progress_line(
        progress,
        {"mail": stats(retrying=8, next_in=4.2), "reports": stats(retrying=3, next_in=9.0)},
        {group: limit for group, limit in GROUPS.items()},
    )
    assert len(line) < 80, line
    assert "mail 240/240" not in line and "mail 232/240" in line


def test_while_only_retries_wait_the_line_says_back_off_and_when() -> None:
    progress = Progress({"mail": 240, "reports": 61})
    waiting = {"mail": stats(retrying=2, next_in=3.4), "reports": stats()}
    line = progress_line(progress, waiting, {"mail": 0, "reports": 0})
    assert line.endswith("retries: 2 due in 3s (back-off)")
    moving = {"mail": stats(ready=5, retrying=2, next_in=3.4), "reports": stats()}
    line = progress_line(progress, moving, {"mail": 1, "reports": 0})
    assert line.endswith("retries: 2 due in 3s")


def test_a_line_is_cut_to_a_narrow_terminal() -> None:
    assert fit_line("x" * 100, 40) == "x" * 38 + "…"
    assert fit_line("short", 40) == "short"
