"""Hostile jobs in a bare ``djmaster worker`` process (issue 5, item 5), where the
master plays no part: the worker itself must turn each into a clear ``last_error`` and
go on with the innocent jobs enqueued alongside.

Already covered and not repeated: bad JSON, a non-callable, wrong arguments and
sys.exit (tests/process/test_worker_limits.py::test_jobs_that_exit_or_have_bad_
arguments_fail_with_a_readable_error), handler decoding rules one by one
(tests/unit/test_handler.py). Deaths of workers need the master: see
test_hostile_jobs_master.py.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from circus_djmaster import enqueue
from circus_djmaster.contracts.exit_codes import WorkerExit
from tests.hostile.helpers import done_keys, insert_job
from tests.support.worker_run import events, job_row, start_worker, write_settings

pytestmark = pytest.mark.usefixtures("spawn")  # both spawn modes

J = "tests.support.jobs"
H = "tests.support.hostile_jobs"
MB = 2**20


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int | None, str]:
    """Wait for the worker to exit; kill it after ``timeout`` (returns None then)."""
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        return None, err
    return proc.returncode, err


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    return write_settings(tmp_path, workers=[{"queues": ["q1"], "sleep_delay": 0.2}])


def innocents(conn: psycopg.Connection[Any], prefix: str, count: int = 3) -> list[str]:
    """Innocent jobs, after the hostile ones (priority 1)."""
    keys = [f"{prefix}-innocent-{n}" for n in range(count)]
    for key in keys:
        insert_job(conn, f"{J}:record", key, queue="q1", priority=1)
    return keys


def raw_job(conn: psycopg.Connection[Any], handler: str) -> int:
    row = conn.execute(
        "INSERT INTO delayed_jobs (handler, queue) VALUES (%s, 'q1') RETURNING id", (handler,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_handlers_that_cannot_be_imported_fail_at_once_and_the_others_run(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Missing module, missing attribute, a module raising at import and handlers of the
    wrong shape: each job fails for good at its first run (failed_at, one attempt) with
    a last_error saying what is wrong, and the worker runs the innocent jobs."""
    cases = {
        "tests.hostile.no_such_module:run": "cannot import module 'tests.hostile.no_such_module'",
        f"{J}:no_such_function": "has no attribute 'no_such_function'",
        "tests.hostile.raises_on_import:run": "this module is broken at import time",
    }
    ids = {enqueue(path, queue="q1", database_url=database_url): why for path, why in cases.items()}
    shapes = {
        "[1, 2]": "handler must be a JSON object, got list",
        '{"callable": "tests.support.jobs:record", "args": "k"}': '"args" must be a list',
        '{"callable": "no_colon"}': '"callable" must look like "module.path:function"',
        '{"callable": "tests.support.jobs:record", "sql": "DROP TABLE x"}': "unknown keys: sql",
        "": "handler is not valid JSON",
    }
    ids |= {raw_job(conn, text): why for text, why in shapes.items()}
    keys = innocents(conn, "imports")
    code, err = finish(start_worker(settings, database_url))
    assert code == WorkerExit.RETIRED, err
    for job_id, why in ids.items():
        row = job_row(conn, job_id)
        assert row is not None and row["failed_at"] is not None, (why, row)
        assert row["attempts"] == 1 and row["locked_by"] is None
        assert row["last_error"].startswith("HandlerError: "), row["last_error"]
        assert why in row["last_error"], row["last_error"]
    assert done_keys(conn, keys) == set(keys)


