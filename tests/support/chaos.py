"""The chaos run of tests/faults/test_chaos.py: faults injected while jobs drain, and the
analysis of what ran.

:class:`ChaosHarness` drives a real circusd (master plugin and workers) on a dedicated
embedded Postgres and injects the faults: SIGKILL of a random busy worker every few
seconds, one Postgres restart (with an outage), one kill -9 of the plugin, one circusd
restart. :func:`analyse` then reads the ``job_runs`` side table (tests/support/
chaos_jobs.py) against the faults and says which runs are duplicates, which were cut
short, and whether each is explained by a fault (the rules are in
:func:`analyse`'s docstring). :func:`format_report` renders the figures as Markdown
(docs/RELIABILITY.md quotes them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import re
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil
import psycopg

from circus_djmaster.contracts.preloader import launched_pid

from . import log_lines
from .circus_run import CircusRun, read, start_circus
from .pg_servers import EmbeddedServer
from .waiting import wait_until

#: A completed job waits at most this long for its deletion (job_thread.FLUSH_AFTER is
#: 50 ms, or the thread's next reserve, at once); with margin for a loaded machine.
DELETE_GRACE = 2.0
#: Clock resolution allowance between the harness' time.time() and clock_timestamp().
CLOCK_SLACK = 0.01
#: Seconds of completions counted before and after a one-off fault.
THROUGHPUT_WINDOW = 10.0

WORKER_KILL = "worker SIGKILL"
POISON_EXIT = "poison job exit"
#: Job keys of poison jobs (tests/support/chaos_jobs.py ``poison``) start with this.
POISON_PREFIX = "poison"
POSTGRES_RESTART = "Postgres restart"
PLUGIN_KILL = "plugin kill -9"
CIRCUSD_RESTART = "circusd restart"


@dataclasses.dataclass
class Fault:
    kind: str
    at: float  # wall clock when it was injected (just before the signal / the stop)
    until: float | None = None  # wall clock when the component was back (outages)
    pid: int | None = None  # the killed process
    key: str | None = None  # the job the killed worker was running
    note: str = ""
    #: The pid circus listed for the killed worker, which ``locked_by`` and the master's
    #: release line name: the worker's own, or its launcher's (spawn = "fork").
    listed_pid: int | None = None

    @property
    def released_pid(self) -> int | None:
        return self.listed_pid if self.listed_pid is not None else self.pid


@dataclasses.dataclass(frozen=True)
class Run:
    key: str
    host: str
    pid: int
    started: float
    ended: float | None

    @property
    def completed(self) -> bool:
        return self.ended is not None


@dataclasses.dataclass
class Duplicate:
    """A completed run of a job that ran again later, and what explains it."""

    run: Run
    explanation: str | None  # None: unexplained
    fault: Fault | None = None


@dataclasses.dataclass
class Recovery:
    fault: Fault
    first_completion: float | None  # seconds from the fault to the first job completed
    # Worker kills that cut a run short: seconds until that job started again (inf:
    # never). None when the killed worker's run had just ended (nothing to re-run).
    rerun: float | None = None
    # Worker kills: seconds until the master logged the release of the killed worker's
    # job (None: no release logged, e.g. its run had just ended and it held nothing).
    released: float | None = None
    # One-off faults: jobs completed per second in the THROUGHPUT_WINDOW before the
    # fault and in the one after the component was back.
    rate_before: float | None = None
    rate_after: float | None = None


@dataclasses.dataclass
class ChaosReport:
    jobs: int
    runs: int
    completed_runs: int
    missing: list[str]  # keys that never completed
    duplicates: list[Duplicate]
    interrupted: list[tuple[Run, Fault | None]]  # cut-short runs and the kill that did it
    overlaps: list[tuple[Run, Run]]  # runs of one job at the same time
    per_kill: dict[int, int]  # killed pid -> runs charged to that kill
    recoveries: list[Recovery]
    faults: list[Fault]
    elapsed: float = 0.0

    @property
    def unexplained_duplicates(self) -> list[Duplicate]:
        return [d for d in self.duplicates if d.explanation is None]

    @property
    def unexplained_interruptions(self) -> list[Run]:
        return [run for run, fault in self.interrupted if fault is None]

    def kills(self) -> list[Fault]:
        return [f for f in self.faults if f.kind == WORKER_KILL]


# ----------------------------------------------------------------------- analysis


def load_runs(conn: psycopg.Connection[Any]) -> list[Run]:
    rows = conn.execute(
        "SELECT job_key, host, pid, extract(epoch FROM started_at)::float8, "
        "extract(epoch FROM ended_at)::float8 FROM job_runs ORDER BY started_at, token"
    ).fetchall()
    return [Run(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def poison_exits(runs: Sequence[Run]) -> tuple[list[Run], list[Fault]]:
    """Split the poison jobs' runs off: each is a fault (its worker ended the moment it
    started), not a job of the run. Returns (the other runs, the poison faults)."""
    others = [run for run in runs if not run.key.startswith(POISON_PREFIX)]
    faults = [
        Fault(POISON_EXIT, run.started, pid=run.pid, key=run.key)
        for run in runs
        if run.key.startswith(POISON_PREFIX)
    ]
    return others, faults


def release_times(log_text: str, host: str) -> dict[int, float]:
    """Wall time of the master's first "released job … of a dead worker (host:H pid:P)"
    line for each pid P."""
    found: dict[int, float] = {}
    pattern = rf"released job \d+ of a dead worker \(host:{re.escape(host)} pid:(\d+)\)"
    for line, match in log_lines.matching(log_text, pattern):
        found.setdefault(int(match.group(1)), line.at)
    return found


def analyse(
    keys: Iterable[str],
    runs: Sequence[Run],
    faults: Sequence[Fault],
    released: dict[int, float] | None = None,
) -> ChaosReport:
    """What ran, against the faults injected.

    Rules (times are wall clock: the harness' ``time.time()`` and the database's
    ``clock_timestamp()`` read the same clock on this machine):

    * A run *completed* when it recorded its end. A job is done when one of its runs
      completed; every job must be done.
    * A run *cut short* (no end) is explained only by a harness SIGKILL of its pid at
      or after its start, or by a poison job that started on its worker meanwhile and
      ended the process (``POISON_EXIT``): nothing else the harness does stops a running
      job (circusd's quit sends TERM, and a worker finishes its running jobs first; a
      Postgres outage only makes the job's own recording retry; the plugin does not run
      jobs). A poison exit counts as a kill below.
    * A *duplicate* is a completed run of a job that ran again afterwards. The worker
      deletes a completed job in its next round trip (at most ``DELETE_GRACE`` later),
      so the job can run again only if that deletion never happened: the worker's pid
      was SIGKILLed by the harness between the run's start and its end +
      ``DELETE_GRACE`` (the kill interrupted the run or its deletion), or the Postgres
      outage, or circusd's restart, began in that window (they may interrupt the
      deletion). Anything else is an unexplained duplicate: a bug.
    * Runs of one job never overlap: the next run starts after the previous one ended,
      or, when it was cut short, after the kill that cut it.
    * Counted against the kills: a worker holds at most one running and one completed
      but not yet deleted job per thread, so one kill explains at most
      ``2 * max_threads`` runs (checked by the test).
    """
    keys = list(keys)
    by_key: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_key[run.key].append(run)
    kills_by_pid: dict[int, list[Fault]] = defaultdict(list)
    for fault in faults:
        if fault.kind in (WORKER_KILL, POISON_EXIT) and fault.pid is not None:
            kills_by_pid[fault.pid].append(fault)
    outages = [f for f in faults if f.kind in (POSTGRES_RESTART, CIRCUSD_RESTART)]

    def kill_after(run: Run, until: float | None) -> Fault | None:
        for fault in kills_by_pid.get(run.pid, []):
            if fault.at >= run.started - CLOCK_SLACK and (until is None or fault.at <= until):
                return fault
        return None

    missing = [key for key in keys if not any(r.completed for r in by_key.get(key, []))]
    duplicates: list[Duplicate] = []
    interrupted: list[tuple[Run, Fault | None]] = []
    overlaps: list[tuple[Run, Run]] = []
    per_kill: dict[int, int] = defaultdict(int)
    for key_runs in by_key.values():
        key_runs.sort(key=lambda r: r.started)
        for index, run in enumerate(key_runs):
            later = key_runs[index + 1 :]
            if not run.completed:
                fault = kill_after(run, None)
                interrupted.append((run, fault))
                if fault is not None and fault.pid is not None:
                    per_kill[fault.pid] += 1
                limit = fault.at if fault is not None else None
            else:
                limit = run.ended
                if later:
                    assert run.ended is not None
                    window_end = run.ended + DELETE_GRACE
                    fault = kill_after(run, window_end)
                    if fault is not None and fault.pid is not None:
                        per_kill[fault.pid] += 1
                        duplicates.append(Duplicate(run, f"its worker (pid {run.pid}) was killed"))
                    else:
                        outage = next(
                            (f for f in outages if run.started - CLOCK_SLACK <= f.at <= window_end),
                            None,
                        )
                        explanation = None if outage is None else f"the {outage.kind}"
                        duplicates.append(Duplicate(run, explanation, outage))
            if later and limit is not None and later[0].started < limit - CLOCK_SLACK:
                overlaps.append((run, later[0]))
    completed = [r for r in runs if r.completed]
    recoveries = []
    for fault in faults:
        since = fault.until if fault.until is not None else fault.at
        after = [r.ended for r in completed if r.ended is not None and r.ended > since]
        first = min(after) - fault.at if after else None
        rerun = None
        victims = [run for run, cut_by in interrupted if cut_by is fault]
        if victims:
            starts = [
                r.started for victim in victims for r in by_key[victim.key] if r.started > fault.at
            ]
            rerun = min(starts) - fault.at if starts else math.inf
        release = None
        if fault.kind == WORKER_KILL and fault.released_pid in (released or {}):
            assert released is not None and fault.released_pid is not None
            release = released[fault.released_pid] - fault.at
        recovery = Recovery(fault, first, rerun, release)
        if fault.until is not None:
            ends = [r.ended for r in completed if r.ended is not None]
            window = THROUGHPUT_WINDOW
            recovery.rate_before = sum(fault.at - window <= e < fault.at for e in ends) / window
            recovery.rate_after = (
                sum(fault.until <= e < fault.until + window for e in ends) / window
            )
        recoveries.append(recovery)
    return ChaosReport(
        jobs=len(keys),
        runs=len(runs),
        completed_runs=len(completed),
        missing=missing,
        duplicates=duplicates,
        interrupted=interrupted,
        overlaps=overlaps,
        per_kill=dict(per_kill),
        recoveries=recoveries,
        faults=list(faults),
    )


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def format_report(report: ChaosReport, *, title: str = "Chaos run") -> str:
    kills = report.kills()
    lines = [
        f"### {title}",
        "",
        f"* jobs: {report.jobs}; runs recorded: {report.runs} "
        f"({report.completed_runs} completed, {len(report.interrupted)} cut short by a kill)",
        f"* faults: {len(kills)} worker SIGKILLs, "
        + ", ".join(
            f"{sum(1 for f in report.faults if f.kind == kind)} {kind}"
            for kind in (POSTGRES_RESTART, PLUGIN_KILL, CIRCUSD_RESTART, POISON_EXIT)
        ),
        f"* jobs never completed: {len(report.missing)}; duplicates (a job completed more "
        f"than once): {len(report.duplicates)}, unexplained: "
        f"{len(report.unexplained_duplicates)}; overlapping runs: {len(report.overlaps)}",
        f"* runs charged to a kill: {sum(report.per_kill.values())} for {len(kills)} kills "
        f"(at most {max(report.per_kill.values(), default=0)} for one kill)",
        f"* wall time: {report.elapsed:.1f} s",
        "",
        "| # | fault | first job completed after it | job released after | "
        "job started again after |",
        "|---|---|---|---|---|",
    ]
    for number, recovery in enumerate(report.recoveries, 1):
        fault = recovery.fault
        name = fault.kind + (f" ({fault.note})" if fault.note else "")
        kill = fault.kind == WORKER_KILL
        lines.append(
            f"| {number} | {name} | {_seconds(recovery.first_completion)} | "
            f"{_seconds(recovery.released) if kill else ''} | "
            f"{_seconds(recovery.rerun) if kill else ''} |"
        )
    lines += [
        "",
        f"| one-off fault | down for | jobs/s in the {THROUGHPUT_WINDOW:g} s before | "
        f"jobs/s in the {THROUGHPUT_WINDOW:g} s after it was back |",
        "|---|---|---|---|",
    ]
    for recovery in report.recoveries:
        fault = recovery.fault
        if fault.until is None or recovery.rate_before is None:
            continue
        lines.append(
            f"| {fault.kind} | {fault.until - fault.at:.2f} s | {recovery.rate_before:.1f} | "
            f"{recovery.rate_after:.1f} |"
        )
    for label, values in (
        ("released by the master", [r.released for r in report.recoveries]),
        ("started again", [r.rerun for r in report.recoveries]),
    ):
        known = sorted(v for v in values if v is not None)
        if known:
            lines.append(
                f"\nKilled workers' jobs {label} after {known[0]:.2f} to {known[-1]:.2f} s "
                f"(median {known[len(known) // 2]:.2f} s)."
            )
    for dup in report.duplicates:
        lines.append(
            f"* duplicate: job {dup.run.key} (pid {dup.run.pid}): "
            f"{dup.explanation or 'UNEXPLAINED'}"
        )
    return "\n".join(lines)


def report_json(report: ChaosReport) -> str:
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
        return value

    return json.dumps(
        {
            "jobs": report.jobs,
            "runs": report.runs,
            "duplicates": len(report.duplicates),
            "unexplained_duplicates": len(report.unexplained_duplicates),
            "interrupted": len(report.interrupted),
            "recoveries": [plain(r) for r in report.recoveries],
            "elapsed": report.elapsed,
        },
        indent=2,
    )


# ------------------------------------------------------------------------ harness


def master_started(run: CircusRun, pid: int) -> bool:
    """The master plugin ``pid`` logged that it started."""
    return any(
        f"[{pid}] " in line and "master started" in line for line in read(run.log_file).splitlines()
    )


class Database:
    """The harness' own connection, reconnecting across the Postgres restart."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None

    def query(self, statement: str, params: Any = None, timeout: float = 60.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=3)
                return self._conn.execute(statement, params).fetchall()
            except psycopg.OperationalError:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def connection(self) -> psycopg.Connection[Any]:
        self.query("SELECT 1")
        assert self._conn is not None
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


