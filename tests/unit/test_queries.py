"""The named-queries file: parsing, and that every query the store uses exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from circus_djmaster.store import queries
from circus_djmaster.store import statements as store
from circus_djmaster.store.queries import all_queries, parse_queries, query

STORE_SOURCE = Path(store.__file__).read_text("utf-8")
JOBS_SOURCE = (Path(store.__file__).parent.parent / "api" / "jobs.py").read_text("utf-8")


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


def test_shipped_queries_are_all_non_empty_and_comment_free() -> None:
    loaded = all_queries()
    assert loaded
    for name, sql in loaded.items():
        assert sql, name
        assert not any(line.lstrip().startswith("--") for line in sql.splitlines()), name


def _names_used(source: str) -> set[str]:
    return set(re.findall(r'(?<![.\w])query\(\s*"(\w+)"\s*\)', source))


def _stems_used(source: str) -> set[str]:
    return set(re.findall(r'job_filter\.query\(\s*"(\w+)"\s*\)', source))


def test_every_query_named_by_the_store_exists() -> None:
    names = _names_used(STORE_SOURCE) | _names_used(JOBS_SOURCE)
    # The regexes must find the store's calls, or this test would pass vacuously.
    assert {"retry_job", "fail_job", "insert_job", "insert_jobs"} <= names
    missing = names - set(all_queries())
    assert not missing


def test_every_filtered_query_has_both_queue_variants() -> None:
    stems = _stems_used(STORE_SOURCE)
    assert {"reserve_jobs", "count_ready", "seconds_to_next"} <= stems
    for stem in stems:
        assert f"{stem}_in_queues" in all_queries()
        assert f"{stem}_any_queue" in all_queries()


def test_job_filter_picks_the_variant_by_queues() -> None:
    assert store.JobFilter(queues=("a",)).query("reserve_jobs") == query("reserve_jobs_in_queues")
    assert store.JobFilter().query("reserve_jobs") == query("reserve_jobs_any_queue")


def test_job_filter_params_use_int4_bounds_when_priorities_are_unset() -> None:
    assert store.JobFilter().params() == {
        "queues": [],
        "min_priority": -(2**31),
        "max_priority": 2**31 - 1,
    }
    assert store.JobFilter(("a", "b"), 1, 5).params() == {
        "queues": ["a", "b"],
        "min_priority": 1,
        "max_priority": 5,
    }


def test_unknown_query_name_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        query("no_such_query")


def test_locked_by_has_delayed_jobs_form() -> None:
    assert store.locked_by_for(42, "web1") == "host:web1 pid:42"


def test_notify_channel_is_delayed_jobs() -> None:
    assert queries.NOTIFY_CHANNEL == "delayed_jobs"
    assert "LISTEN delayed_jobs" in query("listen")
