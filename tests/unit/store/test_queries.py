"""The named-queries file: parsing, the ``_any_queue`` twins, and that every statement
names a query that exists."""

from __future__ import annotations

import datetime as dt
import inspect

import pytest

from circus_djmaster.contracts.locked_by import host_prefix, pid_of, worker_locked_by
from circus_djmaster.contracts.notify import ALL_QUEUES, CHANNEL, queues_from_payload
from circus_djmaster.store import statements
from circus_djmaster.store.queries import ANY_QUEUE, IN_QUEUES, all_queries, parse_queries, query
from circus_djmaster.store.statements import JobFilter, Statement


def test_parse_queries_splits_on_name_lines() -> None:
    text = (
        "-- file header, not part of any query\n"
        "\n"
        "-- name: first\n"
        "SELECT 1;\n"
        "\n"
        "-- name: second\n"
        "SELECT 2\n"
        "  FROM t;\n"
    )
    assert parse_queries(text) == {"first": "SELECT 1;", "second": "SELECT 2\n  FROM t;"}


def test_parse_queries_strips_comment_lines_from_the_sql() -> None:
    text = "-- name: q\n-- what it does\nSELECT 1\n    -- an indented comment\n  FROM t;\n"
    assert parse_queries(text) == {"q": "SELECT 1\n  FROM t;"}


def test_parse_queries_ignores_text_before_the_first_name() -> None:
    assert parse_queries("SELECT 'orphan';\n-- name: q\nSELECT 1;\n") == {"q": "SELECT 1;"}


def test_parse_queries_refuses_a_name_defined_twice() -> None:
    text = "-- name: q\nSELECT 1;\n-- name: q\nSELECT 2;\n"
    with pytest.raises(ValueError, match="query 'q' is defined twice"):
        parse_queries(text)


def test_parse_queries_of_text_without_names_is_empty() -> None:
    assert parse_queries("-- just a comment\nSELECT 1;\n") == {}


def test_an_in_queues_query_gets_its_any_queue_twin_without_the_queues_line() -> None:
    text = (
        "-- name: pick_in_queues\n"
        "SELECT id FROM t\n"
        " WHERE failed_at IS NULL\n"
        "   AND queue = ANY(%(queues)s::varchar[])\n"
        "   AND priority > 0;\n"
    )
    queries = parse_queries(text)
    assert (
        queries["pick_any_queue"]
        == "SELECT id FROM t\n WHERE failed_at IS NULL\n   AND priority > 0;"
    )
    assert "%(queues)s" in queries["pick_in_queues"]


@pytest.mark.parametrize("lines", [0, 2])
def test_an_in_queues_query_must_name_the_queues_on_exactly_one_line(lines: int) -> None:
    body = "".join("   AND queue = ANY(%(queues)s)\n" for _ in range(lines))
    with pytest.raises(ValueError, match="exactly one line"):
        parse_queries(f"-- name: pick_in_queues\nSELECT 1 WHERE true\n{body};\n")


def test_a_twin_written_by_hand_is_kept_as_written() -> None:
    text = (
        "-- name: pick_in_queues\nSELECT 1 WHERE true\n AND queue = ANY(%(queues)s);\n"
        "-- name: pick_any_queue\nSELECT 2;\n"
    )
    assert parse_queries(text)["pick_any_queue"] == "SELECT 2;"


def test_a_query_written_twice_is_refused() -> None:
    text = "-- name: pick\nSELECT 1;\n-- name: pick\nSELECT 2;\n"
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries(text)


def test_shipped_queries_are_all_non_empty_and_comment_free() -> None:
    loaded = all_queries()
    assert loaded
    for name, sql in loaded.items():
        assert sql, name
        assert not any(line.lstrip().startswith("--") for line in sql.splitlines()), name


def test_shipped_pairs_differ_only_by_the_queues_condition() -> None:
    loaded = all_queries()
    stems = [name.removesuffix(IN_QUEUES) for name in loaded if name.endswith(IN_QUEUES)]
    assert sorted(stems) == ["count_ready", "reserve_jobs", "seconds_to_next", "stats"]
    # Written by hand (tests/integration/store: both answer as the plain min(run_at)).
    by_hand = {"seconds_to_next"}
    for stem in sorted(set(stems) - by_hand):
        in_queues = loaded[stem + IN_QUEUES].splitlines()
        any_queue = loaded[stem + ANY_QUEUE].splitlines()
        dropped = [line for line in in_queues if line not in any_queue]
        assert len(dropped) == 1 and "queue = ANY(%(queues)s" in dropped[0], stem
        assert "%(queues)s" not in loaded[stem + ANY_QUEUE], stem


def _statement_builders() -> list[tuple[str, object]]:
    return [
        (name, function)
        for name, function in inspect.getmembers(statements, inspect.isfunction)
        if function.__module__ == statements.__name__ and not name.startswith("_")
    ]


