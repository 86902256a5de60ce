"""B1 drain throughput: N no-op jobs pre-enqueued, then drained by fresh worker processes."""

from __future__ import annotations

from benchmarks.common import Context, Row, Section, Table
from benchmarks.peers import DrainSetting, System, Unavailable, make_systems, set_up

# (row key suffix, setting) per system. Ours: 1x1 and 2x4 at the defaults (read_ahead
# "auto"), one job per round trip and read_ahead 100. Peers: the same total
# concurrency, plus their best setting here.
SETTINGS: dict[str, list[tuple[str, DrainSetting]]] = {
    "circus-djmaster": [
        ("1x1/default", DrainSetting(1, 1, None, "defaults (read_ahead auto)")),
        ("2x4/default", DrainSetting(2, 4, None, "defaults (read_ahead auto)")),
        ("1x1/ra1", DrainSetting(1, 1, 1, "read_ahead 1")),
        ("1x1/ra100", DrainSetting(1, 1, 100, "read_ahead 100")),
        ("2x4/ra1", DrainSetting(2, 4, 1, "read_ahead 1")),
        ("2x4/ra100", DrainSetting(2, 4, 100, "read_ahead 100")),
    ],
    # 2x4 is also procrastinate's best here: 2x2, 2x8, 2x16, 3x4, 3x8 and 4x4 were tried
    # (3,000 jobs) and none was faster beyond the noise.
    "procrastinate": [
        ("1x1", DrainSetting(1, 1)),
        ("2x4", DrainSetting(2, 4)),
    ],
    "pgqueuer": [
        ("1x1", DrainSetting(1, 1, 1, "batch 1")),
        ("2x4", DrainSetting(2, 4, 4, "batch 4")),
        ("best", DrainSetting(2, 100, 100, "best: batch 100")),
    ],
}

HOW = """\
{count:,} no-op jobs are enqueued in bulk (not timed), the table is `VACUUM ANALYZE`d and a
`CHECKPOINT` is taken; then P worker processes (each with T concurrent jobs) are started
and the clock runs until the last of them exited by itself once the queue was empty
(circus-djmaster: `idle_timeout = 0`, and `read_ahead` not set in the "defaults" rows:
it is `"auto"`; procrastinate: `worker --one-shot`; pgqueuer:
`mode=drain`). **jobs/s** = jobs / that wall time, so it includes interpreter start-up;
**steady jobs/s** = jobs / (last job start - first job start), from the jobs' own
timestamps, without start-up and shutdown. Each system has its own database on the same
server; the configurations run interleaved, one run of each in turn. Peer concurrency:
procrastinate `--concurrency T` (async no-op task; 2x4 is also its best setting here:
2x2, 2x8, 2x16, 3x4, 3x8 and 4x4 were no faster); pgqueuer batch size T (it dispatches a
whole batch at once), and its best, 2 processes with batch 100. Worker logging at warning
level everywhere."""


def run(ctx: Context) -> Section:
    count = ctx.size(20_000, 2_000)
    section = Section("B1", "Drain throughput", HOW.format(count=count))
    plan: list[tuple[System, DrainSetting, Row]] = []
    for system in make_systems(ctx):
        table = Table(
            system.name, [("rate", "jobs/s"), ("steady", "steady jobs/s"), ("wall", "wall s")], []
        )
        section.tables.append(table)
        rows = [
            (setting, Row(f"b1/{system.name}/{suffix}", system.name, setting.describe()))
            for suffix, setting in SETTINGS[system.name]
        ]
        table.rows += [row for _, row in rows]
        reason = set_up(system)
        if reason is not None:
            for _, row in rows:
                row.fail(reason)
            continue
        assert not isinstance(system, Unavailable)
        plan += [(system, setting, row) for setting, row in rows]
    for _ in range(ctx.runs):
        for system, setting, row in plan:
            if row.error is not None:
                continue
            try:
                drain = system.drain(setting, count)
            except Exception as error:
                row.fail(error)
                continue
            row.add("rate", drain.rate)
            row.add("wall", drain.wall)
            if drain.window_rate is not None:
                row.add("steady", drain.window_rate)
    return section
