"""Render ``circus.ini`` from the settings and the jinja2 templates in ``config/templates/``.

Decisions live here (names, commands, timeouts, what is safe to write); the templates
only lay the values out. The output is deterministic, so rendering the same settings
twice gives the same bytes and a diff shows real changes only.

Two parsers read what we write, and both can be tricked by a value:

* circus' ini parser: a newline starts a new option or section, ``" ;"`` starts a
  comment, ``$(circus.…)`` and ``((circus.…))`` are substituted, and values are
  stripped;
* the plugin's command line: circus pastes every ``[plugin:…]`` option into
  ``--config key:value:::key:value`` of a shell-like command line that it splits with
  :func:`shlex.split` (docs/design.md §9), so a plugin value must not hold whitespace, quotes,
  a backslash or ``:::``; circus also passes its ``logoutput`` and endpoints there.

Values that would be misread are refused with an error that names them, instead of
producing a file that circusd would run differently from what it says.

Nothing secret is ever rendered: databases appear by name only. Workers and the
plugin read their URLs (``${VAR}``) from circusd's environment (``copy_env``).
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jinja2

from circus_djmaster.config.settings import Settings, WorkerGroup
from circus_djmaster.contracts.watchers import (
    AFTER_REAP_HOOK,
    BEFORE_SPAWN_HOOK,
    PLUGIN_CLASS,
    PLUGIN_SECTION,
    watcher_name,
)
from circus_djmaster.exceptions import Problem, RenderError, SettingsError

__all__ = ["graceful_timeout", "output_folders", "render_ini", "watcher_index", "workers_output"]

TEMPLATE = "circus.ini.j2"

#: Seconds added to a group's max_run_time for graceful_timeout: the worker notices a
#: job running past max_run_time on its own check, records the failure in the database
#: and exits; circus should not SIGKILL it in the middle of that.
GRACE_MARGIN = 10
#: The plugin stops at once on TERM; this only bounds closing its connections.
PLUGIN_GRACEFUL_TIMEOUT = 10
#: circus starts watchers from the highest priority down; the plugin watcher has
#: circus' plugin default, 1, so it is up before the workers it scales.
WORKER_PRIORITY = 0
#: circus substitutes each process' wid here (circus.process.Process.format_args): the
#: worker shows it in its title and log lines (distinct among a watcher's live processes).
WID_ARGUMENT = "$(circus.wid)"

# What circus substitutes in option values (circus.util._CIRCUS_VAR), and $WID in cmd.
_CIRCUS_SUBSTITUTION = re.compile(r"\$\(circus\.|\(\(circus\.|\$WID", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COMMENT = re.compile(r"\s;")
_PLUGIN_UNSAFE = re.compile(r"\s|:::|['\"\\]")


# ----------------------------------------------------------------------- names


def watcher_index(settings: Settings) -> dict[str, tuple[str, str]]:
    """Lower-cased watcher name -> ``(group, database)`` as spelled in the settings.

    Look names from circus up with ``name.lower()``: circus' ``list`` and event topics
    give them lower-cased. :func:`render_ini` refuses settings where two watchers
    would differ only by case, so this mapping is one-to-one.
    """
    return {
        watcher_name(group.name, database.name).lower(): (group.name, database.name)
        for group in settings.workers
        for database in settings.databases
    }


def graceful_timeout(group: WorkerGroup) -> int:
    """Seconds circus waits after ``stop_signal`` before SIGKILL: a graceful stop lets
    the current jobs finish, and a job may run up to ``max_run_time``."""
    return math.ceil(group.max_run_time) + GRACE_MARGIN


def workers_output(settings: Settings) -> Path | None:
    """Where circusd writes the workers' stdout and stderr: ``log_file``, or, when it
    is unset, ``<settings stem>-workers.log`` next to the settings file (so that the
    workers' lines never mix with circusd's own output).

    None when ``log_file`` names something that is not a regular file (a pipe or a
    terminal: ``/proc/1/fd/1`` in a container): circus' file streams cannot open it (they
    need a seekable file), so the workers keep circusd's own stdout and stderr, which
    is then that same output.
    """
    if settings.log_file is not None:
        log_file = settings.log_file
        if log_file.exists() and not log_file.is_file():
            return None
        return log_file
    return settings.path.with_name(f"{settings.path.stem}-workers.log")


def output_folders(settings: Settings) -> list[tuple[str, Path]]:
    """``(key, folder)`` of every folder that circusd, the master or the workers write
    into when run on ``settings``: circusd drops a watcher whose output file it cannot
    open (with a mere warning in its own log), so ``djmaster-config render`` makes them
    first. In the order of the keys; a folder named by two keys is listed once."""
    files = [
        ("log_file", settings.log_file),
        ("pid_file", settings.pid_file),
        (
            "circus.logoutput",
            None if settings.circus.logoutput == "-" else Path(settings.circus.logoutput),
        ),
    ]
    seen: set[Path] = set()
    folders = []
    for key, path in files:
        if path is not None and path.parent not in seen:
            seen.add(path.parent)
            folders.append((key, path.parent))
    return folders


# ------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class _Watcher:
    name: str
    group: str
    database: str
    cmd: str
    args: str
    working_dir: str
    graceful_timeout: int
    output_file: str | None


@dataclass(frozen=True)
class _Plugin:
    section: str
    use: str
    settings: str
    graceful_timeout: int


def render_ini(settings: Settings, *, python: str = sys.executable) -> str:
    """The text of ``circus.ini`` for ``settings``.

    ``python`` is the interpreter circusd runs workers with (absolute; it must have
    circus-djmaster installed). Raises :class:`SettingsError` for a settings value
    that cannot be written safely and :class:`RenderError` for a bad ``python``.
    """
    _check_settings(settings)
    interpreter = _interpreter(python)
    settings_path = str(settings.path)
    output = workers_output(settings)
    output_file = None if output is None else str(output)
    watchers = [
        _Watcher(
            name=watcher_name(group.name, database.name),
            group=group.name,
            database=database.name,
            cmd=shlex.quote(interpreter),
            args=shlex.join(
                [
                    "-m",
                    "circus_djmaster",
                    "worker",
                    "--settings",
                    settings_path,
                    "--group",
                    group.name,
                    "--database",
                    database.name,
                    "--wid",
                    WID_ARGUMENT,
                ]
            ),
            working_dir=str(settings.working_directory),
            graceful_timeout=graceful_timeout(group),
            output_file=output_file,
        )
        for group in settings.workers
        for database in settings.databases
    ]
    plugin = _Plugin(
        section=PLUGIN_SECTION,
        use=PLUGIN_CLASS,
        settings=settings_path,
        graceful_timeout=PLUGIN_GRACEFUL_TIMEOUT,
    )
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            settings_path=settings_path,
            circus=settings.circus,
            watchers=watchers,
            plugin=plugin,
            hook=AFTER_REAP_HOOK,
            spawn_hook=BEFORE_SPAWN_HOOK,
            worker_priority=WORKER_PRIORITY,
        )
    )


def _environment() -> jinja2.Environment:
    # The templates are package data (circus_djmaster/config/templates), in a wheel
    # install as in an editable one.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("circus_djmaster.config", "templates"),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails, not renders ""
        autoescape=False,  # an ini file, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


# ------------------------------------------------------------------- checking


def _check_settings(settings: Settings) -> None:
    problems: list[Problem] = []

    def check(key: str, value: str, *, plugin: bool = False) -> None:
        reason = _unsafe_reason(value, plugin=plugin)
        if reason is not None:
            problems.append(Problem(key, reason))

    # The file's own path: in every worker's args and in the plugin's command line.
    check("", str(settings.path), plugin=True)
    check("working_directory", str(settings.working_directory))
    if settings.log_file is not None:
        check("log_file", str(settings.log_file))
    # circus passes its endpoints and logoutput to the plugin's command line too.
    for key in ("endpoint", "pubsub_endpoint", "logoutput"):
        check(f"circus.{key}", str(getattr(settings.circus, key)), plugin=True)
    problems += _case_collisions(
        "workers", [(f"workers[{g.index}].name", g.name) for g in settings.workers]
    )
    problems += _case_collisions(
        "databases", [(f"databases.{d.name}", d.name) for d in settings.databases]
    )
    if problems:
        raise SettingsError(settings.path, problems)


def _unsafe_reason(value: str, *, plugin: bool) -> str | None:
    shown = repr(value)
    if _CONTROL.search(value):
        return (
            f"{shown} contains a control character (newline, tab, …): it cannot go into circus.ini"
        )
    if value != value.strip():
        return f"{shown} starts or ends with a space: circus.ini values are stripped"
    if _CIRCUS_SUBSTITUTION.search(value):
        return f"{shown} contains $(circus.…), ((circus.…)) or $WID, which circus would substitute"
    if _COMMENT.search(value):
        return f"{shown} contains ' ;', which circus.ini reads as the start of a comment"
    if plugin and _PLUGIN_UNSAFE.search(value):
        return (
            f"{shown} contains a space, a quote, a backslash or ':::'; circus pastes plugin "
            "options into a command line, so this path cannot be used (move or rename it)"
        )
    return None


def _case_collisions(what: str, keyed_names: Iterable[tuple[str, str]]) -> list[Problem]:
    # circus looks watchers up by lower-cased name: "Mail" and "mail" would be one watcher.
    first: dict[str, tuple[str, str]] = {}
    problems = []
    for key, name in keyed_names:
        folded = name.lower()
        if folded in first and first[folded][1] != name:
            other_key, other = first[folded]
            problems.append(
                Problem(
                    key,
                    f"{name!r} differs from {other!r} ({other_key}) only by case; "
                    f"circus watcher names ignore case, so the {what} must differ otherwise",
                )
            )
        else:
            first.setdefault(folded, (key, name))
    return problems


def _interpreter(python: str) -> str:
    path = Path(python)
    if not path.is_absolute():
        raise RenderError(f"python interpreter {python!r} is not an absolute path")
    reason = _unsafe_reason(python, plugin=False)
    if reason is not None:
        raise RenderError(f"python interpreter {reason}")
    return python
