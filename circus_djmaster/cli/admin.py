"""``djmaster jobs`` and ``djmaster wait``: what failed, and waiting for the queues to
empty (``djmaster status`` is status.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import psycopg

from circus_djmaster.cli import status as cli_status
from circus_djmaster.cli.options import add_settings_option, duration, settings_path
from circus_djmaster.config.settings import load_settings
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

    jobs = sub.add_parser("jobs", help="list, retry or delete jobs")
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
    for parser in actions:  # `jobs list --settings F` as well as `jobs --settings F list`
        add_settings_option(parser)
        parser.add_argument("--database", default=argparse.SUPPRESS, help=database_help)
    jobs.set_defaults(func=cmd_jobs)


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
