"""B2 warm pickup latency: one idle worker waiting; jobs enqueued one at a time."""

from __future__ import annotations

from benchmarks.common import Context, Row, Section, Table
from benchmarks.peers import Unavailable, make_systems, set_up, summary

HOW = """\
One worker process with one job at a time is started and warmed up (one job run, then
0.5 s idle), so it waits for work: circus-djmaster with `idle_timeout = "1h"`,
`sleep_delay = 3600` and `listen = true` (only a NOTIFY can wake it); procrastinate
`worker --concurrency 1` (LISTEN/NOTIFY on); pgqueuer batch 1, continuous mode. Then
{count} jobs are enqueued one at a time, {gap:g} ms apart, each on an open autocommit
connection with the system's own enqueue call. **Latency** ("commit -> job start", as
issue 6 defines it) = the job's start time (`time.time()` in the job) - `time.time()` as
the enqueue call returned, its commit done (a job may start before the client has read
the answer to its commit: a latency can be slightly negative); percentiles in ms over the
{count} jobs of a run; min/median/max over runs. Until 2026-11-29 the clock started just
before the enqueue call, which added the INSERT's own round trip and commit (about
1.3 ms here) to every system's figure."""

SETTINGS = {
    "circus-djmaster": "1x1, listen, idle_timeout 1h",
    "procrastinate": "1x1, listen_notify",
    "pgqueuer": "1 process, batch 1",
}


def run(ctx: Context) -> Section:
    count = ctx.size(200, 50)
    gap = 0.020
    section = Section("B2", "Warm pickup latency", HOW.format(count=count, gap=gap * 1000))
    table = Table("", [("p50", "p50 ms"), ("p90", "p90 ms"), ("p99", "p99 ms")], [])
    section.tables.append(table)
    plan = []
    for system in make_systems(ctx):
        row = Row(f"b2/{system.name}", system.name, SETTINGS[system.name])
        table.rows.append(row)
        reason = set_up(system)
        if reason is not None:
            row.fail(reason)
        else:
            assert not isinstance(system, Unavailable)
            plan.append((system, row))
    for _ in range(ctx.runs):
        for system, row in plan:
            if row.error is not None:
                continue
            try:
                latencies = system.pickup_latencies(count, gap)
            except Exception as error:
                row.fail(error)
                continue
            for metric, value in summary(latencies).items():
                row.add(metric, value)
    return section
