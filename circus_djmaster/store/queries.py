"""Named SQL queries, loaded once from ``sql/queries.sql`` (procrastinate's layout).

Keeping SQL in ``.sql`` files keeps it readable, reviewable and testable on its own; every
query is parameterised (``%(name)s``), never built from values.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

NOTIFY_CHANNEL = "delayed_jobs"

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a queries file into ``{name: sql}`` (comment lines are kept out of the SQL)."""
    parts = _NAME_LINE.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=False):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        sql = "\n".join(lines).strip()
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = sql
    return queries


@functools.cache
def all_queries() -> dict[str, str]:
    text = resources.files("circus_djmaster.store").joinpath("sql/queries.sql").read_text("utf-8")
    return parse_queries(text)


def query(name: str) -> str:
    return all_queries()[name]


def schema_sql() -> str:
    return resources.files("circus_djmaster.store").joinpath("sql/schema.sql").read_text("utf-8")
