"""What the master remembers between turns (master/state.py), without circus."""

from __future__ import annotations

from pathlib import Path

from circus_djmaster.master.scaling import RetireReason, WatcherStatus
from circus_djmaster.master.state import RELEASED_MEMORY, Blocks, WorkerBook, mtime_ns


def test_pids_seen_before_and_absent_now_vanished() -> None:
    book = WorkerBook()
    book.observed({1: "w-a", 2: "w-a", 3: "w-b"})
    book.observed({2: "w-a", 4: "w-b"})
    assert book.take_gone() == {1: "w-a", 3: "w-b"}
    assert book.take_gone() == {}
    book.observed({})
    assert book.take_gone() == {2: "w-a", 4: "w-b"}


def test_a_vanished_worker_is_no_longer_retiring() -> None:
    book = WorkerBook()
    book.observed({7: "w"})
    book.retiring[7] = RetireReason.MAX_MEMORY
    book.observed({})
    book.take_gone()
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