def test_every_statement_names_a_query_that_exists() -> None:
    samples: dict[str, Statement[object]] = {
        "reserve_jobs": statements.reserve_jobs(
            JobFilter(("q",)), locked_by="x", limit=1, lock_timeout=1
        ),
        "complete_jobs": statements.complete_jobs([1]),
        "touch_jobs": statements.touch_jobs([1], locked_by="x"),
        "retry_job": statements.retry_job(1, attempts=1, last_error="e"),
        "fail_job": statements.fail_job(1, attempts=1, last_error="e"),
        "delete_job": statements.delete_job(1),
        "fail_exhausted_job": statements.fail_exhausted_job(1, note="n"),
        "unlock_jobs": statements.unlock_jobs(locked_by="x"),
        "unlock_job_ids": statements.unlock_job_ids([1], locked_by="x"),
        "database_now": statements.database_now(),
        "count_ready": statements.count_ready(JobFilter(), lock_timeout=1, limit=1),
        "seconds_to_next": statements.seconds_to_next(JobFilter()),
        "release_dead_workers_jobs": statements.release_dead_workers_jobs(
            ["x"], charged_error="c", isolated_error="i"
        ),
        "locked_by_on_host": statements.locked_by_on_host("host:h pid:"),
        "listen": statements.listen(),
        "probe": statements.probe(),
        "insert_job": statements.insert_job(
            handler="{}", queue="q", priority=0, run_at=None, delay=0.0
        ),
        "insert_jobs": statements.insert_jobs(
            [statements.NewJob(handler="{}", queue="q", priority=0, run_at=None, delay=0.0)]
        ),
        "group_stats": statements.group_stats(JobFilter(), lock_timeout=1),
        "list_jobs": statements.list_jobs(failed=True, queue=None, limit=1),
        "retry_failed_jobs": statements.retry_failed_jobs(None),
        "delete_failed_jobs": statements.delete_failed_jobs([1]),
        "due_now_jobs": statements.due_now_jobs([1]),
        "delete_waiting_jobs": statements.delete_waiting_jobs([1]),
        "insert_unique_job": statements.insert_unique_job(
            handler="{}", queue="q", priority=0, run_at=None, delay=0.0, unique_key="k"
        ),
        "finish_jobs": statements.finish_jobs(
            [
                statements.FinishedJob(
                    1, statements.FinishOutcome.SUCCEEDED, attempts=1, keep=60.0, ended=0.0
                )
            ],
            now=1.0,
        ),
        "keep_failed_job": statements.keep_failed_job(
            1, keep=60.0, run_time=0.5, finished_by="host:h pid:1"
        ),
        "cancel_jobs": statements.cancel_jobs([1], keep_by_queue={"q": 60.0}),
        "cancel_requested": statements.cancel_requested([1]),
        "prune_finished_jobs": statements.prune_finished_jobs(limit=10),
        "finished_job": statements.finished_job(1),
        "live_job": statements.live_job(1),
        "recurring_last_runs": statements.recurring_last_runs(
            ["r"], now=dt.datetime.now(dt.timezone.utc)
        ),
        "enqueue_recurring_job": statements.enqueue_recurring_job(
            name="r",
            due_at=dt.datetime.now(dt.timezone.utc),
            handler="{}",
            queue="q",
            priority=0,
        ),
        "prune_recurring_runs": statements.prune_recurring_runs(older_than=60.0, limit=10),
    }
    # Every builder of the module is sampled here, so none escapes the check.
    assert sorted(samples) == sorted(name for name, _ in _statement_builders())
    for name, statement in samples.items():
        assert statement.sql, name
        for key in statement.params:
            if key == "queues" and statement.name.endswith(ANY_QUEUE):
                continue  # the twin drops the queues condition; its filter still passes them
            assert f"%({key})s" in statement.sql, (name, key)


def test_statements_with_nothing_to_do_make_no_round_trip() -> None:
    assert statements.complete_jobs([]).skip
    assert statements.touch_jobs([], locked_by="x").skip
    assert statements.unlock_job_ids([], locked_by="x").skip
    assert statements.insert_jobs([]).skip
    assert statements.finish_jobs([], now=0.0).skip
    assert statements.cancel_jobs([]).skip
    assert statements.cancel_requested([]).skip
    now = dt.datetime.now(dt.timezone.utc)
    empty_runs = statements.recurring_last_runs([], now=now)
    assert empty_runs.skip and empty_runs.read([]) == statements.RecurringState(now, {})
    empty = statements.release_dead_workers_jobs([], charged_error="c", isolated_error="i")
    assert empty.skip and empty.read([]) == []


def test_job_filter_picks_the_variant_by_queues() -> None:
    assert JobFilter(queues=("a",)).variant("reserve_jobs") == "reserve_jobs_in_queues"
    assert JobFilter().variant("reserve_jobs") == "reserve_jobs_any_queue"


def test_job_filter_params_use_int4_bounds_when_priorities_are_unset() -> None:
    assert JobFilter().params() == {
        "queues": [],
        "min_priority": -(2**31),
        "max_priority": 2**31 - 1,
    }
    assert JobFilter(("a", "b"), 1, 5).params() == {
        "queues": ["a", "b"],
        "min_priority": 1,
        "max_priority": 5,
    }


def test_unknown_query_name_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        query("no_such_query")


def test_locked_by_has_delayed_jobs_form() -> None:
    assert worker_locked_by(42, "web1") == "host:web1 pid:42"
    assert worker_locked_by(42, "web1").startswith(host_prefix("web1"))
    assert pid_of("host:web1 pid:42") == 42
    assert pid_of("host:web1") is None


def test_notify_channel_is_delayed_jobs() -> None:
    assert CHANNEL == "delayed_jobs"
    assert f"LISTEN {CHANNEL}" in query("listen")
    assert queues_from_payload(f'"{ALL_QUEUES}"') is None
