"""``enqueue(..., using="alias")``: Django's own connection of a database alias, so a job
commits or rolls back with the request's transaction.

Django is imported only when ``using=`` is given; ``circus_djmaster.contrib.django``
(the Django app) re-exports :func:`connection_for`.
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
