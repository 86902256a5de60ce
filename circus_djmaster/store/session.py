"""libpq parameters that bound a session's waits: for the workers' and the master's
connections (:mod:`.sync_executor`, :mod:`.async_executor`)."""

from __future__ import annotations

import math
from typing import Any

from psycopg import conninfo

__all__ = ["bounded_session"]


def bounded_session(url: str, timeout: float, *, options: str = "") -> dict[str, Any]:
    """libpq parameters that bound a session's waits by ``timeout`` seconds.

    ``connect_timeout`` (half of it: connecting is a few round trips, and a server that
    accepts connections but never answers is then noticed sooner); ``statement_timeout``
    (the server cancels a statement running longer); on TCP, keepalives that notice a
    dead peer of an idle connection within about twice ``timeout`` and
    ``tcp_user_timeout``, which drops a connection whose sent data stays unacknowledged
    that long. libpq ignores the TCP ones on Unix sockets. Parameters the URL sets
    itself win, and its ``options`` are kept (the ``-c`` settings here and ``options``
    are appended to them). A backend that stops answering is beyond all of these: a
    worker's calls also have a client-side deadline (worker/db_deadlines.py), the
    master's asyncio timeouts.
    """
    given = conninfo.conninfo_to_dict(url)
    seconds = max(1, math.ceil(timeout))
    params: dict[str, Any] = {
        "connect_timeout": max(1, math.ceil(timeout / 2)),
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": max(1, seconds // 3),
        "keepalives_count": 3,
        "tcp_user_timeout": seconds * 1000,
    }
    bounded = {key: value for key, value in params.items() if key not in given}
    session = f"-c statement_timeout={int(timeout * 1000)} {options}".strip()
    bounded["options"] = f"{given.get('options') or ''} {session}".strip()
    return bounded
