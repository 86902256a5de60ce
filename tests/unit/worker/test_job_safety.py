"""Pure pieces of the worker's job safety: the run-alone gate, database call deadlines,
bounded session parameters, who is charged for a worker's death, and the [NO DB] state."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import pytest

from circus_djmaster.contracts import titles
from circus_djmaster.contracts.running_jobs import JobLimits
from circus_djmaster.contracts.titles import WorkerState, state_from_title
from circus_djmaster.master.readings import WorkerReading
from circus_djmaster.master.releases import DeathCharge, charge_for_death
from circus_djmaster.master.scaling import (
    GroupPolicy,
    GrowWatcher,
    WatcherSnapshot,
    WatcherStatus,
    plan_scaling,
)
from circus_djmaster.store.session import bounded_session
from circus_djmaster.store.statements import ChargedJob
from circus_djmaster.worker.db_deadlines import CallDeadlines
from circus_djmaster.worker.run_alone import RunAloneGate
from tests.support.waiting import wait_until

# --- the run-alone gate ---------------------------------------------------------------


def test_ordinary_jobs_share_the_gate() -> None:
    gate = RunAloneGate()
    assert gate.enter(alone=False, timeout=0.1)
    assert gate.enter(alone=False, timeout=0.1)
    gate.leave(alone=False)
    gate.leave(alone=False)


def test_a_run_alone_job_waits_for_the_running_ones_and_blocks_new_ones() -> None:
    gate = RunAloneGate()
    assert gate.enter(alone=False, timeout=0.1)
    assert not gate.enter(alone=True, timeout=0.1), "a job still runs beside it"
    entered = threading.Event()

    def alone() -> None:
        if gate.enter(alone=True, timeout=5):
            entered.set()

    waiter = threading.Thread(target=alone)
    waiter.start()
    wait_until(lambda: gate._waiting_alone == 1, 5, "the alone job to wait")
    assert not gate.enter(alone=False, timeout=0.1), "no new job starts while it waits"
    gate.leave(alone=False)
    assert entered.wait(5), "it runs once the others ended"
    assert not gate.enter(alone=False, timeout=0.1), "nothing runs beside it"
    assert not gate.enter(alone=True, timeout=0.1), "not even another alone job"
    gate.leave(alone=True)
    assert gate.enter(alone=False, timeout=0.1)
    waiter.join()


def test_a_run_alone_job_that_gives_up_lets_ordinary_jobs_go_on() -> None:
    gate = RunAloneGate()
    assert gate.enter(alone=False, timeout=0.1)
    assert not gate.enter(alone=True, timeout=0.05)
    assert gate.enter(alone=False, timeout=0.1), "the give-up released the waiters"


# --- database call deadlines ------------------------------------------------------------


@dataclass
class FakePGconn:
    socket: int


@dataclass
class FakeConnection:
    """What CallDeadlines reads of a psycopg connection: ``closed`` and the socket."""

    pgconn: FakePGconn
    closed: bool = False
    sock: socket.socket | None = None  # keeps the socket open


def blocked_reader() -> tuple[FakeConnection, socket.socket, list[bytes]]:
    """A socket pair; a thread blocks reading one end as a hung query would."""
    ours, theirs = socket.socketpair()
    got: list[bytes] = []

    def read() -> None:
        got.append(ours.recv(1))

    threading.Thread(target=read, daemon=True).start()
    return FakeConnection(FakePGconn(ours.fileno()), sock=ours), theirs, got


def test_a_call_past_its_deadline_has_its_socket_shut_down() -> None:
    deadlines = CallDeadlines(0.3)
    conn, _peer, got = blocked_reader()
    began = time.monotonic()
    with deadlines.bounded(conn, "reserve", owner="t") as call:
        wait_until(lambda: got, 5, "the blocked read to return")
    assert got == [b""], "the read saw the shutdown (end of file)"
    assert 0.25 < time.monotonic() - began < 3
    assert call.aborted == "timeout"
    deadlines.close()


def test_a_call_that_ends_in_time_is_left_alone() -> None:
    deadlines = CallDeadlines(0.3)
    conn, peer, got = blocked_reader()
    with deadlines.bounded(conn, "reserve", owner="t") as call:
        peer.send(b"x")
        wait_until(lambda: got, 5)
    # Past the deadline the watchdog has looked again: a finished call is not touched.
    wait_until(lambda: deadlines._wake_at > call.deadline, 5, "the watchdog's next look")
    assert got == [b"x"] and call.aborted is None
    peer.send(b"y")
    assert conn.sock is not None and conn.sock.recv(1) == b"y", "the socket still works"
    deadlines.close()


def test_a_shorter_call_deadline_wakes_the_watchdog() -> None:
    deadlines = CallDeadlines(60)
    slow, _p1, _g1 = blocked_reader()
    fast, _p2, got = blocked_reader()
    with deadlines.bounded(slow, "a", owner="slow"):
        time.sleep(0.1)  # the watchdog sleeps towards the first call's 60 s deadline
        with deadlines.bounded(fast, "b", owner="fast", timeout=0.2) as call:
            wait_until(lambda: got, 5, "the short deadline to fire")
        assert call.aborted == "timeout"
    deadlines.close()


def test_abort_ends_only_the_owners_call_of_that_kind() -> None:
    deadlines = CallDeadlines(60)
    conn, _peer, got = blocked_reader()
    with deadlines.bounded(conn, "record", owner="t") as call:
        assert deadlines.busy_since("t") is not None
        assert deadlines.busy_since("other") is None
        assert not deadlines.abort("t", what="reserve"), "an outcome write is not cut"
        assert not deadlines.abort("other")
        assert deadlines.abort("t")
        wait_until(lambda: got, 5)
    assert call.aborted == "stop"
    assert deadlines.busy_since("t") is None
    deadlines.close()


def test_a_closed_connection_is_not_watched() -> None:
    deadlines = CallDeadlines(0.1)
    with deadlines.bounded(FakeConnection(FakePGconn(-1), closed=True), "x") as call:
        pass
    assert call.aborted is None


# --- bounded sessions ------------------------------------------------------------------


def test_bounded_session_sets_timeouts_and_keepalives() -> None:
    params = bounded_session("postgresql://u@db/app", 10)
    assert params["connect_timeout"] == 5
    assert params["keepalives"] == 1 and params["keepalives_idle"] == 10
    assert params["tcp_user_timeout"] == 10_000
    assert params["options"] == "-c statement_timeout=10000"


def test_bounded_session_keeps_what_the_url_sets() -> None:
    url = "postgresql://u@db/app?connect_timeout=3&options=-c%20search_path%3Dapp"
    params = bounded_session(url, 2.5, options="-c plan_cache_mode=force_generic_plan")
    assert "connect_timeout" not in params, "the URL's own value wins"
    assert params["options"] == (
        "-c search_path=app -c statement_timeout=2500 -c plan_cache_mode=force_generic_plan"
    )


# --- who pays for a worker's death -----------------------------------------------------


def test_the_job_a_worker_ran_alone_is_charged_with_its_own_limits() -> None:
    assert charge_for_death({7: JobLimits(2, True)}) == DeathCharge(
        charged=(ChargedJob(7, 2, True),)
    )


def test_jobs_run_side_by_side_are_isolated_uncharged() -> None:
    charge = charge_for_death({9: JobLimits(25, False), 4: JobLimits(2, False)})
    assert charge == DeathCharge(isolated=(4, 9))
    assert charge.beside == 1


@pytest.mark.parametrize(
    ("running", "expected"), [({}, DeathCharge()), (None, DeathCharge(isolate_all=True))]
)
def test_nothing_running_or_unknown(
    running: dict[int, JobLimits] | None, expected: DeathCharge
) -> None:
    assert charge_for_death(running) == expected


# --- [NO DB] ---------------------------------------------------------------------------


def test_a_worker_title_shows_no_db_unless_busy() -> None:
    title = titles.worker_title(0, ("q",), "primary", no_db=True)
    assert title == "delayed_job: worker[0] (q) @primary [NO DB]"
    assert state_from_title(title) is WorkerState.NO_DB
    busy = titles.worker_title(0, ("q",), "primary", busy=True, no_db=True)
    assert state_from_title(busy) is WorkerState.BUSY
    old = titles.worker_title(0, ("q",), "primary", no_db=True, old=True)
    assert state_from_title(old) is WorkerState.OLD


def test_the_master_does_not_count_a_worker_without_database_as_spare() -> None:
    group = GroupPolicy("g", max_processes=2)
    snapshot = WatcherSnapshot(
        name="djmaster-g-primary",
        group="g",
        database="primary",
        status=WatcherStatus.ACTIVE,
        numprocesses=1,
        workers=(WorkerReading(10, WorkerState.NO_DB),),
        ready=1,
    )
    assert plan_scaling({"g": group}, [snapshot]) == [GrowWatcher("djmaster-g-primary", 1)]
    idle = WatcherSnapshot(
        **{**snapshot.__dict__, "workers": (WorkerReading(10, WorkerState.IDLE),)}
    )
    assert plan_scaling({"g": group}, [idle]) == []
