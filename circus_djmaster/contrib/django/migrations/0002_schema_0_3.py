"""Schema 0.3 (issue 15): unique keys, kept finished jobs, cancel requests, recurring
runs. The same ``store/sql/schema.sql`` as 0001 (the one source of truth), run again so
that a database migrated by an earlier version of this app is upgraded in place; on a
new database it is a no-op after 0001."""

from django.db import migrations

from circus_djmaster.contrib.django.schema import create_schema, keep_schema


class Migration(migrations.Migration):
    dependencies = [("djmaster", "0001_initial")]

    operations = [migrations.RunPython(create_schema, keep_schema)]
