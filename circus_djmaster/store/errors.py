"""Database errors as one line fit for a log or a terminal: never a URL or password.

libpq's own messages name hosts and users, not passwords, except when it cannot parse a
connection string: then it quotes the offending token, which may be (part of) the
password ("invalid percent-encoded token: ..."). psycopg raises those as a plain
``psycopg.ProgrammingError`` (server-side errors are subclasses), so they are replaced
by a generic sentence.
"""

from __future__ import annotations

import psycopg

MALFORMED_URL = (
    "malformed database URL (check its percent-encoding, quoting, brackets and port); "
    "its text is not shown because it may hold a password"
)


def describe_error(error: BaseException) -> str:
    """``TypeName: first line of the message``, with connection-string errors hidden."""
    name = type(error).__name__
    if type(error) is psycopg.ProgrammingError:
        return f"{name}: {MALFORMED_URL}"
    lines = str(error).strip().splitlines()
    return f"{name}: {lines[0]}" if lines else name
