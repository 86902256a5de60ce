"""B4 query cost at scale: the master's ready count and the worker's reserve at 1M rows."""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg

from benchmarks.common import Context, Row, Section, Table, connect, scalar
from circus_djmaster.config.settings import LOCK_MARGIN
from circus_djmaster.store import sync_executor as store
from circus_djmaster.store.async_executor import MASTER_SESSION_OPTIONS
from circus_djmaster.store.queries import query
from circus_djmaster.store.statements import JobFilter

QUEUES = 8  # q0 .. q7
GROUP_QUEUES = ("q1", "q2")  # the group whose queries are timed
LOCK_TIMEOUT = 4 * 3600 + LOCK_MARGIN  # max_run_time (default) + margin, as the settings do

# Out of every 1,000 rows: 3 ready, 2 running (locked now), 600 scheduled in the future,
# the rest failed. Queues q0..q7 (i / 7 mod 8: every kind in every queue); priorities 0..2.
FILL = f"""
INSERT INTO delayed_jobs (handler, queue, priority, run_at, locked_at, locked_by, failed_at,
                          attempts)
SELECT '{{"callable": "benchmarks.jobs:noop", "args": [], "kwargs": {{}}}}',
       'q' || ((i / 7) %% {QUEUES}),
       i %% 3,
       CASE WHEN i %% 1000 < 5 THEN now() - interval '1 minute' * (i %% 97)
            WHEN i %% 1000 < 605 THEN now() + interval '1 second' * (60 + i %% 86400)
            ELSE now() - interval '1 day' END,
       CASE WHEN i %% 1000 BETWEEN 3 AND 4 THEN now() END,
       CASE WHEN i %% 1000 BETWEEN 3 AND 4 THEN 'host:bench pid:' || (i %% 50) END,
       CASE WHEN i %% 1000 >= 605 THEN now() - interval '1 hour' END,
       CASE WHEN i %% 1000 >= 605 THEN 25 ELSE 0 END
  FROM generate_series(1, %(rows)s) AS i
"""

HOW = """\
`delayed_jobs` is filled with {rows:,} rows by one `INSERT ... SELECT generate_series`:
per 1,000 rows 3 ready, 2 running (locked), 600 scheduled in the future, 395 failed (their
run_at in the past, as failed jobs keep theirs); 8 queues, priorities 0-2; then `VACUUM
ANALYZE`. Timed (ms per call, mean over {calls} calls, on one autocommit connection, so
psycopg prepares the statements after 5 executions like the master and workers do): the
master's `count_ready_in_queues` (a group on 2 of the 8 queues, `limit` 8; timed on a
session with the master's options, `plan_cache_mode = force_generic_plan`) and the
worker's `reserve_jobs_in_queues` with `limit` 1 and 100, each inside a transaction
rolled back after the call so the data stays the same (the rolled-back row versions stay
as dead tuples: the reserve times include skipping them). "rows filtered" = rows the
custom plan read and threw away ("Rows Removed by Filter"). The plans below are
`EXPLAIN (ANALYZE, BUFFERS)` of the same statements with the values inlined (custom plans)
and as a prepared statement with `plan_cache_mode = force_generic_plan` (what a prepared
statement may switch to after 5 executions); "(used)" marks the plan the system runs:
generic for the master's count (its session forces them), custom for the workers'
reserve."""


def params(limit: int, **extra: Any) -> dict[str, Any]:
    job_filter = JobFilter(GROUP_QUEUES)
    return job_filter.params() | {"lock_timeout": LOCK_TIMEOUT, "limit": limit} | extra


CASES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("count_ready_in_queues, limit 8", "count_ready_in_queues", params(8), False),
    (
        "reserve_jobs_in_queues, limit 1",
        "reserve_jobs_in_queues",
        params(1, locked_by="host:bench pid:1", done=[]),
        True,
    ),
    (
        "reserve_jobs_in_queues, limit 100",
        "reserve_jobs_in_queues",
        params(100, locked_by="host:bench pid:1", done=[]),
        True,
    ),
]


