"""``djmaster-config``: write the files circusd needs from the settings file.

* ``init [DIR] [--force]``: write an annotated ``djmaster.toml`` and its ``circus.ini``;
* ``check [SETTINGS]``: validate a settings file, reporting every problem at once, and
  warn about what would stop it from running here;
* ``render [SETTINGS] [-o FILE]``: render ``circus.ini`` from a settings file, and make
  the folders it writes into;
* ``completion SHELL``: a shell completion script.

``SETTINGS`` may also be given as ``--settings FILE`` or ``$DJMASTER_SETTINGS``.
Subcommands register themselves in :data:`SUBCOMMANDS` (name -> setup function).

Exit codes (:class:`~circus_djmaster.contracts.exit_codes.CliExit`, shared with
``djmaster``): 0 success, 2 bad settings or bad command line, 1 when a file or folder
cannot be written or ``init`` would overwrite one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from circus_djmaster.cli.options import (
    add_completion_command,
    add_settings_option,
    add_version_option,
    settings_path,
)
from circus_djmaster.config.kinds import format_duration, is_loopback
from circus_djmaster.config.settings import Settings, load_settings
from circus_djmaster.contracts.exit_codes import CliExit
from circus_djmaster.exceptions import DjmasterError, Problem, SettingsError

OUTPUT_MODE = 0o644  # circus.ini holds no secret; circusd may run as another user

Handler = Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------- render


def _setup_render(parser: argparse.ArgumentParser) -> Handler:
    add_settings_option(parser, positional=True)
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write circus.ini here (atomically, mode 0644) instead of to stdout",
    )
    parser.add_argument(
        "--python",
        metavar="PATH",
        default=sys.executable,
        help="interpreter circusd runs workers with (default: this one, %(default)s)",
    )
    return _render


def _render(args: argparse.Namespace) -> int:
    # Imported here so that other subcommands do not pay for jinja2.
    from circus_djmaster.config.render import render_ini

    settings = load_settings(settings_path(args))
    text = render_ini(settings, python=args.python)
    failed = make_output_folders(settings)
    if failed:
        return CliExit.FAILED
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomic(Path(args.output), text)
    return CliExit.OK


def make_output_folders(settings: Settings) -> list[str]:
    """Make the folders circusd, the master and the workers write into (log_file,
    pid_file, circus' logoutput), and say so; returns the ones that could not be made,
    each reported as ``FILE: KEY: cannot create folder F: reason``.

    circusd opens a watcher's output file when it loads circus.ini; when the folder is
    missing it drops the watcher with a mere warning in its own log, and no job of that
    watcher ever runs: so the folders are made before circus.ini is written, or nothing
    is written.
    """
    from circus_djmaster.config.render import output_folders

    failed = []
    for key, folder in output_folders(settings):
        if folder.is_dir():
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            failed.append(str(folder))
            print(
                f"{settings.path}: {key}: cannot create folder {folder}: {error.strerror or error}",
                file=sys.stderr,
            )
            continue
        print(f"djmaster-config: created folder {folder} (for {key})", file=sys.stderr)
    return failed


def write_atomic(path: Path, text: str, mode: int = OUTPUT_MODE) -> None:
    """Replace ``path`` with ``text`` so that a reader (circusd reloading) sees the old
    file or the new one, never a half-written one."""
    path = path.absolute()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; chmod explicitly, the umask must not decide.
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------- init

INI_FILENAME = "circus.ini"


def _setup_init(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        default=".",
        help="folder to write djmaster.toml and circus.ini into (default: the current "
        "one; created if missing)",
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite djmaster.toml and circus.ini"
    )
    parser.add_argument(
        "--python",
        metavar="PATH",
        default=sys.executable,
        help="interpreter circusd runs workers with (default: this one, %(default)s)",
    )
    return _init


def _init(args: argparse.Namespace) -> int:
    from circus_djmaster.config.init_template import FILENAME, annotated_toml, template_settings
    from circus_djmaster.config.render import render_ini

    shown = Path(args.dir).expanduser()  # as the user wrote it, for the next steps
    folder = shown.absolute()
    toml_path, ini_path = folder / FILENAME, folder / INI_FILENAME
    if not args.force:
        # Both checked before either is written: init writes both files or neither.
        existing = [p for p in (toml_path, ini_path) if p.exists() or p.is_symlink()]
        for path in existing:
            print(
                f"djmaster-config: {path} already exists; not overwriting it (--force overwrites)",
                file=sys.stderr,
            )
        if existing:
            return CliExit.FAILED
    text = annotated_toml()
    # Rendered before anything is written: a folder circus.ini cannot name (a space
    # in its path, say) fails here and leaves nothing behind.
    settings = template_settings(toml_path, text)
    ini = render_ini(settings, python=args.python)
    folder.mkdir(parents=True, exist_ok=True)
    if make_output_folders(settings):
        return CliExit.FAILED
    write_atomic(toml_path, text)
    write_atomic(ini_path, ini)
    toml_arg = shlex.quote(str(shown / FILENAME))
    ini_arg = shlex.quote(str(shown / INI_FILENAME))
    print(f"wrote {toml_path}  (settings: every option, its default and what it does)")
    print(f"wrote {ini_path}  (rendered from it)")
    print(
        f"""
Next steps:
  1. Edit {toml_arg}: set `app` to the module of your jobs and adjust the
     worker groups, then check it and render circus.ini again:
       djmaster-config check {toml_arg}
       djmaster-config render {toml_arg} -o {ini_arg}
  2. Say where the database is, in the shell that runs steps 3 and 4 (the
     settings read it from the environment, so no password is in any file):
       export DJMASTER_DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DBNAME
  3. Create the delayed_jobs table:
       djmaster migrate --settings {toml_arg}
  4. Run the master and its workers (add --daemon to detach):
       circusd {ini_arg}"""
    )
    return CliExit.OK


# ------------------------------------------------------------------ check


def _setup_check(parser: argparse.ArgumentParser) -> Handler:
    add_settings_option(parser, positional=True)
    parser.add_argument(
        "--python",
        metavar="PATH",
        default=sys.executable,
        help="interpreter circusd would run workers with (default: this one, %(default)s)",
    )
    return _check


def _check(args: argparse.Namespace) -> int:
    from circus_djmaster.contracts.watchers import watcher_name

    try:
        settings = load_settings(settings_path(args))
    except SettingsError as error:
        # The render-time checks need a loaded file; these are all the loader found.
        return _report_problems(error)
    for warning in _check_warnings(settings):
        print(f"djmaster-config: warning: {warning}", file=sys.stderr)
    try:
        _render_problems(settings, args.python)
    except SettingsError as error:
        return _report_problems(error)
    groups, databases = settings.workers, settings.databases
    watchers = [watcher_name(g.name, d.name) for g in groups for d in databases]
    queues = sorted({queue for group in groups for queue in group.queues})
    print(f"{settings.path}: OK")
    print(f"  databases: {len(databases)} ({', '.join(d.name for d in databases)})")
    print(f"  worker groups: {len(groups)} ({', '.join(g.name for g in groups)})")
    print(
        f"  watchers: {_count(len(groups), 'group')} x {_count(len(databases), 'database')}"
        f" = {len(watchers)} ({', '.join(watchers)})"
    )
    if any(not group.queues for group in groups):
        print(f"  queues: all ({', '.join(queues) or 'none named'} and any other)")
    else:
        print(f"  queues: {', '.join(queues)}")
    for group in groups:
        served = ", ".join(group.queues) if group.queues else "all queues"
        print(
            f"    {group.name}: {served}; up to {_count(group.max_processes, 'process')}"
            f" x {_count(group.max_threads, 'thread')}"
        )
    if settings.recurring:
        print(f"  recurring: {len(settings.recurring)}")
        for entry in settings.recurring:
            print(f"    {entry.name}: {entry.schedule} -> {entry.callable} @{entry.database}")
    longest = _longest_stop(settings)
    stop_timeout = settings.circus.stop_timeout
    declared = (
        f"stop_timeout {format_duration(stop_timeout)}"
        if stop_timeout is not None
        else "declare your service manager's as [circus] stop_timeout"
    )
    print(
        f"  stopping: up to {format_duration(longest)} (graceful_timeout: max_run_time "
        f"+ 10s; {declared})"
    )
    return CliExit.OK


def _longest_stop(settings: Settings) -> float:
    """The longest graceful_timeout of the rendered watchers: how long a graceful stop
    of circusd may take."""
    from circus_djmaster.config.render import graceful_timeout

    return float(max(graceful_timeout(group) for group in settings.workers))


def _render_problems(settings: Settings, python: str) -> None:
    """Raise what render_ini would raise for ``settings``, as a SettingsError."""
    from circus_djmaster.config.render import render_ini
    from circus_djmaster.exceptions import RenderError

    try:
        render_ini(settings, python=python)
    except RenderError as error:
        raise SettingsError(settings.path, [Problem("", str(error))]) from None


def _report_problems(error: SettingsError) -> int:
    # One "FILE: KEY: reason" line per problem, then a count.
    print(error, file=sys.stderr)
    count = len(error.problems)
    print(f"djmaster-config: {_count(count, 'problem')} found", file=sys.stderr)
    return CliExit.USAGE


def _check_warnings(settings: Settings) -> list[str]:
    """Things that do not make the file invalid but will stop it from running here."""
    warnings = []
    for index, entry in enumerate(settings.recurring):
        if not any(not g.queues or entry.queue in g.queues for g in settings.workers):
            warnings.append(
                f"{settings.path}: recurring[{index}].queue: no worker group serves queue "
                f'"{entry.queue}": its jobs would wait forever'
            )
    for database in settings.databases:
        # Expanded only to see whether its variables are set; never shown.
        try:
            database.url()
        except SettingsError as error:
            for problem in error.problems:
                warnings.append(
                    f"{settings.path}: {problem.key}: {problem.reason} (needed by "
                    "djmaster migrate and circusd, not by check)"
                )
    from circus_djmaster.config.render import graceful_timeout, output_folders

    for key, folder in output_folders(settings):
        if not folder.is_dir():
            warnings.append(
                f"{settings.path}: {key}: folder {folder} does not exist; "
                "`djmaster-config render` creates it (circusd drops a watcher whose "
                "output folder is missing)"
            )
    stop_timeout = settings.circus.stop_timeout
    if stop_timeout is not None:
        for group in settings.workers:
            graceful = graceful_timeout(group)
            if graceful > stop_timeout:
                warnings.append(
                    f"{settings.path}: workers[{group.index}].max_run_time: graceful_timeout "
                    f"{format_duration(graceful)} (max_run_time + 10s) is longer than "
                    f"circus.stop_timeout {format_duration(stop_timeout)}: a graceful stop "
                    "is cut short and running jobs are killed (lower max_run_time, or give "
                    "the service manager more time; docs/deployment.md)"
                )
    metrics = settings.metrics
    if metrics is not None and not is_loopback(metrics.host):
        warnings.append(
            f"{settings.path}: metrics.host: {metrics.host} is not loopback: the metrics "
            "endpoint (no authentication) is reachable from other machines"
        )
    return warnings


def _count(number: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{number} {noun if number == 1 else plural}"


# ------------------------------------------------------------------- main

#: name -> (help, setup); setup adds the arguments and returns the handler.
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Handler]]] = {
    "init": ("write an annotated djmaster.toml and its circus.ini", _setup_init),
    "check": ("validate a settings file, reporting every problem", _setup_check),
    "render": ("render circus.ini from the settings file", _setup_render),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``djmaster-config``."""
    parser = argparse.ArgumentParser(
        prog="djmaster-config",
        description="Write the files circusd needs from a circus-djmaster settings file.",
        epilog="Exit codes: 0 done, 1 a file or folder cannot be written, 2 bad command line "
        "or settings.",
    )
    add_version_option(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, setup) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=setup(sub))
    completion = add_completion_command(commands, build_parser)
    completion.set_defaults(handler=completion.get_default("func"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``djmaster-config``; returns (and, as a script, exits with) the code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SettingsError as error:
        # Already "FILE: KEY: reason" lines; a traceback would only hide them.
        print(error, file=sys.stderr)
        return CliExit.USAGE
    except DjmasterError as error:
        print(f"djmaster-config: {error}", file=sys.stderr)
        return CliExit.USAGE
    except OSError as error:
        print(f"djmaster-config: {error}", file=sys.stderr)
        return CliExit.FAILED


if __name__ == "__main__":
    sys.exit(main())
