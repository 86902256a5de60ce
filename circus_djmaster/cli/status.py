"""``djmaster status``: queues, counts, watchers and workers per database and group.

``--json`` prints the same for scripts; ``--check`` exits 1 when something stops jobs
from running (circusd or a database unreachable, the master not running, a watcher
missing from circusd or stopped); ``--watch`` redraws the table in place every
``--interval``, cut to the terminal's size, until Ctrl-C.

The state of a watcher is decided by :func:`watcher_state`, a pure function of what
circusd says (docs/operations.md has the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shutil
import sys
import time
from typing import Any

import psutil
import psycopg

from circus_djmaster.cli.options import add_settings_option, duration, settings_path
from circus_djmaster.common.memory import rss_with_children
from circus_djmaster.config.settings import Settings, load_settings
from circus_djmaster.contracts.exit_codes import CliExit
from circus_djmaster.contracts.titles import state_from_title, wid_from_title
from circus_djmaster.contracts.watchers import PLUGIN_WATCHER, watcher_name
from circus_djmaster.exceptions import CircusError, CircusTimeout, DjmasterError, SettingsError
from circus_djmaster.store import statements
from circus_djmaster.store.errors import describe_error
from circus_djmaster.store.statements import JobFilter
from circus_djmaster.store.sync_executor import connect, execute

__all__ = ["add_command", "cmd_status", "render_text", "status_report", "watcher_state"]

#: Seconds each circusd command may take.
CIRCUS_TIMEOUT = 3.0
#: ``--watch`` redraws this often unless ``--interval`` says otherwise (seconds).
WATCH_INTERVAL = 2.0
_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen


def add_command(sub: Any) -> None:
    """Add ``status`` to the ``djmaster`` parser's commands (``sub``)."""
    status = sub.add_parser(
        "status",
        help="queues, counts, watchers and workers per database and worker group",
        description="Show what is queued, what runs and what is wrong, per database and "
        "worker group. Exit codes: 0, or 1 when --check finds a problem (or circusd or a "
        "database is unreachable); 2 bad settings.",
    )
    add_settings_option(status)
    shown = status.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print JSON")
    shown.add_argument(
        "--watch",
        action="store_true",
        help="redraw the table in place until Ctrl-C (exit 0), fitting the terminal",
    )
    status.add_argument(
        "--interval",
        type=duration,
        default=WATCH_INTERVAL,
        metavar="DURATION",
        help=f"how often --watch redraws (default {WATCH_INTERVAL:g}s; e.g. 500ms, 5s)",
    )
    status.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a watcher is missing from circusd or stopped, the master does "
        "not run, or circusd or a database is unreachable (for health checks)",
    )
    status.set_defaults(func=cmd_status)


# --- the report ------------------------------------------------------------------------


@dataclasses.dataclass
class WorkerView:
    """A worker process as ``status`` shows it (psutil's reading of a pid circus lists)."""

    pid: int
    wid: int | None  # circus' wid, from the title
    state: str
    rss: int  # bytes, children included
    age: float  # seconds


@dataclasses.dataclass
class GroupView:
    """A worker group on one database: its watcher, counts and workers."""

    name: str
    queues: list[str]
    watcher: str
    watcher_status: str | None  # circusd's word; None: not in circusd or circusd down
    target: int | None  # circus' numprocesses
    state: str  # watcher_state()
    problem: str | None  # what stops its jobs, and what to do
    max_processes: int
    counts: dict[str, Any] | None
    workers: list[WorkerView]


@dataclasses.dataclass
class DatabaseView:
    """A database of the settings; ``error`` when it could not be counted."""

    name: str
    error: str | None
    groups: list[GroupView]


@dataclasses.dataclass
class MasterView:
    """The master's watcher (``plugin:djmaster``) in circusd."""

    status: str | None  # circusd's word for plugin:djmaster; None: circusd down
    pids: list[int]


@dataclasses.dataclass
class Report:
    """Everything ``status`` shows (``--json`` prints :meth:`as_json`)."""

    endpoint: str
    circus_error: str | None
    master: MasterView
    databases: list[DatabaseView]

    @property
    def problems(self) -> list[str]:
        """Everything that stops jobs from running, one sentence each."""
        found = [self.circus_error] if self.circus_error else []
        if self.circus_error is None and self.master.status != "active":
            found.append(
                f"the master ({PLUGIN_WATCHER}) is {self.master.status or 'not in circusd'}: "
                f"circusctl start {PLUGIN_WATCHER}"
            )
        for database in self.databases:
            if database.error:
                found.append(f"database {database.name}: {database.error}")
            found += [f"{g.watcher}: {g.problem}" for g in database.groups if g.problem]
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "circus": {"endpoint": self.endpoint, "error": self.circus_error},
            "master": dataclasses.asdict(self.master),
            "databases": [dataclasses.asdict(db) for db in self.databases],
            "problems": self.problems,
        }


