"""``djmaster status`` and ``djmaster jobs``: what is queued, what runs, what failed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

import psycopg

from circus_djmaster.config.settings import Settings, load_settings
from circus_djmaster.contracts.exit_codes import CliExit
from circus_djmaster.contracts.watchers import PRELOADER_WATCHER, watcher_name
from circus_djmaster.exceptions import CircusError, CircusTimeout, SettingsError
from circus_djmaster.master.readings import read_preloader, read_worker
from circus_djmaster.store import statements
from circus_djmaster.store.errors import describe_error
from circus_djmaster.store.statements import JobFilter
from circus_djmaster.store.sync_executor import connect, execute

CIRCUS_TIMEOUT = 3.0


def add_commands(sub: Any) -> None:
    status = sub.add_parser(
        "status", help="queues, counts and workers per database and worker group"
    )
    status.add_argument("--settings", required=True, help="the djmaster.toml file")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)

    wait = sub.add_parser(
        "wait", help="wait until no job is ready or running (for scripts and deploys)"
    )
    wait.add_argument("--settings", required=True, help="the djmaster.toml file")
    wait.add_argument("--timeout", type=float, default=300.0, help="give up after (300 s)")
    wait.add_argument("--scheduled", action="store_true", help="also wait for jobs scheduled later")
    wait.set_defaults(func=cmd_wait)

    jobs = sub.add_parser("jobs", help="list, retry or delete jobs")
    jobs.add_argument("--settings", required=True, help="the djmaster.toml file")
    jobs.add_argument("--database", help="a database of the settings (default: the first)")
    action = jobs.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = action.add_parser("list", help="list failed jobs (or --live ones)")
    listing.add_argument("--live", action="store_true", help="list jobs not failed instead")
    listing.add_argument("--queue", help="only this queue")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    for name, verb in (("retry", "make due again"), ("delete", "delete")):
        parser = action.add_parser(name, help=f"{verb} failed jobs")
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("ids", nargs="*", type=int, default=[], help="job ids")
        target.add_argument("--all-failed", action="store_true", help="every failed job")
    jobs.set_defaults(func=cmd_jobs)


# --- status --------------------------------------------------------------------------


@dataclasses.dataclass
class WorkerView:
    pid: int  # what circus lists (a launcher's with spawn = "fork")
    state: str
    rss: int
    age: float
    #: spawn = "fork": the forked worker's own pid, and its USS (what its limits compare)
    worker_pid: int | None = None
    uss: int | None = None


@dataclasses.dataclass
class PreloaderView:
    """The preloader watcher (spawn = "fork") and its processes (generations)."""

    watcher: str
    status: str | None
    processes: list[dict[str, Any]]  # pid, old, age (seconds)


@dataclasses.dataclass
class GroupView:
    name: str
    queues: list[str]
    watcher: str
    watcher_status: str | None
    max_processes: int
    counts: dict[str, Any] | None
    workers: list[WorkerView]


@dataclasses.dataclass
class DatabaseView:
    name: str
    error: str | None
    groups: list[GroupView]


def cmd_status(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.settings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return CliExit.USAGE
    circus_error, watchers = _circus_watchers(settings)
    databases = [_database_view(settings, db.name, watchers) for db in settings.databases]
    preloader = _preloader_view(watchers) if settings.forks else None
    if args.json:
        report = {
            "circus": {"endpoint": settings.circus.endpoint, "error": circus_error},
            "databases": [dataclasses.asdict(db) for db in databases],
        }
        if preloader is not None:
            report["preloader"] = dataclasses.asdict(preloader)
        print(json.dumps(report, indent=2))
    else:
        _print_status(settings, circus_error, databases)
        if preloader is not None:
            _print_preloader(preloader)
    return CliExit.FAILED if circus_error or any(db.error for db in databases) else CliExit.OK


def _circus_watchers(settings: Settings) -> tuple[str | None, dict[str, tuple[str, list[int]]]]:
    """{watcher: (status, pids)} from circusd, or the reason it can't be reached."""
    from circus_djmaster.circusd.client import SyncCircus

    watchers: dict[str, tuple[str, list[int]]] = {}
    names = [
        watcher_name(group.name, database.name)
        for group in settings.workers
        for database in settings.databases
    ]
    if settings.forks:
        names.append(PRELOADER_WATCHER)
    try:
        with SyncCircus(settings.circus.endpoint, timeout=CIRCUS_TIMEOUT) as circus:
            for name in names:
                try:
                    watchers[name] = (circus.status(name), circus.pids(name))
                except CircusError:  # not in circusd (circus.ini not rendered again)
                    watchers[name] = ("error", [])
    except CircusTimeout as exc:
        return (
            f"circusd is not reachable at {settings.circus.endpoint} ({exc}); is it running?",
            {},
        )
    return None, watchers


def _database_view(
    settings: Settings, database: str, watchers: dict[str, tuple[str, list[int]]]
) -> DatabaseView:
    error = None
    counts: dict[str, dict[str, Any]] = {}
    try:
        with connect(settings.database(database).url(), application_name="status") as conn:
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
        status, pids = watchers.get(name, (None, []))
        groups.append(
            GroupView(
                group.name,
                list(group.queues),
                name,
                status,
                group.max_processes,
                counts.get(group.name),
                [view for pid in pids if (view := _worker_view(pid)) is not None],
            )
        )
    return DatabaseView(database, error, groups)


