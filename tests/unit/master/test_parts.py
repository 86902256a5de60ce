"""Small pure parts of the master: payloads, backoff, titles, exits, callbacks, pid file."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from circus_djmaster.common.backoff import Backoff
from circus_djmaster.config.settings import WorkerGroup
from circus_djmaster.contracts.notify import queues_from_payload
from circus_djmaster.contracts.titles import (
    WorkerState,
    master_title,
    state_from_title,
    worker_title,
)
from circus_djmaster.exceptions import CircusError
from circus_djmaster.master.callbacks import MasterCallbacks
from circus_djmaster.master.plugin import default_log_file, remove_pid_file, write_pid_file
from circus_djmaster.master.polling import groups_for_queues
from circus_djmaster.master.readings import describe_exit
from circus_djmaster.store.errors import describe_error


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ('["q1"]', frozenset({"q1"})),
        ('["q1", ""]', frozenset({"q1", ""})),
        ("[]", frozenset()),
        ('"*"', None),
        ("not json", None),
        ("[1, 2]", None),
        ('{"queue": "q1"}', None),
    ],
)
def test_queues_from_payload(payload: str, expected: frozenset[str] | None) -> None:
    assert queues_from_payload(payload) == expected


def group(name: str, *queues: str) -> WorkerGroup:
    return WorkerGroup(
        index=0,
        name=name,
        queues=tuple(queues),
        max_processes=1,
        max_threads=1,
        max_memory=None,
        hard_max_memory=None,
        max_execution=None,
        idle_timeout=0.0,
        sleep_delay=5.0,
        read_ahead=1,
        max_attempts=25,
        max_run_time=3600.0,
        min_priority=None,
        max_priority=None,
        destroy_failed_jobs=False,
    )


@pytest.mark.parametrize(
    ("queues", "expected"),
    [
        (None, {"mail", "any", "both"}),
        (frozenset({"mail"}), {"mail", "any", "both"}),
        (frozenset({"video"}), {"any", "both"}),
        (frozenset({""}), {"any"}),
        (frozenset(), set()),
        (frozenset({"other"}), {"any"}),
    ],
)
def test_groups_for_queues(queues: frozenset[str] | None, expected: set[str]) -> None:
    groups = [group("mail", "mail"), group("any"), group("both", "mail", "video")]
    assert groups_for_queues(queues, groups) == expected


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(first=0.5, cap=3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_describe_error_keeps_one_line() -> None:
    assert describe_error(OSError("refused\nDETAIL: more")) == "OSError: refused"
    assert describe_error(TimeoutError()) == "TimeoutError"


@pytest.mark.parametrize(
    ("title", "state"),
    [
        ("/usr/bin/python -m circus_djmaster worker --settings x", WorkerState.STARTING),
        (worker_title(0, ("q1",), "primary"), WorkerState.IDLE),
        (worker_title(0, ("q1",), "primary", busy=True), WorkerState.BUSY),
        (worker_title(0, ("q1",), "primary", busy=True, old=True), WorkerState.OLD),
        (worker_title(1, (), "db", old=True), WorkerState.OLD),
    ],
)
def test_title_state(title: str, state: WorkerState) -> None:
    assert state_from_title(title) is state


def test_describe_exit() -> None:
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(None) == "died (exit status unknown)"
    assert describe_exit(-200) == "was killed by signal 200"


@pytest.mark.parametrize(
    ("reason", "busy"),
    [
        ("arbiter is already running watcher_incr command", True),
        ("arbiter is restarting...", True),
        ("program foo not found", False),
    ],
)
def test_circus_busy(reason: str, busy: bool) -> None:
    assert CircusError("incr", reason).busy is busy


# ---------------------------------------------------------------------- callbacks

calls: list[tuple[Any, ...]] = []


def before(master: Any, *args: Any) -> None:
    calls.append(("before", master, *args))


def broken(*args: Any) -> None:
    raise RuntimeError("callback bug")


def around_runs(master: Any, database: str, block: Any) -> None:
    calls.append(("around-in", database))
    block()
    calls.append(("around-out", database))


def around_skips(master: Any, database: str, block: Any) -> None:
    calls.append(("skipped", database))


def around_breaks_after(master: Any, database: str, block: Any) -> None:
    block()
    raise RuntimeError("after the block")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_callbacks_are_called_and_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    calls.clear()
    name = __name__
    callbacks = MasterCallbacks.load(
        {
            "before_polling": f"{name}:before",
            "after_polling": f"{name}:broken",
            "before_monitor": "no_such_module_xyz:thing",
        }
    )
    run(callbacks.call("before_polling", "M", "primary"))
    run(callbacks.call("after_polling", "M", "primary"))  # raises: logged, not raised
    run(callbacks.call("before_monitor", "M"))  # failed to load: skipped
    assert calls == [("before", "M", "primary")]
    assert "callback after_polling raised" in caplog.text
    assert "callbacks.before_monitor" in caplog.text


@pytest.mark.parametrize(
    ("function", "expected_calls", "block_runs"),
    [
        ("around_runs", [("around-in", "db"), ("around-out", "db")], 1),
        ("around_skips", [("skipped", "db")], 1),  # the block runs anyway
        ("around_breaks_after", [], 1),
        ("broken", [], 1),
    ],
)
def test_around_callbacks(function: str, expected_calls: list[Any], block_runs: int) -> None:
    calls.clear()
    ran: list[int] = []

    async def block() -> None:
        ran.append(1)

    callbacks = MasterCallbacks.load({"around_polling": f"{__name__}:{function}"})
    run(callbacks.around("around_polling", block, "M", "db"))
    assert calls == expected_calls
    assert len(ran) == block_runs


def test_around_passes_the_blocks_own_error_on() -> None:
    async def block() -> None:
        raise ValueError("database error")

    callbacks = MasterCallbacks.load({"around_polling": f"{__name__}:around_runs"})
    with pytest.raises(ValueError, match="database error"):
        run(callbacks.around("around_polling", block, "M", "db"))
    with pytest.raises(ValueError, match="database error"):
        run(MasterCallbacks().around("around_polling", block, "M", "db"))


# ----------------------------------------------------------------------- plugin bits


def test_pid_file_is_written_and_removed_only_by_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "run" / "master.pid"
    write_pid_file(path, 123)
    assert path.read_text() == "123\n"
    remove_pid_file(path, 456)  # a newer master owns it now: kept
    assert path.exists()
    remove_pid_file(path, 123)
    assert not path.exists()
    remove_pid_file(path, 123)  # already gone: fine


def test_default_log_file_and_title(tmp_path: Path) -> None:
    settings = tmp_path / "djmaster.toml"
    assert default_log_file(settings) == tmp_path / "djmaster-master.log"
    assert master_title(settings) == f"djmaster: master ({settings})"
