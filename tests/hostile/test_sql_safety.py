"""Queue names and payloads never reach SQL unparameterised (issue 5, item 7).

Two halves:

* a static scan of every ``.execute(``/``.executemany(`` call in ``circus_djmaster/``
  (ast): the SQL must be a literal, a named query of ``sql/queries.sql``, the schema
  file, a psycopg ``sql.SQL(…).format(sql.Identifier(…))`` composition, or an f-string
  of module constants (``LISTEN {CHANNEL}``); anything built with f-strings,
  ``%``, ``+`` or ``.format`` from other values fails, naming the file and line. The
  scanner is tested on bad snippets too, so it can fail;
* behaviour: queue names made of SQL, quotes, placeholders, unicode and 1,000 characters
  go through enqueue (API, bulk, CLI, plain SQL), the NOTIFY trigger, the master's
  counts and a worker's reserve, and come back exactly as they went in.

The master and workers running such queues for real: test_hostile_jobs_master.py.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from circus_djmaster import enqueue, enqueue_many
from circus_djmaster.api.jobs import JobCall
from circus_djmaster.contracts.notify import CHANNEL, queues_from_payload
from circus_djmaster.store import statements
from circus_djmaster.store.queries import all_queries, query, schema_sql
from circus_djmaster.store.statements import JobFilter
from circus_djmaster.store.sync_executor import connect, execute
from tests.support.circus_run import REPO_ROOT
from tests.support.executors import run_as_master

PACKAGE = REPO_ROOT / "circus_djmaster"
Conn = psycopg.Connection[Any]

# ----------------------------------------------------------------- static scan

EXECUTE_METHODS = {"execute", "executemany"}
NAMED_QUERY_FUNCTIONS = {"query"}  # queries.query(name)
# ``statement.sql`` of a store Statement: the named query it names, from sql/queries.sql
# (test_every_statement_names_its_query_by_a_constant checks how they are built).
STATEMENT_SQL = "sql"
STATEMENTS_MODULE = PACKAGE / "store" / "statements.py"
FILE_SQL_FUNCTIONS = {"schema_sql"}
SAFE_COMPOSABLES = {"Identifier", "Literal", "Placeholder"}


@dataclass(frozen=True)
class Finding:
    where: str
    source: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.why}: {self.source}"


def module_constants(tree: ast.Module) -> set[str]:
    """Names bound once, at module level, to a string literal (or imported as such
    from circus_djmaster: CHANNEL)."""
    names: set[str] = set()
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").endswith("queries"):
            names |= {alias.asname or alias.name for alias in node.names if alias.name.isupper()}
    return names


class SqlScanner:
    def __init__(self, tree: ast.Module, filename: str) -> None:
        self.tree = tree
        self.filename = filename
        self.constants = module_constants(tree)
        self.findings: list[Finding] = []
        self.calls = 0

    def scan(self) -> list[Finding]:
        for function in [self.tree, *ast.walk(self.tree)]:
            if not isinstance(function, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in self._own_nodes(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in EXECUTE_METHODS
                    and not _is_executor(node.func.value)
                ):
                    self.calls += 1
                    if not node.args:
                        continue
                    why = self._unsafe(node.args[0], function, depth=0)
                    if why is not None:
                        where = f"{self.filename}:{node.lineno}"
                        self.findings.append(Finding(where, ast.unparse(node.args[0]), why))
        return self.findings

    @staticmethod
    def _own_nodes(scope: ast.AST) -> Iterator[ast.AST]:
        """Nodes of ``scope`` without those of nested functions (scanned on their own)."""
        stack = list(ast.iter_child_nodes(scope))
        while stack:
            node = stack.pop()
            yield node
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                stack.extend(ast.iter_child_nodes(node))

    def _unsafe(self, expr: ast.expr, scope: ast.AST, depth: int) -> str | None:
        """None if ``expr`` is SQL from a safe source, else why not."""
        if depth > 5:
            return "too indirect to check"
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return None
        if isinstance(expr, ast.Call):
            return self._unsafe_call(expr, scope, depth)
        if isinstance(expr, ast.JoinedStr):
            for part in expr.values:
                if isinstance(part, ast.FormattedValue) and not (
                    isinstance(part.value, ast.Name) and part.value.id in self.constants
                ):
                    return "f-string with a non-constant value"
            return None
        if isinstance(expr, ast.BinOp):
            if self._all_constant(expr):
                return None
            return f"SQL built with {type(expr.op).__name__} from non-constant values"
        if isinstance(expr, ast.Name):
            return self._unsafe_name(expr.id, scope, depth)
        if isinstance(expr, ast.Attribute) and expr.attr == STATEMENT_SQL:
            return None
        return f"SQL from a {type(expr).__name__} expression"

    def _unsafe_call(self, call: ast.Call, scope: ast.AST, depth: int) -> str | None:
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in NAMED_QUERY_FUNCTIONS or name in FILE_SQL_FUNCTIONS:
            if all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in call.args):
                return None
            return f"{name}() with a non-constant name"
        if name == "format" and isinstance(func, ast.Attribute):
            base = func.value
            if self._is_sql_literal(base):
                for arg in [*call.args, *(k.value for k in call.keywords)]:
                    if not self._is_safe_composable(arg):
                        return "sql.SQL(...).format() of something else than sql.Identifier"
                return None
            return "str.format() of SQL"
        if self._is_sql_literal(call):
            return None
        return f"SQL returned by {ast.unparse(func)}()"

    @staticmethod
    def _is_sql_literal(expr: ast.expr) -> bool:
        return (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Attribute)
            and expr.func.attr == "SQL"
            and len(expr.args) == 1
            and isinstance(expr.args[0], ast.Constant)
            and isinstance(expr.args[0].value, str)
        )

    def _is_safe_composable(self, expr: ast.expr) -> bool:
        if self._is_sql_literal(expr):
            return True
        return (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Attribute)
            and expr.func.attr in SAFE_COMPOSABLES
        )

    def _all_constant(self, expr: ast.expr) -> bool:
        if isinstance(expr, ast.Constant):
            return True
        if isinstance(expr, ast.Name):
            return expr.id in self.constants
        if isinstance(expr, ast.BinOp):
            return self._all_constant(expr.left) and self._all_constant(expr.right)
        return False

    def _unsafe_name(self, name: str, scope: ast.AST, depth: int) -> str | None:
        """A variable: every value assigned to it in its function must be safe."""
        values: list[ast.expr] = []
        for node in self._own_nodes(scope):
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            ) or (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id == name
                and node.value is not None
            ):
                values.append(node.value)
        if not values:
            return f"SQL from {name!r}, which is not assigned in this function (a parameter?)"
        for value in values:
            why = self._unsafe(value, scope, depth + 1)
            if why is not None:
                return f"{name!r} is assigned {why}"
        return None


def _is_executor(expr: ast.expr) -> bool:
    """``sync_executor.execute(conn, statement)``: a store executor running a Statement
    (its SQL is checked where the statement is built), not a cursor's execute()."""
    return isinstance(expr, ast.Name) and expr.id in ("sync_executor", "async_executor")


