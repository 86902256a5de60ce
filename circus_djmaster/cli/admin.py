"""``djmaster jobs`` and ``djmaster wait``: what failed, and waiting for the queues to
empty (``djmaster status`` is status.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from typing import Any

import psycopg

from circus_djmaster.cli import status as cli_status
from circus_djmaster.cli.options import add_settings_option, duration, settings_path
from circus_djmaster.config.settings import Settings, load_settings
from circus_djmaster.contracts.exit_codes import CliExit
from circus_djmaster.exceptions import DjmasterError, SettingsError
from circus_djmaster.store import statements
from circus_djmaster.store.errors import describe_error
from circus_djmaster.store.statements import JobFilter
from circus_djmaster.store.sync_executor import connect, execute

#: ``wait`` gives up after this long unless ``--timeout`` says otherwise (seconds).
WAIT_TIMEOUT = 300.0


def add_commands(sub: Any) -> None:
    """Add ``status``, ``wait`` and ``jobs`` to the ``djmaster`` parser's commands."""
    cli_status.add_command(sub)

    wait = sub.add_parser(
        "wait",
        help="wait until no job is ready, running or waiting to be retried",
        description="Wait until no job is ready, running or waiting for its retry (with "
        "--scheduled: nor scheduled later). Exit codes: 0 none left, 1 jobs left after "
        "--timeout, 2 bad settings.",
    )
    add_settings_option(wait)
    wait.add_argument(
        "--timeout",
        type=duration,
        default=WAIT_TIMEOUT,
        metavar="DURATION",
        help=f"give up after this long (default {WAIT_TIMEOUT:g}s; e.g. 90s, 5m, 1h)",
    )
    wait.add_argument("--scheduled", action="store_true", help="also wait for jobs scheduled later")
    wait.set_defaults(func=cmd_wait)

    jobs = sub.add_parser("jobs", help="list, show, retry, delete or cancel jobs")
    database_help = "a database of the settings (default: the first)"
    add_settings_option(jobs)
    jobs.add_argument("--database", default=argparse.SUPPRESS, help=database_help)
    action = jobs.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = action.add_parser("list", help="list failed jobs (or --live ones)")
    listing.add_argument("--live", action="store_true", help="list jobs not failed instead")
    listing.add_argument("--queue", help="only this queue")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    actions = [listing]
    for name, verb in (("retry", "make due again"), ("delete", "delete")):
        parser = action.add_parser(name, help=f"{verb} failed jobs")
        actions.append(parser)
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
    actions.append(cancel)
    show = action.add_parser("show", help="one job: live, or finished and kept")
    show.add_argument("id", type=int, help="the job id")
    show.add_argument("--json", action="store_true", help="print JSON")
    actions.append(show)
    for parser in actions:  # `jobs list --settings F` as well as `jobs --settings F list`
        add_settings_option(parser)
        parser.add_argument("--database", default=argparse.SUPPRESS, help=database_help)
    jobs.set_defaults(func=cmd_jobs)

    recurring = sub.add_parser("recurring", help="recurring jobs")
    recurring_action = recurring.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = recurring_action.add_parser(
        "list", help="each recurring job: schedule, last run enqueued, next runs"
    )
    add_settings_option(listing)
    listing.add_argument("--next", type=int, default=3, help="how many next runs (3)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    recurring.set_defaults(func=cmd_recurring)


# --- wait ----------------------------------------------------------------------------


def cmd_wait(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(settings_path(args))
        urls = [(db.name, db.url()) for db in settings.databases]
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return CliExit.USAGE
    except DjmasterError as exc:
        print(f"djmaster: {exc}", file=sys.stderr)
        return CliExit.USAGE
    deadline = time.monotonic() + args.timeout
    while True:
        left = 0
        for name, url in urls:
            try:
                with connect(
                    url, application_name="djmaster wait", timeout=settings.database_timeout
                ) as conn:
                    for group in settings.workers:
                        stats = execute(
                            conn,
                            statements.group_stats(
                                JobFilter.of(group), lock_timeout=settings.lock_timeout
                            ),
                        )
                        left += stats.ready + stats.running
                        # A failed job's retry is still to do; other jobs due later only
                        # with --scheduled (they may be days ahead).
                        left += stats.scheduled if args.scheduled else stats.retrying
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
        settings = load_settings(settings_path(args))
        name = getattr(args, "database", None)
        database = settings.database(name) if name else settings.databases[0]
        url = database.url()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return CliExit.USAGE
    except DjmasterError as exc:
        print(f"djmaster: {exc}", file=sys.stderr)
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
        settings = load_settings(settings_path(args))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return CliExit.USAGE
    except DjmasterError as exc:
        print(f"djmaster: {exc}", file=sys.stderr)
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
