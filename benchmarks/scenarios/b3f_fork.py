"""B3F fork mode against exec mode, side by side in one run (issue 12): scale-from-zero
pickup with a trivial app and with an app whose import takes 1 s, and the memory of 4
workers of an app holding 200 MB of objects."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import psycopg

from benchmarks import jobs
from benchmarks.circus_run import Circus, MasterLog, not_available, watcher_name
from benchmarks.common import Context, Row, Section, Table, connect, wait_for
from benchmarks.scenarios.b3_scale_from_zero import add_percentiles
from circus_djmaster import enqueue
from circus_djmaster.contracts.preloader import launched_pid
from circus_djmaster.store import sync_executor as store

DATABASE = "primary"
MODES = ("exec", "fork")
APPS = (
    ("trivial", "benchmarks.jobs", "trivial app"),
    ("slow", "benchmarks.slow_app", "app importing in 1 s"),
)
MEMORY_APP = "benchmarks.big_app"
MEMORY_WORKERS = 4
#: big_app's objects and how long each job holds its worker (s): full run, quick run.
MEMORY_OBJECTS = ("550000", "55000")
MEMORY_HOLD = (8.0, 2.0)
MB = 2**20

HOW = """\
**Pickup.** As B3 (circusd with the master plugin, `polling_interval = 30`, `listen =
true`, one group per spawn mode with `max_processes = 1` and `idle_timeout = 0`, no
process until a job comes; one due job inserted; INSERT -> the job's start), with two
worker groups side by side in one circusd: one with `spawn = "exec"`, one with `spawn =
"fork"`, on queues of their own; samples alternate between them, each after both
watchers are back at 0 processes (and 0.3 s). "Settled": the preloader (fork) has
imported the app long before the samples. Two circusd runs: `app = "benchmarks.jobs"`
(trivial) and `app = "benchmarks.slow_app"` (it sleeps 1 s in its import). {samples}
samples per mode and app per run. Steps: the master's log (the count), /proc's creation
time of the process circus started (the launcher in fork mode, 10 ms resolution), the
preloader's "forked worker" log line (fork only), and the `after_fork` callback in the
worker.

**Memory.** `app = "benchmarks.big_app"` ({objects:,} dicts: {megabytes} MB of objects,
measured as the RSS its import adds). {memory_workers} jobs that hold their worker {hold:g} s are
inserted for one group, so that it runs {memory_workers} workers at once (`max_threads
= 1`); while they all run, psutil reads each worker's RSS, USS and PSS (`memory_full_info`,
from /proc/PID/smaps_rollup), plus the preloader's in fork mode; then the same with 1
job. Exec and fork groups take turns in one circusd. "4 workers, total PSS" sums the
workers' PSS (and the preloader's, for fork): the memory they use together, each shared
page counted once."""

PICKUP_STEPS = [
    ("count", "INSERT -> master counted the job", "sent", "counted"),
    ("created", "counted -> process created (circus start/incr, fork/exec)", "counted", "created"),
    (
        "forked",
        "created -> worker forked (fork: launcher start, request, fork)",
        "created",
        "forked",
    ),
    ("after_fork", "created -> after_fork in the worker", "created", "after_fork"),
    ("job", "after_fork -> job started (connect, reserve, run)", "after_fork", "job"),
]


def run(ctx: Context) -> Section:
    samples = ctx.size(20, 2)
    section = Section(
        "B3F",
        "Fork mode: pickup and memory, side by side with exec",
        HOW.format(
            samples=samples,
            memory_workers=MEMORY_WORKERS,
            objects=int(ctx.size(*MEMORY_OBJECTS)),
            megabytes=ctx.size("207", "~21"),
            hold=ctx.size(*MEMORY_HOLD),
        ),
    )
    pickup = {
        (app, mode): Row(f"b3f/{app}/{mode}", f"spawn = {mode}", f"{label}: INSERT -> job start")
        for app, _module, label in APPS
        for mode in MODES
    }
    steps = {
        (app, mode, key): Row(f"b3f/{app}/{mode}/{key}", f"spawn = {mode}", f"{label}: {text}")
        for app, _module, label in APPS
        for mode in MODES
        for key, text, _, _ in PICKUP_STEPS
    }
    section.tables.append(
        Table(
            "Scale-from-zero pickup",
            [("p50", "p50 ms"), ("p90", "p90 ms"), ("max", "max ms")],
            list(pickup.values()),
        )
    )
    section.tables.append(
        Table(
            "Breakdown (p50 of each step)",
            [("p50", "p50 ms"), ("p90", "p90 ms")],
            [
                steps[app, mode, key]
                for app, _, _ in APPS
                for mode in MODES
                for key, *_ in PICKUP_STEPS
            ],
        )
    )
    memory = {
        (mode, what): Row(f"b3f/memory/{mode}/{what}", f"spawn = {mode}", text)
        for mode in MODES
        for what, text in (
            ("one", "1 worker: its PSS (fork: + the preloader's)"),
            ("four", f"{MEMORY_WORKERS} workers: total PSS (fork: + the preloader's)"),
            ("rss", "each worker's RSS (mean of the 4)"),
            ("uss", "each worker's USS (mean of the 4)"),
            ("pss", "each worker's PSS (mean of the 4)"),
            ("preloader", "the preloader's PSS"),
        )
    }
    section.tables.append(
        Table("Memory, 4 workers of a 200 MB app", [("mb", "MB")], list(memory.values()))
    )
    for app, module, _label in APPS:
        try:
            _pickup(ctx, app, module, samples, pickup, steps)
        except Exception as error:
            for (row_app, _), row in pickup.items():
                if row_app == app:
                    row.fail(not_available(error))
    try:
        _memory(ctx, memory)
    except Exception as error:
        for row in memory.values():
            row.fail(not_available(error))
    section.notes.append(_ratios(pickup, memory))
    return section


def _groups(max_processes: int, idle_timeout: float = 0.0) -> list[dict[str, Any]]:
    return [
        {
            "name": mode,
            "queues": [mode],
            "spawn": mode,
            "max_processes": max_processes,
            "idle_timeout": idle_timeout,
        }
        for mode in MODES
    ]


def _start(
    ctx: Context,
    name: str,
    app: str,
    workers: list[dict[str, Any]],
    extra_env: dict[str, str] | None = None,
) -> tuple[Circus, str, Path]:
    url = ctx.fresh_database(f"djbench_b3f_{name}")
    with connect(url) as conn:
        store.migrate(conn)
    folder = ctx.folder(f"b3f-{name}")
    record = folder / "jobs.rec"
    env = {"DJMASTER_DATABASE_URL": url, jobs.RECORD_ENV: str(record), **(extra_env or {})}
    circus = Circus.start(
        ctx,
        folder,
        top={"polling_interval": 30, "app": app, "preload_timeout": 60},
        workers=workers,
        databases={DATABASE: "${DJMASTER_DATABASE_URL}"},
        env=env,
        tables={"callbacks": {"after_fork": "benchmarks.jobs:after_fork"}},
    )
    return circus, url, record


def _pickup(
    ctx: Context,
    app: str,
    module: str,
    samples: int,
    pickup: dict[tuple[str, str], Row],
    steps: dict[tuple[str, str, str], Row],
) -> None:
    circus, url, record = _start(ctx, app, module, _groups(1))
    watchers = [watcher_name(mode, DATABASE) for mode in MODES]
    log = MasterLog(circus.log_file)
    try:
        # Settled: the preloader imported the app (its "ready" line) before the first sample.
        wait_for(lambda: "ready: forking workers" in _text(circus.log_file), 60, "the preloader")
        with connect(url) as conn:
            for _ in range(ctx.runs):
                measured: dict[tuple[str, str], list[float]] = {}
                for i in range(samples):
                    for mode in MODES:
                        circus.wait_idle(watchers)
                        time.sleep(0.3)  # let the master finish the pass that saw them go
                        log.mark()
                        events = _sample(
                            conn, mode, f"{app}-{mode}-{i}-{time.time():.0f}", record, log
                        )
                        measured.setdefault((mode, "total"), []).append(
                            (events["job"] - events["sent"]) * 1000
                        )
                        for step, _, start, end in PICKUP_STEPS:
                            if start in events and end in events:
                                measured.setdefault((mode, step), []).append(
                                    (events[end] - events[start]) * 1000
                                )
                for mode in MODES:
                    add_percentiles(pickup[app, mode], measured.get((mode, "total"), []))
                    for key, *_ in PICKUP_STEPS:
                        values = measured.get((mode, key), [])
                        if values:
                            add_percentiles(steps[app, mode, key], values)
    finally:
        circus.close()


def _text(path: Path) -> str:
    return path.read_text("utf-8", errors="replace") if path.exists() else ""


def _sample(
    conn: psycopg.Connection[Any], mode: str, key: str, record: Path, log: MasterLog
) -> dict[str, float]:
    events: dict[str, float] = {"sent": time.time()}
    enqueue("benchmarks.jobs:record", [key], queue=mode, connection=conn)

    def ran() -> jobs.Record | None:
        return next(
            (r for r in jobs.read_records(record) if r.kind == "job" and r.key == key), None
        )

    job = wait_for(ran, 30, f"job {key} to run", interval=0.005)
    events["job"] = job.time
    forked = next(
        (r for r in jobs.read_records(record) if r.kind == "forked" and r.pid == job.pid), None
    )
    if forked is not None:
        events["after_fork"] = forked.time
        if forked.extra and forked.extra[0]:
            events["created"] = forked.extra[0]
    time.sleep(0.05)  # the log lines of this pickup are flushed by now
    counted = log.first(rf"ready \{{[^}}]*'{mode}': [1-9]")
    if counted is not None:
        events["counted"] = counted.time
    if mode == "fork":
        line = log.first(rf"forked worker pid {job.pid} ")
        if line is not None:
            events["forked"] = line.time
    return events


def _memory(ctx: Context, memory: dict[tuple[str, str], Row]) -> None:
    # The quick run (a smoke test) holds 20 MB for 2 s instead of 200 MB for 8 s.
    objects, hold = ctx.size(*MEMORY_OBJECTS), ctx.size(*MEMORY_HOLD)
    circus, url, record = _start(
        ctx,
        "memory",
        MEMORY_APP,
        _groups(MEMORY_WORKERS, 0.0),
        {"BENCH_BIG_APP_OBJECTS": objects},
    )
    try:
        wait_for(lambda: "ready: forking workers" in _text(circus.log_file), 120, "the preloader")
        with connect(url) as conn:
            for run in range(ctx.runs):
                for mode in MODES:
                    for count in (1, MEMORY_WORKERS):
                        readings = _hold(circus, conn, record, mode, count, f"{run}-{count}", hold)
                        workers = [r for r in readings if r[0] == "worker"]
                        preloader = [r for r in readings if r[0] == "preloader"]
                        total = sum(r[3] for r in readings) / MB
                        if count == 1:
                            memory[mode, "one"].add("mb", total)
                            continue
                        memory[mode, "four"].add("mb", total)
                        for index, what in ((1, "rss"), (2, "uss"), (3, "pss")):
                            mean = sum(r[index] for r in workers) / len(workers) / MB
                            memory[mode, what].add("mb", mean)
                        if preloader:
                            memory[mode, "preloader"].add("mb", preloader[0][3] / MB)
    finally:
        circus.close()


def _hold(
    circus: Circus,
    conn: psycopg.Connection[Any],
    record: Path,
    mode: str,
    count: int,
    tag: str,
    seconds: float,
) -> list[tuple[str, int, int, int]]:
    """Run ``count`` jobs of ``mode`` holding their worker ``seconds`` at once; (kind,
    rss, uss, pss) of each worker (and of the preloader, fork) while they all run."""
    watcher = watcher_name(mode, DATABASE)
    circus.wait_idle([watcher_name(m, DATABASE) for m in MODES], timeout=60)
    keys = [f"mem-{mode}-{tag}-{n}" for n in range(count)]
    for key in keys:
        enqueue("benchmarks.jobs:hold", [key, seconds], queue=mode, connection=conn)

    def running() -> set[int] | None:
        pids = {r.pid for r in jobs.read_records(record) if r.kind == "job" and r.key in keys}
        return pids if len(pids) == count else None

    pids = wait_for(running, 60, f"{count} {mode} workers to run")
    time.sleep(1.0)  # past the workers' start: memory as it is while jobs run
    readings = []
    for pid in pids:
        info = psutil.Process(pid).memory_full_info()
        readings.append(("worker", int(info.rss), int(info.uss), int(info.pss)))
    if mode == "fork":
        launchers = circus.pids(watcher)
        assert {launched_pid(psutil.Process(p).name()) for p in launchers} == pids
        for pid in circus.pids("djmaster-preloader"):
            info = psutil.Process(pid).memory_full_info()
            readings.append(("preloader", int(info.rss), int(info.uss), int(info.pss)))
    circus.wait_idle([watcher], timeout=60)
    return readings


def _ratios(pickup: dict[tuple[str, str], Row], memory: dict[tuple[str, str], Row]) -> str:
    parts = []
    for app, _module, label in APPS:
        exec_p50 = pickup[app, "exec"].median("p50")
        fork_p50 = pickup[app, "fork"].median("p50")
        if exec_p50 and fork_p50:
            parts.append(f"{label}: exec p50 ÷ fork p50 = {exec_p50 / fork_p50:.1f}")
    one = memory["exec", "one"].median("mb")
    for mode in MODES:
        four = memory[mode, "four"].median("mb")
        if one and four:
            parts.append(
                f"{MEMORY_WORKERS} {mode} workers' total PSS ÷ one exec worker's = {four / one:.2f}"
            )
    fork_one = memory["fork", "one"].median("mb")
    fork_four = memory["fork", "four"].median("mb")
    if fork_one and fork_four:
        parts.append(
            f"{MEMORY_WORKERS} fork workers (+ preloader) ÷ 1 fork worker (+ preloader) = "
            f"{fork_four / fork_one:.2f}"
        )
    return "Ratios of the medians: " + "; ".join(parts) + "." if parts else ""
