"""delayed_jobs, created by ``circus_djmaster/sql/schema.sql`` (the one source of truth).

The models below are state only (``managed = False`` and proxies): Django issues no
DDL for them. Unapplying this migration keeps the table (see ``schema.keep_schema``).
"""

from django.db import migrations, models

from circus_djmaster.contrib.django.schema import create_schema, keep_schema


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.RunPython(create_schema, keep_schema),
        migrations.CreateModel(
            name="DelayedJob",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("priority", models.IntegerField(default=0, help_text="lower runs first")),
                ("attempts", models.IntegerField(default=0)),
                ("handler", models.TextField()),
                ("last_error", models.TextField(blank=True, null=True)),
                ("run_at", models.DateTimeField()),
                ("locked_at", models.DateTimeField(blank=True, null=True)),
                ("failed_at", models.DateTimeField(blank=True, null=True)),
                ("locked_by", models.TextField(blank=True, null=True)),
                ("queue", models.TextField(blank=True, null=True)),
                ("created_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField()),
            ],
            options={
                "verbose_name": "delayed job",
                "db_table": "delayed_jobs",
                "ordering": ["-id"],
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="FailedJob",
            fields=[],
            options={
                "verbose_name": "failed job",
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("djmaster.delayedjob",),
        ),
        migrations.CreateModel(
            name="ScheduledJob",
            fields=[],
            options={
                "verbose_name": "scheduled job",
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("djmaster.delayedjob",),
        ),
    ]
