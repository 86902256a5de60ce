"""What every scenario shares: the run context, processes, databases, results, numbers."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import psutil
import psycopg
from psycopg import sql

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(sys.executable).parent

T = TypeVar("T")


class BenchError(Exception):
    """A measurement that could not be made; its message goes into the results file."""


# --- the run ----------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    """One harness run: the server, the sizes, a scratch folder, the processes started."""

    server_url: str  # a database URL on the server (the maintenance database)
    quick: bool
    runs: int
    workdir: Path
    processes: Processes
    peers: dict[str, str | None]  # peer name -> None if usable, else why not
    databases: set[str] = dataclasses.field(default_factory=set)  # created by fresh_database

    def size(self, full: T, quick: T) -> T:
        return quick if self.quick else full

    def fresh_database(self, name: str) -> str:
        """Drop and create database ``name``; return its URL."""
        self.databases.add(name)
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return database_url(self.server_url, name)

    def drop_database(self, name: str) -> None:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.server_url, autocommit=True) as conn,
        ):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def folder(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def installed_python(self) -> Path:
        """An interpreter that starts like one with circus-djmaster ``pip install``ed.

        This checkout is installed editable for development: every interpreter of its
        venv runs setuptools' editable-import hook at start-up (about 15 ms here), which
        a regular install does not. This one is a venv whose site-packages reaches the
        dependencies through a plain path entry (no hook runs); the code comes from this
        checkout through PYTHONPATH (bench_env). Made once per run.
        """
        venv = self.workdir / "installed-python"
        python = venv / "bin" / "python"
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
            purelib = subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            Path(purelib, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
        return python


def database_url(server_url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(server_url, dbname=dbname)


def asyncpg_dsn(url: str) -> str:
    """A ``postgresql://`` URL for asyncpg from any libpq URL or conninfo string."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    user = quote(str(info.get("user", "")), safe="")
    password = info.get("password")
    auth = f"{user}:{quote(str(password), safe='')}@" if password else (f"{user}@" if user else "")
    host = str(info.get("host", ""))
    port = str(info.get("port", ""))
    query = []
    netloc = auth
    if host.startswith("/"):
        query.append(f"host={quote(host, safe='/')}")
        if port:
            query.append(f"port={port}")
    elif host:
        netloc += host + (f":{port}" if port else "")
    dbname = quote(str(info.get("dbname", "")), safe="")
    return f"postgresql://{netloc}/{dbname}" + ("?" + "&".join(query) if query else "")


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, application_name="djbench")


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return None if row is None else row[0]


def checkpoint(conn: psycopg.Connection[Any]) -> None:
    """CHECKPOINT, so no measurement pays for the previous one's dirty pages (skipped
    without the privilege, on a server of yours)."""
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


def settle(url: str, tables: Sequence[str]) -> None:
    """The same treatment for every system before a measurement: VACUUM ANALYZE, CHECKPOINT."""
    with connect(url) as conn:
        for table in tables:
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
        checkpoint(conn)


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of every subprocess: this repository importable (benchmarks.*)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """Poll ``predicate`` until it returns something truthy; BenchError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# --- processes ------------------------------------------------------------------------------


class Processes:
    """Every subprocess the harness starts, each in its own session, all killed at the end."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, cmd: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(cmd),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._started.append(proc)
        return proc

    def wait_all(
        self, procs: Sequence[subprocess.Popen[bytes]], timeout: float, what: str
    ) -> float:
        """Wait until every process exited (code 0); return the monotonic time then."""
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError(f"{what}: still running after {timeout:g}s") from None
        end = time.monotonic()
        codes = [proc.returncode for proc in procs]
        if any(codes):
            raise BenchError(f"{what}: exit codes {codes}")
        return end

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """TERM, then KILL of the whole session (its children too) after ``timeout``."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        self._kill_session(proc)

    def kill_all(self) -> None:
        for proc in self._started:
            self._kill_session(proc)
        self._started.clear()

    def _kill_session(self, proc: subprocess.Popen[bytes]) -> None:
        # Descendants that left the process group (none should) are found through psutil.
        descendants: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"({path.name} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


# --- results --------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One configuration of one system: for each metric, one value per run."""

    key: str  # stable id, used by the ratios and targets (e.g. "b1/ours/2x4/ra100")
    system: str
    setting: str
    metrics: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    text: dict[str, str] = dataclasses.field(default_factory=dict)  # non-numeric columns
    error: str | None = None

    def add(self, metric: str, value: float) -> None:
        self.metrics.setdefault(metric, []).append(value)

    def median(self, metric: str) -> float | None:
        values = self.metrics.get(metric)
        return statistics.median(values) if values else None

    def fail(self, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if self.error is None:
            self.error = " ".join(text.split())[:400]


@dataclasses.dataclass
class Table:
    title: str
    metrics: list[tuple[str, str]]  # (metric, column header)
    rows: list[Row]


@dataclasses.dataclass
class Section:
    """What a scenario reports: tables of rows, free text, and verbatim blocks."""

    key: str
    title: str
    how: str  # markdown: what was measured, and how
    tables: list[Table] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    blocks: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (title, text)
    error: str | None = None

    def rows(self) -> list[Row]:
        return [row for table in self.tables for row in table.rows]

    def row(self, key: str) -> Row | None:
        return next((row for row in self.rows() if row.key == key), None)


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default), ``p`` in 0..100."""
    ordered = sorted(values)
    if not ordered:
        raise BenchError("no samples")
    k = (len(ordered) - 1) * p / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def fmt(value: float | None) -> str:
    """A number with 3 significant digits (more for large ones), no exponent."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"
