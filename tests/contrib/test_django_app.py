"""The contrib app in a real Django project, without circusd: the migration and the
management commands.

``manage.py migrate`` must leave exactly the schema ``djmaster migrate`` makes, whichever
runs first; ``manage.py djmaster ...`` runs the CLI's commands on ``settings.DJMASTER``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg

from circus_djmaster.store.sync_executor import connect, migrate
from tests.contrib.conftest import REPO_ROOT, DjangoProject

Project = Callable[..., DjangoProject]


def schema_of(url: str) -> dict[str, Any]:
    """Everything of delayed_jobs a migration makes: columns, indexes, triggers, trigger
    functions, storage options."""
    with psycopg.connect(url, autocommit=True) as conn:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in conn.execute(sql).fetchall()]  # type: ignore[arg-type]

        return {
            "columns": rows(
                "SELECT column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_name = 'delayed_jobs' "
                "ORDER BY ordinal_position"
            ),
            "indexes": rows(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE tablename = 'delayed_jobs' ORDER BY indexname"
            ),
            "tables": rows(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_name LIKE 'delayed_jobs_%' ORDER BY table_name, ordinal_position"
            ),
            "triggers": rows(
                "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
                "WHERE tgrelid = 'delayed_jobs'::regclass AND NOT tgisinternal ORDER BY tgname"
            ),
            "functions": rows(
                "SELECT proname, pg_get_functiondef(oid) FROM pg_proc "
                "WHERE proname LIKE 'delayed_jobs%' ORDER BY proname"
            ),
            "options": rows("SELECT reloptions FROM pg_class WHERE relname = 'delayed_jobs'"),
        }


def djmaster_migrate(url: str) -> None:
    with connect(url) as conn:
        migrate(conn)


def test_manage_migrate_makes_the_schema_of_djmaster_migrate_whichever_runs_first(
    make_project: Project,
) -> None:
    reference = make_project("reference")
    djmaster_migrate(reference.database_url)
    expected = schema_of(reference.database_url)
    assert len(expected["indexes"]) == 4 and len(expected["triggers"]) == 2  # the real thing
    assert {row[0] for row in expected["tables"]} == {
        "delayed_jobs_finished",
        "delayed_jobs_recurring_runs",
    }

    django_first = make_project("django-first")
    out = django_first.manage("migrate").stdout
    assert "Applying djmaster.0001_initial... OK" in out
    assert schema_of(django_first.database_url) == expected
    djmaster_migrate(django_first.database_url)  # then the CLI's: nothing changes
    assert schema_of(django_first.database_url) == expected

    djmaster_first = make_project("djmaster-first")
    djmaster_migrate(djmaster_first.database_url)
    with djmaster_first.connect() as conn:
        conn.execute("INSERT INTO delayed_jobs (handler, queue) VALUES ('{}', 'kept')")
    djmaster_first.manage("migrate")
    assert schema_of(djmaster_first.database_url) == expected
    with djmaster_first.connect() as conn:  # the migration kept the jobs already there
        assert conn.execute("SELECT queue FROM delayed_jobs").fetchall() == [("kept",)]


def test_manage_migrate_upgrades_a_database_of_the_previous_version_in_place(
    make_project: Project,
) -> None:
    """A database migrated by the app before issue 15 (0001 applied, schema 0.2) gets
    the new columns and tables from 0002, which runs the same schema.sql, and keeps its
    jobs."""
    reference = make_project("reference")
    djmaster_migrate(reference.database_url)
    expected = schema_of(reference.database_url)
    old = make_project("old")
    schema_0_2 = REPO_ROOT / "tests" / "integration" / "store" / "schemas" / "schema-0.2.sql"
    with old.connect() as conn:
        conn.execute(schema_0_2.read_text(encoding="utf-8"))  # type: ignore[arg-type]
        conn.execute("INSERT INTO delayed_jobs (handler, queue) VALUES ('{}', 'kept')")
    old.manage("migrate", "djmaster", "0001", "--fake")  # what the old app had applied
    out = old.manage("migrate").stdout
    assert "Applying djmaster.0002_schema_0_3... OK" in out
    assert schema_of(old.database_url) == expected
    with old.connect() as conn:
        assert conn.execute("SELECT queue FROM delayed_jobs").fetchall() == [("kept",)]


def test_the_migration_matches_the_models_and_unapplying_it_keeps_the_table(
    make_project: Project,
) -> None:
    project = make_project()
    project.manage("migrate")
    # The models' state is the migration's: no new migration to make.
    assert "No changes detected" in project.manage("makemigrations", "--check", "--dry-run").stdout
    with project.connect() as conn:
        conn.execute("INSERT INTO delayed_jobs (handler) VALUES ('{}')")
    out = project.manage("migrate", "djmaster", "zero").stdout
    assert "Unapplying djmaster.0002_schema_0_3... OK" in out
    assert "Unapplying djmaster.0001_initial... OK" in out
    with project.connect() as conn:  # a deliberate no-op: the table and its job stay
        assert conn.execute("SELECT count(*) FROM delayed_jobs").fetchone() == (1,)
    project.manage("migrate", "djmaster")
    assert schema_of(project.database_url)["indexes"]


def test_manage_djmaster_runs_the_cli_on_the_settings_file(make_project: Project) -> None:
    project = make_project()
    project.write_djmaster_settings()

    out = project.manage("djmaster", "migrate").stdout
    assert out == "primary: delayed_jobs is up to date\n"

    job_id = int(
        project.manage(
            "djmaster", "enqueue", "shop.tasks:plain_job", "--args", '["k1"]', "--in", "1h"
        ).stdout
    )
    listing = json.loads(project.manage("djmaster", "jobs", "list", "--live", "--json").stdout)
    assert [(j["id"], j["queue"]) for j in listing] == [(job_id, "default")]

    with project.connect() as conn:
        conn.execute("UPDATE delayed_jobs SET failed_at = now() WHERE id = %s", (job_id,))
    assert f"#{job_id}  queue default" in project.manage("djmaster", "jobs", "list").stdout
    retried = project.manage("djmaster", "jobs", "retry", str(job_id)).stdout
    assert retried == f"retried 1 failed job(s): {job_id}\n"
    missing = project.manage("djmaster", "jobs", "delete", str(job_id), check=False)
    assert missing.returncode == 1  # not failed any more: the CLI's own exit code
    assert f"not failed or not found: {job_id}" in missing.stderr

    assert "djmaster.toml: OK\n" in project.manage("djmaster", "config", "check").stdout
    project.manage("djmaster", "config", "render", "-o", "circus.ini")
    assert "[watcher:djmaster-tasks-primary]" in (project.folder / "circus.ini").read_text()

    help_text = project.manage("djmaster", "jobs", "-h").stdout
    assert "list" in help_text and "retry" in help_text

    (project.folder / "djmaster.toml").unlink()
    gone = project.manage("djmaster", "status", check=False)
    assert gone.returncode == 1
    assert "djmaster settings file" in gone.stderr and "does not exist" in gone.stderr
