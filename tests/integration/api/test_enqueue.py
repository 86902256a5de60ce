"""Enqueueing for real: the Python API, transactions, bulk enqueue and ``djmaster enqueue``."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from circus_djmaster import JobCall, enqueue, enqueue_many, job
from circus_djmaster.api.context import DATABASE_URL_ENV
from circus_djmaster.contracts.notify import CHANNEL
from circus_djmaster.store import pgserver, statements
from circus_djmaster.store.queries import query
from circus_djmaster.store.statements import JobFilter
from circus_djmaster.store.sync_executor import connect, execute
from tests.support import jobs as support_jobs

Conn = psycopg.Connection[Any]
REPO_ROOT = Path(__file__).resolve().parents[3]
MARKER = "test-marker"


@job(queue="mail", priority=5)
def send_mail(to: str, subject: str = "") -> None:
    pass


@pytest.fixture(scope="module")
def enqueue_database_url(pg_server_url: str, template_database: str) -> Iterator[str]:
    """One migrated database for this module (each test empties delayed_jobs first)."""
    name = f"djmaster_test_enqueue_{os.getpid()}"
    pgserver.drop_database(pg_server_url, name)
    yield pgserver.create_database(pg_server_url, name, template=template_database)
    pgserver.drop_database(pg_server_url, name)


@pytest.fixture
def url(enqueue_database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    with connect(enqueue_database_url) as connection:
        connection.execute("TRUNCATE delayed_jobs")
    return enqueue_database_url


@pytest.fixture
def conn(url: str) -> Iterator[Conn]:
    with connect(url) as connection:
        yield connection


@pytest.fixture
def listener(url: str) -> Iterator[Conn]:
    with connect(url, application_name="test listener") as listening:
        listening.execute(query("listen"))
        yield listening


def notifications(listener: Conn, sender: Conn) -> list[str]:
    """Payloads received up to a marker sent now (notifications come in commit order)."""
    sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, MARKER))
    payloads = []
    for notify in listener.notifies(timeout=10):
        if notify.payload == MARKER:
            return payloads
        payloads.append(notify.payload)
    raise AssertionError(f"the marker did not arrive within 10 s (got {payloads})")


def rows(conn: Conn) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT *, run_at - created_at AS delay FROM delayed_jobs ORDER BY id"
        ).fetchall()


def job_row(conn: Conn, job_id: int) -> dict[str, Any]:
    (found,) = [r for r in rows(conn) if r["id"] == job_id]
    return found


def count(conn: Conn) -> int:
    result = conn.execute("SELECT count(*) FROM delayed_jobs").fetchone()
    assert result is not None
    return int(result[0])


# ------------------------------------------------------------------------ enqueue API


def test_enqueue_with_a_database_url_returns_the_new_jobs_id(url: str, conn: Conn) -> None:
    job_id = enqueue("tests.support.jobs:record", ["k1"], database_url=url)
    row = job_row(conn, job_id)
    assert json.loads(row["handler"]) == {
        "callable": "tests.support.jobs:record",
        "args": ["k1"],
        "kwargs": {},
    }
    assert (row["queue"], row["priority"], row["attempts"]) == ("default", 0, 0)
    assert row["delay"] == dt.timedelta(0)  # due at once, on the database clock
    assert (row["locked_at"], row["failed_at"]) == (None, None)


def test_enqueue_uses_the_environment_variable_by_default(
    url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    first = enqueue(support_jobs.record, ["a"])
    second = send_mail.delay("bob@example.com", subject="hi")
    assert second > first
    row = job_row(conn, second)
    assert json.loads(row["handler"]) == {
        "callable": f"{__name__}:send_mail",
        "args": ["bob@example.com"],
        "kwargs": {"subject": "hi"},
    }


def test_enqueue_of_a_plain_function_stores_its_path(url: str, conn: Conn) -> None:
    job_id = enqueue(support_jobs.fail, ["msg"], database_url=url)
    assert json.loads(job_row(conn, job_id)["handler"])["callable"] == "tests.support.jobs:fail"


def test_enqueue_takes_queue_and_priority_from_the_job(url: str, conn: Conn) -> None:
    job_id = enqueue(send_mail, ["a@b"], database_url=url)
    row = job_row(conn, job_id)
    assert (row["queue"], row["priority"]) == ("mail", 5)


def test_enqueue_overrides_the_jobs_queue_and_priority(url: str, conn: Conn) -> None:
    job_id = enqueue(send_mail, ["a@b"], queue="urgent", priority=0, database_url=url)
    row = job_row(conn, job_id)
    assert (row["queue"], row["priority"]) == ("urgent", 0)


def test_job_enqueue_method_passes_overrides(url: str, conn: Conn) -> None:
    job_id = send_mail.enqueue(["a@b"], {"subject": "s"}, priority=-3, database_url=url)
    row = job_row(conn, job_id)
    assert (row["queue"], row["priority"]) == ("mail", -3)
    assert json.loads(row["handler"])["kwargs"] == {"subject": "s"}


def test_enqueue_at_an_aware_run_at(url: str, conn: Conn) -> None:
    paris = dt.timezone(dt.timedelta(hours=2))
    when = dt.datetime(2031, 6, 1, 14, 30, 15, 250000, tzinfo=paris)
    job_id = enqueue(send_mail, ["x"], run_at=when, database_url=url)
    assert job_row(conn, job_id)["run_at"] == when


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        (90, dt.timedelta(seconds=90)),
        (0.5, dt.timedelta(seconds=0.5)),
        (dt.timedelta(hours=2), dt.timedelta(hours=2)),
    ],
)
def test_enqueue_with_a_delay_counts_from_the_databases_now(
    url: str, conn: Conn, delay: float | dt.timedelta, expected: dt.timedelta
) -> None:
    job_id = enqueue(send_mail, ["x"], delay=delay, database_url=url)
    # created_at is the database's now() of the insert: run_at is exactly delay after it.
    assert job_row(conn, job_id)["delay"] == expected


def test_a_delayed_job_is_not_ready_yet(url: str, conn: Conn) -> None:
    enqueue(send_mail, ["x"], delay=60, database_url=url)
    assert execute(conn, statements.count_ready(JobFilter(), lock_timeout=3600, limit=10)) == 0
    seconds = execute(conn, statements.seconds_to_next(JobFilter(("mail",))))
    assert seconds is not None and 55 < seconds <= 60


def test_enqueue_notifies_the_listener(url: str, conn: Conn, listener: Conn) -> None:
    enqueue(send_mail, ["x"], database_url=url)
    assert notifications(listener, conn) == ['["mail"]']


# ----------------------------------------------------------------------- transactions


def test_enqueue_in_a_transaction_that_raises_leaves_no_job(conn: Conn) -> None:
    with pytest.raises(RuntimeError, match="the caller's work failed"), conn.transaction():
        enqueue(send_mail, ["x"], connection=conn)
        raise RuntimeError("the caller's work failed")
    assert count(conn) == 0


def test_enqueue_in_an_explicitly_rolled_back_transaction_leaves_no_job(
    conn: Conn, listener: Conn
) -> None:
    with conn.transaction() as tx:
        enqueue(send_mail, ["x"], connection=conn)
        assert count(conn) == 1  # visible inside the transaction
        raise psycopg.Rollback(tx)
    assert count(conn) == 0
    assert notifications(listener, conn) == []


def test_enqueue_on_a_non_autocommit_connection_follows_its_rollback(url: str, conn: Conn) -> None:
    with psycopg.connect(url) as caller:
        enqueue(send_mail, ["x"], connection=caller)
        assert count(conn) == 0  # not committed: invisible to others
        caller.rollback()
    assert count(conn) == 0


def test_enqueue_in_a_committed_transaction_keeps_the_job(url: str, conn: Conn) -> None:
    with psycopg.connect(url) as caller:
        with caller.transaction():
            job_id = enqueue(send_mail, ["x"], connection=caller)
            caller.execute("SELECT 1")  # the caller's own work in the same transaction
            assert count(conn) == 0
        caller.commit()
    assert [r["id"] for r in rows(conn)] == [job_id]


def test_enqueue_many_in_a_rolled_back_transaction_leaves_no_job(conn: Conn) -> None:
    with conn.transaction() as tx:
        ids = enqueue_many([send_mail.call("a"), send_mail.call("b")], connection=conn)
        assert len(ids) == 2
        raise psycopg.Rollback(tx)
    assert count(conn) == 0


# ----------------------------------------------------------------------- enqueue_many


def test_enqueue_many_inserts_every_job_in_one_statement(
    url: str, conn: Conn, listener: Conn
) -> None:
    calls = [JobCall("tests.support.jobs:record", [f"k{n}"], queue=f"q{n}") for n in range(6)]
    enqueue_many(calls, database_url=url)
    # One statement fires the insert trigger once, with every queue; one statement per job
    # (each its own transaction on enqueue_many's autocommit connection) would send six.
    (payload,) = notifications(listener, conn)
    assert sorted(json.loads(payload)) == [f"q{n}" for n in range(6)]


def test_enqueue_many_returns_the_ids_in_the_order_of_the_calls(url: str, conn: Conn) -> None:
    keys = [f"k{n}" for n in range(20)]
    ids = enqueue_many([support_jobs.hooked.call(key, False) for key in keys], database_url=url)
    assert len(ids) == len(set(ids)) == 20
    by_id = {r["id"]: json.loads(r["handler"])["args"][0] for r in rows(conn)}
    assert [by_id[job_id] for job_id in ids] == keys


def test_enqueue_many_stores_each_jobs_options(url: str, conn: Conn) -> None:
    when = dt.datetime(2032, 1, 1, tzinfo=dt.timezone.utc)
    calls = [
        send_mail.call("a", subject="s"),
        JobCall("tests.support.jobs:record", ("b",), queue=None, priority=-2, run_at=when),
        JobCall("tests.support.jobs:record", ("c",), queue="later", delay=dt.timedelta(minutes=5)),
        JobCall("tests.support.jobs:record", ("d",), delay=12.5),
    ]
    ids = enqueue_many(calls, database_url=url)
    got = {r["id"]: r for r in rows(conn)}
    first, second, third, fourth = (got[job_id] for job_id in ids)
    assert (first["queue"], first["priority"], first["delay"]) == ("mail", 5, dt.timedelta(0))
    assert json.loads(first["handler"])["kwargs"] == {"subject": "s"}
    assert (second["queue"], second["priority"], second["run_at"]) == (None, -2, when)
    assert (third["queue"], third["delay"]) == ("later", dt.timedelta(minutes=5))
    assert fourth["delay"] == dt.timedelta(seconds=12.5)


def test_enqueue_many_uses_the_environment_variable_by_default(
    url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    assert len(enqueue_many([send_mail.call("a")])) == 1
    assert count(conn) == 1


def test_enqueue_many_of_nothing_does_not_touch_the_connection(url: str) -> None:
    closed = psycopg.connect(url)
    closed.close()
    assert enqueue_many([], connection=closed) == []


# ----------------------------------------------------------------- djmaster enqueue


def djmaster(
    *args: str, url: str | None = None, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
    environ["PYTHONPATH"] = str(REPO_ROOT)
    if url is not None:
        environ[DATABASE_URL_ENV] = url
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "circus_djmaster", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        cwd=REPO_ROOT,
        timeout=60,
    )


def test_cli_enqueues_a_callable_with_every_option(url: str, conn: Conn) -> None:
    result = djmaster(
        "enqueue",
        "tests.support.jobs:sleep_then_record",
        "--args",
        '["key", 0.5]',
        "--kwargs",
        "{}",
        "--queue",
        "shell",
        "--priority",
        "7",
        "--in",
        "1m30s",
        url=url,
    )
    assert result.returncode == 0, result.stderr
    (row,) = rows(conn)
    assert result.stdout.strip() == str(row["id"])
    assert json.loads(row["handler"]) == {
        "callable": "tests.support.jobs:sleep_then_record",
        "args": ["key", 0.5],
        "kwargs": {},
    }
    assert (row["queue"], row["priority"], row["delay"]) == ("shell", 7, dt.timedelta(seconds=90))


def test_cli_enqueue_defaults_and_database_url_option(url: str, conn: Conn) -> None:
    result = djmaster(
        "enqueue", "tests.support.jobs:record", "--kwargs", '{"key": "v"}', "--database-url", url
    )
    assert result.returncode == 0, result.stderr
    (row,) = rows(conn)
    assert json.loads(row["handler"])["args"] == []
    assert json.loads(row["handler"])["kwargs"] == {"key": "v"}
    assert (row["queue"], row["priority"], row["delay"]) == ("default", 0, dt.timedelta(0))


def test_cli_enqueue_at_a_run_at_with_offset(url: str, conn: Conn) -> None:
    result = djmaster(
        "enqueue", "tests.support.jobs:record", "--run-at", "2031-02-03T04:05:06+01:00", url=url
    )
    assert result.returncode == 0, result.stderr
    (row,) = rows(conn)
    assert row["run_at"] == dt.datetime(2031, 2, 3, 3, 5, 6, tzinfo=dt.timezone.utc)


def test_cli_enqueue_into_the_first_database_of_a_settings_file(
    url: str, conn: Conn, tmp_path: Path
) -> None:
    settings = tmp_path / "djmaster.toml"
    settings.write_text(
        textwrap.dedent("""\
        [databases]
        main = "${DJM_TEST_ENQUEUE_URL}"
        other = "postgresql://nobody@127.0.0.1:1/none"

        [[workers]]
        queues = ["q"]
    """)
    )
    result = djmaster(
        "enqueue",
        "tests.support.jobs:record",
        "--settings",
        str(settings),
        env={"DJM_TEST_ENQUEUE_URL": url},
    )
    assert result.returncode == 0, result.stderr
    assert count(conn) == 1


def test_cli_enqueues_json_lines_from_stdin_in_one_statement(
    url: str, conn: Conn, listener: Conn
) -> None:
    record, sleep = "tests.support.jobs:record", "tests.support.jobs:sleep_then_record"
    jobs = [
        {"callable": record, "args": ["a"], "queue": "x"},
        None,  # a blank line
        {"callable": record, "args": ["b"], "priority": 3, "queue": "y"},
        {"callable": sleep, "args": ["c", 1], "kwargs": {}, "delay": "10s", "queue": "z"},
    ]
    lines = "\n".join("" if data is None else json.dumps(data) for data in jobs)
    result = djmaster("enqueue", "--json-lines", "-", url=url, stdin=lines + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "enqueued 3 job(s)"
    got = rows(conn)
    assert [json.loads(r["handler"])["args"][0] for r in got] == ["a", "b", "c"]
    assert [(r["queue"], r["priority"]) for r in got] == [("x", 0), ("y", 3), ("z", 0)]
    assert got[2]["delay"] == dt.timedelta(seconds=10)
    (payload,) = notifications(listener, conn)
    assert sorted(json.loads(payload)) == ["x", "y", "z"]


def test_cli_enqueues_json_lines_from_a_file(url: str, conn: Conn, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"callable": "tests.support.jobs:record", "args": ["f"]}\n')
    result = djmaster("enqueue", "--json-lines", str(path), url=url)
    assert result.returncode == 0, result.stderr
    assert count(conn) == 1


@pytest.mark.parametrize(
    ("args", "stdin", "error"),
    [
        (
            ["tests.support.jobs:record", "--args", "[1,"],
            None,
            "djmaster: --args: not valid JSON: Expecting value",
        ),
        (
            ["tests.support.jobs:record", "--args", '{"a": 1}'],
            None,
            "djmaster: --args: must be a JSON list",
        ),
        (
            ["tests.support.jobs:record", "--kwargs", "[1]"],
            None,
            "djmaster: --kwargs: must be a JSON object",
        ),
        (
            ["tests.support.jobs:record", "--kwargs", "{nope}"],
            None,
            "djmaster: --kwargs: not valid JSON",
        ),
        (
            ["tests.support.jobs:record", "--run-at", "2031-02-03T04:05:06"],
            None,
            "djmaster: --run-at: '2031-02-03T04:05:06' needs a UTC offset, "
            "e.g. 2026-01-01T12:00+00:00",
        ),
        (
            ["tests.support.jobs:record", "--run-at", "tomorrow"],
            None,
            "djmaster: --run-at: 'tomorrow' is not an ISO 8601 time",
        ),
        ([], None, "djmaster: give CALLABLE (module.path:function) or --json-lines FILE"),
        (
            ["tests.support.jobs.record"],
            None,
            'djmaster: "callable" must look like "module.path:function", '
            "got 'tests.support.jobs.record'",
        ),
        (
            ["tests.support.jobs:record", "--json-lines", "-"],
            "",
            "djmaster: give CALLABLE or --json-lines, not both",
        ),
        (
            ["--json-lines", "-"],
            '{"callable": "tests.support.jobs:record"}\n{"callable": "m:f", "foo": 1, "bar": 2}\n',
            "djmaster: line 2: unknown keys bar, foo",
        ),
        (["--json-lines", "-"], "not json\n", "djmaster: line 1: not valid JSON"),
        (
            ["--json-lines", "-"],
            '{"args": []}\n',
            'djmaster: line 1: needs an object with "callable"',
        ),
        (["--json-lines", "-"], "[1]\n", 'djmaster: line 1: needs an object with "callable"'),
        (
            ["--json-lines", "/nonexistent/jobs.jsonl"],
            None,
            "djmaster: /nonexistent/jobs.jsonl: No such file or directory",
        ),
    ],
)
def test_cli_enqueue_bad_input_exits_2_with_its_error(
    url: str, conn: Conn, args: list[str], stdin: str | None, error: str
) -> None:
    result = djmaster("enqueue", *args, url=url, stdin=stdin)
    assert result.returncode == 2
    assert result.stderr.startswith(error), result.stderr
    assert result.stdout == ""
    assert count(conn) == 0


def test_cli_enqueue_refuses_run_at_and_in_together(url: str, conn: Conn) -> None:
    result = djmaster(
        "enqueue",
        "tests.support.jobs:record",
        "--run-at",
        "2031-02-03T04:05:06+00:00",
        "--in",
        "5s",
        url=url,
    )
    assert result.returncode == 2
    assert "argument --in: not allowed with argument --run-at" in result.stderr
    assert count(conn) == 0


def test_cli_enqueue_without_a_database_names_the_variable() -> None:
    result = djmaster("enqueue", "tests.support.jobs:record")
    assert result.returncode != 0
    assert DATABASE_URL_ENV in result.stderr


def test_cli_json_line_with_args_that_are_not_a_list_is_refused(url: str, conn: Conn) -> None:
    # enqueue() refuses args="abc"; the JSON-lines path must not split it into characters.
    line = json.dumps({"callable": "tests.support.jobs:record", "args": "abc"})
    result = djmaster("enqueue", "--json-lines", "-", url=url, stdin=line + "\n")
    assert result.returncode == 2, [json.loads(r["handler"]) for r in rows(conn)]
    assert "line 1" in result.stderr
    assert "args" in result.stderr
    assert count(conn) == 0
