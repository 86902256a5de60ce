"""The operations of this app's migration: ``circus_djmaster/sql/schema.sql``, run as is.

The Django migration and ``djmaster migrate`` run the same file under the same advisory
lock, so either may run first, both are idempotent, and two at once wait for each other.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

from circus_djmaster.store.queries import schema_sql
from circus_djmaster.store.sync_executor import MIGRATION_LOCK_KEY


def create_schema(apps: Any, schema_editor: Any) -> None:
    """RunPython forward: create or update ``delayed_jobs`` (in the migration's transaction).

    Raises ImproperlyConfigured on a database that is not PostgreSQL: keep this app off
    such databases with a database router (``allow_migrate``).
    """
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        raise ImproperlyConfigured(
            f"circus_djmaster.contrib.django needs PostgreSQL; database {connection.alias!r} "
            f"is {connection.vendor}: route the 'djmaster' app away from it (allow_migrate)"
        )
    with connection.cursor() as cursor:
        # Held until the migration's transaction commits, like `djmaster migrate`'s.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK_KEY])
        cursor.execute(schema_sql())


def keep_schema(apps: Any, schema_editor: Any) -> None:
    """RunPython backward: a deliberate no-op.

    ``delayed_jobs`` may hold jobs, and ``djmaster migrate`` maintains it too: unapplying
    this app's migration leaves it in place. Drop it by hand (``DROP TABLE delayed_jobs``)
    if that is what you want.
    """
