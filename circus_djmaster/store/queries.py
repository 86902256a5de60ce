"""Named SQL queries, loaded once from ``sql/queries.sql`` (procrastinate's layout).

Keeping SQL in ``.sql`` files keeps it readable, reviewable and testable on its own; every
query is parameterised (``%(name)s``), never built from values. :mod:`.statements`
builds the parameters of each.

Queries filtered by a worker group's queues come in pairs, so that each stays a plain,
index-friendly statement: ``NAME_in_queues`` (``queue = ANY(%(queues)s)``: an index
range scan per queue) and ``NAME_any_queue`` for a group serving every queue. Only the
first is written in the file, as a rule; :func:`parse_queries` makes its twin by dropping
the one line that names ``%(queues)s``, so the two never drift apart. A twin written in
the file (when dropping a line cannot give the right statement) is kept as written.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = ["ANY_QUEUE", "IN_QUEUES", "all_queries", "parse_queries", "query", "schema_sql"]

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
IN_QUEUES = "_in_queues"
ANY_QUEUE = "_any_queue"
_QUEUES_PARAMETER = "%(queues)s"


def parse_queries(text: str) -> dict[str, str]:
    """Split a queries file into ``{name: sql}`` (comment lines are kept out of the SQL),
    adding the ``_any_queue`` twin of every ``_in_queues`` query.

    Raises ValueError for a name defined twice (a twin included) or an ``_in_queues``
    query that does not name ``%(queues)s`` on exactly one line.
    """
    parts = _NAME_LINE.split(text)
    written = set(parts[1::2])
    queries: dict[str, str] = {}

    def add(name: str, sql: str) -> None:
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = sql

    for name, body in zip(parts[1::2], parts[2::2], strict=False):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        add(name, "\n".join(lines).strip())
        twin = name.removesuffix(IN_QUEUES) + ANY_QUEUE
        if name.endswith(IN_QUEUES) and twin not in written:
            add(twin, _without_queues(name, lines))
    return queries


def _without_queues(name: str, lines: list[str]) -> str:
    naming = [index for index, line in enumerate(lines) if _QUEUES_PARAMETER in line]
    if len(naming) != 1:
        raise ValueError(
            f"query {name!r} must name {_QUEUES_PARAMETER} on exactly one line "
            f"(found {len(naming)}): its {ANY_QUEUE} twin drops that line"
        )
    return "\n".join(line for index, line in enumerate(lines) if index != naming[0]).strip()


@functools.cache
def all_queries() -> dict[str, str]:
    text = resources.files("circus_djmaster.store").joinpath("sql/queries.sql").read_text("utf-8")
    return parse_queries(text)


def query(name: str) -> str:
    """The SQL of query ``name``; KeyError if there is none."""
    return all_queries()[name]


def schema_sql() -> str:
    """``sql/schema.sql``: the table, its indexes and its NOTIFY trigger (idempotent)."""
    return resources.files("circus_djmaster.store").joinpath("sql/schema.sql").read_text("utf-8")