def test_a_handler_nested_too_deeply_for_json_fails_like_any_bad_handler(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """100,000 nested arrays in ``args``: json.loads raises RecursionError, not
    ValueError. The job must fail for good as an undecodable handler, and the worker
    must go on with the innocent jobs instead of losing its job thread."""
    deep = '{"callable": "tests.support.jobs:record", "args": ' + "[" * 100_000 + "]" * 100_000
    job_id = raw_job(conn, deep + "}")
    keys = innocents(conn, "deep")
    code, err = finish(start_worker(settings, database_url))
    row = job_row(conn, job_id)
    assert row is not None and row["failed_at"] is not None, (row, err[-2000:])
    assert row["attempts"] == 1 and row["locked_by"] is None
    assert row["last_error"].startswith("HandlerError: "), row["last_error"]
    assert done_keys(conn, keys) == set(keys)
    assert code == WorkerExit.RETIRED, err[-2000:]


def test_a_callable_whose_module_calls_sys_exit_on_import_fails_and_the_worker_goes_on(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Importing the job's module raises SystemExit (a BaseException): the job must fail
    as a handler that cannot be imported, and the worker run the innocent jobs and
    retire, not sit forever without a job thread while holding the job's lock."""
    job_id = enqueue("tests.hostile.exits_on_import:run", queue="q1", database_url=database_url)
    keys = innocents(conn, "sysexit-import")
    code, _err = finish(start_worker(settings, database_url), timeout=10)
    row = job_row(conn, job_id)
    assert code == WorkerExit.RETIRED, f"worker exit: {code} (None: still running after 10 s)"
    assert row is not None and row["failed_at"] is not None and row["locked_by"] is None, row
    assert row["last_error"].startswith("HandlerError: ") and "SystemExit" in row["last_error"]
    assert done_keys(conn, keys) == set(keys)


@pytest.mark.parametrize(
    ("function", "shown"),
    [
        ("raise_with_nul", "ValueError: bad record"),
        ("raise_with_lone_surrogate", "OSError: cannot open caf"),
        ("raise_unprintable", "_Unprintable"),
    ],
    ids=["nul-byte", "lone-surrogate", "unprintable"],
)
def test_a_job_error_the_database_cannot_store_is_still_recorded_as_a_retry(
    settings: Path, database_url: str, conn: psycopg.Connection[Any], function: str, shown: str
) -> None:
    """A job raising an exception whose message PostgreSQL cannot store as text (a NUL
    byte, a lone surrogate) or that cannot even be turned into a string: the run is
    still an ordinary failure (one attempt, a retry later, unlocked, a readable
    last_error), and the worker neither crashes nor leaves the job locked to itself
    (it would stay locked until the lock timeout, max_run_time + 30 s: 4.5 h by
    default)."""
    job_id = enqueue(f"{H}:{function}", [function], queue="q1", database_url=database_url)
    keys = innocents(conn, function)
    code, err = finish(start_worker(settings, database_url))
    row = job_row(conn, job_id)
    assert row is not None
    assert (row["attempts"], row["locked_by"], row["failed_at"]) == (1, None, None), row
    assert row["due_in"] > 0, "retried later, as any failed job"
    assert shown in (row["last_error"] or ""), row["last_error"]
    assert done_keys(conn, keys) == set(keys)
    assert code == WorkerExit.RETIRED, err[-2000:]


def test_a_10_mb_payload_runs_and_a_10_mb_error_is_truncated(
    settings: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A 10 MB argument reaches the job intact (no NOTIFY limit is involved: the
    payload names queues only); a job failing with a 10 MB message gets a bounded
    last_error (64 KB)."""
    payload = ("0123456789abcdef" * (10 * MB // 16))[: 10 * MB - 7] + "é✓🚀'\"\\"
    enqueue(f"{H}:digest", ["big", payload], queue="q1", database_url=database_url)
    failing = enqueue(f"{J}:fail", ["x" * (10 * MB)], queue="q1", database_url=database_url)
    keys = innocents(conn, "big")
    code, err = finish(start_worker(settings, database_url))
    assert code == WorkerExit.RETIRED, err[-2000:]
    sha = hashlib.sha256(payload.encode("utf-8")).hexdigest()
    assert [event for _k, event, _p in events(conn, "big")] == [f"done {len(payload)} {sha}"]
    row = job_row(conn, failing)
    assert row is not None and row["attempts"] == 1 and row["locked_by"] is None
    assert row["last_error"].startswith("RuntimeError: xxx")
    assert len(row["last_error"]) <= 64 * 1024
    assert row["last_error"].endswith("(truncated)")
    assert done_keys(conn, keys) == set(keys)
    # The handler was stored as JSON text, byte for byte.
    stored = conn.execute("SELECT handler FROM delayed_jobs WHERE id = %s", (failing,)).fetchone()
    assert stored is not None and len(json.loads(stored[0])["args"][0]) == 10 * MB
