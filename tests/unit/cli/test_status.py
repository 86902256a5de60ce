"""``djmaster status``'s decisions and text (cli/status.py), on reports made by hand;
tests/acceptance/test_operations.py runs it against circusd."""

from __future__ import annotations

import pytest

from circus_djmaster.cli.status import (
    DatabaseView,
    GroupView,
    MasterView,
    Report,
    WorkerView,
    fit,
    render_text,
    watcher_state,
)


@pytest.mark.parametrize(
    ("status", "target", "state", "problem"),
    [
        (None, None, "missing", "circusd could not create it"),
        ("stopped", 1, "stopped", "the master parks a watcher whose workers exit 78"),
        ("stopped", 3, "stopped", "stopped by hand"),
        ("stopped", 0, "idle", None),  # at 0 until a job needs it: circus keeps it stopped
        ("active", 0, "active", None),
        ("active", 2, "active", None),
        ("stopping", 2, "stopping", None),
    ],
)
def test_watcher_state(status: str | None, target: int | None, state: str, problem: str) -> None:
    found_state, found_problem = watcher_state(status, target)
    assert found_state == state
    if problem is None:
        assert found_problem is None
    else:
        assert found_problem is not None and problem in found_problem


def group(name: str, status: str | None, target: int | None, **counts: int) -> GroupView:
    state, problem = watcher_state(status, target)
    return GroupView(
        name=name,
        queues=[name],
        watcher=f"djmaster-{name}-primary",
        watcher_status=status,
        target=target,
        state=state,
        problem=problem,
        max_processes=3,
        counts={
            "ready": 0,
            "running": 0,
            "scheduled": 0,
            "retrying": 0,
            "next_retry_in": None,
            "failed": 0,
            "oldest_ready_age": None,
        }
        | counts,
        workers=[],
    )


def report(*groups: GroupView, master: str | None = "active") -> Report:
    return Report(
        "tcp://127.0.0.1:5555",
        None,
        MasterView(master, [101] if master == "active" else []),
        [DatabaseView("primary", None, list(groups))],
    )


def test_missing_and_stopped_watchers_are_problems_shown_plainly() -> None:
    shown = report(
        group("mail", None, None),
        group("reports", "stopped", 1),
        group("default", "stopped", 0),
        group("bulk", "active", 2, ready=3, scheduled=2, retrying=2),
    )
    assert [problem.split(":")[0] for problem in shown.problems] == [
        "djmaster-mail-primary",
        "djmaster-reports-primary",
    ]
    text = "\n".join(render_text(shown))
    assert "watcher djmaster-mail-primary: MISSING, 0/3 workers" in text
    assert "watcher djmaster-reports-primary: STOPPED, 0/3 workers" in text
    assert "watcher djmaster-default-primary: idle, 0/3 workers" in text
    assert "    ! not in circusd: circusd could not create it" in text
    assert "scheduled 2 (2 retries)  failed 0" in text
    assert text.startswith("master: active (pid 101)")


def test_a_master_that_does_not_run_is_a_problem() -> None:
    assert report(group("mail", "active", 0), master="stopped").problems == [
        "the master (plugin:djmaster) is stopped: circusctl start plugin:djmaster"
    ]
    assert report(group("mail", "active", 0)).problems == []


def test_workers_show_their_wid() -> None:
    shown = report(group("mail", "active", 1))
    shown.databases[0].groups[0].workers = [WorkerView(4242, 2, "busy", 50 * 2**20, 3.0)]
    lines = render_text(shown)
    assert "    pid 4242    #2   busy     RSS   50.0 MB  age 3.0s" in lines


def test_fit_cuts_lines_and_rows_to_the_terminal() -> None:
    lines = ["a" * 100, "b", "c", "d", "e"]
    fitted = fit(lines, columns=40, rows=4)
    assert fitted == ["a" * 38 + "…", "b", "c", "… 2 more line(s): enlarge the window"]
    assert all(len(line) < 40 for line in fitted)
    assert fit(["x"], 80, 24) == ["x"]
