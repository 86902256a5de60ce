"""B7 the master as the installation grows: 20 worker groups x 3 databases."""

from __future__ import annotations

import re
import time

from benchmarks import jobs
from benchmarks.circus_run import Circus, MasterLog, not_available
from benchmarks.common import Context, Row, Section, Table, connect, percentile, wait_for
from benchmarks.scenarios.b5_master import DATABASES, measure_idle
from circus_djmaster.store import sync_executor

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
ready, so no command grows a watcher: the commands are the observation's."""


def run(ctx: Context) -> Section:
    idle = ctx.size(60, 10)
    passes = ctx.size(20, 5)
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
    return section


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
