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

from circus_djmaster.api.django_alias import connection_for

__all__ = ["connection_for"]
