"""``djmaster-config``: write the files circusd needs from the settings file.

Subcommands register themselves in :data:`SUBCOMMANDS` (name -> setup function), so
``init`` and ``check`` can be added next to ``render`` without touching :func:`main`.

Exit codes: 0 success, 2 bad settings or bad command line (argparse's own code for
usage errors), 1 when the output file cannot be written.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from circus_djmaster.exceptions import DjmasterError
from circus_djmaster.settings import Settings, SettingsError, load_settings

EXIT_OK = 0
EXIT_IO_ERROR = 1
EXIT_SETTINGS_ERROR = 2  # same code argparse uses for a bad command line
OUTPUT_MODE = 0o644  # circus.ini holds no secret; circusd may run as another user

Handler = Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------- render


def _setup_render(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument("settings", metavar="SETTINGS", help="the djmaster.toml settings file")
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
    from circus_djmaster.render import render_ini

    settings = load_settings(args.settings)
    text = render_ini(settings, python=args.python)
    _warn_missing_dirs(settings)
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomic(Path(args.output), text)
    return EXIT_OK


def _warn_missing_dirs(settings: Settings) -> None:
    # circusd opens a watcher's FileStream when it loads the ini; if the folder is
    # missing it drops the watcher with only a warning and no job would ever run.
    if settings.log_file is not None and not settings.log_file.parent.is_dir():
        print(
            f"djmaster-config: warning: folder {settings.log_file.parent} of log_file does "
            "not exist; create it before starting circusd",
            file=sys.stderr,
        )


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


# ------------------------------------------------------------------- main

#: name -> (help, setup); setup adds the arguments and returns the handler.
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Handler]]] = {
    "render": ("render circus.ini from the settings file", _setup_render),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="djmaster-config",
        description="Write the files circusd needs from a circus-djmaster settings file.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, setup) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=setup(sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``djmaster-config``; returns (and, as a script, exits with) the code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SettingsError as error:
        # Already "FILE: KEY: reason" lines; a traceback would only hide them.
        print(error, file=sys.stderr)
        return EXIT_SETTINGS_ERROR
    except DjmasterError as error:
        print(f"djmaster-config: {error}", file=sys.stderr)
        return EXIT_SETTINGS_ERROR
    except OSError as error:
        print(f"djmaster-config: {error}", file=sys.stderr)
        return EXIT_IO_ERROR


if __name__ == "__main__":
    sys.exit(main())
