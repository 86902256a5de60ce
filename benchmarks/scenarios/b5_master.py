"""B5 master overhead: the plugin's CPU and memory, idle and while a queue drains, and the
time of one pass over 10 groups x 3 databases."""

from __future__ import annotations

import time

import psutil

from benchmarks import jobs
from benchmarks.circus_run import (
    Circus,
    MasterLog,
    cpu_seconds,
    not_available,
    process_rss_mb,
    watcher_name,
)
from benchmarks.common import (
    BenchError,
    Context,
    Row,
    Section,
    Table,
    connect,
    percentile,
    scalar,
    wait_for,
)
from circus_djmaster import JobCall, enqueue_many
from circus_djmaster.store import sync_executor as store

GROUPS = 10
DATABASES = 3

HOW = """\
circusd runs the master plugin with {groups} worker groups (queues q0..q9) x {databases}
databases = {watchers} watchers, all at 0 processes, default intervals (`polling_interval
= 30`, `monitor_interval = 5`), `listen = true`, log level debug (for the pass times).
**Idle**: the plugin process' CPU time (user + system, psutil) over {idle} s of nothing
to do, as % of one core (CPU time is counted in 10 ms ticks: the resolution is 1 tick over
the idle time), its RSS (largest sample, one a second), and how many times a minute it
counted the ready jobs of every database (from its log); circusd's own CPU and RSS for
comparison. **Pass**: a `pg_notify` on one database (payload `"*"`, as for a job in any
queue) wakes the master, which observes circusd and counts every group on every
database; time from the NOTIFY's commit to the last of the {databases} count log lines
({passes} passes per run, ms). **Drain**: {jobs:,} no-op jobs enqueued at once into
group g0 (`max_processes = 2`, `max_threads = 4`, `read_ahead = 100`) of one database;
the master scales g0 from zero; plugin CPU (% of a core) and largest RSS from the INSERT
until the queue is empty and the workers retired; jobs/s = jobs / (INSERT -> queue
empty), start-up from zero included (the workers log 2 debug lines per job here)."""


def run(ctx: Context) -> Section:
    idle = ctx.size(60, 4)
    passes = ctx.size(20, 5)
    count = ctx.size(20_000, 2_000)
    section = Section(
        "B5",
        "Master overhead",
        HOW.format(
            groups=GROUPS,
            databases=DATABASES,
            watchers=GROUPS * DATABASES,
            idle=idle,
            passes=passes,
            jobs=count,
        ),
    )
    idle_row = Row("b5/idle", "circus-djmaster", "plugin, idle")
    circusd_row = Row("b5/idle-circusd", "circusd", "circusd itself, idle")
    pass_row = Row("b5/pass", "circus-djmaster", "one pass (NOTIFY -> all counted)")
    drain_row = Row("b5/drain", "circus-djmaster", f"plugin, while {count:,} jobs drain")
    section.tables += [
        Table(
            "Idle and drain",
            [
                ("cpu", "CPU % of a core"),
                ("rss", "RSS MB"),
                ("passes", "counting passes per minute"),
                ("rate", "jobs/s"),
            ],
            [idle_row, circusd_row, drain_row],
        ),
        Table("Pass time", [("p50", "p50 ms"), ("p90", "p90 ms"), ("max", "max ms")], [pass_row]),
    ]
    urls = [ctx.fresh_database(f"djbench_b5_{i}") for i in range(DATABASES)]
    for url in urls:
        with connect(url) as conn:
            store.migrate(conn)
    folder = ctx.folder("b5")
    env = {f"DJBENCH_B5_URL_{i}": url for i, url in enumerate(urls)}
    env[jobs.RECORD_ENV] = ""
    workers = [
        {"name": f"g{i}", "queues": [f"q{i}"], "max_processes": 1, "idle_timeout": 0}
        for i in range(GROUPS)
    ]
    workers[0].update(max_processes=2, max_threads=4, read_ahead=100)
    try:
        circus = Circus.start(
            ctx,
            folder,
            top={"app": "benchmarks.jobs"},
            workers=workers,
            databases={f"d{i}": f"${{DJBENCH_B5_URL_{i}}}" for i in range(DATABASES)},
            env=env,
        )
    except Exception as error:
        for row in (idle_row, circusd_row, pass_row, drain_row):
            row.fail(not_available(error))
        return section
    try:
        plugin = circus.plugin_pid()
        time.sleep(2)  # the start-up passes are over
        for _ in range(ctx.runs):
            measure_idle(circus, plugin, idle, idle_row, circusd_row)
            measure_passes(circus, urls[0], passes, pass_row)
            measure_drain(circus, plugin, urls[0], count, drain_row)
    except Exception as error:
        for row in (idle_row, pass_row, drain_row):
            if not row.metrics:
                row.fail(error)
    finally:
        circus.close()
    return section


def measure_idle(circus: Circus, plugin: int, seconds: float, row: Row, circusd_row: Row) -> None:
    circusd = circus.process.pid
    log = MasterLog(circus.log_file)
    log.mark()
    cpu = {pid: cpu_seconds(pid) for pid in (plugin, circusd)}
    rss = {pid: process_rss_mb(pid) for pid in (plugin, circusd)}
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(1.0)
        for pid in rss:
            rss[pid] = max(rss[pid], process_rss_mb(pid))
    wall = time.monotonic() - started
    for pid, target in ((plugin, row), (circusd, circusd_row)):
        target.add("cpu", (cpu_seconds(pid) - cpu[pid]) / wall * 100)
        target.add("rss", rss[pid])
    counts = sum(": ready {" in line.text for line in log.lines())
    row.add("passes", counts / DATABASES / wall * 60)


def measure_passes(circus: Circus, url: str, count: int, row: Row) -> None:
    log = MasterLog(circus.log_file)
    times = []
    with connect(url) as conn:
        for _ in range(count):
            log.mark()
            sent = time.time()
            conn.execute("""SELECT pg_notify('delayed_jobs', '"*"')""")

            def counted() -> list[float] | None:
                lines = [line.time for line in log.lines() if ": ready {" in line.text]
                return lines if len(lines) >= DATABASES else None

            lines = wait_for(counted, 10, "a pass over every database", interval=0.01)
            times.append((max(lines[:DATABASES]) - sent) * 1000)
            time.sleep(0.3)
    row.add("p50", percentile(times, 50))
    row.add("p90", percentile(times, 90))
    row.add("max", max(times))


def measure_drain(circus: Circus, plugin: int, url: str, count: int, row: Row) -> None:
    watchers = [watcher_name("g0", "d0")]
    circus.wait_idle(watchers)
    process = psutil.Process(plugin)
    cpu = cpu_seconds(plugin)
    rss = process.memory_info().rss / 2**20
    started = time.monotonic()
    enqueue_many([JobCall("benchmarks.jobs:noop", queue="q0")] * count, database_url=url)
    drained = None
    with connect(url) as conn:
        deadline = started + 60 + count / 100
        while time.monotonic() < deadline:
            rss = max(rss, process.memory_info().rss / 2**20)
            if drained is None and not scalar(conn, "SELECT count(*) FROM delayed_jobs"):
                drained = time.monotonic()
            if drained is not None and not any(circus.pids(w) for w in watchers):
                break
            time.sleep(0.05)
    if drained is None:
        raise BenchError(f"the queue did not drain within {deadline - started:.0f}s")
    circus.wait_idle(watchers)
    row.add("cpu", (cpu_seconds(plugin) - cpu) / (time.monotonic() - started) * 100)
    row.add("rss", rss)
    row.add("rate", count / (drained - started))