def watcher_state(status: str | None, target: int | None) -> tuple[str, str | None]:
    """``(state, problem)`` of a watcher from circusd's ``status`` and ``numprocesses``
    (both None when circusd has no such watcher); ``problem`` is None when its jobs can
    run.

    * ``missing``: not in circusd (a problem: circusd could not create it, or circus.ini
      is older than the settings);
    * ``stopped``: stopped while workers are wanted (target ≥ 1): the master parks a
      watcher whose workers exit 78 (stopped, target 1), or an operator stopped it (a
      problem);
    * ``idle``: stopped at target 0: never needed yet (the master starts it for a job);
    * otherwise circusd's word: ``active``, ``starting``, ``stopping``.
    """
    if status is None:
        return "missing", (
            "not in circusd: circusd could not create it (it could not open an output "
            "file: see circusd's log), or circus.ini is older than the settings "
            "(djmaster-config render, then circusctl reload)"
        )
    if status == "stopped":
        if target:
            return "stopped", (
                f"stopped with {target} worker(s) wanted: the master parks a watcher whose "
                "workers exit 78 (settings or app import error: see log_file), or it was "
                "stopped by hand; fix the cause, then circusctl start the watcher"
            )
        return "idle", None
    return status, None


def status_report(settings: Settings) -> Report:
    """Ask circusd and every database (each round trip bounded); never raises for an
    unreachable one: the report says so."""
    circus_error, master, watchers = _circus_view(settings)
    databases = [
        _database_view(settings, db.name, watchers if circus_error is None else None)
        for db in settings.databases
    ]
    return Report(settings.circus.endpoint, circus_error, master, databases)


_Watchers = dict[str, tuple[str, int, list[int]]]  # name -> (status, target, pids)


def _circus_view(settings: Settings) -> tuple[str | None, MasterView, _Watchers]:
    from circus_djmaster.circusd.client import SyncCircus

    watchers: _Watchers = {}
    master = MasterView(None, [])
    try:
        with SyncCircus(settings.circus.endpoint, timeout=CIRCUS_TIMEOUT) as circus:
            statuses = circus.statuses()
            if PLUGIN_WATCHER in statuses:
                master = MasterView(statuses[PLUGIN_WATCHER], circus.pids(PLUGIN_WATCHER))
            for group in settings.workers:
                for database in settings.databases:
                    name = watcher_name(group.name, database.name)
                    if name.lower() not in statuses:
                        continue
                    try:
                        watchers[name] = (
                            statuses[name.lower()],
                            circus.numprocesses(name),
                            circus.pids(name),
                        )
                    except CircusError:  # removed meanwhile (a reload)
                        continue
    except CircusTimeout as exc:
        error = f"circusd is not reachable at {settings.circus.endpoint} ({exc}); is it running?"
        return error, master, {}
    return None, master, watchers


def _database_view(settings: Settings, database: str, watchers: _Watchers | None) -> DatabaseView:
    """``watchers``: circusd's, None when circusd did not answer."""
    error = None
    counts: dict[str, dict[str, Any]] = {}
    try:
        url = settings.database(database).url()
        with connect(url, application_name="status", timeout=settings.database_timeout) as conn:
            for group in settings.workers:
                stats = execute(
                    conn,
                    statements.group_stats(JobFilter.of(group), lock_timeout=settings.lock_timeout),
                )
                counts[group.name] = dataclasses.asdict(stats)
    except (psycopg.Error, SettingsError) as exc:
        error = f"unreachable: {describe_error(exc)}"
    groups = []
    for group in settings.workers:
        name = watcher_name(group.name, database)
        status, target, pids = (watchers or {}).get(name, (None, None, []))
        if watchers is not None:
            state, problem = watcher_state(status, target)
        else:
            state, problem = "unknown", None  # circusd down: reported once, above
        groups.append(
            GroupView(
                name=group.name,
                queues=list(group.queues),
                watcher=name,
                watcher_status=status,
                target=target,
                state=state,
                problem=problem,
                max_processes=group.max_processes,
                counts=counts.get(group.name),
                workers=[view for pid in pids if (view := _worker_view(pid)) is not None],
            )
        )
    return DatabaseView(database, error, groups)