def run(ctx: Context) -> Section:
    rows = ctx.size(1_000_000, 100_000)
    calls = ctx.size(200, 50)
    section = Section("B4", "Query cost at scale", HOW.format(rows=rows, calls=calls))
    url = ctx.fresh_database("djbench_b4")
    with connect(url) as conn:
        store.migrate(conn)
        conn.execute(FILL, {"rows": rows})
        conn.execute("VACUUM ANALYZE delayed_jobs")
        ready = scalar(
            conn,
            "SELECT count(*) FROM delayed_jobs WHERE failed_at IS NULL AND locked_at IS NULL "
            "AND run_at <= now() AND queue = ANY(%s)",
            [list(GROUP_QUEUES)],
        )
    section.notes.append(
        f"{ready:,} ready jobs in the timed group's 2 queues; "
        f"{rows * 3 // 1000:,} ready in all 8 queues."
    )
    table = Table(
        "",
        [("ms", "ms per call"), ("index", "scans of delayed_jobs"), ("filtered", "rows filtered")],
        [],
    )
    section.tables.append(table)
    timed = [
        (Row(f"b4/{name}/{values['limit']}", "circus-djmaster", label), name, values, rollback)
        for label, name, values, rollback in CASES
    ]
    table.rows += [row for row, *_ in timed]
    # The master counts on a session with its own options (generic plans: see
    # circus_djmaster/store/async_executor.py).
    master_conn = psycopg.connect(url, autocommit=True, options=MASTER_SESSION_OPTIONS)
    with connect(url) as conn, master_conn:
        for row, name, values, _ in timed:
            try:
                plan = explain(conn, query(name), values)
                generic = explain_generic(conn, query(name), values)
                section.blocks.append((f"{row.setting}: custom plan", plan))
                section.blocks.append((f"{row.setting}: generic plan", generic))
                # The plan the system runs first: the master forces generic plans
                # (async_executor.MASTER_SESSION_OPTIONS), workers get custom ones.
                plans = [("custom", plan), ("generic", generic)]
                if name.startswith("count_ready"):
                    plans.reverse()
                (used_kind, used), (other_kind, other) = plans
                row.text["index"] = (
                    f"{used_kind} (used): {scans(used)}; {other_kind}: {scans(other)}"
                )
                row.text["filtered"] = str(sum(int(n) for n in FILTERED.findall(used)))
            except Exception as error:
                row.fail(error)
        for _ in range(ctx.runs):
            for row, name, values, rollback in timed:
                if row.error is not None:
                    continue
                session = master_conn if name.startswith("count_ready") else conn
                try:
                    row.add("ms", time_calls(session, query(name), values, calls, rollback))
                except Exception as error:
                    row.fail(error)
    ctx.drop_database("djbench_b4")
    return section


SCAN = re.compile(
    r"(Seq Scan on delayed_jobs|Index (?:Only )?Scan using \w+|Bitmap Index Scan on \w+)"
)
FILTERED = re.compile(r"Rows Removed by Filter: (\d+)")


def scans(plan: str) -> str:
    """The scans of delayed_jobs in a plan (the pkey look-ups of the UPDATE left out);
    "NO index" marks a sequential scan."""
    found = [s for s in dict.fromkeys(SCAN.findall(plan)) if "delayed_jobs_pkey" not in s]
    text = ", ".join(s.replace(" on delayed_jobs", "").replace(" using", "") for s in found)
    return f"{text} (NO index)" if any(s.startswith("Seq Scan") for s in found) else text


def time_calls(
    conn: psycopg.Connection[Any], sql: str, values: dict[str, Any], calls: int, rollback: bool
) -> float:
    total = 0.0
    for _ in range(calls):
        if rollback:
            with conn.transaction(force_rollback=True):
                started = time.perf_counter()
                conn.execute(sql, values).fetchall()
                total += time.perf_counter() - started
        else:
            started = time.perf_counter()
            conn.execute(sql, values).fetchall()
            total += time.perf_counter() - started
    return total / calls * 1000


def inline(conn: psycopg.Connection[Any], sql: str, values: dict[str, Any]) -> str:
    return psycopg.ClientCursor(conn).mogrify(sql, values)


def explain(conn: psycopg.Connection[Any], sql: str, values: dict[str, Any]) -> str:
    with conn.transaction(force_rollback=True):
        rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {inline(conn, sql, values)}").fetchall()
    return "\n".join(row[0] for row in rows)


PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def explain_generic(conn: psycopg.Connection[Any], sql: str, values: dict[str, Any]) -> str:
    """EXPLAIN ANALYZE of ``sql`` as a prepared statement forced to its generic plan."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    prepared = PLACEHOLDER.sub(number, sql)
    arguments = ", ".join(inline(conn, "%s", [values[name]]) for name in names)
    conn.execute(f"PREPARE djbench_generic AS {prepared}")
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            rows = conn.execute(
                f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE djbench_generic({arguments})"
            ).fetchall()
    finally:
        conn.execute("DEALLOCATE djbench_generic")
    return "\n".join(row[0] for row in rows)
