"""The after_reap hook with a stand-in for circus' Watcher."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest

from circus_djmaster.circusd.hooks import after_reap
from circus_djmaster.contracts.exit_codes import WorkerExit


@dataclass
class FakeWatcher:
    name: str = "djmaster-mail-primary"
    numprocesses: int = 3
    status: str = "active"

    def is_stopping(self) -> bool:
        return self.status == "stopping"


def reap(watcher: Any, exit_code: int | None) -> bool:
    # The keyword arguments circus' Watcher.reap_process passes.
    return after_reap(
        watcher=watcher,
        arbiter=None,
        hook_name="after_reap",
        process_pid=4242,
        time=1.0,
        exit_code=exit_code,
        process_status=None,
    )


@pytest.mark.parametrize("code", [WorkerExit.RETIRED, WorkerExit.CONFIG_ERROR, 0, 78])
def test_retiring_exit_lowers_numprocesses(code: int) -> None:
    watcher = FakeWatcher(numprocesses=3)
    assert reap(watcher, code) is True
    assert watcher.numprocesses == 2


@pytest.mark.parametrize("code", [1, 3, 2, 77, 79, -9, -15, None])
def test_crash_keeps_numprocesses_so_circus_respawns(code: int | None) -> None:
    watcher = FakeWatcher(numprocesses=3)
    assert reap(watcher, code) is True
    assert watcher.numprocesses == 3


def test_never_below_zero() -> None:
    watcher = FakeWatcher(numprocesses=0)
    assert reap(watcher, 0) is True
    assert watcher.numprocesses == 0


def test_circus_stopping_the_watcher_keeps_the_target() -> None:
    # circusctl stop/restart: workers exit 0 after TERM; a later start restores them.
    watcher = FakeWatcher(numprocesses=2, status="stopping")
    assert reap(watcher, 0) is True
    assert watcher.numprocesses == 2


def test_logs_one_line_on_the_circus_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="circus"):
        reap(FakeWatcher(numprocesses=1), 0)
    records = [r for r in caplog.records if r.name == "circus"]
    assert len(records) == 1
    assert "djmaster-mail-primary" in records[0].getMessage()
    assert "1 -> 0" in records[0].getMessage()


class BrokenWatcher:
    name = "broken"

    @property
    def numprocesses(self) -> int:
        raise RuntimeError("boom")


def test_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="circus"):
        assert reap(BrokenWatcher(), 0) is True
        assert reap(object(), 0) is True
    assert any("after_reap hook failed" in r.getMessage() for r in caplog.records)


def test_bool_is_not_an_exit_code() -> None:
    watcher = FakeWatcher(numprocesses=1)
    reap(watcher, False)  # type: ignore[arg-type]
    assert watcher.numprocesses == 1