def _worker_view(pid: int) -> WorkerView | None:
    try:
        process = psutil.Process(pid)
        title = " ".join(process.cmdline())
        rss = rss_with_children(process)  # a child exiting meanwhile is left out
        age = time.time() - process.create_time()
    except psutil.Error:
        return None
    return WorkerView(pid, wid_from_title(title), state_from_title(title).value, rss, age)


# --- text ------------------------------------------------------------------------------


def render_text(report: Report) -> list[str]:
    """The report as lines of text (under 80 columns, but for long names)."""
    lines = []
    if report.circus_error:
        lines.append(f"! {report.circus_error}")
    else:
        pids = ", ".join(map(str, report.master.pids))
        status = report.master.status or "not in circusd"
        lines.append(f"master: {status}" + (f" (pid {pids})" if pids else ""))
    for db in report.databases:
        lines.append(f"database {db.name}" + (f": {db.error}" if db.error else ""))
        for group in db.groups:
            queues = ", ".join(group.queues) if group.queues else "all queues"
            state = group.state.upper() if group.problem else group.state
            lines.append(
                f"  group {group.name} ({queues})  watcher {group.watcher}: {state}, "
                f"{len(group.workers)}/{group.max_processes} workers"
            )
            if group.problem:
                lines.append(f"    ! {group.problem}")
            if group.counts is not None:
                c = group.counts
                oldest = c["oldest_ready_age"]
                retries = f" ({c['retrying']} retries)" if c["retrying"] else ""
                lines.append(
                    f"    ready {c['ready']}  running {c['running']}  "
                    f"scheduled {c['scheduled']}{retries}  failed {c['failed']}  oldest ready "
                    + (_duration(oldest) if oldest is not None else "-")
                )
            for worker in group.workers:
                wid = f"#{worker.wid}" if worker.wid is not None else ""
                lines.append(
                    f"    pid {worker.pid:<7} {wid:<4} {worker.state:<8} "
                    f"RSS {worker.rss / 2**20:6.1f} MB  age {_duration(worker.age)}"
                )
    return lines


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def fit(lines: list[str], columns: int, rows: int) -> list[str]:
    """``lines`` cut to a terminal of ``columns`` by ``rows``: no line wraps (a wrapped
    line would scroll the frame), and the last row says how many lines were left out."""
    width = max(columns - 1, 10)  # the last column: some terminals wrap on it

    def cut(line: str) -> str:
        return line if len(line) <= width else line[: width - 1] + "…"

    if len(lines) > rows:
        kept = max(rows - 1, 1)
        lines = [*lines[:kept], f"… {len(lines) - kept} more line(s): enlarge the window"]
    return [cut(line) for line in lines]


# --- the command -----------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """``djmaster status``; returns a :class:`CliExit` code."""
    try:
        settings = load_settings(settings_path(args))
    except (SettingsError, DjmasterError) as exc:
        print(f"djmaster: {exc}" if not isinstance(exc, SettingsError) else exc, file=sys.stderr)
        return CliExit.USAGE
    if args.watch:
        return _watch(settings, args.interval)
    report = status_report(settings)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print("\n".join(render_text(report)))
    if args.check:
        for problem in report.problems:
            print(f"djmaster status: {problem}", file=sys.stderr)
        return CliExit.FAILED if report.problems else CliExit.OK
    unreachable = report.circus_error or any(db.error for db in report.databases)
    return CliExit.FAILED if unreachable else CliExit.OK


def _watch(settings: Settings, interval: float) -> int:
    """Redraw until Ctrl-C; exit 0 then."""
    tty = sys.stdout.isatty()
    try:
        while True:
            started = time.monotonic()
            report = status_report(settings)
            size = shutil.get_terminal_size()
            now = dt.datetime.now().strftime("%H:%M:%S")
            header = f"djmaster status  {now}  every {interval:g}s  (Ctrl-C to quit)"
            lines = fit([header, "", *render_text(report)], size.columns, size.lines - 1)
            frame = "\n".join(lines)
            sys.stdout.write((_CLEAR + frame + "\n") if tty else (frame + "\n\n"))
            sys.stdout.flush()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        if tty:
            sys.stdout.write("\n")
        return CliExit.OK
