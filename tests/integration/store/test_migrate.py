"""``store.migrate`` and ``djmaster migrate`` on real, empty databases."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from circus_djmaster.api.context import DATABASE_URL_ENV
from circus_djmaster.contracts.exit_codes import CliExit
from circus_djmaster.store.sync_executor import connect, migrate

Conn = psycopg.Connection[Any]
MakeDatabase = Callable[..., str]
REPO_ROOT = Path(__file__).resolve().parents[3]

INDEXES = {
    "delayed_jobs_pkey",
    "delayed_jobs_priority",
    "delayed_jobs_live_by_run_at",
    "delayed_jobs_unique_key",
}
# Tables added after 0.2 (issue 15): finished jobs kept, recurring runs enqueued.
NEW_TABLES = {"delayed_jobs_finished", "delayed_jobs_recurring_runs"}
TRIGGERS = {"delayed_jobs_notify_insert", "delayed_jobs_notify_update"}
COLUMNS = {
    "id": ("bigint", "NO"),
    "priority": ("integer", "NO"),
    "attempts": ("integer", "NO"),
    "handler": ("text", "NO"),
    "last_error": ("text", "YES"),
    "run_at": ("timestamp with time zone", "NO"),
    "locked_at": ("timestamp with time zone", "YES"),
    "failed_at": ("timestamp with time zone", "YES"),
    "locked_by": ("character varying", "YES"),
    "queue": ("character varying", "YES"),
    "created_at": ("timestamp with time zone", "NO"),
    "updated_at": ("timestamp with time zone", "NO"),
    "run_alone": ("boolean", "NO"),
    "unique_key": ("character varying", "YES"),
    "keep_finished": ("double precision", "YES"),
    "cancel_requested_at": ("timestamp with time zone", "YES"),
}
# The schema of each released version, as it shipped: a database of that version must
# upgrade in place.
OLD_SCHEMAS = sorted((Path(__file__).parent / "schemas").glob("schema-*.sql"))


def has_table(url: str) -> bool:
    with connect(url) as conn:
        row = conn.execute("SELECT to_regclass('delayed_jobs') IS NOT NULL").fetchone()
    return bool(row and row[0])


def indexes(conn: Conn) -> dict[str, str]:
    return dict(
        conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'delayed_jobs'"
        ).fetchall()
    )


def tables(conn: Conn) -> set[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE tablename LIKE 'delayed_jobs%'"
    ).fetchall()
    return {row[0] for row in rows}


def triggers(conn: Conn) -> list[str]:
    rows = conn.execute(
        "SELECT tgname FROM pg_trigger"
        " WHERE tgrelid = 'delayed_jobs'::regclass AND NOT tgisinternal ORDER BY tgname"
    ).fetchall()
    return [row[0] for row in rows]


def test_migrate_creates_the_table_its_indexes_and_triggers(make_database: MakeDatabase) -> None:
    url = make_database(migrated=False)
    assert not has_table(url)
    with connect(url) as conn:
        migrate(conn)
        columns = {
            name: (kind, nullable)
            for name, kind, nullable in conn.execute(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
                " WHERE table_name = 'delayed_jobs'"
            ).fetchall()
        }
        assert columns == COLUMNS
        found = indexes(conn)
        assert set(found) == INDEXES
        assert "(priority, run_at) WHERE (failed_at IS NULL)" in found["delayed_jobs_priority"]
        assert "WHERE (failed_at IS NULL)" in found["delayed_jobs_live_by_run_at"]
        # No index on the lock columns: reserving a job is then a HOT update.
        assert not any("locked" in definition for definition in found.values())
        (options,) = conn.execute(
            "SELECT reloptions FROM pg_class WHERE relname = 'delayed_jobs'"
        ).fetchone()
        assert options == ["fillfactor=80"]
        assert set(triggers(conn)) == TRIGGERS
        assert tables(conn) == {"delayed_jobs", *NEW_TABLES}
        assert "WHERE (unique_key IS NOT NULL)" in found["delayed_jobs_unique_key"]


def test_migrating_twice_keeps_the_jobs_and_does_not_duplicate_anything(
    make_database: MakeDatabase,
) -> None:
    url = make_database(migrated=False)
    with connect(url) as conn:
        migrate(conn)
        conn.execute("INSERT INTO delayed_jobs (handler, queue) VALUES ('h', 'kept')")
        migrate(conn)
        migrate(conn)
        assert conn.execute("SELECT queue FROM delayed_jobs").fetchall() == [("kept",)]
        assert set(indexes(conn)) == INDEXES
        assert triggers(conn) == sorted(TRIGGERS)


def test_migrate_upgrades_a_database_of_every_earlier_version_in_place(
    make_database: MakeDatabase,
) -> None:
    assert OLD_SCHEMAS, "tests/integration/schemas holds the released schemas"
    for old in OLD_SCHEMAS:
        url = make_database(migrated=False)
        with connect(url) as conn:
            conn.execute(old.read_text(encoding="utf-8"))  # type: ignore[arg-type]
            conn.execute(
                "INSERT INTO delayed_jobs (handler, queue, attempts, locked_by, locked_at)"
                " VALUES ('h', 'kept', 3, 'host:h pid:1', now())"
            )
            migrate(conn)
            columns = {
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_name = 'delayed_jobs'"
                ).fetchall()
            }
            assert columns == set(COLUMNS), old.name
            kept = conn.execute(
                "SELECT queue, attempts, locked_by, run_alone, unique_key, keep_finished,"
                " cancel_requested_at FROM delayed_jobs"
            ).fetchall()
            assert kept == [("kept", 3, "host:h pid:1", False, None, None, None)], old.name
            assert set(indexes(conn)) == INDEXES
            assert triggers(conn) == sorted(TRIGGERS)
            assert tables(conn) == {"delayed_jobs", *NEW_TABLES}, old.name
            # An old version's INSERT (its columns only) still works on the new table.
            conn.execute("INSERT INTO delayed_jobs (handler, queue) VALUES ('h2', 'old')")
            migrate(conn)  # and migrating again is a no-op
            assert conn.execute("SELECT count(*) FROM delayed_jobs").fetchone() == (2,)


def test_migrating_the_tests_template_database_again_is_a_no_op(database_url: str) -> None:
    with connect(database_url) as conn:
        before = indexes(conn), triggers(conn)
        migrate(conn)
        assert (indexes(conn), triggers(conn)) == before


def test_concurrent_migrations_all_succeed(make_database: MakeDatabase) -> None:
    url = make_database(migrated=False)
    workers = 6
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with connect(url) as conn:
                barrier.wait(timeout=10)
                migrate(conn)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    with connect(url) as conn:
        assert set(indexes(conn)) == INDEXES
        assert triggers(conn) == sorted(TRIGGERS)


# ---------------------------------------------------------------- djmaster migrate


def djmaster(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "circus_djmaster", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=REPO_ROOT,
        timeout=60,
    )


def write_settings(tmp_path: Path, databases: str) -> Path:
    path = tmp_path / "djmaster.toml"
    path.write_text(textwrap.dedent(databases) + '\n[[workers]]\nqueues = ["q"]\n', "utf-8")
    return path


def test_cli_migrate_with_a_database_url(make_database: MakeDatabase) -> None:
    url = make_database(migrated=False)
    result = djmaster("migrate", "--database-url", url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "(url): delayed_jobs is up to date\n"
    assert has_table(url)


def test_cli_migrate_with_the_environment_variable(make_database: MakeDatabase) -> None:
    url = make_database(migrated=False)
    result = djmaster("migrate", env={DATABASE_URL_ENV: url})
    assert result.returncode == 0, result.stderr
    assert has_table(url)


def test_cli_migrate_every_database_of_a_settings_file(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    first, second = make_database(migrated=False), make_database(migrated=False)
    settings = write_settings(
        tmp_path,
        """\
        [databases]
        primary = "${DJM_TEST_FIRST}"
        secondary = "${DJM_TEST_SECOND}"
    """,
    )
    result = djmaster(
        "migrate",
        "--settings",
        str(settings),
        env={"DJM_TEST_FIRST": first, "DJM_TEST_SECOND": second},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "primary: delayed_jobs is up to date",
        "secondary: delayed_jobs is up to date",
    ]
    assert has_table(first) and has_table(second)


def test_cli_migrate_one_named_database_of_a_settings_file(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    first, second = make_database(migrated=False), make_database(migrated=False)
    settings = write_settings(
        tmp_path,
        """\
        [databases]
        primary = "${DJM_TEST_FIRST}"
        secondary = "${DJM_TEST_SECOND}"
    """,
    )
    result = djmaster(
        "migrate",
        "--settings",
        str(settings),
        "--database",
        "secondary",
        env={"DJM_TEST_FIRST": first, "DJM_TEST_SECOND": second},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "secondary: delayed_jobs is up to date\n"
    assert has_table(second)
    assert not has_table(first)


def test_cli_migrate_with_an_unknown_key_names_file_key_and_reason(tmp_path: Path) -> None:
    settings = tmp_path / "djmaster.toml"
    settings.write_text('[databases]\nprimary = "postgresql:///x"\n\n[[workers]]\nmax_thread = 2\n')
    result = djmaster("migrate", "--settings", str(settings))
    assert result.returncode == CliExit.USAGE
    assert result.stderr == (
        f'djmaster: {settings}: workers[0].max_thread: unknown key (did you mean "max_threads"?)\n'
    )
    assert result.stdout == ""


def test_cli_migrate_with_a_bad_value_names_file_key_and_reason(tmp_path: Path) -> None:
    settings = write_settings(tmp_path, '[databases]\nprimary = "postgresql:///x"\n')
    settings.write_text(settings.read_text() + "read_ahead = 0\n")
    result = djmaster("migrate", "--settings", str(settings))
    assert result.returncode == CliExit.USAGE
    assert result.stderr == (
        f'djmaster: {settings}: workers[0].read_ahead: 0 is too small (minimum 1); or "auto"\n'
    )


def test_cli_migrate_with_a_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    settings = tmp_path / "djmaster.toml"
    settings.write_text("[databases\n")
    result = djmaster("migrate", "--settings", str(settings))
    assert result.returncode == CliExit.USAGE
    assert result.stderr.startswith(f"djmaster: {settings}: TOML syntax error at line 1")


def test_cli_migrate_with_an_unset_variable_names_it(tmp_path: Path) -> None:
    settings = write_settings(tmp_path, '[databases]\nprimary = "${DJM_TEST_UNSET_VARIABLE}"\n')
    result = djmaster("migrate", "--settings", str(settings))
    assert result.returncode == CliExit.USAGE
    assert result.stderr == (
        f"djmaster: {settings}: databases.primary: "
        "environment variable DJM_TEST_UNSET_VARIABLE is not set\n"
    )


def test_cli_migrate_of_an_unknown_database_lists_the_choices(tmp_path: Path) -> None:
    settings = write_settings(tmp_path, '[databases]\nprimary = "x"\nsecondary = "y"\n')
    result = djmaster("migrate", "--settings", str(settings), "--database", "nope")
    assert result.returncode == CliExit.USAGE
    assert result.stderr == (
        f'djmaster: {settings}: databases: no database named "nope" (choices: primary, secondary)\n'
    )


def test_cli_migrate_of_a_missing_settings_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = djmaster("migrate", "--settings", str(missing))
    assert result.returncode == CliExit.USAGE
    assert result.stderr == f"djmaster: {missing}: no such file\n"


def test_cli_migrate_refuses_settings_and_url_together(tmp_path: Path) -> None:
    settings = write_settings(tmp_path, '[databases]\nprimary = "x"\n')
    result = djmaster("migrate", "--settings", str(settings), "--database-url", "postgresql:///x")
    assert result.returncode == CliExit.USAGE
    assert result.stderr == "djmaster: give --settings or --database-url, not both\n"


def test_cli_migrate_without_any_database_names_the_options() -> None:
    result = djmaster("migrate")
    assert result.returncode == CliExit.USAGE
    assert result.stderr == (
        "djmaster: no database: give --settings, --database-url or set DJMASTER_SETTINGS or "
        "DJMASTER_DATABASE_URL\n"
    )


def test_cli_migrate_of_an_unreachable_database_fails_without_showing_the_password() -> None:
    url = "postgresql://djmaster:hunter2@127.0.0.1:1/jobs"
    result = djmaster("migrate", "--database-url", url)
    assert result.returncode == 1
    assert result.stderr.startswith("(url): migration failed: ")
    assert "127.0.0.1" in result.stderr  # readable: says where it tried
    assert len(result.stderr.splitlines()) == 1
    assert "hunter2" not in result.stdout + result.stderr


def test_cli_migrate_goes_on_after_a_database_fails(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    good = make_database(migrated=False)
    settings = write_settings(
        tmp_path,
        """\
        [databases]
        down = "postgresql://djmaster:${DJM_TEST_PASSWORD}@127.0.0.1:1/jobs"
        up = "${DJM_TEST_GOOD}"
    """,
    )
    result = djmaster(
        "migrate",
        "--settings",
        str(settings),
        env={"DJM_TEST_PASSWORD": "hunter2", "DJM_TEST_GOOD": good},
    )
    assert result.returncode == 1
    assert result.stdout == "up: delayed_jobs is up to date\n"
    assert result.stderr.startswith("down: migration failed: ")
    assert "hunter2" not in result.stdout + result.stderr
    assert has_table(good)