def _worker_view(pid: int) -> WorkerView | None:
    # The master's own reading: a launcher's is its forked worker's (spawn = "fork").
    reading = read_worker(pid)
    if reading is None:
        return None
    return WorkerView(
        pid,
        reading.state.value,
        reading.rss or 0,
        reading.age or 0.0,
        worker_pid=reading.forked_pid,
        uss=reading.uss,
    )


def _preloader_view(watchers: dict[str, tuple[str, list[int]]]) -> PreloaderView:
    status, pids = watchers.get(PRELOADER_WATCHER, (None, []))
    processes = [
        {"pid": reading.pid, "old": reading.old, "age": reading.age}
        for pid in pids
        if (reading := read_preloader(pid)) is not None
    ]
    return PreloaderView(PRELOADER_WATCHER, status, processes)


def _print_preloader(view: PreloaderView) -> None:
    generations = ", ".join(
        f"pid {process['pid']} {'old' if process['old'] else 'current'} "
        f"age {_duration(process['age'])}"
        for process in view.processes
    )
    print(
        f"preloader {view.watcher}: {view.status or 'unknown'}"
        + (f", {generations}" if generations else "")
    )


def _print_status(settings: Settings, circus_error: str | None, dbs: list[DatabaseView]) -> None:
    if circus_error:
        print(f"! {circus_error}")
    for db in dbs:
        print(f"database {db.name}" + (f": {db.error}" if db.error else ""))
        for group in db.groups:
            queues = ", ".join(group.queues) if group.queues else "all queues"
            print(
                f"  group {group.name} ({queues})  watcher {group.watcher}: "
                f"{group.watcher_status or 'unknown'}, "
                f"{len(group.workers)}/{group.max_processes} workers"
            )
            if group.counts is not None:
                c = group.counts
                oldest = c["oldest_ready_age"]
                print(
                    f"    ready {c['ready']}  running {c['running']}  "
                    f"scheduled {c['scheduled']}  failed {c['failed']}  oldest ready "
                    + (_duration(oldest) if oldest is not None else "-")
                )
            for worker in group.workers:
                if worker.worker_pid is None:
                    print(
                        f"    pid {worker.pid:<7} {worker.state:<8} "
                        f"RSS {worker.rss / 2**20:6.1f} MB  age {_duration(worker.age)}"
                    )
                    continue
                uss = (worker.uss or 0) / 2**20
                print(
                    f"    pid {worker.pid:<7} {worker.state:<8} "
                    f"USS {uss:6.1f} MB (RSS {worker.rss / 2**20:.1f} MB, shared with the "
                    f"preloader)  age {_duration(worker.age)}  "
                    f"forked worker pid {worker.worker_pid}"
                )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


# --- wait ----------------------------------------------------------------------------


def cmd_wait(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.settings)
        urls = [(db.name, db.url()) for db in settings.databases]
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return CliExit.USAGE
    deadline = time.monotonic() + args.timeout
    while True:
        left = 0
        for name, url in urls:
            try:
                with connect(url, application_name="djmaster wait") as conn:
                    for group in settings.workers:
                        stats = execute(
                            conn,
                            statements.group_stats(
                                JobFilter.of(group), lock_timeout=settings.lock_timeout
                            ),
                        )
                        left += stats.ready + stats.running
                        left += stats.scheduled if args.scheduled else 0
            except psycopg.Error as exc:
                print(f"database {name}: {describe_error(exc)}", file=sys.stderr)
                left += 1
        if left == 0:
            print("no job left")
            return CliExit.OK
        if time.monotonic() > deadline:
            print(f"{left} job(s) still to do after {args.timeout:g}s", file=sys.stderr)
            return CliExit.FAILED
        time.sleep(0.2)


# --- jobs ----------------------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.settings)
        database = settings.database(args.database) if args.database else settings.databases[0]
        url = database.url()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return CliExit.USAGE
    try:
        with connect(url, application_name="djmaster jobs") as conn:
            if args.action == "list":
                return _list(conn, args)
            ids = None if args.all_failed else args.ids
            if args.action == "retry":
                done = execute(conn, statements.retry_failed_jobs(ids))
                verb = "retried"
            else:
                done = execute(conn, statements.delete_failed_jobs(ids))
                verb = "deleted"
    except psycopg.Error as exc:
        print(f"database {database.name}: {describe_error(exc)}", file=sys.stderr)
        return CliExit.FAILED
    print(f"{verb} {len(done)} failed job(s)" + (f": {', '.join(map(str, done))}" if done else ""))
    missing = sorted(set(args.ids) - set(done))
    if missing:
        print(f"not failed or not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return CliExit.FAILED
    return CliExit.OK


def _list(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    rows = execute(
        conn, statements.list_jobs(failed=not args.live, queue=args.queue, limit=args.limit)
    )
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return CliExit.OK
    if not rows:
        print("no failed jobs" if not args.live else "no jobs")
        return CliExit.OK
    for row in rows:
        error = (row["last_error"] or "").strip().splitlines()
        when = f"failed {row['failed_at']}" if row["failed_at"] else f"run at {row['run_at']}"
        print(f"#{row['id']}  queue {row['queue']}  attempts {row['attempts']}  {when}")
        print(f"    {row['handler'][:200]}")
        if error:
            print(f"    {error[0][:200]}")
    return CliExit.OK
