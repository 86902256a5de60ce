"""The preload module of Django workers: ``app = "circus_djmaster.contrib.django.worker"``.

Each worker imports it once, at start: it sets Django up (``DJANGO_SETTINGS_MODULE``
must be in circusd's environment, which circus passes on) and closes any connection the
set-up opened, so no job thread inherits one. Then, around every job, in the job's
thread, it does what Django does around each request: ``close_old_connections()`` before
and after, which drops a connection older than ``CONN_MAX_AGE`` (at once with the
default 0) or broken, so a long-lived worker thread never runs a job on a stale one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from circus_djmaster.api.wrappers import around_every_job

SETTINGS_ENV = "DJANGO_SETTINGS_MODULE"

if not os.environ.get(SETTINGS_ENV):
    raise RuntimeError(
        f"{SETTINGS_ENV} is not set: export it where circusd starts (circus passes its "
        "environment to the workers), e.g. DJANGO_SETTINGS_MODULE=mysite.settings"
    )

import django  # noqa: E402  (after the check: a clear error rather than Django's)

django.setup()

from django.db import close_old_connections, connections  # noqa: E402


@contextmanager
def django_connections() -> Iterator[None]:
    """Around one job: stale or broken connections of this thread are closed."""
    close_old_connections()
    try:
        yield
    finally:
        close_old_connections()


around_every_job(django_connections)
connections.close_all()
