"""B3b scale from zero right after a retire: circusd's default check_delay (5 s); each
job is inserted 0-300 ms after the previous worker exited."""

from __future__ import annotations

import random
import time

from benchmarks import jobs
from benchmarks.circus_run import Circus, MasterLog, not_available, watcher_name
from benchmarks.common import Context, Row, Section, Table, connect, wait_for
from benchmarks.scenarios.b3_scale_from_zero import DATABASE, GROUP, QUEUE, add_percentiles, sample
from circus_djmaster.store import sync_executor

HOW = """\
As B3 (circusd + the master, one watcher with `max_processes = 1`, `idle_timeout = 0`),
with circusd's default `check_delay = 5`: the worker that ran the previous job retires as
soon as the queue is empty, and each job is inserted a random 0-300 ms after that worker
exited (vanished from `circusctl list`), without waiting for anything to settle. INSERT
-> job start, {samples} samples per run. Before issue 11, circusd reaped the exited
worker only at its next check, and the master took it for a process about to spawn
until then: the job waited up to `check_delay`."""


def run(ctx: Context) -> Section:
    samples = ctx.size(20, 5)
    section = Section("B3b", "Scale from zero right after a retire", HOW.format(samples=samples))
    total = Row("b3b/total", "circus-djmaster", "INSERT -> job start, 0-300 ms after a retire")
    section.tables.append(
        Table("", [("p50", "p50 ms"), ("p90", "p90 ms"), ("max", "max ms")], [total])
    )
    url = ctx.fresh_database("djbench_b3b")
    with connect(url) as conn:
        sync_executor.migrate(conn)
    folder = ctx.folder("b3b")
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
            check_delay=5.0,
        )
    except Exception as error:
        total.fail(not_available(error))
        return section
    watcher = watcher_name(GROUP, DATABASE)
    log = MasterLog(circus.log_file)
    rng = random.Random(11)
    try:
        with connect(url) as conn:
            circus.wait_idle([watcher])
            for _ in range(ctx.runs):
                measured: list[float] = []
                for i in range(samples + 1):
                    # The worker of the previous job exits by itself (idle_timeout 0).
                    wait_for(lambda: not circus.pids(watcher), 20, "the worker to exit", 0.002)
                    time.sleep(rng.uniform(0.0, 0.3))
                    log.mark()
                    events = sample(conn, f"r{i}-{time.time():.0f}", record, log)
                    if i:  # the first follows a settled zero: not a sample
                        measured.append((events["job"] - events["sent"]) * 1000)
                add_percentiles(total, measured)
    except Exception as error:
        total.fail(error)
    finally:
        circus.close()
    return section