def scan_source(source: str, filename: str = "<snippet>") -> SqlScanner:
    scanner = SqlScanner(ast.parse(source), filename)
    scanner.scan()
    return scanner


def test_no_sql_is_built_from_values_in_the_package() -> None:
    findings: list[Finding] = []
    calls = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        scanner = scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(REPO_ROOT)))
        findings += scanner.findings
        calls += scanner.calls
    # Statements run through the two executors (store/*_executor.py), so the package
    # has few execute() calls of its own; the statements are checked below.
    assert calls >= 8, f"only {calls} execute() calls found: is the scanner blind?"
    assert not findings, "\n".join(str(finding) for finding in findings)


def statement_names(source: str) -> list[str]:
    """The query names of every Statement built in ``source`` (store/statements.py):
    each must be a string constant or ``<filter>.variant("<constant>")``; anything else
    is reported as ``<dynamic: ...>``."""
    names = []
    tree = ast.parse(source)
    # _write(name, ...) builds its Statement from its own argument: its callers are checked.
    helper = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef) and function.name == "_write"
        for node in ast.walk(function)
    }
    for node in ast.walk(tree):
        if id(node) in helper:
            continue
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id not in ("Statement", "_write") or not node.args:
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            names.append(first.value)
        elif (
            isinstance(first, ast.Call)
            and isinstance(first.func, ast.Attribute)
            and first.func.attr == "variant"
            and len(first.args) == 1
            and isinstance(first.args[0], ast.Constant)
        ):
            names.append(f"{first.args[0].value}_in_queues")
        else:
            names.append(f"<dynamic: {ast.unparse(first)}>")
    return names


