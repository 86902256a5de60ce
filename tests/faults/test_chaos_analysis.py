"""The chaos run's verdicts (tests/support/chaos.py ``analyse``) on made-up histories:
what it accepts, and that it does catch a lost job, an unexplained duplicate, a run cut
short without a kill, and two runs of one job at once."""

from __future__ import annotations

from tests.support.chaos import (
    CIRCUSD_RESTART,
    POSTGRES_RESTART,
    WORKER_KILL,
    Fault,
    Run,
    analyse,
    format_report,
    release_times,
)


def run(key: str, pid: int, started: float, ended: float | None) -> Run:
    return Run(key, "h", pid, started, ended)


def test_a_clean_history_has_nothing_to_explain() -> None:
    report = analyse(["a", "b"], [run("a", 1, 0.0, 1.0), run("b", 2, 0.5, 1.5)], [])
    assert report.missing == [] and report.duplicates == [] and report.overlaps == []
    assert report.interrupted == [] and report.per_kill == {}


def test_a_job_that_never_completed_is_missing() -> None:
    report = analyse(["a", "b"], [run("a", 1, 0.0, 1.0), run("b", 2, 0.5, None)], [])
    assert report.missing == ["b"]
    assert [r.key for r in report.unexplained_interruptions] == ["b"]


def test_a_kill_explains_the_run_it_cut_and_the_duplicate_of_a_done_job() -> None:
    kill = Fault(WORKER_KILL, 1.2, pid=1, key="b")
    runs = [
        run("a", 1, 0.0, 1.0),  # done, then its worker died before deleting it
        run("b", 1, 1.05, None),  # cut short by the kill
        run("a", 2, 2.0, 2.5),
        run("b", 2, 2.6, 3.0),
    ]
    report = analyse(["a", "b"], runs, [kill], released={1: 1.5})
    assert report.missing == [] and report.overlaps == []
    assert report.unexplained_interruptions == []
    assert [(d.run.key, d.explanation) for d in report.duplicates] == [
        ("a", "its worker (pid 1) was killed")
    ]
    assert report.per_kill == {1: 2}
    recovery = report.recoveries[0]
    assert recovery.released is not None and abs(recovery.released - 0.3) < 1e-9
    assert recovery.rerun is not None and abs(recovery.rerun - 1.4) < 1e-9
    assert "1 worker SIGKILLs" in format_report(report)


def test_a_duplicate_without_a_fault_is_unexplained() -> None:
    runs = [run("a", 1, 0.0, 1.0), run("a", 2, 5.0, 5.5)]
    report = analyse(["a"], runs, [Fault(WORKER_KILL, 0.5, pid=3, key="x")])
    assert [d.run.pid for d in report.unexplained_duplicates] == [1]


def test_a_kill_long_after_the_run_does_not_explain_its_duplicate() -> None:
    runs = [run("a", 1, 0.0, 1.0), run("a", 2, 9.0, 9.5)]
    report = analyse(["a"], runs, [Fault(WORKER_KILL, 8.0, pid=1)])
    assert len(report.unexplained_duplicates) == 1


def test_outages_explain_a_duplicate_only_when_they_interrupt_the_deletion() -> None:
    runs = [run("a", 1, 0.0, 1.0), run("a", 2, 9.0, 9.5)]
    during = analyse(["a"], runs, [Fault(POSTGRES_RESTART, 1.5, until=4.0)])
    assert [d.explanation for d in during.duplicates] == [f"the {POSTGRES_RESTART}"]
    later = analyse(["a"], runs, [Fault(CIRCUSD_RESTART, 7.0, until=8.0)])
    assert len(later.unexplained_duplicates) == 1


def test_runs_of_one_job_at_the_same_time_overlap() -> None:
    runs = [run("a", 1, 0.0, 2.0), run("a", 2, 1.0, 3.0)]
    assert len(analyse(["a"], runs, []).overlaps) == 1
    # A run cut short overlaps the next one if that one started before the kill.
    cut = [run("a", 1, 0.0, None), run("a", 2, 1.0, 3.0)]
    report = analyse(["a"], cut, [Fault(WORKER_KILL, 2.0, pid=1)])
    assert len(report.overlaps) == 1


def test_release_times_read_the_masters_release_lines() -> None:
    log = (
        "2026-01-31 12:00:00,250 [7] WARNING master circus_djmaster.master.polling: database "
        "primary: released job 12 of a dead worker (host:h pid:42) for an immediate retry "
        "(attempt 1 of 25): worker pid 42 on h was killed by SIGKILL while running this job\n"
        "2026-01-31 12:00:01,000 [7] WARNING master circus_djmaster.master.polling: database "
        "primary: released job 13 of a dead worker (host:other pid:43) for an immediate "
        "retry (attempt 1 of 25): …\n"
    )
    times = release_times(log, "h")
    assert list(times) == [42]
    assert release_times(log, "other").keys() == {43}
    assert times[42] + 0.75 == release_times(log, "other")[43]
