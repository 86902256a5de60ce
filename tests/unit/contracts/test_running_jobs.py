"""The running-jobs file a worker leaves for the master, and a zombie's exit status."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from circus_djmaster.contracts import running_jobs as running
from circus_djmaster.master.readings import zombie_exit_code
from tests.support.waiting import wait_until

DEFAULTS = running.JobLimits(25, False)


def test_the_master_reads_the_jobs_a_dead_worker_was_running_and_their_limits() -> None:
    pid = 2_000_000_001  # above pid_max: no real process will ever have it
    jobs = running.RunningJobs(3, pid=pid)
    try:
        jobs.set(0, 41, running.JobLimits(2, True))
        jobs.set(2, 43, DEFAULTS)
        jobs.set(1, 42, DEFAULTS)
        jobs.clear(1)  # job 42 finished: it is no longer charged for a death
        assert running.read_running(pid) == {41: running.JobLimits(2, True), 43: DEFAULTS}
        jobs.set(1, 44, running.JobLimits(7, False))  # a slot reused by the next job
        assert running.read_running(pid) == {
            41: running.JobLimits(2, True),
            43: DEFAULTS,
            44: running.JobLimits(7, False),
        }
    finally:
        running.forget(pid)
    assert running.read_running(pid) is None


def test_a_worker_that_exits_by_itself_leaves_no_file() -> None:
    pid = 2_000_000_002
    jobs = running.RunningJobs(1, pid=pid)
    jobs.set(0, 7, DEFAULTS)
    jobs.close()
    assert running.read_running(pid) is None


def _zombie(how: str) -> int:
    pid = os.fork()
    if pid == 0:  # the child dies at once and stays a zombie until waited for
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(9)
    return pid


def _wait_zombie(pid: int) -> None:
    stat = Path(f"/proc/{pid}/stat")
    wait_until(lambda: stat.read_text().split(") ")[1][0] == "Z", 5, f"{pid} a zombie")


def test_zombie_exit_code_reads_the_exit_status_before_it_is_reaped() -> None:
    exited, killed = _zombie("exit"), _zombie("kill")
    try:
        _wait_zombie(exited)
        _wait_zombie(killed)
        assert zombie_exit_code(exited) == 9
        assert zombie_exit_code(killed) == -signal.SIGKILL
        assert zombie_exit_code(os.getpid()) is None  # alive: not a zombie
    finally:
        os.waitpid(exited, 0)
        os.waitpid(killed, 0)
    assert zombie_exit_code(exited) is None  # reaped: gone
