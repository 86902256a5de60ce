"""Worker titles with circus' wid (contracts/titles.py): shown, and read back."""

from __future__ import annotations

from circus_djmaster.contracts.titles import (
    WorkerState,
    state_from_title,
    wid_from_title,
    worker_title,
)


def test_a_title_shows_the_group_index_and_the_processes_wid() -> None:
    assert (
        worker_title(0, ("mail",), "primary", wid=2) == "delayed_job: worker[0] (mail) @primary #2"
    )
    assert worker_title(1, (), "db") == "delayed_job: worker[1] (*) @db"  # started by hand


def test_the_wid_and_the_state_are_read_back_whatever_the_marks() -> None:
    for marks, state in (
        ({}, WorkerState.IDLE),
        ({"busy": True}, WorkerState.BUSY),
        ({"no_db": True}, WorkerState.NO_DB),
        ({"busy": True, "old": True}, WorkerState.OLD),
    ):
        title = worker_title(0, ("q1", "q2"), "primary", wid=12, **marks)
        padded = title + "\0" * 20  # setproctitle pads the argv area
        assert wid_from_title(padded) == 12, title
        assert state_from_title(padded) is state, title
    assert wid_from_title(worker_title(0, ("q",), "primary", busy=True)) is None
    assert wid_from_title("python -m circus_djmaster worker --wid 3") is None  # not a title yet