def test_every_statement_names_its_query_by_a_constant() -> None:
    names = statement_names(STATEMENTS_MODULE.read_text(encoding="utf-8"))
    assert len(names) >= 20, names
    assert not [name for name in names if name.startswith("<dynamic")]
    assert set(names) <= set(all_queries())


def test_the_statement_scan_flags_a_dynamic_name() -> None:
    assert statement_names("Statement(f'q_{x}', {}, read)") == ["<dynamic: f'q_{x}'>"]


@pytest.mark.parametrize(
    "source",
    [
        "def f(conn, queue):\n    conn.execute(f\"SELECT * FROM t WHERE queue = '{queue}'\")\n",
        'def f(conn, queue):\n    conn.execute("SELECT %s" % queue)\n',
        'def f(conn, queue):\n    conn.execute("SELECT * WHERE queue = \'" + queue + "\'")\n',
        'def f(conn, queue):\n    conn.execute("SELECT {}".format(queue))\n',
        "def f(conn, queue):\n    text = f\"NOTIFY x, '{queue}'\"\n    conn.execute(text)\n",
        "def f(conn, text):\n    conn.execute(text)\n",
        "async def f(cur, name):\n    await cur.execute(query(name))\n",
        "def f(conn, name):\n    conn.execute(sql.SQL('LISTEN {}').format(sql.SQL(name)))\n",
        "def f(conn, name):\n    conn.execute(sql.SQL('LISTEN ' + name))\n",
        'def f(conn, rows):\n    conn.executemany("INSERT " + ",".join(rows), [])\n',
    ],
)
def test_the_scanner_flags_sql_built_from_values(source: str) -> None:
    scanner = scan_source(source)
    assert scanner.calls == 1
    assert len(scanner.findings) == 1, source


@pytest.mark.parametrize(
    "source",
    [
        "def f(conn, q):\n    conn.execute('SELECT * FROM t WHERE queue = %s', (q,))\n",
        "def f(conn, p):\n    conn.execute(query('insert_job'), p)\n",
        "def f(conn, jf, p):\n    conn.execute(jf.query('count_ready'), p)\n",
        "def f(conn):\n    conn.execute(schema_sql())\n",
        "from .queries import CHANNEL\ndef f(conn):\n    conn.execute(f'LISTEN {CHANNEL}')\n",
        "def f(conn, db):\n"
        "    conn.execute(sql.SQL('DROP DATABASE {}').format(sql.Identifier(db)))\n",
        "def f(conn, db, t):\n"
        "    q = sql.SQL('CREATE DATABASE {}').format(sql.Identifier(db))\n"
        "    if t:\n"
        "        q = sql.SQL('CREATE DATABASE {} TEMPLATE {}').format(\n"
        "            sql.Identifier(db), sql.Identifier(t))\n"
        "    conn.execute(q)\n",
    ],
)
def test_the_scanner_accepts_parameterised_sql(source: str) -> None:
    scanner = scan_source(source)
    assert scanner.calls == 1
    assert scanner.findings == [], [str(f) for f in scanner.findings]


_DYNAMIC_PLPGSQL = re.compile(r"\bEXECUTE\s+(?!FUNCTION\b|PROCEDURE\b)", re.IGNORECASE)


