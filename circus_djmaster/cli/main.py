"""``djmaster``: run a worker, migrate databases, enqueue jobs from the shell; the
status, jobs and wait commands (admin.py), the embedded PostgreSQL (devdb.py), the demo
and shell completion.

Exit codes: :class:`~circus_djmaster.contracts.exit_codes.CliExit` (shared with
``djmaster-config``), except ``djmaster worker``'s own
(:class:`~circus_djmaster.contracts.exit_codes.WorkerExit`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import psycopg

from circus_djmaster.api.context import DATABASE_URL_ENV
from circus_djmaster.api.jobs import DEFAULT_QUEUE, JobCall, enqueue, enqueue_many
from circus_djmaster.cli.options import (
    SETTINGS_ENV,
    add_completion_command,
    add_settings_option,
    add_version_option,
    duration,
    optional_settings_path,
)
from circus_djmaster.config.kinds import parse_duration
from circus_djmaster.config.settings import load_settings
from circus_djmaster.contracts.exit_codes import CliExit
from circus_djmaster.exceptions import DjmasterError, SettingsError
from circus_djmaster.store.errors import describe_error
from circus_djmaster.store.sync_executor import connect, migrate

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``djmaster``: exits with the command's code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        sys.exit(CliExit.USAGE)
    sys.exit(args.func(args))


def build_parser(*, every_command: bool = False) -> argparse.ArgumentParser:
    """The parser of ``djmaster``. The commands a worker never needs (status, jobs,
    wait, devdb, demo, completion) are left out when this process is ``djmaster
    worker`` (their imports would slow every worker's start), unless ``every_command``."""
    parser = argparse.ArgumentParser(
        prog="djmaster",
        description="Postgres-backed delayed jobs run under circus.",
        epilog=f"--settings may be given before or after the command, or as ${SETTINGS_ENV}. "
        "Exit codes: 0 done, 1 failed (or --check found a problem), 2 bad command line or "
        "settings.",
    )
    add_version_option(parser)
    add_settings_option(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    worker = sub.add_parser("worker", help="run one worker process (what a circus watcher runs)")
    worker.add_argument("--settings", required=True, help="the djmaster.toml file")
    worker.add_argument("--group", required=True, help="the worker group's name")
    worker.add_argument("--database", required=True, help="the database's name")
    worker.add_argument(
        "--wid", type=int, help="circus' wid of this process (circus.ini gives $(circus.wid))"
    )
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="create or update the delayed_jobs table")
    _add_database_options(migrate, all_by_default=True)
    migrate.set_defaults(func=cmd_migrate)

    enq = sub.add_parser(
        "enqueue",
        help="enqueue a job (or many, from JSON lines)",
        description="Enqueue CALLABLE (module.path:function) with JSON arguments, or many "
        "jobs from --json-lines (one JSON object per line: callable, args, kwargs, queue, "
        "priority, delay) in one round trip.",
    )
    enq.add_argument("callable", nargs="?", help="module.path:function")
    enq.add_argument("--args", default="[]", help="JSON list of positional arguments")
    enq.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    enq.add_argument("--queue", help='queue name (default: "default")')
    enq.add_argument("--priority", type=int, help="priority (lower runs first)")
    when = enq.add_mutually_exclusive_group()
    when.add_argument("--run-at", help="ISO 8601 time with a UTC offset")
    when.add_argument(
        "--in", dest="delay", type=duration, help='delay from now, e.g. "30s", "5m", "1h30m"'
    )
    enq.add_argument("--json-lines", metavar="FILE", help="read jobs from FILE (- for stdin)")
    _add_database_options(enq, all_by_default=False)
    enq.set_defaults(func=cmd_enqueue)

    if every_command or "worker" not in sys.argv[1:2]:
        # A worker needs none of these: skipping their imports (jinja2, circus' client)
        # shortens the start of every worker process, i.e. the scale-from-zero latency.
        from circus_djmaster.cli import admin as cli_admin
        from circus_djmaster.cli import devdb as cli_devdb
        from circus_djmaster.demo import command as demo

        cli_admin.add_commands(sub)
        cli_devdb.add_commands(sub)
        demo.add_command(sub)
        add_completion_command(sub, lambda: build_parser(every_command=True))
    return parser


def _add_database_options(parser: argparse.ArgumentParser, *, all_by_default: bool) -> None:
    add_settings_option(parser)
    parser.add_argument(
        "--database",
        help="a database name from the settings"
        + (" (default: all of them)" if all_by_default else " (default: the first)"),
    )
    parser.add_argument(
        "--database-url",
        help=f"a database URL instead of settings (default: ${DATABASE_URL_ENV}); "
        "prefer the variable: a URL on a command line is visible in ps",
    )


def _database_urls(args: argparse.Namespace, *, all_by_default: bool) -> list[tuple[str, str]]:
    """(name, url) pairs chosen by --settings/--database or --database-url; without
    either, by $DJMASTER_SETTINGS, else $DJMASTER_DATABASE_URL."""
    given = getattr(args, "settings", None)
    if given and args.database_url:
        raise DjmasterError("give --settings or --database-url, not both")
    path = None if args.database_url else optional_settings_path(args)
    if path:
        settings = load_settings(path)
        if args.database:
            databases = [settings.database(args.database)]
        elif all_by_default:
            databases = list(settings.databases)
        else:
            databases = [settings.databases[0]]
        return [(db.name, db.url()) for db in databases]
    if args.database:
        raise DjmasterError("--database needs --settings")
    url = args.database_url or os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise DjmasterError(
            f"no database: give --settings, --database-url or set {SETTINGS_ENV} or "
            f"{DATABASE_URL_ENV}"
        )
    return [("(url)", url)]


def cmd_worker(args: argparse.Namespace) -> int:
    from circus_djmaster.worker.main import run

    return run(args.settings, args.group, args.database, args.wid)


def cmd_migrate(args: argparse.Namespace) -> int:
    try:
        targets = _database_urls(args, all_by_default=True)
    except (SettingsError, DjmasterError) as exc:
        return _fail(exc, CliExit.USAGE)
    failed = 0
    for name, url in targets:
        try:
            with connect(url, application_name="djmaster migrate") as conn:
                migrate(conn)
            print(f"{name}: delayed_jobs is up to date")
        except psycopg.Error as exc:
            failed += 1
            print(f"{name}: migration failed: {describe_error(exc)}", file=sys.stderr)
    return CliExit.FAILED if failed else CliExit.OK


def cmd_enqueue(args: argparse.Namespace) -> int:
    try:
        ((_name, url),) = _database_urls(args, all_by_default=False)
        if args.json_lines:
            if args.callable:
                raise DjmasterError("give CALLABLE or --json-lines, not both")
            with _open_input(args.json_lines) as stream:
                calls = list(_read_json_lines(stream))
            ids = enqueue_many(calls, database_url=url)
            print(f"enqueued {len(ids)} job(s)")
            return CliExit.OK
        if not args.callable:
            raise DjmasterError("give CALLABLE (module.path:function) or --json-lines FILE")
        job_args = _json_arg("--args", args.args, list)
        job_kwargs = _json_arg("--kwargs", args.kwargs, dict)
        run_at = _parse_run_at(args.run_at) if args.run_at else None
        delay = args.delay
        job_id = enqueue(
            args.callable,
            job_args,
            job_kwargs,
            run_at=run_at,
            delay=delay,
            priority=args.priority,
            queue=args.queue,
            database_url=url,
        )
        print(job_id)
        return CliExit.OK
    except (SettingsError, DjmasterError, ValueError) as exc:
        return _fail(exc, CliExit.USAGE)
    except psycopg.Error as exc:
        return _fail(describe_error(exc), CliExit.FAILED)


def _json_arg(option: str, text: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise DjmasterError(f"{option}: not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise DjmasterError(f"{option}: must be a JSON {'list' if kind is list else 'object'}")
    return value


def _parse_run_at(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise DjmasterError(f"--run-at: {text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise DjmasterError(f"--run-at: {text!r} needs a UTC offset, e.g. 2026-01-01T12:00+00:00")
    return value


class _open_input:
    def __init__(self, path: str) -> None:
        self.path = path
        self.stream: TextIO | None = None

    def __enter__(self) -> TextIO:
        if self.path == "-":
            return sys.stdin
        try:
            self.stream = open(self.path, encoding="utf-8")
        except OSError as exc:
            raise DjmasterError(f"{self.path}: {exc.strerror}") from None
        return self.stream

    def __exit__(self, *exc: object) -> None:
        if self.stream is not None:
            self.stream.close()


_LINE_KEYS = {"callable", "args", "kwargs", "queue", "priority", "delay"}


def _read_json_lines(stream: TextIO) -> Iterator[JobCall]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise DjmasterError(f"line {number}: not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("callable"), str):
            raise DjmasterError(f'line {number}: needs an object with "callable"')
        unknown = sorted(set(data) - _LINE_KEYS)
        if unknown:
            raise DjmasterError(f"line {number}: unknown keys {', '.join(unknown)}")
        args, kwargs = data.get("args", []), data.get("kwargs", {})
        queue, priority, delay = (
            data.get("queue", DEFAULT_QUEUE),
            data.get("priority", 0),
            data.get("delay"),
        )
        if not isinstance(args, list):
            raise DjmasterError(f'line {number}: "args" must be a list')
        if not isinstance(kwargs, dict):
            raise DjmasterError(f'line {number}: "kwargs" must be an object')
        if not isinstance(queue, str):
            raise DjmasterError(f'line {number}: "queue" must be a string')
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise DjmasterError(f'line {number}: "priority" must be an integer')
        try:
            seconds = parse_duration(delay) if delay is not None else None
        except ValueError as exc:
            raise DjmasterError(f'line {number}: "delay": {exc}') from None
        yield JobCall(data["callable"], args, kwargs, queue=queue, priority=priority, delay=seconds)


def _fail(exc: BaseException | str, code: int) -> int:
    print(f"djmaster: {exc}", file=sys.stderr)
    return int(code)
