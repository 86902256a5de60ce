"""What djmaster.toml's `app` names: every worker imports this module once, at start.

It sets Django up so that jobs can use the ORM, then imports the jobs. djmaster puts the
settings file's folder (this project's root) on sys.path and makes it the current folder.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
django.setup()

import orders.jobs  # noqa: E402, F401  (preload the jobs and the models they use)


def after_fork(worker: object) -> None:
    """callbacks.after_fork: start the worker without any database connection.

    Nothing above connects, but an app that touches the database while it is imported
    would otherwise hand that connection to every thread of the worker.
    """
    from django.db import connections

    connections.close_all()
