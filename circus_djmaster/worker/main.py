"""``djmaster worker --settings FILE --group NAME --database NAME``: a worker's whole life.

What each circus watcher runs. Signals are recorded from the first instruction
(early_signals.py); then the settings are loaded and the application preloaded (a
failure of either exits 78, ``WorkerExit.CONFIG_ERROR``: circus does not respawn it
and the master stops scaling its watcher), the worker callbacks run around its loop
(process.py), and the process exits with its :class:`WorkerExit`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Sequence

from circus_djmaster.common import logs
from circus_djmaster.config.settings import Settings, load_settings
from circus_djmaster.contracts import titles
from circus_djmaster.contracts.exit_codes import WorkerExit
from circus_djmaster.contracts.watchers import watcher_name
from circus_djmaster.exceptions import PreloadError, SettingsError
from circus_djmaster.worker import early_signals
from circus_djmaster.worker.callbacks import WorkerCallbacks
from circus_djmaster.worker.process import Worker

__all__ = ["log_prefix", "options_from", "preload", "run"]

log = logging.getLogger("circus_djmaster.worker")


def run(settings_path: str, group_name: str, database_name: str, wid: int | None = None) -> int:
    """The worker's whole life; returns the exit code. ``wid``: the process' circus
    ``wid`` (``--wid $(circus.wid)`` in circus.ini), shown in its title and log lines."""
    # Record signals from the start: a TERM during a slow preload is still graceful.
    early_signals.install()
    try:
        settings = load_settings(settings_path)
        group = settings.group(group_name)
        database = settings.database(database_name)
        database.url()  # fail now, with the key named, if its variable is unset
    except SettingsError as exc:
        print(f"djmaster worker: {exc}", file=sys.stderr)
        return WorkerExit.CONFIG_ERROR
    logs.configure(
        settings.log_file,
        settings.log_level,
        prefix=log_prefix(group.index, database.name, wid),
        log_format=settings.log_format,
        context={
            "role": "worker",
            "watcher": watcher_name(group.name, database.name),
            "group": group.name,
            "database": database.name,
            "wid": wid,
        },
    )
    titles.set_title(titles.worker_title(group.index, group.queues, database.name, wid=wid))
    try:
        callbacks = preload(settings)
    except PreloadError as exc:
        log.error("preload failed, this worker will not start: %s", exc)
        return WorkerExit.CONFIG_ERROR
    worker = Worker(settings, group, database, wid=wid)
    worker.install_signal_handlers()
    worker.replay(early_signals.take())
    log.info("worker started (group %s, database %s)", group.name, database.name)
    callbacks.call("after_fork", worker.info)

    def block() -> None:
        callbacks.call("before_work", worker.info)
        try:
            worker.work()
        finally:
            callbacks.call("after_work", worker.info)

    try:
        callbacks.around("around_work", block, worker.info)
    finally:
        worker.close()
    if worker.crashed:
        return WorkerExit.CRASHED
    log.info("worker exits (%s)", worker.retire_reason or "stopped")
    return WorkerExit.RETIRED


def log_prefix(index: int, database: str, wid: int | None) -> str:
    """``worker[0]#2@primary `` (group position, circus wid, database) before the
    logger name of a text log line; without a wid, ``worker[0]@primary ``."""
    number = f"#{wid}" if wid is not None else ""
    return f"worker[{index}]{number}@{database} "


def preload(settings: Settings) -> WorkerCallbacks:
    """chdir to the working directory, import the app and the worker callbacks.

    Raises PreloadError when the app or a callback cannot be imported (exit 78).
    """
    os.chdir(settings.working_directory)
    if str(settings.working_directory) not in sys.path:
        sys.path.insert(0, str(settings.working_directory))
    if settings.app:
        try:
            importlib.import_module(settings.app)
        except BaseException as exc:
            log.exception("importing app %r failed", settings.app)
            raise PreloadError(f"importing app {settings.app!r} failed: {exc!r}") from exc
    return WorkerCallbacks.load(settings.callbacks)


_OPTIONS = ("--settings", "--group", "--database")
_OPTIONAL = ("--wid",)


def options_from(argv: Sequence[str]) -> tuple[str, str, str, int | None] | None:
    """``(settings, group, database, wid)`` from a worker's command line as circus.ini
    gives it (``--settings S --group G --database D --wid N``, in any order,
    ``--name=value`` too; ``--wid`` optional, None without it), read without argparse:
    its import and the CLI's parser are a few milliseconds of every worker's start.
    None for any other command line: the CLI's parser then handles it (``--help``,
    abbreviations, mistakes and their messages)."""
    values: dict[str, str] = {}
    position = 0
    while position < len(argv):
        name, equals, value = argv[position].partition("=")
        if name not in _OPTIONS + _OPTIONAL or name in values:
            return None
        if not equals:
            position += 1
            if position == len(argv) or argv[position].startswith("-"):
                return None  # argparse reads "-x" as an option, not a value
            value = argv[position]
        values[name] = value
        position += 1
    if any(name not in values for name in _OPTIONS):
        return None
    wid = values.get("--wid")
    if wid is not None and not (wid.isascii() and wid.isdigit()):
        return None
    return (
        values["--settings"],
        values["--group"],
        values["--database"],
        None if wid is None else int(wid),
    )
