"""B8 fairness under auto read-ahead: long jobs are not held behind each other, short
ones are not held behind long ones."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks import jobs
from benchmarks.common import Context, Row, Section, Table, bench_env, connect, percentile
from benchmarks.peers.ours import QUEUE, Ours, worker_cmd
from circus_djmaster import JobCall, enqueue_many

HOW = """\
Worker processes started by hand (no master: only how they reserve matters), `max_threads
= 1`, `idle_timeout = 0`, jobs enqueued in one statement before the workers start.
**Long**: 2 processes, {long} jobs that sleep 1 s, at the defaults (`read_ahead = "auto"`):
makespan = first job start -> last job end (half the jobs' seconds if the two workers
share them evenly, all of them if one worker holds them all). **Mix**: 2 processes,
{mix} jobs: every {every}th sleeps 1 s, the others 1 ms; the latency of the short jobs
from the enqueue to their start, p50/p90, at the defaults and with `read_ahead = 1` (one
job per round trip), back to back."""

LONG = 10
MIX = 60
EVERY = 6
QUICK_LONG = 4  # the quick run's sizes: a smoke test of the harness
QUICK_MIX = 24


def run(ctx: Context) -> Section:
    long, mix = ctx.size(LONG, QUICK_LONG), ctx.size(MIX, QUICK_MIX)
    section = Section(
        "B8", "Fairness under auto read-ahead", HOW.format(long=long, mix=mix, every=EVERY)
    )
    long_row = Row("b8/long", "circus-djmaster", f"2x1, {long} x 1 s jobs, defaults")
    auto_row = Row("b8/mix/auto", "circus-djmaster", "2x1, 1 ms among 1 s jobs, defaults")
    one_row = Row("b8/mix/ra1", "circus-djmaster", "2x1, 1 ms among 1 s jobs, read_ahead 1")
    section.tables += [
        Table("Long jobs", [("makespan", "makespan s")], [long_row]),
        Table(
            "Short jobs among long ones",
            [("p50", "p50 ms"), ("p90", "p90 ms")],
            [auto_row, one_row],
        ),
    ]
    ours = Ours(ctx)
    try:
        ours.setup()
    except Exception as error:
        for row in (long_row, auto_row, one_row):
            row.fail(error)
        return section
    for _ in range(ctx.runs):
        for row, calls, batch in (
            (long_row, long_jobs(long), None),
            (auto_row, mixed_jobs(mix), None),
            (one_row, mixed_jobs(mix), 1),
        ):
            try:
                measure(ctx, ours, row, calls, batch)
            except Exception as error:
                row.fail(error)
    return section


def long_jobs(count: int) -> list[JobCall]:
    return [JobCall("benchmarks.jobs:sleep", [f"long-{n}", 1.0], queue=QUEUE) for n in range(count)]


def mixed_jobs(count: int) -> list[JobCall]:
    return [
        JobCall(
            "benchmarks.jobs:sleep",
            [f"{'long' if n % EVERY == 0 else 'short'}-{n}", 1.0 if n % EVERY == 0 else 0.001],
            queue=QUEUE,
        )
        for n in range(count)
    ]


def measure(ctx: Context, ours: Ours, row: Row, calls: list[JobCall], batch: int | None) -> None:
    with connect(ours.url) as conn:
        conn.execute("DELETE FROM delayed_jobs")
    worker = {"max_threads": 1, "idle_timeout": 0, "sleep_delay": 0.2}
    if batch is not None:
        worker["read_ahead"] = batch
    settings = ours.settings(f"b8-{row.key.replace('/', '-')}", **worker)
    record = Path(ours.folder) / "b8.rec"
    record.unlink(missing_ok=True)
    sent = time.time()
    enqueue_many(calls, database_url=ours.url)
    env = bench_env(DJMASTER_DATABASE_URL=ours.url, **{jobs.RECORD_ENV: str(record)})
    workers = [
        ctx.processes.spawn(worker_cmd(settings), env=env, log=Path(ours.folder) / "b8.out")
        for _ in range(2)
    ]
    ctx.processes.wait_all(workers, timeout=60, what="B8 workers")
    records = jobs.read_records(record)
    starts = {r.key: r.time for r in records if r.kind == "job"}
    ends = {r.key: r.time for r in records if r.kind == "end"}
    if len(starts) < len(calls):
        raise RuntimeError(f"only {len(starts)} of {len(calls)} jobs ran")
    if row.key == "b8/long":
        row.add("makespan", max(ends.values()) - min(starts.values()))
        return
    short = [(at - sent) * 1000 for key, at in starts.items() if key.startswith("short-")]
    row.add("p50", percentile(short, 50))
    row.add("p90", percentile(short, 90))