def test_the_sql_files_build_no_dynamic_sql() -> None:
    """plpgsql EXECUTE of a string (format(), ||) would reopen the door the Python side
    closed; the trigger functions only call pg_notify with a JSON value."""
    sql_folder = PACKAGE / "sql"
    for path in sorted(sql_folder.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        assert not _DYNAMIC_PLPGSQL.search(text), f"{path}: dynamic EXECUTE"
        assert not re.search(r"\bquote_(literal|ident|nullable)\s*\(", text), path
    assert "json_agg(DISTINCT coalesce(queue, ''))" in schema_sql()


# ------------------------------------------------------------------- behaviour

HOSTILE_QUEUES = {
    "sql": "q'); DROP TABLE delayed_jobs; --",
    "quotes": 'it\'s "quoted" `back` \\ ; --',
    "placeholders": "%s %(queue)s {} {0} $1 ?",
    "unicode": "ünïcødé 队列 🚀 \u200b",
    "json": '["*"], {"a": 1}',
    "star": "*",
    "long_ascii": ("long-" + "x" * 1000)[:1000],
    "long_unicode": "é" * 1000,  # 2,000 bytes of UTF-8
}


@pytest.fixture
def listener(database_url: str) -> Iterator[Conn]:
    with connect(database_url, application_name="hostile listener") as listening:
        listening.execute(query("listen"))
        yield listening


def payloads(listener: Conn, sender: Conn) -> list[str]:
    """Notifications up to a marker sent now (they arrive in commit order)."""
    marker = "hostile-marker"
    sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, marker))
    received = []
    for notify in listener.notifies(timeout=10):
        if notify.payload == marker:
            return received
        received.append(notify.payload)
    raise AssertionError(f"the marker did not arrive (got {received})")


@pytest.mark.parametrize("queue", list(HOSTILE_QUEUES.values()), ids=list(HOSTILE_QUEUES))
def test_a_hostile_queue_name_round_trips_through_enqueue_notify_counts_and_reserve(
    database_url: str, conn: Conn, listener: Conn, queue: str
) -> None:
    payloads(listener, conn)  # nothing pending
    job = "tests.support.jobs:record"
    ids = [enqueue(job, ["api"], queue=queue, database_url=database_url)]
    ids += enqueue_many([JobCall(job, ("bulk",), {}, queue=queue)], database_url=database_url)
    row = conn.execute(
        "INSERT INTO delayed_jobs (handler, queue) VALUES (%s, %s) RETURNING id",
        ('{"callable": "tests.support.jobs:record", "args": ["sql"]}', queue),
    ).fetchone()
    assert row is not None
    ids.append(int(row[0]))

    stored = conn.execute("SELECT DISTINCT queue FROM delayed_jobs").fetchall()
    assert stored == [(queue,)]
    # One notification per statement, each naming exactly this queue.
    received = payloads(listener, conn)
    assert [queues_from_payload(payload) for payload in received] == [frozenset({queue})] * 3

    # The master's counts (async, as the master runs them) and the worker's reserve.
    mine, other = JobFilter((queue,)), JobFilter(("other-queue",))
    count_mine = statements.count_ready(mine, lock_timeout=60, limit=10)
    count_other = statements.count_ready(other, lock_timeout=60, limit=10)
    assert run_as_master(database_url, count_mine) == 3
    assert run_as_master(database_url, count_other) == 0
    reserved = execute(
        conn, statements.reserve_jobs(mine, locked_by="host:t pid:1", limit=10, lock_timeout=60)
    )
    assert sorted(job.id for job in reserved) == sorted(ids)
    assert {job.queue for job in reserved} == {queue}
    assert execute(conn, statements.group_stats(mine, lock_timeout=60)).running == 3
    assert conn.execute("SELECT count(*) FROM delayed_jobs").fetchone() == (3,)


def test_the_cli_enqueues_a_hostile_queue_name_as_given(database_url: str, conn: Conn) -> None:
    queue = HOSTILE_QUEUES["sql"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), DJMASTER_DATABASE_URL=database_url)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "circus_djmaster",
            "enqueue",
            "tests.support.jobs:record",
            "--args",
            '["cli"]',
            "--queue",
            queue,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert conn.execute("SELECT queue FROM delayed_jobs").fetchall() == [(queue,)]


def test_a_hostile_handler_payload_is_stored_and_decoded_as_given(
    database_url: str, conn: Conn
) -> None:
    """Arguments holding SQL, quotes, NUL and placeholders are data, never SQL."""
    args = ["'); DROP TABLE delayed_jobs; --", "%s %(handler)s", "\x00 nul", "🚀" * 100]
    job_id = enqueue("tests.support.jobs:record", args, queue="q1", database_url=database_url)
    (reserved,) = execute(
        conn,
        statements.reserve_jobs(
            JobFilter(("q1",)), locked_by="host:t pid:1", limit=1, lock_timeout=60
        ),
    )
    assert reserved.id == job_id
    from circus_djmaster.api.handler import decode

    assert list(decode(reserved.handler).args) == args
