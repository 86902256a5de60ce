"""What the master remembers between turns (master/state.py), without circus."""

from __future__ import annotations

from pathlib import Path

from circus_djmaster.master.scaling import RetireReason, WatcherStatus
from circus_djmaster.master.state import (
    REAP_EVENT_WAIT,
    RELEASED_MEMORY,
    Blocks,
    WorkerBook,
    mtime_ns,
)


def test_pids_seen_before_and_absent_now_vanished() -> None:
    book = WorkerBook()
    book.observed({1: "w-a", 2: "w-a", 3: "w-b"})
    book.observed({2: "w-a", 4: "w-b"})
    assert book.take_gone(now=10.0) == {}  # how they ended is not known yet
    assert book.next_deadline() == 10.0 + REAP_EVENT_WAIT
    assert book.take_gone(now=10.0 + REAP_EVENT_WAIT) == {1: "w-a", 3: "w-b"}
    assert book.take_gone(now=20.0) == {}
    assert book.next_deadline() is None
    book.observed({})
    book.take_gone(now=30.0)
    assert book.take_gone(now=30.0 + REAP_EVENT_WAIT) == {2: "w-a", 4: "w-b"}


def test_a_vanished_pid_whose_end_is_known_is_handled_at_once() -> None:
    """circus' reap event (or the kernel's zombie status) may come before or after the
    pid leaves `list`: either way the release says how it ended (the chaos test saw
    "died" for a worker that exited with code 3)."""
    book = WorkerBook()
    book.observed({1: "w", 2: "w", 3: "w"})
    book.reaped(1, 3)  # the event came first
    book.killed[2] = RetireReason.HARD_MAX_MEMORY  # the master's own SIGKILL
    book.observed({})
    assert book.take_gone(now=0.0) == {1: "w", 2: "w"}
    book.reaped(3, -9)  # the event came after the pid left `list`
    assert book.take_gone(now=0.1) == {3: "w"}
    assert book.death(3, "web1", book.exit_codes[3]) == "worker pid 3 on web1 was killed by SIGKILL"


def test_a_vanished_worker_is_no_longer_retiring() -> None:
    book = WorkerBook()
    book.observed({7: "w"})
    book.retiring[7] = RetireReason.MAX_MEMORY
    book.observed({})
    book.take_gone(now=REAP_EVENT_WAIT)
    book.take_gone(now=2 * REAP_EVENT_WAIT)
    assert 7 not in book.retiring


def test_a_pid_is_released_once_within_the_memory() -> None:
    book = WorkerBook()
    assert book.first_release(5, now=100.0)
    assert not book.first_release(5, now=101.0)
    assert book.first_release(5, now=101.0 + RELEASED_MEMORY)


def test_death_messages_say_how_the_worker_died() -> None:
    book = WorkerBook()
    assert book.death(12, "web1", -9) == "worker pid 12 on web1 was killed by SIGKILL"
    assert book.death(12, "web1", 3) == "worker pid 12 on web1 exited with code 3"
    assert book.death(12, "web1", None) == "worker pid 12 on web1 died"
    book.killed[12] = RetireReason.HARD_MAX_MEMORY
    assert book.death(12, "web1", -9) == (
        "worker pid 12 on web1 was killed by the master: RSS over hard_max_memory"
    )
    book.buried(12)
    assert book.death(12, "web1", -9).endswith("was killed by SIGKILL")


def test_a_reap_exit_code_is_kept_only_for_a_known_pid() -> None:
    book = WorkerBook()
    book.reaped(3, 1)
    book.observed({4: "w"})
    book.reaped(4, -9)
    assert book.exit_codes == {4: -9}


def test_blocks_unblock_when_the_settings_change_or_an_operator_starts_a_parked_watcher() -> None:
    blocks = Blocks()
    assert blocks.block("w1", 10)
    assert not blocks.block("w1", 10)
    assert blocks.block("w2", 10)
    blocks.parked("w2")
    assert blocks.unblock(10, {}) == {}
    assert blocks.unblock(10, {"w2": WatcherStatus.STOPPED}) == {}
    assert blocks.unblock(10, {"w2": WatcherStatus.ACTIVE}) == {"w2": "an operator started it"}
    assert "w1" in blocks and "w2" not in blocks
    assert blocks.unblock(11, {}) == {"w1": "the settings file changed"}
    assert not blocks


def test_mtime_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert mtime_ns(tmp_path / "missing.toml") is None
    (tmp_path / "s.toml").write_text("")
    assert isinstance(mtime_ns(tmp_path / "s.toml"), int)
