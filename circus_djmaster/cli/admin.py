"""``djmaster status`` and ``djmaster jobs``: what is queued, what runs, what failed."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from typing import Any

import psutil
import psycopg

from circus_djmaster.common.memory import rss_with_children
from circus_djmaster.config.settings import Settings, load_settings
from circus_djmaster.contracts.exit_codes import CliExit
from circus_djmaster.contracts.titles import state_from_title
from circus_djmaster.contracts.watchers import watcher_name
from circus_djmaster.exceptions import CircusError, CircusTimeout, SettingsError
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

    jobs = sub.add_parser("jobs", help="list, show, retry, delete or cancel jobs")
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
    cancel = action.add_parser(
        "cancel",
        help="cancel jobs: remove those not started, ask running ones to stop",
        description="A job no worker holds is removed (kept as cancelled in the finished "
        "jobs when keep_finished applies to it); a running job is asked to stop "
        "(current_job().cancel_requested) and is never run again.",
    )
    target = cancel.add_mutually_exclusive_group(required=True)
    target.add_argument("ids", nargs="*", type=int, default=[], help="job ids")
    target.add_argument("--queue", help="every live job of this queue")
    show = action.add_parser("show", help="one job: live, or finished and kept")
    show.add_argument("id", type=int, help="the job id")
    show.add_argument("--json", action="store_true", help="print JSON")
    jobs.set_defaults(func=cmd_jobs)

    recurring = sub.add_parser("recurring", help="recurring jobs")
    recurring_action = recurring.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = recurring_action.add_parser(
        "list", help="each recurring job: schedule, last run enqueued, next runs"
    )
    listing.add_argument("--settings", required=True, help="the djmaster.toml file")
    listing.add_argument("--next", type=int, default=3, help="how many next runs (3)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    recurring.set_defaults(func=cmd_recurring)


# --- status --------------------------------------------------------------------------


@dataclasses.dataclass
class WorkerView:
    pid: int
    state: str
    rss: int
    age: float


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
    if args.json:
        report = {
            "circus": {"endpoint": settings.circus.endpoint, "error": circus_error},
            "databases": [dataclasses.asdict(db) for db in databases],
        }
        print(json.dumps(report, indent=2))
    else:
        _print_status(settings, circus_error, databases)
    return CliExit.FAILED if circus_error or any(db.error for db in databases) else CliExit.OK


def _circus_watchers(settings: Settings) -> tuple[str | None, dict[str, tuple[str, list[int]]]]:
    """{watcher: (status, pids)} from circusd, or the reason it can't be reached."""
    from circus_djmaster.circusd.client import SyncCircus

    watchers: dict[str, tuple[str, list[int]]] = {}
    try:
        with SyncCircus(settings.circus.endpoint, timeout=CIRCUS_TIMEOUT) as circus:
            for group in settings.workers:
                for database in settings.databases:
                    name = watcher_name(group.name, database.name)
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
    try:
        process = psutil.Process(pid)
        title = " ".join(process.cmdline())
        rss = rss_with_children(process)  # a child exiting meanwhile is left out
        age = time.time() - process.create_time()
    except psutil.Error:
        return None
    return WorkerView(pid, state_from_title(title).value, rss, age)


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
                print(
                    f"    pid {worker.pid:<7} {worker.state:<8} "
                    f"RSS {worker.rss / 2**20:6.1f} MB  age {_duration(worker.age)}"
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
            if args.action == "show":
                return _show(conn, args.id, as_json=args.json)
            if args.action == "cancel":
                return _cancel(conn, settings, args)
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


def _show(conn: psycopg.Connection[Any], job_id: int, *, as_json: bool) -> int:
    """``djmaster jobs show ID``: the live row, else the kept finished one."""
    live = execute(conn, statements.live_job(job_id))
    finished = execute(conn, statements.finished_job(job_id))
    if live is None and finished is None:
        print(
            f"job {job_id}: not found (never enqueued, or finished and not kept)", file=sys.stderr
        )
        return CliExit.FAILED
    if as_json:
        report = {"live": live, "finished": finished}
        print(json.dumps(report, indent=2, default=str))
        return CliExit.OK
    if live is not None:
        print(f"job {job_id}: {_live_state(live)}")
        for key in ("queue", "priority", "attempts", "run_at", "locked_by", "unique_key",
                    "cancel_requested_at", "failed_at", "created_at"):  # fmt: skip
            if live[key] is not None:
                print(f"  {key}: {live[key]}")
        print(f"  handler: {live['handler']}")
        if live["last_error"]:
            print("  last_error: " + live["last_error"].strip().replace("\n", "\n    "))
    if finished is not None:
        print(f"job {job_id}: {finished['outcome']} (kept until {finished['keep_until']})")
        for key in ("queue", "priority", "attempts", "started_at", "finished_at", "run_time",
                    "finished_by"):  # fmt: skip
            if finished[key] is not None:
                print(f"  {key}: {finished[key]}")
        print(f"  handler: {finished['handler']}")
        if finished["result"] is not None or finished["outcome"] == "succeeded":
            print(f"  result: {json.dumps(finished['result'])}")
        if finished["result_note"]:
            print(f"  result not kept: {finished['result_note']}")
        if finished["last_error"]:
            print("  last_error: " + finished["last_error"].strip().replace("\n", "\n    "))
    return CliExit.OK


def _live_state(row: dict[str, Any]) -> str:
    if row["failed_at"] is not None:
        return "failed"
    if row["cancel_requested_at"] is not None:
        return "running, cancel requested"
    if row["locked_at"] is not None:
        return "running"
    return "scheduled" if row["run_at"] > row["now"] else "ready"


def _cancel(conn: psycopg.Connection[Any], settings: Settings, args: argparse.Namespace) -> int:
    """``djmaster jobs cancel``: a removed job is kept as cancelled for the
    ``keep_finished`` of the group serving its queue (the first such group)."""
    keep_by_queue: dict[str, float] = {}
    keep_default = 0.0
    for group in reversed(settings.workers):  # the first group serving a queue wins
        if group.queues:
            keep_by_queue.update(dict.fromkeys(group.queues, group.keep_finished))
        else:
            keep_default = group.keep_finished
    done = execute(
        conn,
        statements.cancel_jobs(
            args.ids, queue=args.queue, keep_default=keep_default, keep_by_queue=keep_by_queue
        ),
    )
    if done.cancelled:
        print(f"cancelled {len(done.cancelled)} job(s): {', '.join(map(str, done.cancelled))}")
    if done.requested:
        print(
            f"asked {len(done.requested)} running job(s) to stop: "
            + ", ".join(map(str, done.requested))
        )
    if not done.cancelled and not done.requested:
        print("no live job to cancel")
    missing = sorted(set(args.ids) - set(done.cancelled) - set(done.requested))
    if missing:
        print(f"not live (finished, failed or unknown): {', '.join(map(str, missing))}",
              file=sys.stderr)  # fmt: skip
        return CliExit.FAILED
    return CliExit.OK


# --- recurring -----------------------------------------------------------------------


def cmd_recurring(args: argparse.Namespace) -> int:
    """``djmaster recurring list``: every entry (settings and ``recurring_modules``),
    its schedule, the last due time enqueued and the next ones (database clock)."""
    from circus_djmaster.api.recurring import declared_in
    from circus_djmaster.common.recurring import RecurringJob

    try:
        settings = load_settings(args.settings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return CliExit.USAGE
    entries: list[RecurringJob] = list(settings.recurring)
    status = CliExit.OK
    if settings.recurring_modules:
        try:
            names = {entry.name for entry in entries}
            entries += [e for e in declared_in(settings.recurring_modules) if e.name not in names]
        except Exception as exc:  # a module of the application failed to import
            print(f"recurring_modules: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = CliExit.FAILED
    first = settings.databases[0].name
    report: list[dict[str, Any]] = []
    for database in settings.databases:
        mine = [e for e in entries if (e.database or first) == database.name]
        if not mine:
            continue
        now = dt.datetime.now(dt.timezone.utc)
        last: dict[str, dt.datetime | None] = {}
        error = None
        try:
            with connect(database.url(), application_name="djmaster recurring") as conn:
                state = execute(
                    conn, statements.recurring_last_runs([e.name for e in mine], now=now)
                )
            now, last = state.now, state.last_due
        except (psycopg.Error, SettingsError) as exc:
            error = describe_error(exc)
            status = CliExit.FAILED
        for entry in mine:
            upcoming, moment = [], now
            for _ in range(max(0, args.next)):
                moment = entry.next_due(moment)
                upcoming.append(moment)
            report.append(
                {
                    "name": entry.name,
                    "database": database.name,
                    "schedule": entry.schedule,
                    "callable": entry.callable,
                    "queue": entry.queue,
                    "catch_up": entry.catch_up,
                    "last_enqueued": last.get(entry.name),
                    "next": upcoming,
                    "error": error,
                }
            )
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return status
    if not report:
        print("no recurring jobs")
    for item in report:
        print(f"{item['name']} @{item['database']}: {item['schedule']} -> {item['callable']} "
              f"(queue {item['queue']})")  # fmt: skip
        if item["error"]:
            print(f"  database unreachable: {item['error']}")
        else:
            print(f"  last enqueued: {item['last_enqueued'] or 'never'}")
        for moment in item["next"]:
            print(f"  next: {moment.isoformat()}")
    return status
