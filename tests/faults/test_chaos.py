"""The chaos run (docs/design.md §8, issue 5): jobs drain while the harness breaks things.

Two forms, chosen by the environment:

* short (default, part of the normal suite): 600 jobs, about 30 s;
* long: ``DJMASTER_CHAOS=long python -m pytest tests/faults/test_chaos.py -s``:
  8,000 jobs, about two minutes. ``DJMASTER_CHAOS_REPORT=FILE`` also writes the figures
  (Markdown) to FILE; ``DJMASTER_CHAOS_SEED=N`` replays one run's random choices.

docs/RELIABILITY.md quotes a long run's figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import socket
import time
from pathlib import Path

import pytest

from tests.support.chaos import (
    CIRCUSD_RESTART,
    PLUGIN_KILL,
    POISON_EXIT,
    POISON_PREFIX,
    POSTGRES_RESTART,
    WORKER_KILL,
    ChaosHarness,
    Database,
    analyse,
    format_report,
    load_runs,
    poison_exits,
    release_times,
)
from tests.support.circus_run import circus_env, circus_table, read
from tests.support.pg_servers import EmbeddedServer
from tests.support.worker_run import write_settings

pytestmark = pytest.mark.usefixtures("spawn")  # both spawn modes


@dataclasses.dataclass(frozen=True)
class Form:
    jobs: int
    durations: tuple[float, float]  # each job sleeps a uniform random time in this range
    max_processes: int
    max_threads: int
    kill_every: tuple[float, float]  # seconds between two worker kills
    postgres_outage: float
    drain_timeout: float


FORMS = {
    "short": Form(
        jobs=600,
        durations=(0.05, 0.5),
        max_processes=4,
        max_threads=2,
        kill_every=(1.5, 3.0),
        postgres_outage=2.0,
        drain_timeout=100.0,
    ),
    "long": Form(
        jobs=8000,
        durations=(0.02, 0.3),
        max_processes=6,
        max_threads=2,
        kill_every=(2.0, 4.0),
        postgres_outage=10.0,
        drain_timeout=280.0,
    ),
}
FORM_NAME = os.environ.get("DJMASTER_CHAOS", "short")
if FORM_NAME not in FORMS:
    raise ValueError(f"DJMASTER_CHAOS must be one of {', '.join(FORMS)}, not {FORM_NAME!r}")
FORM = FORMS[FORM_NAME]
MAX_ATTEMPTS = 2
#: The poison job becomes due this long after the start, among the running jobs.
POISON_DUE = 3.0
#: When each one-off fault is injected, as the fraction of jobs completed.
STAGES = ((0.15, POSTGRES_RESTART), (0.40, PLUGIN_KILL), (0.65, CIRCUSD_RESTART))
#: Longest time from a worker's kill to the master's release of its job: the master
#: releases it on its next turn; after a kill during the Postgres outage, once the
#: database answers again (its back-off is at most a few seconds by then); after a kill
#: while the plugin was down, once circus respawned it. (Locks go stale only after
#: 600 s + 30 s here: a release is the master's doing.)
RELEASE_WITHIN = 15.0
#: …plus, for a kill during the Postgres outage, the outage and the master's back-off
#: (0.5 s doubling: its next try comes at most about as long after the end of the
#: outage as the outage lasted).
OUTAGE_FACTOR = 2.0


def settings_for(folder: Path, form: Form) -> Path:
    group = {
        "name": "chaos",
        "queues": ["chaos"],
        "max_processes": form.max_processes,
        "max_threads": form.max_threads,
        "sleep_delay": 0.2,
        "idle_timeout": 2.0,
        # A poison job runs among the good ones: it must fail after 2 attempts, and no
        # good job beside it may fail (the harness never cuts one job twice).
        "max_attempts": MAX_ATTEMPTS,
        # Locks go stale only after max_run_time + 30 s: far beyond the run, so a job
        # that runs again was released by the master, not by a lock timeout.
        "max_run_time": 600.0,
    }
    return write_settings(
        folder,
        workers=[group],
        tables={"circus": circus_table(folder)},
        monitor_interval=1.0,
        polling_interval=5.0,
        log_file=str(folder / "djmaster.log"),
        pid_file=str(folder / "master.pid"),
        log_level="info",
    )


def enqueue_jobs(db: Database, keys: list[str], rng: random.Random, form: Form) -> None:
    handlers = [
        json.dumps(
            {
                "callable": "tests.support.chaos_jobs:run",
                "args": [key, round(rng.uniform(*form.durations), 3)],
                "kwargs": {},
            }
        )
        for key in keys
    ]
    db.query(
        "INSERT INTO delayed_jobs (handler, queue) "
        "SELECT h, 'chaos' FROM unnest(%s::text[]) AS h RETURNING id",
        (handlers,),
    )
    poison = json.dumps(
        {"callable": "tests.support.chaos_jobs:poison", "args": [POISON_PREFIX], "kwargs": {}}
    )
    db.query(
        "INSERT INTO delayed_jobs (handler, queue, run_at) "
        "VALUES (%s, 'chaos', now() + make_interval(secs => %s)) RETURNING id",
        (poison, POISON_DUE),
    )


@pytest.mark.timeout(FORM.drain_timeout + 120)
@pytest.mark.parametrize("form_name", [FORM_NAME])
def test_chaos_every_job_completes_and_duplicates_are_explained_by_kills(
    form_name: str, tmp_path: Path, own_server: EmbeddedServer
) -> None:
    """Every job completes at least once while workers are SIGKILLed every few seconds,
    Postgres restarts once (a worker dies during the outage), the plugin is killed once
    (a worker dies before circus respawns it), circusd restarts once, and a poison job
    (``os._exit(3)``) kills whatever worker runs it, good jobs beside it included, with
    ``max_attempts = 2``.

    What the test asserts (tests/support/chaos.py ``analyse`` has the exact rules):

    * every job completed at least once, and ``delayed_jobs`` ends with only the poison
      job, failed after its 2 attempts: nothing locked, no good job failed (a worker
      that dies running several jobs charges none of them; they run alone after);
    * a run cut short ran on a worker the harness SIGKILLed after the run started;
    * a job that completed more than once did so only because the worker of the
      earlier run was SIGKILLed between that run's start and its deletion (the
      completion is deleted in the worker's next round trip), or because the Postgres
      outage or circusd's restart began in that window; at most ``2 * max_threads``
      runs are charged to one kill (one running and one completed-not-deleted job per
      thread);
    * two runs of one job never overlap; the job of a killed worker is released by the
      master (its log says so) within ``RELEASE_WITHIN`` seconds (plus
      ``OUTAGE_FACTOR`` times the outage for a kill during the Postgres outage), and
      runs again.

    The report gives, for each fault, the time to the first job completed after it.
    """
    form = FORMS[form_name]
    seed = int(os.environ.get("DJMASTER_CHAOS_SEED", str(random.randrange(2**32))))
    rng = random.Random(seed)
    print(f"chaos form {form_name}, seed {seed} (DJMASTER_CHAOS_SEED={seed} replays it)")
    server = own_server
    url = server.create_database("chaos")
    db = Database(url)
    keys = [f"job{i:05d}" for i in range(form.jobs)]
    enqueue_jobs(db, keys, rng, form)
    settings = settings_for(tmp_path, form)
    harness = ChaosHarness(server, settings, circus_env({"DJMASTER_DATABASE_URL": url}), db, rng)
    began = time.monotonic()
    try:
        harness.start()
        stage = 0
        next_kill = time.monotonic() + rng.uniform(*form.kill_every)
        deadline = time.monotonic() + form.drain_timeout
        while True:
            [(done,)] = db.query(
                "SELECT count(DISTINCT job_key) FROM job_runs WHERE ended_at IS NOT NULL"
            )
            [(left,)] = db.query("SELECT count(*) FROM delayed_jobs WHERE failed_at IS NULL")
            if done == form.jobs and left == 0:
                break
            if time.monotonic() > deadline:
                rows = db.query(
                    "SELECT id, attempts, locked_by, failed_at, left(last_error, 200) "
                    "FROM delayed_jobs ORDER BY id LIMIT 20"
                )
                raise AssertionError(
                    f"not drained within {form.drain_timeout}s: {done} of {form.jobs} jobs "
                    f"completed, {left} left in delayed_jobs, e.g. {rows}"
                )
            if stage < len(STAGES) and done >= STAGES[stage][0] * form.jobs:
                kind = STAGES[stage][1]
                if kind == POSTGRES_RESTART:
                    harness.restart_postgres(form.postgres_outage)
                elif kind == PLUGIN_KILL:
                    harness.kill_plugin()
                else:
                    harness.restart_circusd()
                stage += 1
                continue
            if time.monotonic() >= next_kill:
                harness.kill_busy_worker()
                next_kill = time.monotonic() + rng.uniform(*form.kill_every)
            time.sleep(0.1)  # the cadence of the harness' checks
        elapsed = time.monotonic() - began
        runs, poisoned = poison_exits(load_runs(db.connection()))
        failed = db.query(
            "SELECT handler, attempts, last_error FROM delayed_jobs WHERE failed_at IS NOT NULL"
        )
        [(left_over,)] = db.query("SELECT count(*) FROM delayed_jobs")
    except BaseException:
        if harness.run is not None:
            print(harness.run.logs()[-20000:])
        raise
    finally:
        harness.close()
        db.close()

    log = read(settings.with_name("djmaster.log"))
    released = release_times(log, socket.gethostname())
    faults = sorted(harness.faults + poisoned, key=lambda f: f.at)
    report = analyse(keys, runs, faults, released)
    report.elapsed = elapsed
    text = format_report(report, title=f"Chaos run, {form_name} form, seed {seed}")
    print(text)
    (tmp_path / "chaos-report.md").write_text(text + "\n", encoding="utf-8")
    target = os.environ.get("DJMASTER_CHAOS_REPORT")
    if target:
        Path(target).write_text(text + "\n", encoding="utf-8")

    kinds = [fault.kind for fault in report.faults]
    # Only the poison job failed, after its own attempts; the good jobs beside it did not.
    assert len(failed) == 1 and left_over == 1, [row[0][:80] for row in failed]
    ((handler, attempts, last_error),) = failed
    assert "chaos_jobs:poison" in handler and attempts == MAX_ATTEMPTS, (handler, attempts)
    assert "exited with code 3 while running this job" in last_error
    assert kinds.count(POISON_EXIT) >= MAX_ATTEMPTS, kinds
    assert stage == len(STAGES), f"only {stage} of the one-off faults were injected"
    for kind in (POSTGRES_RESTART, PLUGIN_KILL, CIRCUSD_RESTART):
        assert kinds.count(kind) == 1, kinds
    kills = report.kills()
    assert len(kills) >= 5, f"only {len(kills)} worker kills: not a chaos run"
    notes = {fault.note for fault in kills}
    assert {"during the Postgres outage", "while the master was down"} <= notes, notes

    assert report.missing == [], f"{len(report.missing)} jobs never completed"
    assert report.overlaps == [], f"runs of one job overlapped: {report.overlaps[:5]}"
    assert report.unexplained_interruptions == [], report.unexplained_interruptions[:5]
    assert report.unexplained_duplicates == [], [
        (d.run.key, d.run.pid, d.run.started, d.run.ended)
        for d in report.unexplained_duplicates[:5]
    ]
    worst = max(report.per_kill.values(), default=0)
    assert worst <= 2 * form.max_threads, report.per_kill
    for recovery in report.recoveries:
        fault = recovery.fault
        if fault.kind != WORKER_KILL or recovery.rerun is None:
            continue  # not a kill, or its worker's run had just ended: nothing was cut
        assert recovery.rerun != math.inf, f"the job of killed worker {fault.pid} never re-ran"
        assert recovery.released is not None, (
            f"the master never logged the release of killed worker {fault.pid}'s job"
        )
        limit = RELEASE_WITHIN
        if fault.note == "during the Postgres outage":
            limit += OUTAGE_FACTOR * form.postgres_outage
        assert recovery.released <= limit, (
            f"the job of worker {fault.pid} ({fault.note or 'busy'}) was released only "
            f"{recovery.released:.1f}s after the kill"
        )
