"""circus-djmaster for Django: add ``"circus_djmaster.contrib.django"`` to INSTALLED_APPS.

* ``manage.py migrate`` creates ``delayed_jobs`` by running ``circus_djmaster/sql/
  schema.sql``, exactly as ``djmaster migrate`` does (either may run first);
* ``manage.py djmaster status|jobs|wait|enqueue|migrate|config`` runs the CLI's commands
  on the settings file named by ``settings.DJMASTER`` (or ``$DJMASTER_SETTINGS``);
* the admin lists failed and scheduled jobs, with retry and delete actions;
* ``app = "circus_djmaster.contrib.django.worker"`` in ``djmaster.toml`` makes workers
  set Django up and close stale connections around every job;
* ``enqueue(..., using="default")`` writes on Django's own connection, so the job
  commits or rolls back with the request's transaction (:func:`connection_for`);
* ``circus_djmaster.contrib.django.tasks.DjmasterBackend`` is a ``django.tasks`` backend
  (Django 6, or the ``django-tasks`` backport on Django 4.2-5.2).

Importing this package imports neither Django nor anything of the worker.
"""

from __future__ import annotations

from typing import Any

import psycopg

from circus_djmaster.exceptions import EnqueueError

__all__ = ["connection_for"]


def connection_for(alias: str) -> psycopg.Connection[Any]:
    """The psycopg 3 connection of Django's database ``alias``, connected if need be.

    Whatever Django's transaction state is, the caller's statements join it: inside
    ``transaction.atomic(using=alias)`` they commit or roll back with the block; outside
    one (Django's autocommit) each commits at once.

    Raises :class:`~circus_djmaster.exceptions.EnqueueError` if ``alias`` is not in
    ``settings.DATABASES``, is not PostgreSQL, or runs on psycopg2 rather than psycopg 3.
    """
    try:
        from django.db import connections
    except ImportError:
        raise EnqueueError("using= needs Django: pip install 'circus-djmaster[django]'") from None
    if not isinstance(alias, str):
        raise EnqueueError(f"using= must be a database alias (a str), got {type(alias).__name__}")
    known = list(connections.settings)
    if alias not in known:
        raise EnqueueError(
            f"using={alias!r}: no such database in settings.DATABASES "
            f"(it has {', '.join(map(repr, known)) or 'none'})"
        )
    wrapper = connections[alias]
    if wrapper.vendor != "postgresql":
        raise EnqueueError(
            f"using={alias!r}: that database is {wrapper.vendor}; circus-djmaster needs PostgreSQL"
        )
    wrapper.ensure_connection()
    raw = wrapper.connection
    if not isinstance(raw, psycopg.Connection):
        raise EnqueueError(
            f"using={alias!r}: Django connects with {type(raw).__module__.split('.')[0]}, "
            "not psycopg 3; install psycopg 3 (pip install 'psycopg[binary]') and Django "
            "uses it"
        )
    return raw
