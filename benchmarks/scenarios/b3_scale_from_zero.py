"""B3 scale-from-zero pickup: circusd + master, no worker; one job inserted; commit -> start."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import jobs
from benchmarks.circus_run import Circus, MasterLog, not_available, watcher_name
from benchmarks.common import (
    Context,
    Row,
    Section,
    Table,
    connect,
    percentile,
    wait_for,
)
from circus_djmaster import enqueue
from circus_djmaster.store import sync_executor as store

GROUP = "b3"
QUEUE = "b3"
DATABASE = "primary"

HOW = """\
circusd runs the master plugin (`polling_interval = 30`, `listen = true`, log level
debug) and one watcher (`max_processes = 1`, `idle_timeout = 0`, `app =
"benchmarks.jobs"`) with no process. One due job is inserted (autocommit); the time from
just before that INSERT to the job's start (`time.time()` in the job) is one sample; then
the harness waits until the worker retired (the watcher back at 0 processes and a target
of 0) and 0.3 s more before the next. {samples} samples per run. The steps come from the
master's and the worker's log lines (millisecond timestamps), the worker process'
creation time (from /proc, 10 ms resolution: the steps on either side of it may trade up
to 10 ms, so one can read slightly negative) and the time `benchmarks.jobs` (the app) was
imported in the worker. circusd `check_delay = 1` (how fast a retired worker is reaped;
it does not delay a start)."""

# (row key, label, start event, end event) for the breakdown; events are named below.
STEPS = [
    ("1", "INSERT -> master counted the job (NOTIFY, wake-up, count)", "sent", "counted"),
    (
        "2",
        "counted -> worker process created (circus set + start, fork/exec)",
        "counted",
        "created",
    ),
    ("3", "created -> app imported (interpreter, imports, settings)", "created", "preloaded"),
    ("4", "app imported -> worker started (Worker init, log line)", "preloaded", "worker"),
    ("5", "worker started -> job started (connect, reserve, run)", "worker", "job"),
]
EXTRA = ("start", "counted -> circus start/incr returned (master log)", "counted", "started")


def run(ctx: Context) -> Section:
    samples = ctx.size(20, 5)
    section = Section("B3", "Scale-from-zero pickup", HOW.format(samples=samples))
    total = Row("b3/total", "circus-djmaster", "INSERT -> job start (total)")
    steps = [Row(f"b3/step/{key}", "circus-djmaster", label) for key, label, _, _ in STEPS]
    extra = Row(f"b3/{EXTRA[0]}", "circus-djmaster", EXTRA[1])
    section.tables.append(
        Table("", [("p50", "p50 ms"), ("p90", "p90 ms"), ("max", "max ms")], [total, *steps, extra])
    )
    url = ctx.fresh_database("djbench_b3")
    with connect(url) as conn:
        store.migrate(conn)
    folder = ctx.folder("b3")
    record = folder / "jobs.rec"
    env = {"DJMASTER_DATABASE_URL": url, jobs.RECORD_ENV: str(record)}
    try:
        circus = Circus.start(
            ctx,
            folder,
            top={"polling_interval": 30, "app": "benchmarks.jobs"},
            workers=[{"name": GROUP, "queues": [QUEUE], "max_processes": 1, "idle_timeout": 0}],
            databases={DATABASE: "${DJMASTER_DATABASE_URL}"},
            env=env,
        )
    except Exception as error:
        for row in (total, *steps, extra):
            row.fail(not_available(error))
        return section
    watcher = watcher_name(GROUP, DATABASE)
    log = MasterLog(circus.log_file)
    try:
        with connect(url) as conn:
            for _ in range(ctx.runs):
                measured: dict[str, list[float]] = {}
                for i in range(samples):
                    circus.wait_idle([watcher])
                    time.sleep(0.3)  # let the master finish the pass that saw the worker go
                    log.mark()
                    events = sample(conn, f"s{i}-{time.time():.0f}", record, log)
                    for key, _, start, end in [*STEPS, EXTRA]:
                        if start in events and end in events:
                            measured.setdefault(key, []).append(
                                (events[end] - events[start]) * 1000
                            )
                    measured.setdefault("total", []).append((events["job"] - events["sent"]) * 1000)
                for row, key in [(total, "total"), *zip(steps, [s[0] for s in STEPS], strict=True)]:
                    add_percentiles(row, measured.get(key, []))
                add_percentiles(extra, measured.get(EXTRA[0], []))
    except Exception as error:
        total.fail(error)
    finally:
        circus.close()
    return section


def add_percentiles(row: Row, values: list[float]) -> None:
    if not values:
        row.fail("no sample")
        return
    row.add("p50", percentile(values, 50))
    row.add("p90", percentile(values, 90))
    row.add("max", max(values))


def sample(
    conn: psycopg.Connection[Any], key: str, record: Path, log: MasterLog
) -> dict[str, float]:
    """Insert one job, wait until it ran; the time of each event of its pickup."""
    events: dict[str, float] = {"sent": time.time()}
    enqueue("benchmarks.jobs:record", [key], queue=QUEUE, connection=conn)

    def ran() -> jobs.Record | None:
        return next(
            (r for r in jobs.read_records(record) if r.kind == "job" and r.key == key), None
        )

    job = wait_for(ran, 20, f"job {key} to run", interval=0.005)
    events["job"] = job.time
    preload = next(
        (r for r in jobs.read_records(record) if r.kind == "preload" and r.pid == job.pid), None
    )
    if preload is not None:
        events["preloaded"] = preload.time
        if preload.extra and preload.extra[0]:
            events["created"] = preload.extra[0]
    time.sleep(0.05)  # the log lines of this pickup are flushed by now
    counted = log.first(rf"ready \{{[^}}]*'{GROUP}': [1-9]")
    if counted is not None:
        events["counted"] = counted.time
    started = log.first(rf"{watcher_name(GROUP, DATABASE)}: (started with|\d+ more)")
    if started is not None:
        events["started"] = started.time
    worker = log.first(r"worker started", pid=job.pid)
    if worker is not None:
        events["worker"] = worker.time
    return events
