"""B7 the master as the installation grows: 20 worker groups x 3 databases."""

from __future__ import annotations

import re
import time

import psycopg

from benchmarks import jobs
from benchmarks.circus_run import Circus, MasterLog, not_available
from benchmarks.common import Context, Row, Section, Table, connect, percentile, wait_for
from benchmarks.scenarios.b4_queries import FILL, LOCK_TIMEOUT, explain_generic, scans, time_calls
from benchmarks.scenarios.b5_master import DATABASES, measure_idle
from circus_djmaster.store import sync_executor
from circus_djmaster.store.async_executor import MASTER_SESSION_OPTIONS
from circus_djmaster.store.queries import query
from circus_djmaster.store.statements import JobFilter

GROUPS = 20
TURN = re.compile(r"scaling turn: (\d+) circus command\(s\), ([\d.]+) ms")

HOW = """\
As B5, with {groups} worker groups (queues q0..q{last}) x {databases} databases =
{watchers} watchers, all at 0 processes, default intervals, `listen = true`, log level
debug. **Idle**: the plugin's CPU time over {idle} s of nothing to do (% of one core),
its largest RSS, counting passes per minute. **Scaling pass**: a `pg_notify` on one
database (payload `"*"`) wakes the master, which observes circusd (its watchers'
status), counts every group on every database and decides: the time of that turn as the
master logs it (from the turn's start to its decision: `scaling turn: N circus
command(s), T ms`), and the circus commands it sent ({passes} passes per run). Nothing is
ready, so no command grows a watcher: the commands are the observation's. **At {rows:,}
rows**: the two statements a scaling pass runs per group and database (the capped ready
count and the next scheduled run_at), on a table filled as B4's (per 1,000 rows 3 ready, 2
running, 600 scheduled, 395 failed), timed as B4 does on a session with the master's
options (generic plans; ms per call, mean of {calls}), with the scans of their plan."""


def run(ctx: Context) -> Section:
    idle = ctx.size(60, 3)
    passes = ctx.size(20, 5)
    rows = ctx.size(10_000_000, 50_000)
    calls = ctx.size(200, 50)
    watchers = GROUPS * DATABASES
    section = Section(
        "B7",
        f"Master overhead at {GROUPS} groups x {DATABASES} databases",
        HOW.format(
            groups=GROUPS,
            last=GROUPS - 1,
            databases=DATABASES,
            watchers=watchers,
            idle=idle,
            passes=passes,
            rows=rows,
            calls=calls,
        ),
    )
    idle_row = Row("b7/idle", "circus-djmaster", f"plugin, idle, {watchers} watchers")
    circusd_row = Row("b7/idle-circusd", "circusd", "circusd itself, idle")
    pass_row = Row("b7/pass", "circus-djmaster", "one scaling turn (NOTIFY -> decided)")
    section.tables += [
        Table(
            "Idle",
            [
                ("cpu", "CPU % of a core"),
                ("rss", "RSS MB"),
                ("passes", "counting passes per minute"),
            ],
            [idle_row, circusd_row],
        ),
        Table(
            f"The pass's statements at {rows:,} rows",
            [("ms", "ms per call"), ("index", "scans of delayed_jobs (generic plan)")],
            [
                Row("b7/count", "circus-djmaster", "count_ready_in_queues, limit 8"),
                Row("b7/next", "circus-djmaster", "seconds_to_next_in_queues"),
                Row("b7/count-any", "circus-djmaster", "count_ready_any_queue, limit 8"),
                Row("b7/next-any", "circus-djmaster", "seconds_to_next_any_queue"),
            ],
        ),
        Table(
            "Scaling turn",
            [
                ("p50", "p50 ms"),
                ("p90", "p90 ms"),
                ("max", "max ms"),
                ("commands", "circus commands"),
            ],
            [pass_row],
        ),
    ]
    urls = [ctx.fresh_database(f"djbench_b7_{i}") for i in range(DATABASES)]
    for url in urls:
        with connect(url) as conn:
            sync_executor.migrate(conn)
    folder = ctx.folder("b7")
    env = {f"DJBENCH_B7_URL_{i}": url for i, url in enumerate(urls)}
    env[jobs.RECORD_ENV] = ""
    workers = [
        {"name": f"g{i}", "queues": [f"q{i}"], "max_processes": 1, "idle_timeout": 0}
        for i in range(GROUPS)
    ]
    try:
        circus = Circus.start(
            ctx,
            folder,
            top={"app": "benchmarks.jobs"},
            workers=workers,
            databases={f"d{i}": f"${{DJBENCH_B7_URL_{i}}}" for i in range(DATABASES)},
            env=env,
        )
    except Exception as error:
        for row in (idle_row, circusd_row, pass_row):
            row.fail(not_available(error))
        return section
    try:
        plugin = circus.plugin_pid()
        time.sleep(2)  # the start-up passes are over
        for _ in range(ctx.runs):
            measure_idle(circus, plugin, idle, idle_row, circusd_row)
            measure_turns(circus, urls[0], passes, pass_row)
    except Exception as error:
        for row in (idle_row, pass_row):
            if not row.metrics:
                row.fail(error)
    finally:
        circus.close()
    measure_statements(ctx, rows, calls, section.tables[1].rows)
    return section


def measure_statements(ctx: Context, rows: int, calls: int, timed: list[Row]) -> None:
    """The master's per-group statements on a big table (B4's fill)."""
    url = ctx.fresh_database("djbench_b7_big")
    try:
        with connect(url) as conn:
            sync_executor.migrate(conn)
            conn.execute(FILL, {"rows": rows})
            conn.execute("VACUUM ANALYZE delayed_jobs")
        extra = {"lock_timeout": LOCK_TIMEOUT, "limit": 8}
        some, every = JobFilter(("q1", "q2")).params() | extra, JobFilter().params() | extra
        names = (
            ("count_ready_in_queues", some),
            ("seconds_to_next_in_queues", some),
            ("count_ready_any_queue", every),
            ("seconds_to_next_any_queue", every),
        )
        with (
            connect(url) as conn,
            psycopg.connect(url, autocommit=True, options=MASTER_SESSION_OPTIONS) as master_conn,
        ):
            for row, (name, values) in zip(timed, names, strict=True):
                try:
                    row.text["index"] = scans(explain_generic(conn, query(name), values))
                    for _ in range(ctx.runs):
                        row.add("ms", time_calls(master_conn, query(name), values, calls, False))
                except Exception as error:
                    row.fail(error)
    finally:
        ctx.drop_database("djbench_b7_big")


def measure_turns(circus: Circus, url: str, count: int, row: Row) -> None:
    log = MasterLog(circus.log_file)
    times: list[float] = []
    commands: list[float] = []
    with connect(url) as conn:
        for _ in range(count):
            log.mark()
            conn.execute("""SELECT pg_notify('delayed_jobs', '"*"')""")

            def turn() -> re.Match[str] | None:
                for line in log.lines():
                    match = TURN.search(line.text)
                    if match:
                        return match
                return None

            match = wait_for(turn, 10, "a scaling turn", interval=0.01)
            assert match is not None
            commands.append(float(match.group(1)))
            times.append(float(match.group(2)))
            time.sleep(0.3)
    row.add("p50", percentile(times, 50))
    row.add("p90", percentile(times, 90))
    row.add("max", max(times))
    row.add("commands", percentile(commands, 50))