@dataclasses.dataclass
class ChaosHarness:
    server: EmbeddedServer
    settings: Path
    env: dict[str, str]
    db: Database
    rng: random.Random
    run: CircusRun | None = None
    faults: list[Fault] = dataclasses.field(default_factory=list)
    log: Callable[[str], None] = print
    # Jobs a harness kill already cut short: never cut again, so that with max_attempts
    # = 2 no good job is charged twice by the harness (a job killed while running alone
    # is charged; docs/RELIABILITY.md) and every failure left is the poison job's.
    cut: set[str] = dataclasses.field(default_factory=set)

    def start(self) -> None:
        self.run = start_circus(self.settings, self.env)
        self.run.wait_for_master()

    def close(self) -> None:
        if self.run is not None:
            self.run.close()

    @property
    def circus(self) -> CircusRun:
        assert self.run is not None
        return self.run

    def worker_pids(self) -> set[int]:
        """Live worker processes of this circusd (its children but the plugin)."""
        plugin = self.circus.plugin_pid()
        pids = set()
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.circus.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.pid != plugin and child.status() != psutil.STATUS_ZOMBIE:
                        pids.add(child.pid)
        return pids

    def launcher_of(self, worker: int) -> int | None:
        """The launcher standing for forked worker ``worker`` (spawn = "fork"), if any."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.circus.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if launched_pid(child.name()) == worker:
                        return child.pid
        return None

    # --- faults ------------------------------------------------------------------

    def busy_workers(self) -> list[tuple[str, int]]:
        """(job key, pid) of the runs in progress on live workers of this circusd."""
        workers = self.worker_pids()
        open_runs = self.db.query(
            "SELECT job_key, pid FROM job_runs WHERE ended_at IS NULL ORDER BY token"
        )
        return [(key, pid) for key, pid in open_runs if pid in workers]

    def kill_busy_worker(
        self, busy: list[tuple[str, int]] | None = None, note: str = ""
    ) -> Fault | None:
        """SIGKILL a random worker that is running a job (from ``busy`` if given)."""
        if busy is None:
            busy = self.busy_workers()
        spared = {pid for key, pid in busy if key in self.cut}
        busy = [(key, pid) for key, pid in busy if pid not in spared and psutil.pid_exists(pid)]
        if not busy:
            return None
        key, pid = self.rng.choice(busy)
        listed = self.launcher_of(pid)
        at = time.time()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        self.cut.update(other for other, owner in busy if owner == pid)
        fault = Fault(WORKER_KILL, at, pid=pid, key=key, note=note, listed_pid=listed)
        self.faults.append(fault)
        self.log(f"chaos: SIGKILL worker {pid} running job {key} {note}".rstrip())
        return fault

    def restart_postgres(self, outage: float) -> Fault:
        """Fast shutdown, ``outage`` seconds down, start again. During the outage a busy
        worker dies: the master must release its job once the database is back."""
        busy = self.busy_workers()
        self.log(f"chaos: Postgres down for {outage:g}s")
        self.server.stop()
        fault = Fault(POSTGRES_RESTART, time.time(), note=f"{outage:g} s outage")
        self.faults.append(fault)
        self.kill_busy_worker(busy, note="during the Postgres outage")
        time.sleep(outage)  # the outage itself: nothing to wait for
        self.server.start_again()
        fault.until = time.time()
        self.log("chaos: Postgres back")
        return fault

    def kill_plugin(self) -> Fault:
        run = self.circus
        old = run.wait_for_master()
        busy = self.busy_workers()
        at = time.time()
        os.kill(old, signal.SIGKILL)
        self.log(f"chaos: kill -9 plugin {old}")

        def respawned() -> int | None:
            pid = run.plugin_pid()
            return pid if pid is not None and pid != old and master_started(run, pid) else None

        # Meanwhile a busy worker dies: no master sees it go (its reap event is lost).
        self.kill_busy_worker(busy, note="while the master was down")
        new = wait_until(respawned, 30.0, "circus to respawn the master plugin")
        fault = Fault(PLUGIN_KILL, at, until=time.time(), pid=old, note=f"new master {new}")
        self.faults.append(fault)
        return fault

    def restart_circusd(self) -> Fault:
        """``quit`` (workers finish their running jobs), then a new circusd."""
        run = self.circus
        at = time.time()
        self.log("chaos: circusd quit")
        with contextlib.suppress(Exception):
            run.client.call("quit")
        try:
            run.process.wait(timeout=60)
        except subprocess.TimeoutExpired as error:
            raise AssertionError("circusd did not quit within 60 s") from error
        run.close()
        self.run = None
        self.start()
        fault = Fault(CIRCUSD_RESTART, at, until=time.time())
        self.faults.append(fault)
        self.log("chaos: circusd back")
        return fault
